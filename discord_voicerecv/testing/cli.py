"""``discord-voicerecv local-discord``: serve a local Discord until interrupted.

The first line on stdout is one JSON object, ``{"url", "guild_id", "voice_channel_id", "text_channel_id"}``, so a
script or another process can read it, call ``use_local_discord(url)`` and start its bots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence

from .link import LinkConditions
from .server import LocalDiscord

__all__ = ("main",)


def _percent(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage between 0 and 100")
    return value / 100.0


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discord-voicerecv local-discord",
        description="Serve a local Discord (REST, gateway, voice) for discord.py bots; prints one JSON line first.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="REST/gateway port (default: a free one)")
    parser.add_argument("--speakers", type=int, default=0, help="simulated speakers in the voice channel")
    parser.add_argument("--no-dave", action="store_true", help="no DAVE end-to-end encryption in voice")
    parser.add_argument("--loss", type=_percent, default=0.0, metavar="PCT", help="voice packet loss, percent")
    parser.add_argument("--reorder", type=_percent, default=0.0, metavar="PCT", help="voice reordering, percent")
    parser.add_argument("--duplicate", type=_percent, default=0.0, metavar="PCT", help="voice duplicates, percent")
    parser.add_argument("--jitter", type=_non_negative, default=0.0, metavar="MS", help="voice jitter bound, ms")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    return parser


async def _serve(local: LocalDiscord) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with local:
        line = {
            "url": local.url,
            "guild_id": local.guild_id,
            "voice_channel_id": local.voice_channel_id,
            "text_channel_id": local.text_channel_id,
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``local-discord`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    link = LinkConditions(loss=args.loss, reorder=args.reorder, duplicate=args.duplicate, jitter_ms=args.jitter)
    local = LocalDiscord(
        host=args.host,
        port=args.port,
        speakers=args.speakers,
        dave=not args.no_dave,
        link=None if link.is_perfect else link,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(local))
    return 0
