"""``discord-voicerecv demo``: progress while it runs, a table people can read, JSON on request."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from discord_voicerecv.tools.cli import main


def test_demo_prints_progress_and_a_table_per_speaker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seconds", "3", "--speakers", "2", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "starting a local Discord" in err
    assert "2 speakers joined: Speaker 1 (de_male), Speaker 2 (en_gb_female)" in err
    assert "packets" in err.splitlines()[-2]  # a progress line during the recording
    lines = out.splitlines()
    assert re.match(r"Recorded 3\.0\d s from 2 speakers into", lines[0]), lines[0]
    for name, clip in (("Speaker 1", "de_male"), ("Speaker 2", "en_gb_female")):
        row = next(line for line in lines if line.strip().startswith(name))
        assert clip in row and " yes (" in row and row.endswith(".wav")
        assert float(row.split()[3]) == pytest.approx(3.0, abs=0.1)  # the track's own length
    assert "attempts" not in out and "successes" not in out
    assert "0 dropped" in out
    assert lines[-1] == "All tracks match their clips."


def test_demo_json_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seconds", "2", "--speakers", "1", "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True
    (speaker,) = summary["speakers"]
    assert (speaker["name"], speaker["clip"], speaker["match"]) == ("Speaker 1", "de_male", True)
    assert Path(speaker["file"]).is_file()
    assert set(speaker["dave"]) <= {"decrypted", "passthrough", "held"} | {k for k in speaker["dave"] if "failed" in k}
