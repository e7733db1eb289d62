"""Mix every speaker into one track and feed it to any other sink."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..frames import FRAME_BYTES, FRAME_SAMPLES, VoiceFrame
from ._common import SpeakerKey, fit_frame, speaker_key
from ._mix import MAX_GAIN, Limiter, scale_pcm
from .base import AudioSink, SinkUser

__all__ = ("MAX_GAIN", "MIX_SSRC", "MixSink", "scale_pcm")

MIX_SSRC = 0
"""The SSRC of the frames a :class:`MixSink` emits (with ``user_id=None``); Discord never gives a user SSRC 0."""


class MixSink(AudioSink):
    """Sum the speakers of every slot into one frame and pass it on to ``target``: a mixed track in any format.

    ``target`` gets exactly one frame per slot, in order and on the listening timeline: the sum of the slot's
    speakers (turned down instead of clipping when loud voices overlap: a peak limiter at -1 dBFS), or silence
    when nobody spoke, followed by ``target.advance(tick)``; then ``cleanup()`` at the
    end. The frames have ``user_id=None``, ``ssrc=MIX_SSRC``, no Opus packet, and ``user`` is ``None``, so
    :class:`FFmpegSink` names the track ``mix`` (``MixSink(FFmpegSink(out, "mp3", mix=False))`` writes
    ``mix.mp3``) and callbacks can tell it apart. Errors of ``target`` propagate.

    Parameters
    ----------
    target:
        Any sink that takes PCM.
    include:
        ``include(user, ident)`` decides whether a speaker goes into the mix (``ident`` is the user id, or the SSRC
        while it is not mapped to a user), e.g. to leave the bot's own music out. Called for every frame, so keep
        it cheap.
    gains:
        Linear gain per user id, from 0 (left out) to :data:`MAX_GAIN`; others are mixed at 1.0.
    """

    __slots__ = (
        "_closed",
        "_gains",
        "_include",
        "_limiter",
        "_pending",
        "_pending_keys",
        "_slots",
        "dropped",
        "target",
    )

    def __init__(
        self,
        target: AudioSink,
        *,
        include: Callable[[SinkUser, int], bool] | None = None,
        gains: Mapping[int, float] | None = None,
    ) -> None:
        for user_id, gain in (gains or {}).items():
            if not 0.0 <= gain <= MAX_GAIN:
                raise ValueError(f"gain {gain!r} for user {user_id} is outside [0, {MAX_GAIN}]")
        self.target = target
        self._include = include
        self._gains = dict(gains or {})
        self._pending: list[bytes] = []
        self._pending_keys: set[SpeakerKey] = set()
        self._limiter = Limiter()
        self._slots = 0
        self._closed = False
        self.dropped = 0
        """Frames ignored because their slot was already mixed, or a second frame of a speaker for one slot."""

    @property
    def slots(self) -> int:
        """How many slots have been mixed and handed to the target."""
        return self._slots

    def open(self) -> None:
        self.target.open()

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        tick = frame.tick
        if tick != self._slots:
            if tick < self._slots or self._closed:
                self.dropped += 1
                return
            self._emit_until(tick)
        if self._closed:
            self.dropped += 1
            return
        include = self._include
        if include is not None and not include(user, frame.user_id if frame.user_id is not None else frame.ssrc):
            return
        key = speaker_key(frame)
        if key in self._pending_keys:
            self.dropped += 1
            return
        self._pending_keys.add(key)
        pcm = fit_frame(frame.pcm)
        if self._gains and frame.user_id in self._gains:
            gain = self._gains[frame.user_id]
            if gain == 0.0:
                return
            pcm = scale_pcm(pcm, gain)
        self._pending.append(pcm)

    def advance(self, tick: int) -> None:
        if tick >= self._slots and not self._closed:
            self._emit_until(tick + 1)

    def cleanup(self) -> None:
        """Mix the open slot if anyone spoke in it, then clean the target up."""
        if self._closed:
            return
        try:
            if self._pending_keys:
                self._emit_until(self._slots + 1)
        finally:
            self._closed = True
            self.target.cleanup()

    def _emit_until(self, end: int) -> None:
        target = self.target
        while self._slots < end:
            tick = self._slots
            pcm = self._limiter.mix(self._pending, FRAME_BYTES)
            self._pending.clear()
            self._pending_keys.clear()
            self._slots = tick + 1
            mixed = VoiceFrame(
                MIX_SSRC, None, tick, pcm, None, tick & 0xFFFF, (tick * FRAME_SAMPLES) & 0xFFFF_FFFF
            )  # fmt: skip
            target.write(None, mixed)
            target.advance(tick)
