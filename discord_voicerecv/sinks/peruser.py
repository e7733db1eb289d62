"""One sink per speaker, created when the speaker is first heard."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from ..frames import VoiceFrame
from ._common import SpeakerKey, drop_child, log, speaker_key
from .base import AudioSink, SinkUser

__all__ = ("PerUserSink",)


class PerUserSink(AudioSink):
    """Route each speaker's frames to a sink of their own.

    ``factory(user, ident)`` builds the child sink at the speaker's first frame; ``ident`` is the user id, or the
    SSRC while the speaker is not mapped to a user, and opens it (:meth:`AudioSink.open`) there. Every child gets
    :meth:`advance` for every slot from then on and :meth:`cleanup` at the end. A child (or a factory call) that
    raises is detached and logged on the ``discord_voicerecv.sinks`` logger, kept in :attr:`failures`, and that
    speaker's frames are dropped from then on; the other speakers carry on. ``wants_pcm`` must be given up front
    since the children do not exist yet.
    """

    __slots__ = ("_active", "_children", "_closed", "_factory", "_failed", "failures", "wants_pcm")

    def __init__(self, factory: Callable[[SinkUser, int], AudioSink], *, wants_pcm: bool = True) -> None:
        self._factory = factory
        self._children: dict[SpeakerKey, AudioSink] = {}
        self._active: dict[SpeakerKey, AudioSink] = {}
        self._failed: set[SpeakerKey] = set()
        self._closed = False
        self.failures: list[tuple[SpeakerKey, Exception]] = []
        self.wants_pcm = wants_pcm

    @property
    def sinks(self) -> Mapping[SpeakerKey, AudioSink]:
        """Every child built, by speaker key: the user id, or ``"ssrc:<n>"`` for a speaker not mapped to a user."""
        return MappingProxyType(self._children)

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        key = speaker_key(frame)
        child = self._active.get(key)
        if child is None:
            child = self._create(key, user, frame)
            if child is None:
                return
        try:
            child.write(user, frame)
        except Exception as exc:
            self._drop(key, child, exc)

    def advance(self, tick: int) -> None:
        for key, child in list(self._active.items()):
            try:
                child.advance(tick)
            except Exception as exc:
                self._drop(key, child, exc)

    def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        for key, child in self._active.items():
            try:
                child.cleanup()
            except Exception as exc:
                self.failures.append((key, exc))
                drop_child(self, child, exc, close=False)

    def _create(self, key: SpeakerKey, user: SinkUser, frame: VoiceFrame) -> AudioSink | None:
        if key in self._failed or self._closed:
            return None
        try:
            child = self._factory(user, frame.user_id if frame.user_id is not None else frame.ssrc)
            child.open()
        except Exception as exc:
            self._failed.add(key)
            self.failures.append((key, exc))
            log.error("PerUserSink factory failed for speaker %s", key, exc_info=exc)
            return None
        self._children[key] = self._active[key] = child
        return child

    def _drop(self, key: SpeakerKey, child: AudioSink, exc: Exception) -> None:
        del self._active[key]
        self._failed.add(key)
        self.failures.append((key, exc))
        drop_child(self, child, exc)
