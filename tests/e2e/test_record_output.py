"""What ``discord-voicerecv record`` prints: a line per step, progress with the people present, a true summary."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from discord_voicerecv.ffmpeg import find_ffmpeg
from discord_voicerecv.sinks.limits import StopReason
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.tools.record import _plural, _stopped

ROOT = Path(__file__).resolve().parents[2]


def test_stop_lines_and_plurals_read_as_english() -> None:
    assert _stopped(StopReason.STOPPED, None) == "stopped on request"
    assert _stopped(StopReason.MAX_DURATION, 2.0) == "stopped after 2 s"
    assert _stopped(StopReason.ALONE, None) == "stopped: everyone else left the channel"
    assert (_plural(1, "file"), _plural(0, "file"), _plural(3, "file")) == ("1 file", "0 files", "3 files")


def _samples(path: Path) -> int:
    raw = subprocess.run(
        [find_ffmpeg(), "-v", "error", "-i", str(path), "-f", "s16le", "-ar", "48000", "-ac", "2", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return len(raw) // 4


async def test_flac_recording_reports_progress_people_and_exact_seconds(local: LocalDiscord, tmp_path: Path) -> None:
    talkers = [local.add_speaker(clip="de_male"), local.add_speaker(clip="fr_female")]
    local.add_speaker(clip="en_us_male")  # present, never talks
    for talker in talkers:
        talker.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECORD_OUTPUT_TOKEN": "record-output"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discord_voicerecv", "record", "--token-env", "RECORD_OUTPUT_TOKEN",
        "--channel", str(local.voice_channel_id), "--out", str(tmp_path), "--local-discord", local.url,
        "--seconds", "2.5", "--format", "flac",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().splitlines()
    assert proc.returncode == 0, lines
    assert lines[0] == "logging in to Discord..."
    assert lines[1] == "joining #Voice..."
    assert lines[2].startswith("recording #Voice to ")
    progress = [line for line in lines if line.startswith("recording 00:")]
    assert progress and all("speakers 3 (" in line for line in progress)
    first = re.search(r"written ([\d.]+) (B|KB|MB)", progress[0])
    assert first is not None and float(first.group(1)) > 0, progress[0]  # flac: audio counted as it goes
    assert lines[-1] == f"stopped after 2.5 s; 3 files in {tmp_path}"
    summary = json.loads(out)
    assert summary["seconds"] == 2.5
    for path in summary["files"]:
        assert _samples(Path(path)) == 120_000, path  # the summary's seconds are the files' seconds
