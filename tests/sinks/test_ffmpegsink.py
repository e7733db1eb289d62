from __future__ import annotations

import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import discord
import numpy as np
import pytest

from discord_voicerecv.errors import SinkError
from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, VoiceFrame
from discord_voicerecv.sinks import FFmpegSink, MixSink, SinkUser
from discord_voicerecv.sinks.mix import MIX_SSRC
from discord_voicerecv.testing.decoding import decode_file

ANN = discord.Object(id=11)
BOB = discord.Object(id=22)
UNKNOWN_SSRC = 999

# (user, user_id, ticks): Ann talks, pauses and talks again; Bob starts at 5; an unmapped SSRC speaks at 12..14.
SCRIPT: list[tuple[SinkUser, int | None, range]] = [
    (ANN, 11, range(0, 10)),
    (ANN, 11, range(20, 30)),
    (BOB, 22, range(5, 15)),
    (None, None, range(12, 15)),
]
TOTAL = 40
STALL = 60
"""Seconds a stalled fake ffmpeg sleeps without reading its input."""
AAC_FRAME_SAMPLES = 1024

pytestmark = pytest.mark.ffmpeg


def noise(seed: int, tick: int, scale: int = 12_000) -> bytes:
    rng = np.random.default_rng(seed * 100_003 + tick)
    return rng.integers(-scale, scale, FRAME_SAMPLES * 2).astype("<i2").tobytes()


def frame(tick: int, user_id: int | None, pcm: bytes) -> VoiceFrame:
    ssrc = user_id or UNKNOWN_SSRC
    return VoiceFrame(ssrc, user_id, tick, pcm, None, tick, tick * FRAME_SAMPLES)


def play(sink: FFmpegSink | MixSink, total: int = TOTAL) -> dict[int | None, bytearray]:
    expected: dict[int | None, bytearray] = {}
    for tick in range(total):
        for user, uid, ticks in SCRIPT:
            if tick in ticks:
                pcm = noise(uid or 0, tick)
                track = expected.setdefault(uid, bytearray())
                track += bytes(tick * FRAME_BYTES - len(track)) + pcm
                sink.write(user, frame(tick, uid, pcm))
        sink.advance(tick)
    for track in expected.values():
        track += bytes(total * FRAME_BYTES - len(track))
    return expected


decode = decode_file


def m4a_samples(path: Path) -> int:
    """The samples an MP4 audio track declares: its media duration minus the edit list's start (the encoder delay),
    read from the ``mdhd`` and ``elst`` boxes of the first track."""
    data = path.read_bytes()

    def boxes(start: int, end: int) -> dict[bytes, tuple[int, int]]:
        found: dict[bytes, tuple[int, int]] = {}
        while start + 8 <= end:
            size, kind = struct.unpack_from(">I4s", data, start)
            found.setdefault(kind, (start + 8, start + size))
            start += size
        return found

    trak = boxes(*boxes(*boxes(0, len(data))[b"moov"])[b"trak"])
    elst_at = boxes(*trak[b"edts"])[b"elst"][0]
    mdhd_at = boxes(*trak[b"mdia"])[b"mdhd"][0]
    assert data[elst_at] == 0 and data[mdhd_at] == 0, "version 0 boxes"
    media_start = struct.unpack_from(">i", data, elst_at + 12)[0]
    timescale, duration = struct.unpack_from(">II", data, mdhd_at + 12)
    assert timescale == 48_000
    return int(duration - media_start)


def saturated_sum(tracks: list[bytearray]) -> bytes:
    total = sum(np.frombuffer(bytes(t), dtype="<i2").astype(np.int64) for t in tracks)
    return np.clip(total, -32768, 32767).astype("<i2").tobytes()


def fake_ffmpeg(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_flac_tracks_are_lossless_aligned_and_of_equal_length(tmp_path: Path) -> None:
    sink = FFmpegSink(tmp_path, "flac")
    expected = play(sink)
    sink.cleanup()
    assert {key: path.name for key, path in sink.files.items()} == {
        11: "11.flac",
        22: "22.flac",
        f"ssrc:{UNKNOWN_SSRC}": f"unknown-{UNKNOWN_SSRC}.flac",
    }
    for key, path in sink.files.items():
        uid = key if isinstance(key, int) else None
        assert decode(path) == bytes(expected[uid]), path.name
    assert sink.mix_path == tmp_path / "mix.flac"
    assert decode(sink.mix_path) == saturated_sum(list(expected.values()))
    assert sink.overflow == 0 and sink.dropped == 0


def test_mp3_keeps_length_and_alignment(tmp_path: Path) -> None:
    sink = FFmpegSink(tmp_path, "mp3", mix=False)
    t = np.arange(TOTAL * FRAME_SAMPLES) / 48_000
    tone = np.repeat((8000 * np.sin(2 * np.pi * 440 * t) * (t > 0.2)).astype("<i2"), 2).tobytes()
    for tick in range(TOTAL):
        sink.write(ANN, frame(tick, 11, tone[tick * FRAME_BYTES : (tick + 1) * FRAME_BYTES]))
        sink.advance(tick)
    sink.cleanup()
    assert sink.mix_path is None
    decoded = decode(sink.files[11])
    # ffmpeg writes LAME's encoder delay and padding into the Xing/LAME header and its decoder trims them.
    assert len(decoded) == len(tone)
    a = np.frombuffer(decoded, dtype="<i2").astype(float)
    b = np.frombuffer(tone, dtype="<i2").astype(float)
    assert float(a @ b / np.sqrt((a @ a) * (b @ b))) >= 0.99


def test_mix_only_and_per_user_only(tmp_path: Path) -> None:
    mix_only = FFmpegSink(tmp_path / "mix", "flac", per_user=False)
    expected = play(mix_only)
    mix_only.cleanup()
    assert dict(mix_only.files) == {}
    assert mix_only.mix_path is not None
    assert decode(mix_only.mix_path) == saturated_sum(list(expected.values()))
    users_only = FFmpegSink(tmp_path / "users", "flac", mix=False, naming=lambda user, uid: f"speaker {uid}")
    play(users_only)
    users_only.cleanup()
    assert sorted(p.name for p in (tmp_path / "users").iterdir()) == [
        "speaker_11.flac",
        "speaker_22.flac",
        "speaker_None.flac",
    ]
    with pytest.raises(ValueError):
        FFmpegSink(tmp_path, "flac", per_user=False, mix=False)
    with pytest.raises(ValueError):
        FFmpegSink(tmp_path, "../flac")


def test_open_slot_and_late_frames_at_cleanup(tmp_path: Path) -> None:
    sink = FFmpegSink(tmp_path, "flac")
    sink.write(ANN, frame(0, 11, noise(1, 0)))
    sink.advance(0)
    sink.write(BOB, frame(1, 22, noise(2, 1)))
    sink.write(ANN, frame(0, 11, noise(1, 0)))  # late
    sink.cleanup()
    sink.write(ANN, frame(2, 11, noise(1, 2)))  # after cleanup
    assert sink.dropped == 2
    lengths = {len(decode(p)) for p in [*sink.files.values(), sink.mix_path] if p is not None}
    assert lengths == {2 * FRAME_BYTES}


def test_audio_is_streamed_while_recording(tmp_path: Path) -> None:
    sink = FFmpegSink(tmp_path, "flac", per_user=False)
    for tick in range(150):
        sink.write(ANN, frame(tick, 11, noise(1, tick)))
        sink.advance(tick)
    path = sink.mix_path
    assert path is not None

    def size() -> int:
        return path.stat().st_size if path.exists() else 0

    deadline = time.monotonic() + 5
    while size() < 100_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert size() >= 100_000, "ffmpeg should have encoded most of 3 s before the end"
    sink.cleanup()


@pytest.mark.skipif(sys.platform == "win32", reason="fake ffmpeg is a shell script")
def test_ffmpeg_exiting_early_is_reported_with_its_stderr(tmp_path: Path) -> None:
    tool = fake_ffmpeg(tmp_path / "ffmpeg", "echo 'Unknown encoder libnothing' >&2\nexit 1")
    sink = FFmpegSink(tmp_path / "out", "flac", ffmpeg=tool)
    deadline = time.monotonic() + 5
    tick = 0
    with pytest.raises(SinkError, match="Unknown encoder libnothing") as info:
        while time.monotonic() < deadline:
            sink.write(ANN, frame(tick, 11, noise(1, tick)))
            sink.advance(tick)
            tick += 1
            time.sleep(0.005)
    assert "status 1" in str(info.value)
    with pytest.raises(SinkError, match="Unknown encoder libnothing"):
        sink.cleanup()


@pytest.mark.skipif(sys.platform == "win32", reason="fake ffmpeg is a shell script")
def test_a_stalled_ffmpeg_never_blocks_the_sink(tmp_path: Path) -> None:
    tool = fake_ffmpeg(tmp_path / "ffmpeg", f"exec sleep {STALL}")  # never reads its stdin
    sink = FFmpegSink(tmp_path / "out", "flac", ffmpeg=tool, buffer_seconds=0.2, finish_timeout=0.5)
    started = time.monotonic()
    for tick in range(500):  # 10 s of audio: far more than the pipe and the buffer hold
        sink.write(ANN, frame(tick, 11, noise(1, tick % 7)))
        sink.advance(tick)
    # A sink that waited for the stalled ffmpeg would take the whole stall; how fast each call returns is a timing
    # claim (the next test, in the timing tier).
    assert time.monotonic() - started < STALL / 2
    assert sink.overflow > 0
    started = time.monotonic()
    with pytest.raises(SinkError, match="did not finish"):
        sink.cleanup()
    assert time.monotonic() - started < STALL / 2


@pytest.mark.timing
@pytest.mark.skipif(sys.platform == "win32", reason="fake ffmpeg is a shell script")
def test_every_sink_call_returns_within_100_ms_while_ffmpeg_stalls(tmp_path: Path) -> None:
    tool = fake_ffmpeg(tmp_path / "ffmpeg", f"exec sleep {STALL}")
    sink = FFmpegSink(tmp_path / "out", "flac", ffmpeg=tool, buffer_seconds=0.2, finish_timeout=0.5)
    slowest = 0.0
    for tick in range(500):
        started = time.perf_counter()
        sink.write(ANN, frame(tick, 11, noise(1, tick % 7)))
        sink.advance(tick)
        slowest = max(slowest, time.perf_counter() - started)
    with pytest.raises(SinkError, match="did not finish"):
        sink.cleanup()
    assert slowest < 0.1, f"a sink call took {slowest * 1000:.0f} ms"


def test_mixed_track_of_chosen_speakers_through_mix_sink(tmp_path: Path) -> None:
    target = FFmpegSink(tmp_path, "flac", mix=False)
    sink = MixSink(target, include=lambda user, ident: ident != 22)
    expected = play(sink)
    sink.cleanup()
    assert {key: path.name for key, path in target.files.items()} == {f"ssrc:{MIX_SSRC}": "mix.flac"}
    assert decode(target.files[f"ssrc:{MIX_SSRC}"]) == saturated_sum([expected[11], expected[None]])


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_files_are_finished_even_when_the_bot_process_is_killed(tmp_path: Path) -> None:
    script = f"""
import os, signal, time
from discord_voicerecv.frames import VoiceFrame
from discord_voicerecv.sinks import FFmpegSink
sink = FFmpegSink({str(tmp_path)!r}, "m4a", per_user=False)
for tick in range(50):
    sink.write(None, VoiceFrame(5, 5, tick, bytes(range(256)) * 15, None, tick, tick * 960))
    sink.advance(tick)
pipes = [track.pipe for track in sink._all_tracks()]
while any(pipe._items or pipe._queued for pipe in pipes):  # the writer thread took every batch (slow when loaded)
    time.sleep(0.01)
time.sleep(0.2)  # and wrote the last one into the pipe
os.kill(os.getpid(), signal.SIGKILL)
"""
    process = subprocess.run([sys.executable, "-c", script], timeout=20)
    assert process.returncode == -9
    path = tmp_path / "mix.m4a"
    deadline = time.monotonic() + 30
    length = -1
    while time.monotonic() < deadline:  # the orphaned ffmpeg finishes the file once it sees the end of its input
        try:
            length = len(decode(path))
            break
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    # The file says it holds exactly the 50 frames (decoders that honour its edit list play exactly that: ffmpeg 6
    # and later); ffmpeg 5.1 and older also play part of the encoder's last padding frame.
    assert m4a_samples(path) == 50 * FRAME_SAMPLES
    assert 50 * FRAME_BYTES <= length < 50 * FRAME_BYTES + AAC_FRAME_SAMPLES * 4
