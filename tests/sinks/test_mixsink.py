from __future__ import annotations

import wave
from pathlib import Path

import discord
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, SILENT_PCM, VoiceFrame
from discord_voicerecv.sinks import AudioSink, MixSink, SinkUser, WaveSink
from discord_voicerecv.sinks._mix import LIMIT
from discord_voicerecv.sinks.mix import MAX_GAIN, MIX_SSRC, scale_pcm

ANN = discord.Object(id=11)
BOB = discord.Object(id=22)


def pcm(value: int) -> bytes:
    return np.full(FRAME_SAMPLES * 2, value, dtype="<i2").tobytes()


def frame(tick: int, user_id: int | None, value: int, ssrc: int = 0) -> VoiceFrame:
    return VoiceFrame(ssrc or (user_id or 999), user_id, tick, pcm(value), None, tick, tick * FRAME_SAMPLES)


class Recorder(AudioSink):
    def __init__(self) -> None:
        self.frames: list[tuple[SinkUser, VoiceFrame]] = []
        self.advanced: list[int] = []
        self.cleaned = 0

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.frames.append((user, frame))

    def advance(self, tick: int) -> None:
        self.advanced.append(tick)

    def cleanup(self) -> None:
        self.cleaned += 1

    def values(self) -> list[int]:
        out = []
        for _, f in self.frames:
            samples = np.frombuffer(f.pcm, dtype="<i2")
            assert (samples == samples[0]).all()
            out.append(int(samples[0]))
        return out


def test_one_frame_per_slot_with_silence_where_nobody_speaks() -> None:
    target = Recorder()
    sink = MixSink(target)
    script = {0: [(ANN, 11, 100)], 1: [], 2: [(ANN, 11, 100), (BOB, 22, -300)], 3: [(BOB, 22, 5)]}
    for tick, speakers in script.items():
        for user, uid, value in speakers:
            sink.write(user, frame(tick, uid, value))
        sink.advance(tick)
    sink.cleanup()
    assert target.values() == [100, 0, -200, 5]
    assert [f.tick for _, f in target.frames] == target.advanced == [0, 1, 2, 3]
    assert all(user is None and f.user_id is None and f.ssrc == MIX_SSRC for user, f in target.frames)
    assert all(len(f.pcm) == FRAME_BYTES for _, f in target.frames)
    assert target.cleaned == 1


def test_a_sum_beyond_int16_is_turned_down_to_the_limit_not_clipped() -> None:
    target = Recorder()
    sink = MixSink(target)
    sink.write(ANN, frame(0, 11, 30_000))
    sink.write(BOB, frame(0, 22, 30_000))
    sink.advance(0)
    sink.write(ANN, frame(1, 11, -30_000))
    sink.write(BOB, frame(1, 22, -30_000))
    sink.advance(1)
    high, low = target.values()
    assert LIMIT * 0.98 < high <= LIMIT and -LIMIT <= low < -LIMIT * 0.98


def test_skipped_slots_are_silence_and_late_or_duplicate_frames_are_dropped() -> None:
    target = Recorder()
    sink = MixSink(target)
    sink.write(ANN, frame(0, 11, 7))
    sink.write(ANN, frame(0, 11, 7))  # duplicate
    sink.write(BOB, frame(3, 22, 9))  # skips 1 and 2 without advance
    sink.write(ANN, frame(1, 11, 1))  # late
    sink.advance(3)
    sink.advance(2)  # already done
    assert target.values() == [7, 0, 0, 9]
    assert target.advanced == [0, 1, 2, 3]
    assert sink.dropped == 2


def test_open_slot_is_mixed_at_cleanup_and_nothing_after() -> None:
    target = Recorder()
    sink = MixSink(target)
    sink.write(ANN, frame(0, 11, 1))
    sink.advance(0)
    sink.write(ANN, frame(1, 11, 2))
    sink.cleanup()
    sink.cleanup()
    sink.write(ANN, frame(2, 11, 3))
    sink.advance(2)
    assert target.values() == [1, 2]
    assert target.cleaned == 1


def test_include_filters_speakers_by_user_and_ident() -> None:
    target = Recorder()
    seen: list[tuple[SinkUser, int]] = []

    def include(user: SinkUser, ident: int) -> bool:
        seen.append((user, ident))
        return ident != 22

    sink = MixSink(target, include=include)
    sink.write(ANN, frame(0, 11, 10))
    sink.write(BOB, frame(0, 22, 1000))
    sink.write(None, frame(0, None, 3, ssrc=4242))
    sink.advance(0)
    assert target.values() == [13]
    assert seen == [(ANN, 11), (BOB, 22), (None, 4242)]


def test_gains_scale_each_user_and_zero_leaves_them_out() -> None:
    target = Recorder()
    sink = MixSink(target, gains={11: 0.5, 22: 0.0, 33: 3.0})
    sink.write(ANN, frame(0, 11, 1001))
    sink.write(BOB, frame(0, 22, 5000))
    sink.write(None, frame(0, 33, 100))
    sink.advance(0)
    assert target.values() == [501 + 300]  # 1001 * 0.5 rounds half up
    sink.write(ANN, frame(1, 11, -1001))
    sink.advance(1)
    assert target.values()[1] == -500  # round half up: -500.5 -> -500


@pytest.mark.parametrize("gain", [-0.1, MAX_GAIN + 0.1, float("nan")])
def test_gains_out_of_range_are_refused(gain: float) -> None:
    with pytest.raises(ValueError):
        MixSink(Recorder(), gains={1: gain})
    with pytest.raises(ValueError):
        scale_pcm(SILENT_PCM, gain)


SAMPLE = st.one_of(st.sampled_from([-32768, -32767, -1, 0, 1, 32766, 32767]), st.integers(-32768, 32767))


@settings(max_examples=200, deadline=None)
@given(st.lists(SAMPLE, min_size=8, max_size=8), st.floats(0.0, MAX_GAIN))
def test_scale_matches_a_rounded_saturating_product(samples: list[int], gain: float) -> None:
    data = np.array(samples, dtype="<i2")
    factor = round(gain * 256)
    expected = np.clip(np.floor(data.astype(np.int64) * factor / 256 + 0.5), -32768, 32767).astype("<i2")
    assert scale_pcm(data.tobytes(), gain) == expected.tobytes()


def test_scale_of_a_full_frame_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    data = rng.integers(-32768, 32768, FRAME_SAMPLES * 2).astype("<i2")
    for gain in (0.25, 0.7071, 1.0, 1.5, 4.0):
        factor = round(gain * 256)
        expected = np.clip(np.floor(data.astype(np.int64) * factor / 256 + 0.5), -32768, 32767).astype("<i2")
        assert scale_pcm(data.tobytes(), gain) == expected.tobytes()


def test_target_errors_propagate() -> None:
    class Broken(Recorder):
        def write(self, user: SinkUser, frame: VoiceFrame) -> None:
            raise OSError("disk full")

    sink = MixSink(Broken())
    sink.write(ANN, frame(0, 11, 1))
    with pytest.raises(OSError, match="disk full"):
        sink.advance(0)


def test_mixed_into_a_wave_sink_equals_its_own_mix(tmp_path: Path) -> None:
    reference = WaveSink(tmp_path / "ref", per_user=False)
    mixed = WaveSink(tmp_path / "via", mix=False)
    sink = MixSink(mixed)
    rng = np.random.default_rng(9)
    for tick in range(60):
        for uid in (11, 22, 33):
            if rng.random() < 0.6:
                f = VoiceFrame(uid, uid, tick, rng.integers(-20_000, 20_000, FRAME_SAMPLES * 2).astype("<i2").tobytes(),
                               None, tick, tick * FRAME_SAMPLES)  # fmt: skip
                reference.write(None, f)
                sink.write(None, f)
        reference.advance(tick)
        sink.advance(tick)
    reference.cleanup()
    sink.cleanup()
    assert list(mixed.files) == [f"ssrc:{MIX_SSRC}"]
    ref_path = reference.mix_path
    assert ref_path is not None
    with wave.open(str(ref_path)) as a, wave.open(str(mixed.files[f"ssrc:{MIX_SSRC}"])) as b:
        assert a.getnframes() == b.getnframes() == 60 * FRAME_SAMPLES
        assert a.readframes(a.getnframes()) == b.readframes(b.getnframes())
