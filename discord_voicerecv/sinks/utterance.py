"""Cut each speaker's audio into utterances: the unit speech-to-text engines want."""

from __future__ import annotations

import asyncio
import math
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from operator import mul

from ..frames import FRAME_BYTES, FRAME_DURATION, OPUS_SILENCE, SILENT_PCM, VoiceFrame
from ._common import SpeakerKey, fit_frame, log, speaker_key
from ._mix import _masks
from .base import AudioSink, SinkUser

__all__ = ("Utterance", "UtteranceSink", "to_16k_mono")

_ABSENT_SLOTS = 5
"""With ``speaking_events``, frames missing for this many slots (100 ms) end the utterance: the speaker stopped
sending, and a short burst of loss the receiver could not conceal does not cut a sentence in two."""
_ENERGY_STRIDE = 5
"""Every 5th sample (both channels, as 5 is odd) is enough to tell speech from silence."""
_FULL_SCALE = 32_768.0


@dataclass(frozen=True, slots=True)
class Utterance:
    """One stretch of speech by one speaker.

    ``pcm`` is 48 kHz stereo s16le covering slots ``[start_tick, end_tick)`` of the listening timeline: the same
    samples as that stretch of the speaker's :class:`WaveSink` track, from the first loud frame to the last one.
    ``started_at`` is ``start_tick`` in seconds since ``listen()``.
    """

    user: SinkUser
    user_id: int | None
    start_tick: int
    end_tick: int
    pcm: bytes
    started_at: float
    ssrc: int = 0

    @property
    def duration(self) -> float:
        """Seconds of audio in :attr:`pcm`."""
        return (self.end_tick - self.start_tick) * FRAME_DURATION

    def pcm_16k_mono(self) -> bytes:
        """The audio as 16 kHz mono s16le, what most speech-to-text engines take (see :func:`to_16k_mono`)."""
        return to_16k_mono(self.pcm)


class _Speech:
    __slots__ = ("chunks", "last_frame", "last_voiced", "next_tick", "ssrc", "start", "user", "user_id")

    def __init__(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.user = user
        self.user_id = frame.user_id
        self.ssrc = frame.ssrc
        self.start = frame.tick
        self.next_tick = frame.tick
        self.last_frame = frame.tick
        self.last_voiced = frame.tick
        self.chunks: list[bytes] = []


class UtteranceSink(AudioSink):
    """Hand over each speaker's speech one :class:`Utterance` at a time, as soon as it ends.

    An utterance starts at a speaker's first frame louder than ``threshold_dbfs`` and ends after ``silence_ms``
    of quieter audio, or when the speaker's frames stop (with ``speaking_events``: Discord clients stop sending
    when their user stops talking), or when it reaches ``max_seconds`` (then the next one starts at the next
    loud frame). Trailing quiet audio is cut off; utterances shorter than ``min_ms`` are dropped as clicks and
    noise (counted in :attr:`discarded`).

    Parameters
    ----------
    target:
        A function called with each :class:`Utterance` on the sink thread (keep it quick: hand heavy work such as
        speech-to-text to another thread), or an :class:`asyncio.Queue` that receives them on its event loop.
    silence_ms:
        Quiet time that ends an utterance.
    min_ms:
        Shortest utterance handed over.
    max_seconds:
        Longest utterance; longer speech is cut into several.
    speaking_events:
        End an utterance when the speaker's frames stop for 100 ms; with False, missing frames count as silence.
    threshold_dbfs:
        RMS level, in dB relative to full scale, above which a frame counts as speech.
    loop:
        The event loop of an :class:`asyncio.Queue` target; by default the loop running when the sink is built.
    """

    __slots__ = (
        "_absent",
        "_callback",
        "_loop",
        "_max_slots",
        "_min_slots",
        "_queue",
        "_silence_slots",
        "_speech",
        "_threshold",
        "closed",
        "discarded",
        "dropped",
        "emitted",
    )

    def __init__(
        self,
        target: Callable[[Utterance], object] | asyncio.Queue[Utterance],
        *,
        silence_ms: float = 400,
        min_ms: float = 200,
        max_seconds: float = 30.0,
        speaking_events: bool = True,
        threshold_dbfs: float = -40.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if silence_ms <= 0 or min_ms < 0 or max_seconds <= 0:
            raise ValueError("silence_ms and max_seconds must be positive and min_ms not negative")
        self._callback: Callable[[Utterance], object] | None = None
        self._queue: asyncio.Queue[Utterance] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if isinstance(target, asyncio.Queue):
            self._queue = target
            if loop is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    raise ValueError(
                        "pass loop= when building an UtteranceSink with a queue outside the event loop"
                    ) from None
            self._loop = loop
        else:
            self._callback = target
        self._silence_slots = max(1, math.ceil(silence_ms / 20))
        self._min_slots = math.ceil(min_ms / 20)
        self._max_slots = max(1, round(max_seconds / FRAME_DURATION))
        self._absent = _ABSENT_SLOTS if speaking_events else None
        samples = len(range(0, FRAME_BYTES // 2, _ENERGY_STRIDE))
        self._threshold = (_FULL_SCALE * 10 ** (threshold_dbfs / 20)) ** 2 * samples
        self._speech: dict[SpeakerKey, _Speech] = {}
        self.closed = False
        self.emitted = 0
        """Utterances handed over."""
        self.discarded = 0
        """Utterances shorter than ``min_ms``, dropped."""
        self.dropped = 0
        """Frames ignored: late, a second frame of a speaker for one slot, or after :meth:`cleanup`."""

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if self.closed:
            self.dropped += 1
            return
        key = speaker_key(frame)
        speech = self._speech.get(key)
        tick = frame.tick
        if speech is not None and tick < speech.next_tick:
            self.dropped += 1
            return
        loud = self._loud(frame)
        if speech is None:
            if not loud:
                return
            speech = self._speech[key] = _Speech(user, frame)
        elif tick > speech.next_tick:
            speech.chunks.extend([SILENT_PCM] * (tick - speech.next_tick))
        speech.chunks.append(fit_frame(frame.pcm))
        speech.next_tick = tick + 1
        speech.last_frame = tick
        if loud:
            speech.last_voiced = tick
        if speech.next_tick - speech.start >= self._max_slots:
            self._finish(key, speech, speech.next_tick)

    def advance(self, tick: int) -> None:
        if not self._speech:
            return
        absent = self._absent
        for key, speech in list(self._speech.items()):
            if tick - speech.last_voiced >= self._silence_slots or (
                absent is not None and tick - speech.last_frame >= absent
            ):
                self._finish(key, speech, speech.last_voiced + 1)

    def cleanup(self) -> None:
        """Hand over the utterances still open."""
        if self.closed:
            return
        self.closed = True
        for key, speech in list(self._speech.items()):
            self._finish(key, speech, speech.last_voiced + 1)

    def _loud(self, frame: VoiceFrame) -> bool:
        pcm = frame.pcm
        if frame.opus == OPUS_SILENCE or not pcm or pcm == SILENT_PCM:
            return False
        samples = array("h")
        samples.frombytes(fit_frame(pcm))
        if sys.byteorder == "big":
            samples.byteswap()
        sparse = samples[::_ENERGY_STRIDE]
        energy: int = sum(map(mul, sparse, sparse))
        return energy > self._threshold

    def _finish(self, key: SpeakerKey, speech: _Speech, end: int) -> None:
        del self._speech[key]
        if end - speech.start < self._min_slots:
            self.discarded += 1
            return
        utterance = Utterance(
            speech.user,
            speech.user_id,
            speech.start,
            end,
            b"".join(speech.chunks[: end - speech.start]),
            speech.start * FRAME_DURATION,
            speech.ssrc,
        )
        self.emitted += 1
        if self._callback is not None:
            self._callback(utterance)
            return
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._put, utterance)
        except RuntimeError:
            log.warning("UtteranceSink: event loop closed, utterance of %s lost", key)

    def _put(self, utterance: Utterance) -> None:
        assert self._queue is not None
        try:
            self._queue.put_nowait(utterance)
        except asyncio.QueueFull:
            log.warning("UtteranceSink: queue full, utterance of user %s lost", utterance.user_id)


# 16 kHz mono --------------------------------------------------------------------------------------------------------

_TAPS = 31
_CUTOFF_HZ = 7_000.0
_SHIFT = 16
_OFFSET = 65_536
"""Added to every left + right sum so that lanes stay non-negative."""
_BIAS_UNITS = 1 << 24
_LANE = 64


@lru_cache(maxsize=1)
def _filter() -> tuple[int, ...]:
    """A Hamming-windowed sinc low-pass at 7 kHz for 48 kHz, in fixed point, halved to average the channels.

    The taps add up to exactly one half, so a constant (and full scale) passes unchanged. Flat to 5 kHz (-0.3 dB),
    -6 dB at 7 kHz, -14 dB at 8 kHz, and below -50 dB from 10 kHz up, so little folds back into the 0-8 kHz band.
    """
    centre = (_TAPS - 1) / 2
    fc = _CUTOFF_HZ / 48_000
    taps = []
    for k in range(_TAPS):
        m = k - centre
        ideal = 2 * fc if m == 0 else math.sin(2 * math.pi * fc * m) / (math.pi * m)
        taps.append(ideal * (0.54 - 0.46 * math.cos(2 * math.pi * k / (_TAPS - 1))))
    total = sum(taps)
    fixed = [round(t / total * (1 << _SHIFT) / 2) for t in taps]
    fixed[_TAPS // 2] += (1 << (_SHIFT - 1)) - sum(fixed)
    return tuple(fixed)


def _lanes(values: array[int]) -> int:
    wide = array("Q", values)
    if sys.byteorder == "big":
        wide.byteswap()
    return int.from_bytes(wide.tobytes(), "little")


def to_16k_mono(pcm: bytes) -> bytes:
    """48 kHz stereo s16le to 16 kHz mono s16le: channels averaged, low-passed at 7 kHz, every third sample kept.

    Pure Python (no numpy): the filter runs on the whole signal at once as 64-bit lanes of big integers. The
    output has ``len(pcm) // 12`` samples and no delay (the filter is centred).
    """
    nbytes = len(pcm) - len(pcm) % 4
    if nbytes == 0:
        return b""
    taps = _filter()
    half = (_TAPS - 1) // 2
    m = _masks(nbytes)
    value = int.from_bytes(pcm[:nbytes], "little") ^ m.flip
    mono = (value & m.low16) + ((value >> 16) & m.low16)
    sums = array("I")
    sums.frombytes(mono.to_bytes(nbytes, "little"))
    if sys.byteorder == "big":
        sums.byteswap()
    edge = array("I", [_OFFSET])
    sums = edge * half + sums + edge * (half + 3)
    count = (nbytes // 4) // 3
    phases = [_lanes(sums[p::3]) for p in range(3)]
    positive = negative = 0
    for k in range(half + 1):
        mirror = _TAPS - 1 - k
        term = phases[k % 3] >> (_LANE * (k // 3))
        if mirror != k:
            term += phases[mirror % 3] >> (_LANE * (mirror // 3))
        if taps[k] >= 0:
            positive += term * taps[k]
        else:
            negative -= term * taps[k]
    width = _LANE * count
    keep = (1 << width) - 1
    bias = _BIAS_UNITS * (1 << _SHIFT) - _OFFSET * sum(taps) + (1 << (_SHIFT - 1))
    lanes = (positive & keep) + int.from_bytes(bias.to_bytes(8, "little") * count, "little") - (negative & keep)
    filtered = array("q")
    filtered.frombytes(lanes.to_bytes(width // 8, "little"))
    if sys.byteorder == "big":
        filtered.byteswap()
    scaled = ((v >> _SHIFT) - _BIAS_UNITS for v in filtered)
    out = array("h", [-32768 if s < -32768 else 32767 if s > 32767 else s for s in scaled])
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()
