"""Timing and memory helpers: process CPU time, wall time, resident memory and its peak, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ("Run", "Sample", "median", "peak_rss_mb", "reset_peak_rss", "rss_mb", "timed")


def _status_kb(field_name: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux; NaN elsewhere)."""
    return _status_kb("VmRSS:") / 1024


def peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak_rss` (or process start), in MB."""
    return _status_kb("VmHWM:") / 1024


def reset_peak_rss() -> None:
    """Restart the peak RSS count at the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


@dataclass
class Sample:
    """One measured run: process CPU seconds, wall seconds, packets handled, memory."""

    cpu: float
    wall: float
    packets: int
    rss_before: float = 0.0
    rss_peak: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_us(self) -> float:
        """Process CPU microseconds per packet (every thread of the process counts)."""
        return self.cpu / max(1, self.packets) * 1e6

    @property
    def wall_us(self) -> float:
        return self.wall / max(1, self.packets) * 1e6


@dataclass
class Run:
    """Every sample of one variant; the table shows medians."""

    name: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def cpu_us(self) -> float:
        return median([s.cpu_us for s in self.samples])

    @property
    def wall_us(self) -> float:
        return median([s.wall_us for s in self.samples])

    @property
    def rss_peak(self) -> float:
        return max((s.rss_peak for s in self.samples), default=float("nan"))

    @property
    def rss_growth(self) -> float:
        return max((s.rss_peak - s.rss_before for s in self.samples), default=float("nan"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], int]) -> Sample:
    """Run ``fn`` (which returns the packets it handled) and measure it."""
    reset_peak_rss()
    before = rss_mb()
    c0, w0 = time.process_time(), time.perf_counter()
    packets = fn()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return Sample(cpu, wall, packets, before, peak_rss_mb())
