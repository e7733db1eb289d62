"""The mix limiter: loud overlapping speakers are turned down, never clipped; quiet ones are the exact sum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, VoiceFrame
from discord_voicerecv.sinks import MixSink, WaveSink
from discord_voicerecv.sinks._mix import LIMIT, RELEASE_DB_PER_SLOT, Limiter, mix_pcm, sum_peak
from discord_voicerecv.sinks.base import AudioSink, SinkUser
from discord_voicerecv.testing.analysis import read_wav

PEAK_MINUS_3_DBFS = round(32767 * 10 ** (-3 / 20))


def voice(freq: float, slots: int, peak: int = PEAK_MINUS_3_DBFS) -> list[bytes]:
    """A stereo tone peaking at ``peak``, cut into 20 ms frames."""
    t = np.arange(slots * FRAME_SAMPLES) / 48_000
    mono = np.round(peak * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    stereo = np.repeat(mono, 2).astype("<i2").tobytes()
    return [stereo[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(slots)]


def samples(pcm: bytes) -> npt.NDArray[np.int64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int64)


def test_sum_peak_is_the_unclipped_peak() -> None:
    frames = [f[0] for f in (voice(220, 1), voice(330, 1), voice(440, 1))]
    exact = np.abs(sum(samples(f) for f in frames)).max()
    assert sum_peak(frames, FRAME_BYTES) == exact > 32767


def test_three_loud_overlapping_voices_do_not_clip_and_keep_their_shape() -> None:
    slots = 50
    tracks = [voice(f, slots) for f in (220.0, 277.0, 330.0)]
    limiter = Limiter()
    mixed = b"".join(limiter.mix([t[i] for t in tracks], FRAME_BYTES) for i in range(slots))
    saturated = b"".join(mix_pcm([t[i] for t in tracks], FRAME_BYTES) for i in range(slots))
    out, exact = samples(mixed), sum(samples(b"".join(t)) for t in tracks)
    assert np.count_nonzero(np.abs(samples(saturated)) >= 32767) > 100  # what the old mix did
    assert np.abs(out).max() <= LIMIT + 2  # the rounding of three scaled samples at most
    assert np.count_nonzero(np.abs(out) >= 32767) == 0
    correlation = float(np.corrcoef(out, exact)[0, 1])
    assert correlation > 0.99
    assert limiter.limited == slots


def test_quiet_slots_are_the_exact_sum_and_the_gain_recovers() -> None:
    quiet = [voice(f, 1, peak=6000)[0] for f in (220.0, 330.0)]
    limiter = Limiter()
    assert limiter.mix(quiet, FRAME_BYTES) == mix_pcm(quiet, FRAME_BYTES)
    loud = [voice(f, 1)[0] for f in (220.0, 277.0, 330.0)]
    limiter.mix(loud, FRAME_BYTES)
    turned_down = limiter.gain
    assert turned_down < 0.5
    recovered = 1 + int(np.ceil(-20 * np.log10(turned_down) / RELEASE_DB_PER_SLOT))
    for _ in range(recovered):
        limiter.mix(quiet, FRAME_BYTES)
    assert limiter.gain == 1.0
    assert limiter.mix(quiet, FRAME_BYTES) == mix_pcm(quiet, FRAME_BYTES)
    assert limiter.mix([loud[0]], FRAME_BYTES) == loud[0]  # one speaker alone is never touched


class _Collect(AudioSink):
    def __init__(self) -> None:
        self.pcm = bytearray()

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.pcm += frame.pcm


def _frames(slots: int) -> list[list[VoiceFrame]]:
    tracks = [voice(f, slots) for f in (220.0, 277.0, 330.0)]
    return [
        [VoiceFrame(ssrc=n + 1, user_id=n + 1, tick=i, pcm=t[i], opus=None, sequence=i, rtp_timestamp=i * 960)
         for n, t in enumerate(tracks)]
        for i in range(slots)
    ]  # fmt: skip


def test_mix_sink_and_wave_sink_mixes_do_not_clip(tmp_path: Path) -> None:
    target = _Collect()
    mix = MixSink(target)
    wave = WaveSink(tmp_path)
    for tick, slot in enumerate(_frames(20)):
        for frame in slot:
            mix.write(None, frame)
            wave.write(None, frame)
        mix.advance(tick)
        wave.advance(tick)
    mix.cleanup()
    wave.cleanup()
    assert len(target.pcm) == 20 * FRAME_BYTES
    assert np.abs(samples(bytes(target.pcm))).max() <= LIMIT + 2
    _, _, wav = read_wav(tmp_path / "mix.wav")
    assert len(wav) == 20 * FRAME_SAMPLES
    assert np.abs(wav.astype(np.int64)).max() <= LIMIT + 2
