from __future__ import annotations

import itertools
import math
from importlib import resources

import numpy as np
import pytest

from discord_voicerecv.frames import FRAME_BYTES, SAMPLE_RATE
from discord_voicerecv.testing.analysis import normalized_xcorr, pcm_to_array, rms_dbfs
from discord_voicerecv.testing.clips import clip_frames, list_clips, load_clip, tone

CLIPS = list_clips()


def test_the_package_ships_a_few_small_clips() -> None:
    assert CLIPS == ["de_male", "en_gb_female", "en_us_male", "fr_female"]
    folder = resources.files("discord_voicerecv.testing") / "clips"
    total = sum(len((folder / f"{name}.wav").read_bytes()) for name in CLIPS)
    assert total < 1_500_000


@pytest.mark.parametrize("name", CLIPS)
def test_clips_are_short_loud_stereo_speech(name: str) -> None:
    pcm = load_clip(name)
    samples = pcm_to_array(pcm)
    assert 3.0 <= len(samples) / SAMPLE_RATE <= 5.0
    assert (samples[:, 0] == samples[:, 1]).all(), "mono duplicated to both channels"
    peak_dbfs = 20 * math.log10(int(np.abs(samples.astype(np.int32)).max()) / 32768)
    assert -3.5 < peak_dbfs < -2.5
    assert rms_dbfs(pcm) > -30
    # Trimmed: speech starts and ends within a quarter second.
    loud = np.flatnonzero(np.abs(samples[:, 0].astype(np.int32)) > 1000)
    assert loud[0] < SAMPLE_RATE // 4 and len(samples) - loud[-1] < SAMPLE_RATE // 4


def test_clips_are_different_sentences() -> None:
    for a, b in itertools.combinations(CLIPS, 2):
        score, _ = normalized_xcorr(load_clip(a), load_clip(b))
        assert score < 0.3, (a, b)


def test_frames_cover_the_clip_and_pad_the_last_one() -> None:
    pcm = load_clip("fr_female")
    frames = list(clip_frames("fr_female"))
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert len(frames) == -(-len(pcm) // FRAME_BYTES)
    joined = b"".join(frames)
    assert joined[: len(pcm)] == pcm and not any(joined[len(pcm) :])


def test_looping_repeats_the_clip_frame_aligned() -> None:
    once = list(clip_frames("en_us_male"))
    looped = list(itertools.islice(clip_frames("en_us_male", loop=True), 2 * len(once) + 3))
    assert looped == once + once + once[:3]


def test_unknown_names_are_refused() -> None:
    with pytest.raises(KeyError, match="en_us_male"):
        load_clip("../clips/en_us_male")


def test_tone_has_the_asked_frequency_length_and_level() -> None:
    pcm = tone(1000, 0.5, amplitude=0.25)
    samples = pcm_to_array(pcm)
    assert samples.shape == (SAMPLE_RATE // 2, 2)
    spectrum = np.abs(np.fft.rfft(samples[:, 0].astype(np.float64)))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(samples) == pytest.approx(1000)
    assert int(np.abs(samples).max()) == round(0.25 * 32767)
    assert rms_dbfs(pcm) == pytest.approx(20 * math.log10(0.25 / math.sqrt(2)), abs=0.05)
