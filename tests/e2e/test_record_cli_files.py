"""``record`` keeps its files safe: a second Ctrl-C, a second run into the same folder, bad arguments."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from discord_voicerecv.ffmpeg import find_ffmpeg
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.analysis import read_wav
from discord_voicerecv.tools.cli import main

from .test_record_cli import TOKEN_ENV, _decode, _start


@pytest.mark.parametrize("gap", [0.01, 0.05])
async def test_a_second_ctrl_c_says_the_files_are_being_finished(
    local: LocalDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gap: float
) -> None:
    slow = tmp_path / "slow-ffmpeg"  # finishing takes 0.5 s longer, so the second Ctrl-C surely lands during it
    slow.write_text(f'#!/bin/sh\n"{find_ffmpeg()}" "$@"\nstatus=$?\nsleep 0.5\nexit $status\n')
    slow.chmod(0o755)
    monkeypatch.setenv("FFMPEG_BINARY", str(slow))
    alice = local.add_speaker(clip="fr_female")
    out = tmp_path / "rec"
    async with await _start(local, out, "--format", "mp3") as rec:
        await rec.wait_for("recording #")
        await local.voice.wait_dave_settled(timeout=10)
        await alice.speak()
        await rec.wait_for("speakers 1")
        rec.proc.send_signal(signal.SIGINT)
        # Python merges two signals that come before its handler ran: the second goes once the first was taken
        await rec.wait_for("finishing the files...")
        await asyncio.sleep(gap)
        rec.proc.send_signal(signal.SIGINT)
        status, stdout = await rec.finish()
    stderr = "".join(rec.stderr)
    assert status == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "still finishing the files" in stderr
    summary = json.loads(stdout)
    assert summary["error"] is None
    assert {Path(f).name for f in summary["files"]} == {"mix.mp3", f"Speaker_1-{alice.user_id}.mp3"}
    lengths = {len(_decode(Path(f))) for f in summary["files"]}
    assert len(lengths) == 1 and lengths.pop() > 48_000, "both files complete and equally long"


async def test_recording_twice_into_one_folder_keeps_the_first(local: LocalDiscord, tmp_path: Path) -> None:
    local.add_speaker(clip="de_male").start()
    out = tmp_path / "twice"
    summaries = []
    for _ in range(2):
        async with await _start(local, out, "--seconds", "0.6") as rec:
            status, stdout = await rec.finish(timeout=40)
        assert status == 0, "".join(rec.stderr)
        summaries.append(json.loads(stdout))
        if len(summaries) == 1:
            first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "mix.wav" in first
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in first} == first
    second = {Path(f).name for f in summaries[1]["files"]}
    assert "mix-2.wav" in second and not second & set(first)
    for name in second:
        assert len(read_wav(out / name)[2]) == 0.6 * 48_000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{file}"], "is not a folder"),
        (["--out", "{file}/sub"], "is not a folder"),
        (["--channel", "0"], "--channel"),
        (["--seconds", "-1"], "--seconds"),
    ],
)
def test_bad_record_arguments_one_line_exit_2_nothing_created(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "a-token")
    (tmp_path / "file").write_text("x")
    argv = {"--token-env": TOKEN_ENV, "--channel": "1", "--out": str(tmp_path / "out")}
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        argv[key] = value.format(file=tmp_path / "file")
    before = sorted(tmp_path.rglob("*"))
    status = main(["record", *(item for pair in argv.items() for item in pair)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_record_without_ffmpeg_is_refused_before_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "a-token")
    monkeypatch.setenv("FFMPEG_BINARY", str(tmp_path / "no-ffmpeg"))
    status = main(
        ["record", "--token-env", TOKEN_ENV, "--channel", "1", "--out", str(tmp_path / "o"), "--format", "mp3"]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_a_format_the_ffmpeg_cannot_write_is_refused_before_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lame_less = tmp_path / "ffmpeg"  # an ffmpeg built without an mp3 encoder
    lame_less.write_text("#!/bin/sh\necho \"Unknown encoder 'libmp3lame'\" >&2\nexit 1\n")
    lame_less.chmod(0o755)
    monkeypatch.setenv(TOKEN_ENV, "a-token")
    monkeypatch.setenv("FFMPEG_BINARY", str(lame_less))
    argv = ["record", "--token-env", TOKEN_ENV, "--channel", "1", "--out", str(tmp_path / "o"), "--format", "mp3"]
    status = main([*argv, "--local-discord", "http://127.0.0.1:9"])  # a login attempt fails at once
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "libmp3lame" in err
    assert not (tmp_path / "o").exists()


def test_a_library_error_while_recording_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import discord_voicerecv.tools.record as record_module
    from discord_voicerecv.errors import OpusNotAvailable

    def no_libopus() -> None:
        raise OpusNotAvailable("could not load libopus")

    monkeypatch.setattr(record_module, "ensure_discord_opus", no_libopus)
    monkeypatch.setenv(TOKEN_ENV, "a-token")
    status = main(["record", "--token-env", TOKEN_ENV, "--channel", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1 and err == "error: OpusNotAvailable: could not load libopus\n", err
    assert not (tmp_path / "o").exists()
