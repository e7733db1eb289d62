"""Authenticated packets of SSRCs not yet mapped to a user, kept a moment for the op5 that names their speaker."""

from __future__ import annotations

from collections import deque

from .ingress import RtpPacket
from .stats import ReceiveStats

__all__ = ("UnmappedHold",)

_PER_SSRC = 100
_TOTAL = 1000
_MAX_SSRCS = 64


class UnmappedHold:
    """Holds packets per unmapped SSRC within per-SSRC, total and SSRC-count bounds; every drop is counted.

    Parameters
    ----------
    stats:
        Where ``unknown_ssrc_held``, ``unknown_ssrc_dropped`` and ``unknown_ssrc_expired`` are counted.
    window:
        Seconds a packet is kept (from its arrival) before it expires.
    """

    __slots__ = ("_queues", "_stats", "_total", "window")

    def __init__(self, stats: ReceiveStats, window: float) -> None:
        self._stats = stats
        self.window = window
        self._queues: dict[int, deque[RtpPacket]] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def ssrcs(self) -> set[int]:
        """The SSRCs with packets held."""
        return set(self._queues)

    def add(self, packet: RtpPacket) -> None:
        """Hold ``packet``, or drop it (counted) when a bound is reached; a full SSRC drops its oldest."""
        stats = self._stats
        queue = self._queues.get(packet.ssrc)
        if queue is None:
            if len(self._queues) >= _MAX_SSRCS:
                stats.incr("unknown_ssrc_dropped")
                return
            queue = self._queues[packet.ssrc] = deque()
        if len(queue) >= _PER_SSRC:
            queue.popleft()
            self._total -= 1
            stats.incr("unknown_ssrc_dropped")
        elif self._total >= _TOTAL:
            stats.incr("unknown_ssrc_dropped")
            if not queue:
                del self._queues[packet.ssrc]
            return
        queue.append(packet)
        self._total += 1
        stats.incr("unknown_ssrc_held")

    def take(self, ssrc: int, now: float) -> list[RtpPacket]:
        """Remove the SSRC's packets and return those not expired, in sequence order."""
        queue = self._queues.pop(ssrc, None)
        if not queue:
            return []
        self._total -= len(queue)
        fresh = [packet for packet in queue if now - packet.arrival <= self.window]
        if len(fresh) < len(queue):
            self._stats.incr("unknown_ssrc_expired", len(queue) - len(fresh), ssrc=ssrc)
        base = queue[0].sequence
        fresh.sort(key=lambda packet: (packet.sequence - base + 0x8000) & 0xFFFF)
        return fresh

    def drop(self, ssrc: int) -> int:
        """Forget the SSRC's packets; returns how many there were (the caller counts them)."""
        queue = self._queues.pop(ssrc, None)
        if not queue:
            return 0
        self._total -= len(queue)
        return len(queue)

    def expire(self, now: float) -> None:
        """Drop packets held longer than the window (counted as ``unknown_ssrc_expired``)."""
        for ssrc, queue in list(self._queues.items()):
            while queue and now - queue[0].arrival > self.window:
                queue.popleft()
                self._total -= 1
                self._stats.incr("unknown_ssrc_expired")
            if not queue:
                del self._queues[ssrc]
