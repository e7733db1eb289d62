"""The shared playout scheduler: tasks run until they leave, wake-ups run them early, work spreads over workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from discord_voicerecv.receive.scheduler import PlayoutScheduler


def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


class Task:
    def __init__(self, runs: int, delay: float = 0.0) -> None:
        self.limit = runs
        self.delay = delay
        self.runs = 0
        self.threads: set[str] = set()
        self.on_run: Callable[[Task], None] | None = None

    def run_scheduled(self) -> float | None:
        self.runs += 1
        self.threads.add(threading.current_thread().name)
        if self.on_run is not None:
            self.on_run(self)
        return None if self.runs >= self.limit else self.delay


def test_tasks_run_until_they_leave_and_spread_over_the_workers() -> None:
    scheduler = PlayoutScheduler(workers=2)
    tasks = [Task(3) for _ in range(4)]
    workers = [scheduler.add(task) for task in tasks]
    assert len({id(w) for w in workers}) == 2
    assert _eventually(lambda: all(t.runs == 3 for t in tasks))
    assert _eventually(lambda: sum(w.tasks for w in workers[:2]) == 0)
    assert all(len(t.threads) == 1 and not next(iter(t.threads)).startswith("MainThread") for t in tasks)


def test_wake_runs_a_sleeping_task_now_and_a_running_one_again() -> None:
    scheduler = PlayoutScheduler(workers=1)
    task = Task(4, delay=3600.0)
    worker = scheduler.add(task)
    assert _eventually(lambda: task.runs == 1)
    worker.wake(task)
    assert _eventually(lambda: task.runs == 2), "a wake-up cuts the hour-long sleep short"
    task.on_run = lambda t: worker.wake(t) if t.runs == 3 else None
    worker.wake(task)
    assert _eventually(lambda: task.runs == 4), "woken while running: it runs again"
    assert _eventually(lambda: worker.tasks == 0)
    worker.wake(task)  # a task that left is not run again
    time.sleep(0.05)
    assert task.runs == 4
