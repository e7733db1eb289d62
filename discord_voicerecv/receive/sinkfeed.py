"""The hand-off from playout to the sink: a bounded slot queue and the thread that calls the sink.

A slow sink costs counted drops, never a blocked playout; a sink that raises is detached and its error reported
through ``after``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..frames import VoiceFrame
from ..sinks.base import AudioSink, SinkUser
from .stats import ReceiveStats

__all__ = ("SinkFeed", "SlotQueue")

_log = logging.getLogger(__name__)

_USER_CACHE_SLOTS = 50
"""Resolved users are cached for this many slots (about a second)."""


class SlotQueue:
    """Bounded hand-off from the playout to the sink thread.

    Items are ``(first_tick, last_tick, frames)``. At most ``max_slots`` items carry frames; when full, a slot's
    frames are dropped but its tick is still queued, merged into a run of empty ticks, so every ``advance``
    reaches the sink and tracks stay aligned. One consumer at a time; it sleeps on a plain lock that a producer
    releases only when it is asleep.
    """

    __slots__ = ("_closed", "_framed", "_items", "_mutex", "_sleeping", "_wake", "max_slots")

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max(1, max_slots)
        self._items: deque[list[Any]] = deque()
        self._framed = 0
        self._mutex = threading.Lock()
        self._wake = threading.Lock()
        self._wake.acquire()
        self._sleeping = False
        self._closed = False

    def put(self, first: int, last: int, frames: list[VoiceFrame]) -> bool:
        """Queue slots ``first..last`` (frames belong to ``first``); False when the frames were dropped because the
        queue is full (ignored once closed)."""
        with self._mutex:
            if self._closed:
                return True
            kept = True
            if frames and self._framed >= self.max_slots:
                frames, kept = [], False
            tail = self._items[-1] if self._items else None
            if not frames and tail is not None and not tail[2] and tail[1] == first - 1:
                tail[1] = last
            else:
                self._items.append([first, last, frames])
                self._framed += bool(frames)
            if self._sleeping:
                self._sleeping = False
                self._wake.release()
            return kept

    def get(self, timeout: float | None = None) -> tuple[int, int, list[VoiceFrame]] | None:
        """Next item, waiting while empty; None once closed and drained (or on timeout)."""
        deadline = None
        while True:
            with self._mutex:
                if self._items:
                    first, last, frames = self._items.popleft()
                    self._framed -= bool(frames)
                    return first, last, frames
                if self._closed or timeout == 0:
                    return None
                if timeout is not None and deadline is None:
                    deadline = time.monotonic() + timeout
                wait = -1.0 if deadline is None else deadline - time.monotonic()
                if deadline is not None and wait <= 0:
                    return None
                self._sleeping = True
            if not self._wake.acquire(timeout=wait):
                with self._mutex:
                    if self._sleeping:
                        self._sleeping = False
                    else:
                        self._wake.acquire()

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            if self._sleeping:
                self._sleeping = False
                self._wake.release()

    def __len__(self) -> int:
        with self._mutex:
            return len(self._items)


class SinkFeed:
    """Calls the sink with queued slots (on its own thread, or on the caller's in manual mode), resolves user ids,
    detaches a failing sink, and finishes once: ``cleanup`` then ``after``."""

    __slots__ = (
        "_after",
        "_finish_lock",
        "_resolver",
        "_sink",
        "_stats",
        "_user_cache",
        "_user_cache_tick",
        "attached",
        "error",
        "finished",
        "queue",
        "thread",
    )

    def __init__(
        self,
        sink: AudioSink,
        queue: SlotQueue,
        stats: ReceiveStats,
        *,
        resolver: Callable[[int], SinkUser] | None,
        after: Callable[[BaseException | None], None] | None,
    ) -> None:
        self._sink = sink
        self.queue = queue
        self._stats = stats
        self._resolver = resolver
        self._after = after
        self._user_cache: dict[int, SinkUser] = {}
        self._user_cache_tick = 0
        self._finish_lock = threading.Lock()
        self.attached = True
        self.error: BaseException | None = None
        self.finished = False
        self.thread: threading.Thread | None = None

    @property
    def wants_pcm(self) -> bool:
        return self.attached and bool(getattr(self._sink, "wants_pcm", True))

    def start_thread(self, on_detach: Callable[[], None]) -> None:
        def run() -> None:
            while (item := self.queue.get()) is not None:
                if not self.deliver_item(*item):
                    on_detach()
            self.finish()

        self.thread = threading.Thread(target=run, name="voice-recv sink", daemon=True)
        self.thread.start()

    def deliver_all(self) -> int:
        """Hand every queued slot to the sink on this thread; returns the slots delivered."""
        count = 0
        while (item := self.queue.get(0)) is not None:
            self.deliver_item(*item)
            count += item[1] - item[0] + 1
        return count

    def deliver_item(self, first: int, last: int, frames: list[VoiceFrame]) -> bool:
        """Write the frames and advance each tick; False when the sink raised (it is then detached)."""
        if not self.attached:
            return True
        sink = self._sink
        try:
            if frames:
                if self._resolver is None:
                    for frame in frames:
                        sink.write(None, frame)
                else:
                    users = self._users_at(first)
                    for frame in frames:
                        user_id = frame.user_id
                        user = None if user_id is None else users.get(user_id)
                        if user is None and user_id is not None:
                            user = users[user_id] = self._lookup_user(user_id)
                        sink.write(user, frame)
            for tick in range(first, last + 1):
                sink.advance(tick)
        except Exception as exc:
            _log.error("sink %r raised; detaching it", sink, exc_info=exc)
            self._stats.incr("sink_error")
            self.error = exc
            self.attached = False
            self.queue.close()
            return False
        return True

    def forget_user(self, user_id: int) -> None:
        self._user_cache.pop(user_id, None)

    def finish(self) -> None:
        """Clean the sink up and call ``after`` exactly once (with the sink's error, if it failed)."""
        with self._finish_lock:
            if self.finished:
                return
            self.finished = True
        error = self.error
        try:
            self._sink.cleanup()
        except Exception as exc:
            _log.exception("sink cleanup raised")
            self._stats.incr("sink_error")
            error = error or exc
        if self._after is not None:
            try:
                self._after(error)
            except Exception:
                _log.exception("after callback raised")

    def _users_at(self, tick: int) -> dict[int, SinkUser]:
        """The resolved users, cleared when the cache is older than ``_USER_CACHE_SLOTS`` at slot ``tick``."""
        if tick - self._user_cache_tick >= _USER_CACHE_SLOTS:
            self._user_cache.clear()
            self._user_cache_tick = tick
        return self._user_cache

    def _lookup_user(self, user_id: int) -> SinkUser:
        """The resolver's answer; without one (or when it raised) None, and sinks know the speaker by
        ``frame.user_id`` alone (the receive path never imports discord.py: the client's resolver gives objects)."""
        if self._resolver is not None:
            try:
                return self._resolver(user_id)
            except Exception:
                _log.exception("user_resolver raised for %s", user_id)
        return None
