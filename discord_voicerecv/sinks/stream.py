"""Live audio for asyncio code: ``async for frame in vc.listen_stream()``.

The receiver's sink thread hands each frame to an :class:`AudioStream` through a bounded queue and wakes the event
loop with ``call_soon_threadsafe``; a consumer that falls behind loses frames (counted in
:attr:`AudioStream.dropped`), never the reader, the file sinks or the other streams.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from ..frames import FRAME_DURATION, VoiceFrame
from .base import AudioSink, SinkUser
from .limits import Users, user_ids

__all__ = ("AudioStream", "SinkHub", "StreamFrame")

_log = logging.getLogger(__name__)

DEFAULT_QUEUE_SECONDS = 5.0
"""Seconds of audio per speaker an :class:`AudioStream` keeps for a consumer that is not reading."""


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One speaker's 20 ms of audio, as an :class:`AudioStream` yields it.

    ``pcm`` is s16le 48 kHz stereo (3840 bytes), or empty for a stream opened with ``opus=True``.
    ``opus_packets`` are the Opus packets received for the slot after every encryption layer came off, in order
    (usually one, two for 10 ms packets; empty when nothing arrived and the PCM was concealed), and ``opus`` is the
    first of them or ``None``. ``elapsed`` is the slot's start in seconds since listening started (``tick * 0.02``) and
    ``wall_time`` the same instant as a :func:`time.time` timestamp.
    """

    user: SinkUser
    user_id: int | None
    ssrc: int
    tick: int
    pcm: bytes
    opus: bytes | None
    elapsed: float
    wall_time: float
    concealed: bool
    opus_packets: tuple[bytes, ...] = ()


class AudioStream(AudioSink):
    """An async iterator of :class:`StreamFrame`, fed live from a listening session.

    Get one from :meth:`VoiceRecvClient.listen_stream <discord_voicerecv.VoiceRecvClient.listen_stream>`, which
    attaches it next to the ``listen()`` sink. It is also an :class:`~discord_voicerecv.sinks.AudioSink`, so it can
    sit inside a :class:`~discord_voicerecv.MultiSink` passed to ``listen()`` (build it on the event loop then).

    Frames come in order per speaker. Each speaker may have up to ``max_queue_seconds`` of audio waiting; beyond
    that the newest frames are dropped and counted in :attr:`dropped` (and in the client's ``receive_stats()`` as
    ``stream_dropped``). Iteration ends once listening stops and the queued frames are consumed, or at
    :meth:`close`.

    Parameters
    ----------
    users:
        Only these users (members, users or ids); everyone when None.
    opus:
        Yield Opus packets only (``pcm`` empty), skipping the decoder when nothing else needs PCM.
    max_queue_seconds:
        Audio per speaker kept for a consumer that is not reading, in seconds.
    loop:
        The event loop the consumer runs on; the running loop by default.
    started_at:
        :func:`time.time` when listening started, for :attr:`StreamFrame.wall_time`; now by default.
    """

    def __init__(
        self,
        *,
        users: Users | None = None,
        opus: bool = False,
        max_queue_seconds: float = DEFAULT_QUEUE_SECONDS,
        loop: asyncio.AbstractEventLoop | None = None,
        started_at: float | None = None,
    ) -> None:
        if not max_queue_seconds > 0:
            raise ValueError("max_queue_seconds must be positive")
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self.users = user_ids(users)
        """The user ids this stream keeps, or None for everyone."""
        self.opus_only = opus
        self.wants_pcm = not opus
        self.started_at = time.time() if started_at is None else started_at
        self.max_frames = max(1, round(max_queue_seconds / FRAME_DURATION))
        """Frames per speaker that may wait before new ones are dropped."""
        self._lock = threading.Lock()
        self._items: deque[StreamFrame] = deque()
        self._queued: dict[int | None, int] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._waiting = False
        self._ended = False
        self._closed = False
        self._on_close: Callable[[AudioStream], None] | None = None
        self.received = 0
        """Frames offered to this stream (after the ``users`` filter)."""
        self.delivered = 0
        """Frames handed to the consumer."""
        self.dropped = 0
        """Frames lost because the consumer was too far behind."""
        self.dropped_by_user: dict[int | None, int] = {}
        """:attr:`dropped` per user id."""

    # sink side (receiver's sink thread) ---------------------------------------------------------------------------

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        users = self.users
        if users is not None and frame.user_id not in users:
            return
        elapsed = frame.tick * FRAME_DURATION
        item = StreamFrame(
            user,
            frame.user_id,
            frame.ssrc,
            frame.tick,
            b"" if self.opus_only else frame.pcm,
            frame.opus,
            elapsed,
            self.started_at + elapsed,
            frame.concealed,
            frame.opus_packets,
        )
        key = frame.user_id
        with self._lock:
            if self._closed or self._ended:
                return
            self.received += 1
            queued = self._queued.get(key, 0)
            if queued >= self.max_frames:
                self.dropped += 1
                self.dropped_by_user[key] = self.dropped_by_user.get(key, 0) + 1
                return
            self._queued[key] = queued + 1
            self._items.append(item)
            wake = self._waiting
            self._waiting = False
        if wake:
            self._wake_soon()

    def cleanup(self) -> None:
        """Listening ended: the consumer gets what is queued, then the iteration stops."""
        with self._lock:
            self._ended = True
            self._waiting = False
        self._wake_soon()

    def _wake_soon(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            _log.debug("event loop closed; stream consumer not woken")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # consumer side (event loop) ------------------------------------------------------------------------------------

    def __aiter__(self) -> AudioStream:
        return self

    async def __anext__(self) -> StreamFrame:
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    key = item.user_id
                    left = self._queued[key] - 1
                    if left:
                        self._queued[key] = left
                    else:
                        del self._queued[key]
                    self.delivered += 1
                    return item
                if self._ended or self._closed:
                    raise StopAsyncIteration
                waiter = self._waiter = self._loop.create_future()
                self._waiting = True
            await waiter

    async def get(self, timeout: float | None = None) -> StreamFrame | None:
        """The next frame, or None when the stream ended; waits at most ``timeout`` seconds.

        Raises
        ------
        TimeoutError
            No frame came within ``timeout`` seconds.
        """
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            return None

    @property
    def queued(self) -> int:
        """Frames waiting for the consumer."""
        with self._lock:
            return len(self._items)

    @property
    def ended(self) -> bool:
        """True once listening stopped (frames may still be queued) or the stream was closed."""
        return self._ended or self._closed

    def close(self) -> None:
        """Stop this stream (from the event loop): drop what is queued, detach it from the session, end the
        iteration.

        When the stream started the listening session itself (``listen_stream()`` while not listening), closing it
        also stops listening.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._items.clear()
            self._queued.clear()
        self._wake()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback(self)

    async def aclose(self) -> None:
        """:meth:`close`, for ``contextlib.aclosing`` and similar helpers."""
        self.close()

    async def __aenter__(self) -> AudioStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "ended" if self._ended else "open"
        return f"<AudioStream {state} queued={len(self._items)} delivered={self.delivered} dropped={self.dropped}>"


class SinkHub(AudioSink):
    """The receiver's sink for one listening session: the ``listen()`` sink plus the streams attached to it.

    Streams can be attached and closed at any time from the event loop; each gets every frame from then on. An
    exception of the main sink ends the session (reported through ``after``); streams never raise.
    """

    def __init__(self, main: AudioSink | None, *, started_at: float | None = None) -> None:
        self.main = main
        self.started_at = time.time() if started_at is None else started_at
        self._streams: tuple[AudioStream, ...] = ()
        self._lock = threading.Lock()
        self._closed = False
        self._detached_drops = 0

    @property
    def wants_pcm(self) -> bool:
        main = self.main
        if main is not None and main.wants_pcm:
            return True
        return any(stream.wants_pcm for stream in self._streams)

    @wants_pcm.setter
    def wants_pcm(self, value: bool) -> None:
        raise AttributeError("SinkHub.wants_pcm follows its sinks")

    def attach(self, stream: AudioStream) -> None:
        """Feed ``stream`` from the next frame on; it ends at once when the session already ended."""
        with self._lock:
            if not self._closed:
                stream.started_at = self.started_at
                self._streams = (*self._streams, stream)
                stream._on_close = self._detach
                return
        stream.cleanup()

    def _detach(self, stream: AudioStream) -> None:
        with self._lock:
            if stream in self._streams:
                self._streams = tuple(s for s in self._streams if s is not stream)
                self._detached_drops += stream.dropped

    @property
    def streams(self) -> tuple[AudioStream, ...]:
        """The streams attached now."""
        return self._streams

    @property
    def stream_dropped(self) -> int:
        """Frames every stream of this session (attached, closed, or the main sink) dropped for a slow consumer."""
        total = self._detached_drops + sum(stream.dropped for stream in self._streams)
        if isinstance(self.main, AudioStream):
            total += self.main.dropped
        return total

    def open(self) -> None:
        if self.main is not None:
            self.main.open()

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        main = self.main
        if main is not None:
            main.write(user, frame)
        for stream in self._streams:
            try:
                stream.write(user, frame)
            except Exception:
                _log.exception("stream %r failed to queue a frame", stream)

    def advance(self, tick: int) -> None:
        if self.main is not None:
            self.main.advance(tick)

    def cleanup(self) -> None:
        with self._lock:
            self._closed = True
            streams = self._streams
        for stream in streams:
            stream.cleanup()
        if self.main is not None:
            self.main.cleanup()
