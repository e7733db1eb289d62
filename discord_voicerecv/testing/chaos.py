"""Scheduled faults for a running local Discord: voice server moves, dropped voice websockets, SSRC changes and
media outages, at random times around a mean interval.

Packet-level faults (loss, reordering, spikes, damage) live in :class:`~discord_voicerecv.testing.link.LinkConditions`;
this module adds the events that happen to a whole connection. Tests drive the same operations directly on
:class:`~discord_voicerecv.testing.LocalDiscord` (``move_voice_server``, ``drop_voice_connection``) and on its
voice server (``change_ssrc``, ``blackout``); ``discord-voicerecv local-discord`` exposes them as flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .server import LocalDiscord

__all__ = ("ChaosEvent", "ChaosMonkey", "ChaosPlan")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """How often each connection-level fault happens, as a mean interval in seconds (0: never).

    Parameters
    ----------
    move_every:
        Move the call to a new voice endpoint (VOICE_SERVER_UPDATE to every bot in the channel).
    drop_ws_every:
        Close one bot's voice websocket with 4015 (the client should RESUME).
    ssrc_change_every:
        Give one simulated speaker a new SSRC mid-stream.
    blackout_every / blackout_seconds:
        Silence one member's media path (a speaker's uplink or a bot's downlink) for ``blackout_seconds``.
    seed:
        Seeds the choice of times and targets; ``None`` draws a random seed.
    """

    move_every: float = 0.0
    drop_ws_every: float = 0.0
    ssrc_change_every: float = 0.0
    blackout_every: float = 0.0
    blackout_seconds: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("move_every", "drop_ws_every", "ssrc_change_every", "blackout_every", "blackout_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def is_calm(self) -> bool:
        """True when no fault is scheduled."""
        return not (self.move_every or self.drop_ws_every or self.ssrc_change_every or self.blackout_every)


class ChaosEvent(NamedTuple):
    """One fault that happened: event-loop ``time``, ``kind`` (``"move"``, ``"drop_ws"``, ``"ssrc_change"``,
    ``"blackout"``) and the ``user_id`` it hit (``None`` for a move, which hits everyone)."""

    time: float
    kind: str
    user_id: int | None


class ChaosMonkey:
    """Runs a :class:`ChaosPlan` against a started :class:`~discord_voicerecv.testing.LocalDiscord`.

    Each kind of fault has its own task sleeping an exponentially distributed time (mean: the plan's interval)
    between occurrences. :attr:`events` records what was done, in order.
    """

    def __init__(self, local: LocalDiscord, plan: ChaosPlan) -> None:
        self.local = local
        self.plan = plan
        self.events: list[ChaosEvent] = []
        self._rng = random.Random(plan.seed)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the fault tasks on the running loop."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        for every, action in (
            (plan.move_every, self.move),
            (plan.drop_ws_every, self.drop_ws),
            (plan.ssrc_change_every, self.change_ssrc),
            (plan.blackout_every, self.blackout),
        ):
            if every > 0:
                self._tasks.append(loop.create_task(self._every(every, action), name=f"chaos {action.__name__}"))

    async def stop(self) -> None:
        """Cancel the fault tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def __aenter__(self) -> ChaosMonkey:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _every(self, mean: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self._rng.expovariate(1.0 / mean))
            try:
                await action()
            except Exception:
                _log.exception("chaos: %s failed", getattr(action, "__name__", action))

    def _record(self, kind: str, user_id: int | None) -> None:
        self.events.append(ChaosEvent(asyncio.get_running_loop().time(), kind, user_id))
        _log.info("chaos: %s %s", kind, "" if user_id is None else user_id)

    async def move(self) -> None:
        """Move the call to a new voice endpoint now."""
        await self.local.move_voice_server()
        self._record("move", None)

    async def drop_ws(self) -> None:
        """Drop one connected bot's voice websocket now (4015)."""
        sessions = [uid for uid, s in self.local.voice.gateway.sessions.items() if s.connection is not None]
        if sessions:
            user_id = self._rng.choice(sorted(sessions))
            self.local.drop_voice_connection(user_id)
            self._record("drop_ws", user_id)

    async def change_ssrc(self) -> None:
        """Give one simulated speaker a new SSRC now."""
        speakers = sorted(self.local.voice.speakers)
        if speakers:
            user_id = self._rng.choice(speakers)
            self.local.voice.change_ssrc(user_id)
            self._record("ssrc_change", user_id)

    async def blackout(self) -> None:
        """Silence one member's media path now for ``plan.blackout_seconds``."""
        voice = self.local.voice
        members = sorted({*voice.speakers, *(u for u, s in voice.gateway.sessions.items() if s.peer.link)})
        if members:
            user_id = self._rng.choice(members)
            voice.blackout(user_id, self.plan.blackout_seconds)
            self._record("blackout", user_id)
