"""Map one stream's RTP timestamps to slots of the listening timeline.

Slot ``n`` covers ``[t0 + 20n, t0 + 20(n + 1))`` ms, ``t0`` being when listening started. Inside a talk spurt a
frame's slot follows its RTP timestamp exactly (``anchor_slot + (ts - anchor_ts) // 960``), so network jitter
does not move audio around. Discord sends nothing while a user is silent, so a new spurt is anchored on arrival
time instead: on the first packet's arrival, moved earlier until the spurt starts playing whenever a later packet
arrives with less delay (the least-delayed packet is the best estimate of when the audio was captured). Frames
whose slot then lies before the first slot still to be played are late: dropped, never pushing the spurt later.
Pure: times are passed in, nothing reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..frames import FRAME_DURATION, FRAME_SAMPLES

__all__ = ("Placement", "Timeline", "slot_at")

_PERSISTENT_LATE = 3
"""Newest frames in a row, each at least as late as the one before, that show a lasting rise of the delay."""


def slot_at(t0: float, t: float) -> int:
    """The slot containing time ``t`` on a timeline that starts at ``t0``."""
    return math.floor((t - t0) / FRAME_DURATION + 1e-9)


@dataclass(slots=True)
class Placement:
    """Where a frame goes: its ``slot``, the samples ``offset`` into that slot, the ``spurt`` it belongs to, and
    whether it ``started`` that spurt.

    ``moved`` > 0 means this frame showed the spurt's anchor was too late (the first packet was delayed more than
    this one): every frame already placed in the spurt moves ``moved`` slots earlier (those that land before the
    first free slot are then late). That only happens before the spurt starts playing.
    """

    slot: int
    spurt: int
    started: bool
    moved: int = 0
    offset: int = 0


class Timeline:
    """Per-SSRC timestamp-to-slot mapping with talk-spurt detection.

    Parameters
    ----------
    t0:
        Clock time of slot 0's start.
    max_silence:
        A packet arriving more than this many seconds after the stream's previous packet starts a new spurt, unless
        its timestamp continues the spurt with no pause and its slot can still be played (a stall, not a pause).
    max_early:
        A frame whose RTP slot lies more than this many seconds after its arrival means the timestamps jumped
        (a sender restart); the stream is re-anchored on arrival time.
    """

    __slots__ = (
        "_anchor_slot",
        "_anchor_ts",
        "_first_slot",
        "_floor",
        "_frozen",
        "_last_arrival",
        "_late_run",
        "_lateness",
        "_max_early_slots",
        "last_slot",
        "max_silence",
        "shifts",
        "spurt",
        "t0",
    )

    def __init__(self, t0: float, *, max_silence: float = 0.2, max_early: float = 4.0) -> None:
        self.t0 = t0
        self.max_silence = max_silence
        self._max_early_slots = round(max_early / FRAME_DURATION)
        self._anchor_slot: int | None = None
        self._anchor_ts = 0
        self._last_arrival = -math.inf
        self.spurt = 0
        """Id of the current talk spurt (increments with each new spurt, starting at 1)."""
        self._floor = -(1 << 62)
        self._first_slot = 0
        self._frozen = False
        self.last_slot: int | None = None
        """Latest slot given to any frame of this stream."""
        self.shifts = 0
        """Times late newest frames pushed the rest of their spurt later (the network delay grew mid-spurt)."""
        self._lateness = 0
        self._late_run = 0

    def reset(self) -> None:
        """End the current spurt: the next packet is anchored anew (RTCP BYE, sender restart)."""
        self._anchor_slot = None

    def freeze(self) -> None:
        """The current spurt started playing: its anchor no longer moves earlier."""
        self._frozen = True

    def place(self, timestamp: int, arrival: float, *, first_free: int, newest: bool) -> Placement | None:
        """Give a frame its slot, or ``None`` when that slot was already played out (a late frame).

        Parameters
        ----------
        timestamp:
            The frame's unwrapped RTP timestamp.
        arrival:
            When the packet arrived (same clock as ``t0``).
        first_free:
            The first slot not yet played out; nothing may be placed before it.
        newest:
            True when the packet has the highest sequence number of the stream so far. Only the newest packet
            may start a spurt or shift the anchor later; an older one that would be late is dropped instead.
        """
        gap = arrival - self._last_arrival
        if gap > 0:
            self._last_arrival = arrival
        arrival_slot = math.floor((arrival - self.t0) / FRAME_DURATION + 1e-9)  # slot_at, inlined: once per packet
        anchor_slot = self._anchor_slot
        if anchor_slot is None:
            return self._anchor(timestamp, arrival_slot, first_free)
        delta = timestamp - self._anchor_ts
        slot = anchor_slot + delta // FRAME_SAMPLES
        if newest and gap > self.max_silence and not self._continues(slot, first_free):
            return self._anchor(timestamp, arrival_slot, first_free)
        if slot - arrival_slot > self._max_early_slots:
            return self._anchor(timestamp, arrival_slot, first_free) if newest else None
        if slot < self._floor:
            return self._late_newest(timestamp, arrival_slot - slot, first_free) if newest else None
        moved = 0
        if slot > arrival_slot and not self._frozen:
            moved = max(0, min(slot - arrival_slot, self._first_slot - self._floor))
            if moved:
                self._anchor_slot = anchor_slot - moved
                self._first_slot -= moved
                if self.last_slot is not None:
                    self.last_slot -= moved
                slot -= moved
        if slot < first_free:
            if newest and arrival_slot >= first_free:
                return self._late_newest(timestamp, arrival_slot - slot, first_free)
            return None
        if newest:
            self._late_run = 0
        if self.last_slot is None or slot > self.last_slot:
            self.last_slot = slot
        if slot < self._first_slot:
            self._first_slot = slot
        return Placement(slot, self.spurt, False, moved, delta % FRAME_SAMPLES)

    def _continues(self, slot: int, first_free: int) -> bool:
        """A frame that arrived after a silence but whose timestamp follows the spurt with no pause (the sender did
        not stop: the network or this process stalled) stays in the spurt while its slot can still be played."""
        last = self.last_slot
        return last is not None and first_free <= slot and last < slot <= last + self.max_silence / FRAME_DURATION

    def _anchor(self, timestamp: int, slot: int, first_free: int) -> Placement | None:
        """Start a new spurt at ``slot`` (never over the previous spurt); None when that slot was played."""
        last = self.last_slot
        if last is not None:
            self._floor = last + 1
            slot = max(slot, last + 1)
        self._anchor_slot = slot
        self._anchor_ts = timestamp
        self.spurt += 1
        self._first_slot = slot
        self._frozen = False
        self._late_run = 0
        self.last_slot = slot
        if slot < first_free:
            return None
        return Placement(slot, self.spurt, True)

    def _late_newest(self, timestamp: int, lateness: int, first_free: int) -> Placement | None:
        """A newest frame whose slot was played: late alone while frames arrive in a burst (a delay spike or a stall
        of this process: each frame of the burst is less late than the one before, and the spurt keeps its place);
        when lateness holds over three frames, the delay grew for good and the spurt moves later."""
        self._late_run = self._late_run + 1 if self._late_run and lateness >= self._lateness else 1
        self._lateness = lateness
        if self._late_run < _PERSISTENT_LATE:
            return None
        self._late_run = 0
        return self._shift(timestamp, first_free)

    def _shift(self, timestamp: int, first_free: int) -> Placement:
        """Re-anchor the running spurt so this (newest, late) frame plays in the first free slot."""
        self.shifts += 1
        self._frozen = True
        slot = max(first_free, self._floor)
        self._anchor_slot = slot
        self._anchor_ts = timestamp
        if self.last_slot is None or slot > self.last_slot:
            self.last_slot = slot
        return Placement(slot, self.spurt, False)
