"""Short speech clips and tones for simulated speakers, as 48 kHz stereo s16le PCM.

The clips ship with the package (see ``clips/README.md`` for how they were made), so tests need no speech
synthesiser and no network.
"""

from __future__ import annotations

import math
import sys
import wave
from array import array
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from ..frames import CHANNELS, FRAME_BYTES, SAMPLE_RATE

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ("clip_frames", "list_clips", "load_clip", "tone")

_SUFFIX = ".wav"


def _clip_dir() -> Traversable:
    return resources.files(__package__ or "discord_voicerecv.testing") / "clips"


def list_clips() -> list[str]:
    """Names of the shipped clips, sorted (for example ``"en_us_male"``)."""
    return sorted(entry.name[: -len(_SUFFIX)] for entry in _clip_dir().iterdir() if entry.name.endswith(_SUFFIX))


@cache
def load_clip(name: str) -> bytes:
    """The clip ``name`` as 48 kHz stereo s16le PCM (the mono recording on both channels).

    Raises
    ------
    KeyError
        No clip has that name.
    """
    if name not in list_clips():
        raise KeyError(f"no clip named {name!r}; available: {', '.join(list_clips())}")
    with (_clip_dir() / f"{name}{_SUFFIX}").open("rb") as raw, wave.open(raw, "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"clip {name!r} is not 48 kHz mono 16-bit")
        mono = wav.readframes(wav.getnframes())
    return _to_stereo(mono)


def clip_frames(name: str, loop: bool = False) -> Iterator[bytes]:
    """The clip ``name`` cut into 20 ms frames of 3840 bytes, the last one padded with silence.

    With ``loop`` the clip repeats forever (each pass ends on its padded frame, so passes stay frame aligned).
    """
    pcm = load_clip(name)
    while True:
        for start in range(0, len(pcm), FRAME_BYTES):
            frame = pcm[start : start + FRAME_BYTES]
            yield frame if len(frame) == FRAME_BYTES else frame + bytes(FRAME_BYTES - len(frame))
        if not loop:
            return


def tone(freq: float, seconds: float, *, amplitude: float = 0.5) -> bytes:
    """A sine wave of ``freq`` Hz as 48 kHz stereo s16le PCM, peaking at ``amplitude`` of full scale."""
    count = round(seconds * SAMPLE_RATE)
    peak = amplitude * 32767
    step = 2 * math.pi * freq / SAMPLE_RATE
    mono = array("h", (round(peak * math.sin(step * i)) for i in range(count)))
    if sys.byteorder == "big":
        mono.byteswap()
    return _to_stereo(mono.tobytes())


def _to_stereo(mono: bytes) -> bytes:
    """Interleave little-endian 16-bit mono samples with themselves (byte order is kept as is)."""
    samples = array("h", mono)
    stereo = array("h", bytes(len(samples) * 2 * CHANNELS))
    stereo[0::2] = samples
    stereo[1::2] = samples
    return stereo.tobytes()
