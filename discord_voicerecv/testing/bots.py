"""Run discord.py clients against a local Discord from inside a test or script."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

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
