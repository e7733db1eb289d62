"""Simulated network conditions for the local Discord's media paths: loss, bursts, reordering, duplicates, jitter.

A :class:`LinkConditions` says what a link does; a :class:`Link` applies it to one path (a relay-to-member downlink
or a simulated speaker's uplink) and counts every decision in :class:`LinkStats`, so a test can compare what a
receiver saw with what the network did. Decisions come from a seeded RNG per link: the same seed and the same
packet sequence give the same drops, whatever the timing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ("Link", "LinkConditions", "LinkStats")

FRAME_INTERVAL = 0.020
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
    """

    loss: float = 0.0
    burst_loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    jitter_ms: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("loss", "burst_loss", "reorder", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.jitter_ms < 0:
            raise ValueError(f"jitter_ms must not be negative, got {self.jitter_ms!r}")

    @property
    def is_perfect(self) -> bool:
        """True when the link passes every packet through at once, untouched."""
        return not (self.loss or self.reorder or self.duplicate or self.jitter_ms)


@dataclass(slots=True)
class LinkStats:
    """What a link did, packet by packet.

    ``offered`` packets came in; ``dropped`` never left (``burst_dropped`` of them in the bad state);
    ``duplicated`` left twice; ``reordered`` were held back; ``delayed`` got jitter. ``delivered`` counts the
    datagrams that actually left, duplicates included, so ``delivered == offered - dropped + duplicated``.
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

    __slots__ = ("_bad", "_deliver", "_handles", "_loop", "_rng", "conditions", "stats")

    def __init__(
        self,
        conditions: LinkConditions,
        deliver: Callable[[bytes], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        salt: int = 0,
    ) -> None:
        self.conditions = conditions
        self.stats = LinkStats()
        self._deliver = deliver
        self._loop = loop
        seed = conditions.seed if conditions.seed is not None else random.getrandbits(64)
        self._rng = random.Random(f"{seed}:{salt}")
        self._bad = False
        self._handles: set[asyncio.TimerHandle] = set()

    def send(self, packet: bytes) -> None:
        """Offer one datagram to the link."""
        stats = self.stats
        index = stats.offered
        stats.offered += 1
        cond = self.conditions
        if cond.is_perfect:
            self._emit(packet)
            return
        rng = self._rng
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
            delay += (rng.randint(1, 3) + 0.5) * FRAME_INTERVAL
        if cond.jitter_ms:
            stats.delayed += 1
            delay += rng.uniform(0.0, cond.jitter_ms) / 1000.0
        copies = 1
        if cond.duplicate and rng.random() < cond.duplicate:
            stats.duplicated += 1
            copies = 2
        for _ in range(copies):
            if delay > 0.0:
                self._later(delay, packet)
            else:
                self._emit(packet)

    def close(self) -> None:
        """Cancel the deliveries still waiting; they count as neither delivered nor dropped."""
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()

    @property
    def pending(self) -> int:
        """Datagrams held back and not delivered yet."""
        return len(self._handles)

    def _later(self, delay: float, packet: bytes) -> None:
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._handles.discard(handle)
            self._emit(packet)

        handle = loop.call_later(delay, fire)
        self._handles.add(handle)

    def _emit(self, packet: bytes) -> None:
        self.stats.delivered += 1
        self._deliver(packet)
