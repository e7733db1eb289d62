from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from discord_voicerecv.testing.analysis import (
    Alignment,
    active_regions,
    best_alignment,
    normalized_xcorr,
    pcm_to_array,
    read_wav,
    rms_dbfs,
)
from discord_voicerecv.testing.clips import load_clip

RATE = 48_000


def noise(seconds: float, seed: int, level: float = 8000) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, level, round(seconds * RATE)), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("lag", [0, 1, 12_345, 47_999])
def test_known_lag_is_recovered_exactly(lag: int) -> None:
    reference = noise(0.5, seed=1)
    recorded = np.zeros(RATE + reference.size, dtype=np.int16)
    recorded[lag : lag + reference.size] = reference // 3
    recorded += noise(recorded.size / RATE, seed=2, level=300)
    score, found = normalized_xcorr(recorded, reference)
    assert found == lag
    assert score > 0.95


def test_embedded_among_other_sound_and_in_stereo() -> None:
    reference = load_clip("en_gb_female")
    other = load_clip("de_male")
    recorded = other[: 4 * 30_000] + reference + other
    score, lag = normalized_xcorr(recorded, reference)
    assert lag == 30_000
    assert score == pytest.approx(1.0)


def test_unrelated_noise_scores_low() -> None:
    score, _ = normalized_xcorr(noise(2, seed=3), noise(0.5, seed=4))
    assert score < 0.1
    assert normalized_xcorr(np.zeros(RATE, dtype=np.int16), noise(0.1, seed=5))[0] < 0.01
    assert normalized_xcorr(noise(1, seed=6), np.zeros(100, dtype=np.int16)) == (0.0, 0)
    with pytest.raises(ValueError):
        normalized_xcorr(noise(1, seed=6), b"")


def test_shorter_recording_is_padded() -> None:
    reference = noise(0.2, seed=7)
    score, lag = normalized_xcorr(reference[:5000], reference)
    assert lag == 0 and 0.3 < score < 1.0


def test_best_alignment_picks_the_clip_and_place() -> None:
    recorded = bytes(4 * 7_000) + load_clip("fr_female") + bytes(4 * 100)
    found = best_alignment(recorded)
    assert isinstance(found, Alignment)
    assert (found.name, found.lag) == ("fr_female", 7_000)
    assert found.score == pytest.approx(1.0)
    custom = best_alignment(noise(1, seed=8), {"a": noise(0.1, seed=9), "b": noise(1, seed=8)[100:2000]})
    assert (custom.name, custom.lag) == ("b", 100)
    with pytest.raises(ValueError):
        best_alignment(b"", {})


def test_rms_dbfs() -> None:
    square = np.tile(np.array([32767, -32768], dtype=np.int16), 500)
    assert rms_dbfs(square) == pytest.approx(0.0, abs=0.001)
    assert rms_dbfs((square // 10).astype(np.int16)) == pytest.approx(-20.0, abs=0.01)
    assert rms_dbfs(np.zeros(10, dtype=np.int16)) == float("-inf")
    assert rms_dbfs(b"") == float("-inf")


def test_active_regions_find_bursts_and_bridge_short_gaps() -> None:
    signal = np.zeros(3 * RATE, dtype=np.int16)
    burst = noise(0.2, seed=10)
    for start in (0.5, 0.76, 2.0):  # 0.7..0.76 is a 60 ms gap, bridged; 0.96..2.0 is not
        i = round(start * RATE)
        signal[i : i + burst.size] = burst
    regions = active_regions(signal, RATE, threshold_dbfs=-40)
    assert [t for region in regions for t in region] == pytest.approx([0.5, 0.96, 2.0, 2.2])
    assert list(active_regions(signal, RATE, min_gap_ms=20)[0]) == pytest.approx([0.5, 0.7])
    assert active_regions(np.zeros(0, dtype=np.int16)) == []


def test_read_wav_and_pcm_to_array(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    frames = np.array([[1, -1], [2, -2], [3, -3]], dtype="<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(frames.tobytes())
    rate, channels, samples = read_wav(path)
    assert (rate, channels) == (RATE, 2)
    assert samples.dtype == np.int16 and (samples == frames).all()
    assert (pcm_to_array(frames.tobytes() + b"\x07") == frames).all()
    assert pcm_to_array(frames.tobytes(), channels=1).shape == (6, 1)
