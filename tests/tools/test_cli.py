"""The ``discord-voicerecv`` command's own argument checks (decode and record have theirs in their tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from discord_voicerecv.tools.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds", "-1"], "--seconds"),
        (["--seconds", "nan"], "--seconds"),
        (["--speakers", "0"], "--speakers"),
        (["--out", "{file}/rec"], "is not a folder"),
    ],
)
def test_bad_demo_arguments_one_line_exit_2_nothing_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("x")
    argv = {"--seconds": "0.1", "--speakers": "1", "--out": str(tmp_path / "rec")}
    for key, value in zip(args[::2], args[1::2], strict=True):
        argv[key] = value.format(file=tmp_path / "file")
    status = main(["demo", *(item for pair in argv.items() for item in pair)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
