"""The interface every sink implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from ..frames import VoiceFrame

if TYPE_CHECKING:
    import discord

__all__ = ("AudioSink", "SinkUser")

SinkUser = Union["discord.Member", "discord.User", "discord.Object", None]
"""Who spoke: a cached Member/User, a ``discord.Object`` carrying only the id when the member is not cached yet,
or ``None`` while the SSRC is not mapped to any user."""


class AudioSink:
    """Where received audio goes.

    :meth:`open` is called once, when ``listen()`` has accepted the sink and before any other call: a sink touches
    nothing (no file, folder, socket or process) before it. Then the receiver calls, from one dedicated thread and
    never concurrently: :meth:`write` for every speaker that has a frame in a 20 ms slot, then :meth:`advance` once
    for that slot, and :meth:`cleanup` once at the end (after a final :meth:`advance` for the last slot). Slots
    without any speaker still get an :meth:`advance`, so sinks that keep aligned tracks pad them there. A sink that
    raises is detached and reported; it never stops the receiver or other sinks.

    It has no instance attributes of its own (``__slots__ = ()``), so a subclass that lists its attributes in
    ``__slots__`` gets instances without a ``__dict__``; one that lists none works as usual.
    """

    __slots__ = ()

    wants_pcm: bool = True
    """False in sinks that only use ``frame.opus_packets``: when no attached sink wants PCM, nothing is decoded."""

    def open(self) -> None:
        """The sink was accepted: create its files, folders or processes now. Raising refuses the sink, which must
        then leave nothing behind. Sinks that hold nothing keep this no-op."""

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        """Receive one speaker's frame for slot ``frame.tick``."""
        raise NotImplementedError

    def advance(self, tick: int) -> None:
        """Slot ``tick`` is complete: every frame for it has been written."""

    def cleanup(self) -> None:
        """Listening stopped: flush and close whatever the sink holds."""
