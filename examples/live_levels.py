"""Live per-speaker levels with ``listen_stream()``: the shape of a live speech-to-text bot.

Frames arrive per speaker every 20 ms; they are gathered into half-second chunks (what a speech-to-text engine
would be fed) and each chunk prints a level meter line. Replace ``handle_chunk`` with a call to your recognizer.

Run it against real Discord with ``DISCORD_TOKEN=... python examples/live_levels.py CHANNEL_ID``, or offline
against the local Discord (see docs/local-discord.md): the tests run exactly this code there.
"""

from __future__ import annotations

import array
import asyncio
import math
import os
import sys
from collections.abc import Callable

import discord

from discord_voicerecv import VoiceRecvClient

CHUNK_SECONDS = 0.5
BYTES_PER_SECOND = 48_000 * 2 * 2


def level_dbfs(pcm: bytes) -> float:
    """RMS level of s16le PCM in dB relative to full scale (-inf for digital silence)."""
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    if not samples:
        return -math.inf
    mean_square = sum(s * s for s in samples) / len(samples)
    return 10 * math.log10(mean_square / 32768**2) if mean_square else -math.inf


def meter(name: str, dbfs: float, width: int = 30) -> str:
    """One line: the speaker, a bar from -60 to 0 dBFS, and the level."""
    filled = 0 if dbfs == -math.inf else max(0, min(width, round((dbfs + 60) / 60 * width)))
    return f"{name[:20]:<20} {'#' * filled:<{width}} {max(dbfs, -99.9):6.1f} dBFS"


async def print_levels(
    vc: VoiceRecvClient,
    *,
    seconds: float | None = None,
    chunk_seconds: float = CHUNK_SECONDS,
    out: Callable[[str], object] = print,
) -> dict[int, int]:
    """Stream from ``vc`` for ``seconds`` (forever when None) and print a meter line per speaker per chunk.

    Returns how many chunks each user id produced.
    """
    chunk_bytes = int(chunk_seconds * BYTES_PER_SECOND)
    buffers: dict[int, bytearray] = {}
    chunks: dict[int, int] = {}
    async with vc.listen_stream() as stream:
        if seconds is not None:
            asyncio.get_running_loop().call_later(seconds, stream.close)
        async for frame in stream:
            if frame.user_id is None:
                continue
            buffer = buffers.setdefault(frame.user_id, bytearray())
            buffer += frame.pcm
            if len(buffer) >= chunk_bytes:
                name = getattr(frame.user, "display_name", str(frame.user_id))
                out(meter(name, level_dbfs(bytes(buffer))))
                chunks[frame.user_id] = chunks.get(frame.user_id, 0) + 1
                buffer.clear()
    return chunks


def main() -> None:
    channel_id = int(sys.argv[1])
    intents = discord.Intents.default()
    client = discord.Client(intents=intents)

    @client.event
    async def on_ready() -> None:
        channel = client.get_channel(channel_id)
        if not isinstance(channel, discord.VoiceChannel):
            raise SystemExit(f"{channel_id} is not a voice channel")
        vc = await channel.connect(cls=VoiceRecvClient)
        await print_levels(vc)

    client.run(os.environ["DISCORD_TOKEN"])


if __name__ == "__main__":
    main()
