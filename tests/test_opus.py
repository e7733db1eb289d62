"""Tests for the ctypes libopus bindings: round trips, concealment, FEC, errors and library discovery."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import pytest

from discord_voicerecv import opus
from discord_voicerecv.errors import OpusError, OpusNotAvailable
from discord_voicerecv.frames import FRAME_BYTES


def _sine(freq: float, frames: int, amplitude: int = 8000) -> Iterator[bytes]:
    """Consecutive 20 ms stereo s16le frames of a continuous sine."""
    n = 0
    for _ in range(frames):
        t = (np.arange(n, n + 960) / 48000.0).astype(np.float64)
        mono = (amplitude * np.sin(2 * math.pi * freq * t)).astype("<i2")
        yield np.repeat(mono, 2).tobytes()
        n += 960


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").reshape(-1, 2)


def _dominant_freq(pcm: bytes) -> float:
    left = _pcm(pcm)[:, 0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(left * np.hanning(len(left))))
    return float(np.fft.rfftfreq(len(left), 1 / 48000)[int(np.argmax(spectrum))])


def test_libopus_path_prefers_the_bundled_library() -> None:
    path = opus.libopus_path()
    assert os.path.isfile(path)
    assert "opuslib_next" in path


def test_env_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(opus.LIBOPUS_ENV, "/nowhere/libopus-custom.so")
    assert opus.libopus_path() == "/nowhere/libopus-custom.so"


def test_missing_library_raises_opus_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(opus.LIBOPUS_ENV, raising=False)
    monkeypatch.setattr(opus, "_bundled_path", lambda: None)
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    with pytest.raises(OpusNotAvailable, match="opuslib-next-bundled"):
        opus.libopus_path()


def test_round_trip_keeps_the_tone() -> None:
    encoder = opus.OpusEncoder()
    decoder = opus.OpusDecoder()
    outputs = [decoder.decode(encoder.encode(frame)) for frame in _sine(440.0, 10)]
    assert all(len(out) == FRAME_BYTES for out in outputs)
    last = b"".join(outputs[-4:])
    assert abs(_dominant_freq(last) - 440.0) < 15
    assert np.abs(_pcm(last)).max() > 3000


def test_packet_samples_reports_frame_duration() -> None:
    encoder = opus.OpusEncoder()
    packet = encoder.encode(next(_sine(300.0, 1)))
    assert opus.packet_samples(packet) == 960
    assert opus.packet_samples(b"\xf8\xff\xfe") == 960
    with pytest.raises(OpusError):
        opus.packet_samples(b"")


def test_longer_frames_decode_to_their_own_duration() -> None:
    encoder = opus.OpusEncoder()
    pcm = b"".join(_sine(500.0, 2))
    packet = encoder.encode(pcm, frame_samples=1920)
    assert opus.packet_samples(packet) == 1920
    assert len(opus.OpusDecoder().decode(packet)) == 2 * FRAME_BYTES


def test_plc_and_fec_produce_one_frame() -> None:
    encoder = opus.OpusEncoder(fec=True, expected_loss_pct=30)
    decoder = opus.OpusDecoder()
    packets = [encoder.encode(frame) for frame in _sine(440.0, 12)]
    for packet in packets[:9]:
        decoder.decode(packet)
    concealed = decoder.decode(None)
    recovered = decoder.decode(packets[10], fec=True)
    assert len(concealed) == len(recovered) == FRAME_BYTES
    assert np.abs(_pcm(recovered)).max() > 500
    assert len(decoder.decode(None, frame_samples=480)) == FRAME_BYTES // 2


def test_fec_recovers_the_lost_frame_closer_than_silence() -> None:
    frames = list(_sine(440.0, 30))
    encoder = opus.OpusEncoder(fec=True, expected_loss_pct=30)
    packets = [encoder.encode(frame) for frame in frames]
    reference = opus.OpusDecoder()
    clean = [reference.decode(p) for p in packets]
    decoder = opus.OpusDecoder()
    for packet in packets[:20]:
        decoder.decode(packet)
    recovered = _pcm(decoder.decode(packets[21], fec=True)).astype(np.float64)
    target = _pcm(clean[20]).astype(np.float64)
    assert np.sqrt(np.mean((recovered - target) ** 2)) < 0.5 * np.sqrt(np.mean(target**2))


def test_silence_frame_decodes_to_silence() -> None:
    out = opus.OpusDecoder().decode(b"\xf8\xff\xfe")
    assert out == bytes(FRAME_BYTES)


def test_corrupt_packet_raises_opus_error() -> None:
    with pytest.raises(OpusError) as info:
        opus.OpusDecoder().decode(b"\xff\xff\xff\xff")
    assert info.value.code < 0


def test_encoder_rejects_wrong_sizes_and_applications() -> None:
    encoder = opus.OpusEncoder()
    with pytest.raises(ValueError, match="3840"):
        encoder.encode(b"\x00" * 100)
    with pytest.raises(ValueError, match="application"):
        opus.OpusEncoder(application="karaoke")
    packet = opus.OpusEncoder(application="voip", bitrate=24000).encode(bytes(FRAME_BYTES))
    assert 1 <= len(packet) < 100


def test_decoders_are_independent() -> None:
    packets = [opus.OpusEncoder().encode(f) for f in _sine(440.0, 5)]
    a, b = opus.OpusDecoder(), opus.OpusDecoder()
    outs_a = [a.decode(p) for p in packets]
    b.reset()
    outs_b = [b.decode(p) for p in packets]
    assert outs_a == outs_b


def test_ensure_discord_opus_loads_discord_py() -> None:
    import discord.opus

    opus.ensure_discord_opus()
    assert discord.opus.is_loaded()
    encoder = discord.opus.Encoder()
    assert encoder.encode(bytes(FRAME_BYTES), 960)


def test_version_string() -> None:
    assert "libopus" in opus.version()
