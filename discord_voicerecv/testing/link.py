"""Simulated network conditions for the local Discord's media paths: loss, bursts, reordering, duplicates, jitter,
delay spikes, damaged packets and outages.

A :class:`LinkConditions` says what a link does; a :class:`Link` applies it to one path (a relay-to-member downlink
or a simulated speaker's uplink) and counts every decision in :class:`LinkStats`, so a test can compare what a
receiver saw with what the network did. Decisions come from a seeded RNG per link: the same seed and the same
packet sequence give the same drops, whatever the timing.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..frames import FRAME_DURATION

__all__ = ("Link", "LinkConditions", "LinkStats")

FRAME_INTERVAL = FRAME_DURATION
"""Seconds between two voice packets: the unit of a reorder delay."""


@dataclass(frozen=True, slots=True)
class LinkConditions:
    """What a link does to the packets it carries.

    Parameters
    ----------
    loss:
        Probability that a packet is dropped while the link is in its good state; a drop starts a loss burst.
    burst_loss:
        Probability that the packet after a dropped one is dropped too (Gilbert-Elliott bad state); 0 gives
        independent losses, 0.5 gives bursts of two on average.
    reorder:
        Probability that a packet is held back by 1-3 packet intervals so that later packets overtake it.
    duplicate:
        Probability that a packet is delivered twice.
    jitter_ms:
        Upper bound of a uniform random delay added to every packet, in milliseconds.
    seed:
        Seeds the decisions. ``None`` draws a random seed.
    spike / spike_ms:
        Probability that a packet starts a delay spike (a stalled queue): it and every packet offered in the next
        ``spike_ms`` milliseconds are held and then released together when the spike ends.
    truncate:
        Probability that a delivered packet is cut short at a random length (it then fails authentication).
    corrupt:
        Probability that one random bit of a delivered packet is flipped.
    outage / outage_ms:
        Probability that a packet starts an outage: the path goes silent, dropping it and everything offered in
        the next ``outage_ms`` milliseconds (:meth:`Link.blackout` starts one on demand).
    """

    loss: float = 0.0
    burst_loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    jitter_ms: float = 0.0
    seed: int | None = None
    spike: float = 0.0
    spike_ms: float = 0.0
    truncate: float = 0.0
    corrupt: float = 0.0
    outage: float = 0.0
    outage_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "burst_loss", "reorder", "duplicate", "spike", "truncate", "corrupt", "outage"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        for name in ("jitter_ms", "spike_ms", "outage_ms"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value!r}")

    @property
    def is_perfect(self) -> bool:
        """True when the link passes every packet through at once, untouched."""
        return not (
            self.loss
            or self.reorder
            or self.duplicate
            or self.jitter_ms
            or self.spike
            or self.truncate
            or self.corrupt
            or self.outage
        )


@dataclass(slots=True)
class LinkStats:
    """What a link did, packet by packet.

    ``offered`` packets came in; ``dropped`` never left (``burst_dropped`` of them in the bad state,
    ``outage_dropped`` during outages); ``duplicated`` left twice; ``reordered`` were held back; ``delayed`` got
    jitter; ``spiked`` were held by a delay spike; ``truncated`` and ``corrupted`` left damaged. ``delivered``
    counts the datagrams that actually left, duplicates included, so
    ``delivered == offered - dropped + duplicated`` once nothing is pending.
    """

    offered: int = 0
    delivered: int = 0
    dropped: int = 0
    burst_dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    dropped_indices: list[int] = field(default_factory=list)
    """Zero-based positions (in offer order) of the dropped packets."""
    outage_dropped: int = 0
    spiked: int = 0
    truncated: int = 0
    corrupted: int = 0
    damaged_indices: list[int] = field(default_factory=list)
    """Zero-based positions (in offer order) of the packets delivered truncated or bit-flipped."""
    outages: int = 0
    """Outages started, at random or by :meth:`Link.blackout`."""
    reordered_indices: list[int] = field(default_factory=list)
    """Zero-based positions (in offer order) of the packets held back to be overtaken."""
    delivered_at: dict[int, float] | None = None
    """Clock time each packet (by offer position) first left the link, once :meth:`Link.record_delivery_times`
    was called (``None`` before: it grows with every packet)."""


class Link:
    """Carries packets to ``deliver`` under ``conditions``, scheduling delayed ones on ``loop``.

    Parameters
    ----------
    conditions:
        What to do to packets. A perfect link delivers synchronously.
    deliver:
        Called with each datagram that makes it through.
    loop:
        The event loop that runs delayed deliveries; the running loop when omitted.
    salt:
        Mixed into the seed so that several links built from one :class:`LinkConditions` decide differently
        but reproducibly (the relay uses the receiving user id).
    """

    __slots__ = (
        "_bad",
        "_clock",
        "_deliver",
        "_handles",
        "_loop",
        "_outage_until",
        "_rng",
        "_spike_until",
        "conditions",
        "stats",
    )

    def __init__(
        self,
        conditions: LinkConditions,
        deliver: Callable[[bytes], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        salt: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.conditions = conditions
        self.stats = LinkStats()
        self._deliver = deliver
        self._loop = loop
        self._clock = clock
        seed = conditions.seed if conditions.seed is not None else random.getrandbits(64)
        self._rng = random.Random(f"{seed}:{salt}")
        self._bad = False
        self._handles: set[asyncio.TimerHandle] = set()
        self._spike_until = -math.inf
        self._outage_until = -math.inf

    def send(self, packet: bytes) -> None:
        """Offer one datagram to the link."""
        stats = self.stats
        index = stats.offered
        stats.offered += 1
        cond = self.conditions
        if cond.is_perfect and self._outage_until == -math.inf:
            self._emit(packet, index)
            return
        rng = self._rng
        if self._in_outage(cond, rng):
            stats.dropped += 1
            stats.outage_dropped += 1
            stats.dropped_indices.append(index)
            return
        if self._bad:
            lost = rng.random() < cond.burst_loss
            if lost:
                stats.burst_dropped += 1
        else:
            lost = rng.random() < cond.loss
        self._bad = lost
        if lost:
            stats.dropped += 1
            stats.dropped_indices.append(index)
            return
        delay = 0.0
        if cond.reorder and rng.random() < cond.reorder:
            stats.reordered += 1
            stats.reordered_indices.append(index)
            delay += (rng.randint(1, 3) + 0.5) * FRAME_INTERVAL
        if cond.jitter_ms:
            stats.delayed += 1
            delay += rng.uniform(0.0, cond.jitter_ms) / 1000.0
        delay = max(delay, self._spike_delay(cond, rng))
        packet = self._damage(packet, index, cond, rng)
        copies = 1
        if cond.duplicate and rng.random() < cond.duplicate:
            stats.duplicated += 1
            copies = 2
        for _ in range(copies):
            if delay > 0.0:
                self._later(delay, packet, index)
            else:
                self._emit(packet, index)

    def record_delivery_times(self) -> None:
        """Keep, from now on, when each packet left the link (:attr:`LinkStats.delivered_at`)."""
        if self.stats.delivered_at is None:
            self.stats.delivered_at = {}

    def blackout(self, seconds: float) -> None:
        """Go silent now for ``seconds``: every packet offered meanwhile is dropped (and counted)."""
        self.stats.outages += 1
        self._outage_until = max(self._outage_until, self._now() + seconds)

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        return loop.time()

    def _in_outage(self, cond: LinkConditions, rng: random.Random) -> bool:
        if self._outage_until != -math.inf and self._now() < self._outage_until:
            return True
        if cond.outage and rng.random() < cond.outage:
            self.stats.outages += 1
            self._outage_until = self._now() + cond.outage_ms / 1000.0
            return True
        return False

    def _spike_delay(self, cond: LinkConditions, rng: random.Random) -> float:
        """Seconds until the current delay spike ends (0 when none), starting one at random."""
        if not cond.spike:
            return 0.0
        now = self._now()
        if now >= self._spike_until and rng.random() < cond.spike:
            self._spike_until = now + cond.spike_ms / 1000.0
        if now < self._spike_until:
            self.stats.spiked += 1
            return self._spike_until - now
        return 0.0

    def _damage(self, packet: bytes, index: int, cond: LinkConditions, rng: random.Random) -> bytes:
        stats = self.stats
        damaged = False
        if cond.truncate and packet and rng.random() < cond.truncate:
            packet = packet[: rng.randrange(len(packet))]
            stats.truncated += 1
            damaged = True
        if cond.corrupt and packet and rng.random() < cond.corrupt:
            bit = rng.randrange(len(packet) * 8)
            data = bytearray(packet)
            data[bit >> 3] ^= 1 << (bit & 7)
            packet = bytes(data)
            stats.corrupted += 1
            damaged = True
        if damaged:
            stats.damaged_indices.append(index)
        return packet

    def close(self) -> None:
        """Cancel the deliveries still waiting; they count as neither delivered nor dropped."""
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()

    @property
    def pending(self) -> int:
        """Datagrams held back and not delivered yet."""
        return len(self._handles)

    def _later(self, delay: float, packet: bytes, index: int) -> None:
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._handles.discard(handle)
            self._emit(packet, index)

        handle = loop.call_later(delay, fire)
        self._handles.add(handle)

    def _emit(self, packet: bytes, index: int) -> None:
        stats = self.stats
        stats.delivered += 1
        if stats.delivered_at is not None:
            stats.delivered_at.setdefault(index, self._now())
        self._deliver(packet)
