"""Run discord.py clients against a local Discord from inside a test or script."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar, overload

import discord

__all__ = ("default_intents", "running")

ClientT = TypeVar("ClientT", bound=discord.Client)


def default_intents() -> discord.Intents:
    """What a recording bot needs: guilds, voice states, members (to name speakers) and message content."""
    intents = discord.Intents.default()
    intents.members = True
    intents.voice_states = True
    intents.message_content = True
    return intents


@overload
def new_client(**kwargs: Any) -> discord.Client: ...
@overload
def new_client(cls: type[ClientT], **kwargs: Any) -> ClientT: ...
def new_client(cls: type[discord.Client] = discord.Client, **kwargs: Any) -> discord.Client:
    """A client for the local Discord: :func:`default_intents` and a short ``guild_ready_timeout`` (the local
    guild arrives at once, so discord.py's 2 s wait for more guilds is pure delay)."""
    kwargs.setdefault("intents", default_intents())
    kwargs.setdefault("guild_ready_timeout", 0.1)
    return cls(**kwargs)


@contextlib.asynccontextmanager
async def running(client: ClientT, token: str, *, timeout: float = 15.0) -> AsyncIterator[ClientT]:
    """Start ``client`` with ``token`` in a task, wait until it is ready, and close it on exit.

    A login or gateway failure surfaces here as the client's own exception instead of a hang.
    """
    task = asyncio.create_task(client.start(token), name=f"bot {token}")
    ready = asyncio.create_task(client.wait_until_ready())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            raise RuntimeError("the client stopped before it was ready")
        if ready not in done:
            raise TimeoutError(f"the client was not ready within {timeout} s")
        yield client
    finally:
        ready.cancel()
        for vc in list(client.voice_clients):
            with contextlib.suppress(Exception):
                await vc.disconnect(force=True)
        await client.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=5)
