"""Compare recordings with what was played: alignment, loudness and speech activity.

Used by the end-to-end tests, and handy for checking a bot's recordings. These helpers need numpy (a test-time
dependency, not a runtime one); it is imported when a function is called.

Signals are accepted as numpy arrays, 1-D (mono) or 2-D ``(frames, channels)``, or as ``bytes`` of interleaved
48 kHz stereo s16le PCM, the format the rest of the library uses. Multichannel signals are averaged to mono.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from ..frames import CHANNELS, SAMPLE_RATE

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = (
    "Alignment",
    "active_regions",
    "best_alignment",
    "normalized_xcorr",
    "pcm_to_array",
    "read_wav",
    "rms_dbfs",
)

Signal = Union[bytes, "npt.NDArray[Any]"]
_FULL_SCALE = 32768.0
_SILENCE_FLOOR = 1e-6
"""Windows quieter than this fraction of the reference's energy (-60 dB) score near zero instead of matching."""


class Alignment(NamedTuple):
    """Where a reference sits in a recording and how well it matches."""

    name: str
    score: float
    """Normalised cross-correlation at the best lag, up to 1.0 for an exact (possibly scaled) copy."""
    lag: int
    """Index of the recording's sample where the reference starts."""


def read_wav(path: str | os.PathLike[str]) -> tuple[int, int, npt.NDArray[np.int16]]:
    """Read a 16-bit PCM WAV file: ``(rate, channels, samples)`` with samples shaped ``(frames, channels)``."""
    import numpy as np

    with wave.open(os.fspath(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{os.fspath(path)}: only 16-bit PCM is supported")
        rate, channels = wav.getframerate(), wav.getnchannels()
        data = wav.readframes(wav.getnframes())
    return rate, channels, np.frombuffer(data, dtype="<i2").astype(np.int16).reshape(-1, channels)


def pcm_to_array(pcm: bytes, channels: int = CHANNELS) -> npt.NDArray[np.int16]:
    """Interleaved s16le PCM as an int16 array shaped ``(frames, channels)``."""
    import numpy as np

    usable = len(pcm) - len(pcm) % (2 * channels)
    return np.frombuffer(pcm[:usable], dtype="<i2").astype(np.int16).reshape(-1, channels)


def normalized_xcorr(recorded: Signal, reference: Signal) -> tuple[float, int]:
    """Find ``reference`` inside ``recorded``: ``(peak, lag)``.

    ``peak`` is the normalised cross-correlation (cosine similarity of the reference and the stretch of the
    recording it is compared with) at its maximum: 1.0 for an exact copy at any gain, near 0 for unrelated sound.
    ``lag`` is the sample index in ``recorded`` where the reference starts. Each window of the recording is
    normalised by its own energy, so silence or other speech around the reference does not lower the score.
    Computed with FFTs on mono downmixes; a recording shorter than the reference is padded with silence.
    """
    import numpy as np

    rec = _mono(recorded)
    ref = _mono(reference)
    m = ref.size
    if m == 0:
        raise ValueError("the reference is empty")
    if rec.size < m:
        rec = np.concatenate([rec, np.zeros(m - rec.size)])
    n = rec.size
    size = 1 << (n + m - 1).bit_length()
    spectrum = np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size))
    products = np.fft.irfft(spectrum, size)[: n - m + 1]
    ref_energy = float(np.dot(ref, ref))
    if ref_energy == 0.0:
        return 0.0, 0
    cumulative = np.concatenate([[0.0], np.cumsum(rec * rec)])
    window_energy = np.maximum(cumulative[m:] - cumulative[: n - m + 1], _SILENCE_FLOOR * ref_energy)
    scores = products / np.sqrt(window_energy * ref_energy)
    lag = int(np.argmax(scores))
    return float(scores[lag]), lag


def best_alignment(recorded: Signal, references: Mapping[str, Signal] | None = None) -> Alignment:
    """The reference that matches ``recorded`` best, with its score and lag (see :func:`normalized_xcorr`).

    ``references`` maps names to signals; by default the shipped speech clips
    (:func:`discord_voicerecv.testing.clips.list_clips`).
    """
    if references is None:
        from .clips import list_clips, load_clip

        references = {name: load_clip(name) for name in list_clips()}
    if not references:
        raise ValueError("no references to align with")
    best: Alignment | None = None
    for name, reference in references.items():
        score, lag = normalized_xcorr(recorded, reference)
        if best is None or score > best.score:
            best = Alignment(name, score, lag)
    assert best is not None
    return best


def rms_dbfs(samples: Signal) -> float:
    """Root-mean-square level in dB relative to full scale (a full-scale square wave is 0 dBFS; silence is -inf)."""
    import numpy as np

    values = _as_array(samples).astype(np.float64)
    if values.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(values * values)))
    return 20.0 * float(np.log10(rms / _FULL_SCALE)) if rms > 0 else float("-inf")


def active_regions(
    samples: Signal,
    rate: int = SAMPLE_RATE,
    *,
    threshold_dbfs: float = -40.0,
    window_ms: float = 20.0,
    min_gap_ms: float = 100.0,
) -> list[tuple[float, float]]:
    """Stretches where the sound is louder than ``threshold_dbfs``, as ``(start, end)`` seconds.

    The signal is measured in windows of ``window_ms``; active windows separated by less than ``min_gap_ms`` of
    quiet form one region. Times are multiples of the window length.
    """
    import numpy as np

    mono = _mono(samples)
    window = max(1, round(rate * window_ms / 1000))
    count = -(-mono.size // window)
    if count == 0:
        return []
    padded = np.zeros(count * window)
    padded[: mono.size] = mono
    power = np.mean(padded.reshape(count, window) ** 2, axis=1)
    active = power > (_FULL_SCALE * 10 ** (threshold_dbfs / 20)) ** 2
    max_gap = round(min_gap_ms / window_ms)
    regions: list[tuple[int, int]] = []
    for index in np.flatnonzero(active).tolist():
        if regions and index - regions[-1][1] < max_gap:
            regions[-1] = (regions[-1][0], index + 1)
        else:
            regions.append((index, index + 1))
    seconds = window / rate
    return [(start * seconds, end * seconds) for start, end in regions]


def _as_array(samples: Signal) -> npt.NDArray[Any]:
    import numpy as np

    if isinstance(samples, (bytes, bytearray, memoryview)):
        return pcm_to_array(bytes(samples))
    return np.asarray(samples)


def _mono(samples: Signal) -> npt.NDArray[np.float64]:
    import numpy as np

    values = _as_array(samples).astype(np.float64)
    if values.ndim == 2:
        return np.asarray(values.mean(axis=1), dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D or 2-D signal, got shape {values.shape}")
    return values
