"""One playout scheduler per process: a few threads run every receiver's due slots.

A receiver asks to be run again after some delay; wake-ups are rounded up to a shared 20 ms grid so one thread
wake-up serves every receiver due at that moment, and a receiver with nothing to play asks for a long delay and is
woken early by its next datagram. Silent connections therefore cost next to nothing, and hundreds of receivers need
no thread of their own for playout. Receivers are spread over a few workers so decoding (which releases the GIL in
libopus) can use more than one core.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
from typing import Protocol

from ..frames import FRAME_DURATION

__all__ = ("GRID", "PlayoutScheduler", "ScheduledTask", "Worker", "shared_scheduler")

_log = logging.getLogger(__name__)

GRID = FRAME_DURATION
"""Seconds between the instants wake-ups are rounded up to: one slot."""
_MAX_WORKERS = 4


class ScheduledTask(Protocol):
    def run_scheduled(self) -> float | None:
        """Do the due work; return seconds until the next run, or None to leave the scheduler."""
        ...


class Worker:
    """One thread and a heap of ``(when, order, task, generation)``; stale generations are skipped."""

    __slots__ = ("_again", "_cond", "_generation", "_heap", "_order", "_running", "_thread", "name", "tasks")

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, ScheduledTask, int]] = []
        self._order = itertools.count()
        self._generation: dict[ScheduledTask, int] = {}
        self._again: set[ScheduledTask] = set()
        self._running: ScheduledTask | None = None
        self._thread: threading.Thread | None = None
        self.tasks = 0

    def add(self, task: ScheduledTask) -> None:
        with self._cond:
            self.tasks += 1
            self._push(task, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def wake(self, task: ScheduledTask, delay: float = 0.0) -> None:
        """Run ``task`` after ``delay`` seconds at most (at once by default; again, if it is running now)."""
        with self._cond:
            if task not in self._generation:
                return
            if self._running is task:
                self._again.add(task)
                return
            self._push(task, time.monotonic() + delay)

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def _push(self, task: ScheduledTask, when: float) -> None:
        generation = self._generation.get(task, 0) + 1
        self._generation[task] = generation
        heapq.heappush(self._heap, (when, next(self._order), task, generation))
        if self._heap[0][2] is task:
            self._cond.notify()

    def _loop(self) -> None:
        cond = self._cond
        heap = self._heap
        while True:
            with cond:
                while True:
                    while heap and self._generation.get(heap[0][2]) != heap[0][3]:
                        heapq.heappop(heap)
                    if not heap:
                        cond.wait()
                        continue
                    wait = heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    cond.wait(wait)
                task = heapq.heappop(heap)[2]
                self._running = task
            try:
                delay = task.run_scheduled()
            except Exception:
                _log.exception("voice playout task failed")
                delay = None
            with cond:
                self._running = None
                if task in self._again:
                    self._again.discard(task)
                    if delay is not None:
                        delay = 0.0
                if delay is None:
                    del self._generation[task]
                    self.tasks -= 1
                else:
                    now = time.monotonic()
                    when = math.ceil((now + delay) / GRID) * GRID if delay > 0 else now
                    self._push(task, when)


class PlayoutScheduler:
    """Runs scheduled tasks on a few shared worker threads (started on first use)."""

    __slots__ = ("_lock", "_workers")

    def __init__(self, workers: int | None = None) -> None:
        count = workers if workers is not None else min(_MAX_WORKERS, os.cpu_count() or 1)
        self._workers = [Worker(f"voice-recv playout {i}") for i in range(max(1, count))]
        self._lock = threading.Lock()

    def add(self, task: ScheduledTask) -> Worker:
        """Schedule ``task`` now on the least busy worker; returns the worker, for :meth:`Worker.wake`."""
        with self._lock:
            worker = min(self._workers, key=lambda w: w.tasks)
            worker.add(task)
        return worker


_shared: PlayoutScheduler | None = None
_shared_lock = threading.Lock()


def shared_scheduler() -> PlayoutScheduler:
    """The process's scheduler."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = PlayoutScheduler()
        return _shared
