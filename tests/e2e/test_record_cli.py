"""``discord-voicerecv record`` as a subprocess against the local Discord: Ctrl-C leaves complete, playable files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from discord_voicerecv.ffmpeg import find_ffmpeg
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.analysis import normalized_xcorr, read_wav
from discord_voicerecv.testing.clips import load_clip
from discord_voicerecv.testing.decoding import decode_samples as _decode
from discord_voicerecv.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cli-recorder-token-that-must-never-be-printed"
TOKEN_ENV = "VOICERECV_TEST_TOKEN"


class _Recording:
    """The ``record`` command running in a subprocess, its stderr read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    async def line(self, timeout: float = 30.0) -> str:
        assert self.proc.stderr is not None
        raw = await asyncio.wait_for(self.proc.stderr.readline(), timeout)
        if not raw:
            raise AssertionError("record exited early:\n" + "".join(self.stderr))
        text = raw.decode()
        self.stderr.append(text)
        return text

    async def wait_for(self, needle: str, timeout: float = 30.0) -> str:
        while needle not in (text := await self.line(timeout)):
            pass
        return text

    async def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        """Wait for exit; returns the status and stdout (the rest of stderr is collected)."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out, rest = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.stderr.append(rest.decode())
        return self.proc.returncode or 0, out.decode()

    async def __aenter__(self) -> _Recording:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Never leave the process behind; when the test failed, show where it was (faulthandler) and its output."""
        if self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGABRT)
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), 10)
            self.stderr.append(err.decode(errors="replace"))
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if exc_type is not None:
            print("record's stderr:\n" + "".join(self.stderr).replace(TOKEN, "[token]"))


async def _start(local: LocalDiscord, out: Path, *extra: str) -> _Recording:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1", TOKEN_ENV: TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discord_voicerecv", "record",
        "--token-env", TOKEN_ENV, "--channel", str(local.voice_channel_id), "--out", str(out),
        "--local-discord", local.url, *extra,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    return _Recording(proc)


async def test_sigint_leaves_complete_playable_wav_files_and_never_prints_the_token(
    local: LocalDiscord, tmp_path: Path
) -> None:
    alice = local.add_speaker(clip="fr_female")
    out = tmp_path / "rec"
    async with await _start(local, out) as rec:
        await rec.wait_for("recording #")
        await local.voice.wait_dave_settled(timeout=10)
        await asyncio.sleep(0.3)
        await alice.speak()
        progress = await rec.wait_for("speakers 1")
        rec.proc.send_signal(signal.SIGINT)
        status, stdout = await rec.finish()
    stderr = "".join(rec.stderr)
    assert status == 0, stderr
    assert TOKEN not in stdout and TOKEN not in stderr
    assert re.fullmatch(r"recording 00:0\d  speakers 1 \([01] speaking\)  written [\d.]+ (KB|MB)\n", progress)
    summary = json.loads(stdout)
    assert summary["reason"] == "stopped" and summary["error"] is None
    assert summary["stats"]["decrypt_failed"] == 0
    files = [Path(f) for f in summary["files"]]
    assert {f.name for f in files} == {"mix.wav", f"Speaker_1-{alice.user_id}.wav"}
    lengths = set()
    for path in files:
        rate, channels, samples = read_wav(path)
        assert (rate, channels) == (48_000, 2)
        lengths.add(len(samples))
    assert len(lengths) == 1, "every file has the same length"
    assert abs(lengths.pop() / 48_000 - summary["seconds"]) < 0.5
    _, _, track = read_wav(out / f"Speaker_1-{alice.user_id}.wav")
    score, _ = normalized_xcorr(track, load_clip("fr_female"))
    assert score >= 0.9


@pytest.mark.ffmpeg
@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
async def test_sigint_finishes_compressed_files_cleanly(local: LocalDiscord, tmp_path: Path, fmt: str) -> None:
    alice = local.add_speaker(clip="fr_female")
    out = tmp_path / fmt
    async with await _start(local, out, "--format", fmt) as rec:
        await rec.wait_for("recording #")
        await local.voice.wait_dave_settled(timeout=10)
        await asyncio.sleep(0.3)
        await alice.speak()
        await rec.wait_for("written")
        rec.proc.send_signal(signal.SIGINT)
        status, stdout = await rec.finish()
    assert status == 0, "".join(rec.stderr)
    summary = json.loads(stdout)
    ext = "opus" if fmt == "ogg" else fmt
    names = {Path(f).name for f in summary["files"]}
    assert names == {f"mix.{ext}", f"Speaker_1-{alice.user_id}.{ext}"}
    lengths = {path: len(_decode(Path(path))) / 48_000 for path in summary["files"]}
    assert max(lengths.values()) - min(lengths.values()) < 0.06, lengths
    assert abs(max(lengths.values()) - summary["seconds"]) < 0.5
    speaker = _decode(out / f"Speaker_1-{alice.user_id}.{ext}")
    score, _ = normalized_xcorr(speaker, load_clip("fr_female"))
    assert score >= 0.9
    if fmt == "ogg":  # written without in-band FEC, so even ffmpeg 4.x/5.x's own decoder plays it
        native = _decode_natively(out / f"Speaker_1-{alice.user_id}.{ext}").astype(np.float64).ravel()
        exact = speaker.astype(np.float64).ravel()
        assert float(native @ exact / np.sqrt((native @ native) * (exact @ exact))) >= 0.99


@pytest.mark.ffmpeg
async def test_seconds_stops_by_itself_with_exact_files(local: LocalDiscord, tmp_path: Path) -> None:
    local.add_speaker(clip="de_male").start()
    out = tmp_path / "timed"
    async with await _start(local, out, "--seconds", "1.5", "--format", "flac") as rec:
        status, stdout = await rec.finish(timeout=40)
    assert status == 0, "".join(rec.stderr)
    summary = json.loads(stdout)
    assert summary["reason"] == "max_duration"
    assert summary["files"]
    for path in summary["files"]:
        assert path.endswith(".flac")
        assert len(_decode(Path(path))) == 72_000, path


def _decode_natively(path: Path) -> npt.NDArray[np.int16]:
    """Decode an Opus file with ffmpeg's own Opus decoder (what ffplay and mpv use), not libopus."""
    raw = subprocess.run(
        [find_ffmpeg(), "-v", "error", "-c:a", "opus", "-i", str(path), "-f", "s16le", "-ar", "48000", "-ac", "2",
         "-"],
        check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, dtype="<i2").reshape(-1, 2)


def test_missing_token_variable_is_an_error_without_a_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VOICERECV_NO_SUCH_TOKEN", raising=False)
    status = main(["record", "--token-env", "VOICERECV_NO_SUCH_TOKEN", "--channel", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "VOICERECV_NO_SUCH_TOKEN" in err and "missing or empty" in err
    monkeypatch.setenv("VOICERECV_NO_SUCH_TOKEN", "  ")
    assert main(["record", "--token-env", "VOICERECV_NO_SUCH_TOKEN", "--channel", "1", "--out", str(tmp_path)]) == 2
