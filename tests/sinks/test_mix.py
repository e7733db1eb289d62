from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voicerecv.frames import FRAME_BYTES
from discord_voicerecv.sinks._mix import mix_pcm

EXTREMES = st.sampled_from([-32768, -32767, -1, 0, 1, 32766, 32767])
SAMPLE = st.one_of(EXTREMES, st.integers(-32768, 32767))


def reference_mix(frames: list[bytes]) -> bytes:
    total = sum(np.frombuffer(f, dtype="<i2").astype(np.int64) for f in frames)
    return np.clip(total, -32768, 32767).astype("<i2").tobytes()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.lists(st.lists(SAMPLE, min_size=8, max_size=8), min_size=n, max_size=n)))
def test_matches_a_saturating_sum(samples: list[list[int]]) -> None:
    frames = [np.array(s, dtype="<i2").tobytes() for s in samples]
    assert mix_pcm(frames, 16) == reference_mix(frames)


def test_full_frames_of_random_and_extreme_speakers() -> None:
    rng = np.random.default_rng(3)
    for count in (2, 3, 5, 40):
        frames = [rng.integers(-32768, 32768, FRAME_BYTES // 2, dtype=np.int16).astype("<i2").tobytes()]
        frames += [np.full(FRAME_BYTES // 2, v, dtype="<i2").tobytes() for v in (32767, -32768)] * (count // 2)
        frames = frames[:count]
        assert mix_pcm(frames, FRAME_BYTES) == reference_mix(frames)


def test_nothing_and_one_speaker() -> None:
    assert mix_pcm([], FRAME_BYTES) == bytes(FRAME_BYTES)
    one = bytes(range(256)) * 15
    assert mix_pcm([one], FRAME_BYTES) == one


def test_too_many_frames_is_refused() -> None:
    with pytest.raises(ValueError):
        mix_pcm([bytes(4)] * 40_000, 4)
