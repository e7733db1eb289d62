"""Filters and stop conditions for a listening session: only some users, at most a duration or a size."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeAlias, Union

from ..frames import FRAME_DURATION, VoiceFrame
from .base import AudioSink, SinkUser

if TYPE_CHECKING:
    import discord

__all__ = ("LimitSink", "StopReason", "UserFilterSink", "Users", "others_present", "user_ids")

Users: TypeAlias = Iterable[Union[int, "discord.abc.Snowflake"]]
"""Users given as ids or as anything with an ``id`` (Member, User, ``discord.Object``)."""


class StopReason(str, enum.Enum):
    """Why a listening session ended (``VoiceRecvClient.stop_reason``)."""

    STOPPED = "stopped"
    """:meth:`~discord_voicerecv.VoiceRecvClient.stop_listening` was called."""
    DISCONNECTED = "disconnected"
    """The voice client disconnected."""
    MAX_DURATION = "max_duration"
    """``max_duration`` seconds were recorded."""
    MAX_BYTES = "max_bytes"
    """The sink reached ``max_bytes``."""
    ALONE = "alone"
    """``stop_when_alone``: everyone else left the voice channel."""
    ERROR = "error"
    """A sink raised; the exception is passed to ``after`` and the stopped event."""


def user_ids(users: Users | None) -> frozenset[int] | None:
    """The ids of ``users`` (ints or objects with an ``id``), or None for "everyone"."""
    if users is None:
        return None
    return frozenset(u if isinstance(u, int) else int(u.id) for u in users)


class UserFilterSink(AudioSink):
    """Pass only some users' frames on to ``sink``; every slot still reaches it, so tracks stay aligned."""

    __slots__ = ("sink", "users", "wants_pcm")

    def __init__(self, sink: AudioSink, users: Users) -> None:
        self.sink = sink
        self.users: frozenset[int] = user_ids(users) or frozenset()
        self.wants_pcm = sink.wants_pcm

    def open(self) -> None:
        self.sink.open()

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if frame.user_id in self.users:
            self.sink.write(user, frame)

    def advance(self, tick: int) -> None:
        self.sink.advance(tick)

    def cleanup(self) -> None:
        self.sink.cleanup()


class LimitSink(AudioSink):
    """Cut ``sink`` off after ``max_duration`` seconds or ``max_bytes`` bytes and report the limit reached.

    The duration limit is exact: the sink gets the slots before ``max_duration`` and nothing after, so a
    ``WaveSink`` behind it writes files exactly that long. The size is what the sink reports in a
    ``bytes_written`` attribute when it has one, otherwise the audio bytes handed to it (3840 per PCM frame, or the
    Opus packet size for sinks that take Opus only); the cut happens at the end of the slot that reached it.

    Parameters
    ----------
    sink:
        The sink being limited.
    max_duration:
        Seconds of listening timeline, or None.
    max_bytes:
        Bytes, or None.
    on_limit:
        Called once, on the sink thread, with the :class:`StopReason` of the limit that was reached.
    """

    __slots__ = ("_bytes", "max_bytes", "max_slots", "on_limit", "reached", "sink", "wants_pcm")

    def __init__(
        self,
        sink: AudioSink,
        *,
        max_duration: float | None = None,
        max_bytes: int | None = None,
        on_limit: Callable[[StopReason], object] | None = None,
    ) -> None:
        if max_duration is not None and not max_duration > 0:
            raise ValueError("max_duration must be positive")
        if max_bytes is not None and not max_bytes > 0:
            raise ValueError("max_bytes must be positive")
        self.sink = sink
        self.max_slots = None if max_duration is None else max(1, math.ceil(max_duration / FRAME_DURATION - 1e-9))
        self.max_bytes = max_bytes
        self.reached: StopReason | None = None
        """The limit that was reached, once one was."""
        self.on_limit = on_limit
        """Called once with the :class:`StopReason` when a limit is reached."""
        self._bytes = 0
        self.wants_pcm = sink.wants_pcm

    @property
    def bytes_written(self) -> int:
        """The sink's own ``bytes_written`` when it has one, otherwise the audio bytes handed to it."""
        reported = getattr(self.sink, "bytes_written", None)
        return reported if isinstance(reported, int) else self._bytes

    def open(self) -> None:
        self.sink.open()

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if self.reached is not None:
            return
        if self.max_slots is not None and frame.tick >= self.max_slots:
            self._reach(StopReason.MAX_DURATION)
            return
        self.sink.write(user, frame)
        self._bytes += len(frame.pcm) or sum(map(len, frame.opus_packets))

    def advance(self, tick: int) -> None:
        if self.reached is not None:
            return
        if self.max_slots is not None and tick >= self.max_slots:
            self._reach(StopReason.MAX_DURATION)
            return
        self.sink.advance(tick)
        if self.max_slots is not None and tick + 1 >= self.max_slots:
            self._reach(StopReason.MAX_DURATION)
        elif self.max_bytes is not None and self.bytes_written >= self.max_bytes:
            self._reach(StopReason.MAX_BYTES)

    def cleanup(self) -> None:
        self.sink.cleanup()

    def _reach(self, reason: StopReason) -> None:
        self.reached = reason
        if self.on_limit is not None:
            self.on_limit(reason)


def others_present(channel: object, me: int | None) -> bool:
    """Whether anyone but ``me`` and other bots is in the voice channel (from gateway voice states)."""
    members: Iterable[discord.Member] = getattr(channel, "members", ())
    return any(member.id != me and not member.bot for member in members)
