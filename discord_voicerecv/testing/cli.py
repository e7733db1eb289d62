"""``discord-voicerecv local-discord``: serve a local Discord until interrupted.

The first line on stdout is one JSON object, ``{"url", "guild_id", "voice_channel_id", "text_channel_id",
"speakers", "guilds"}``, so a script or another process can read it, call ``use_local_discord(url)`` and start its
bots. The simulated speakers talk (their clips over and over, with pauses) unless ``--quiet``. With ``--guilds N``
each guild (on its own shard) gets ``--speakers`` of them.
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
from dataclasses import dataclass

from .chaos import ChaosMonkey, ChaosPlan
from .clips import list_clips
from .link import LinkConditions
from .server import LocalDiscord

__all__ = ("main",)


def _percent(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage between 0 and 100")
    return value / 100.0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


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
    parser.add_argument("--speakers", type=_count, default=0, help="simulated speakers in each voice channel")
    parser.add_argument(
        "--guilds", type=_positive, default=1, help="guilds to serve, spread over shards as Discord does (default 1)"
    )
    talk = parser.add_argument_group("speakers", "what the simulated speakers say")
    talk.add_argument(
        "--clip",
        action="append",
        choices=list_clips(),
        metavar="NAME",
        help=f"a clip to speak, repeat for several (given to speakers in turn); one of {', '.join(list_clips())}",
    )
    talk.add_argument(
        "--pause", type=_non_negative, default=1.0, metavar="S", help="seconds of quiet between clips (default 1)"
    )
    talk.add_argument("--quiet", action="store_true", help="speakers join the channel but never talk")
    parser.add_argument("--no-dave", action="store_true", help="no DAVE end-to-end encryption in voice")
    parser.add_argument("--loss", type=_percent, default=0.0, metavar="PCT", help="voice packet loss, percent")
    parser.add_argument("--reorder", type=_percent, default=0.0, metavar="PCT", help="voice reordering, percent")
    parser.add_argument("--duplicate", type=_percent, default=0.0, metavar="PCT", help="voice duplicates, percent")
    parser.add_argument("--jitter", type=_non_negative, default=0.0, metavar="MS", help="voice jitter bound, ms")
    chaos = parser.add_argument_group("chaos", "faults on the voice paths (see discord_voicerecv.testing.chaos)")
    chaos.add_argument("--burst-loss", type=_percent, default=0.0, metavar="PCT", help="loss after a loss, percent")
    chaos.add_argument("--spike", type=_percent, default=0.0, metavar="PCT", help="packets starting a delay spike")
    chaos.add_argument("--spike-ms", type=_non_negative, default=300.0, metavar="MS", help="delay spike length, ms")
    chaos.add_argument("--truncate", type=_percent, default=0.0, metavar="PCT", help="packets cut short, percent")
    chaos.add_argument("--corrupt", type=_percent, default=0.0, metavar="PCT", help="packets with a bit flipped")
    chaos.add_argument("--outage", type=_percent, default=0.0, metavar="PCT", help="packets starting an outage")
    chaos.add_argument("--outage-ms", type=_non_negative, default=2000.0, metavar="MS", help="outage length, ms")
    chaos.add_argument("--seed", type=int, default=None, help="seed of the random faults")
    chaos.add_argument("--move-every", type=_non_negative, default=0.0, metavar="S", help="move the voice server")
    chaos.add_argument("--drop-ws-every", type=_non_negative, default=0.0, metavar="S", help="drop a voice ws (4015)")
    chaos.add_argument("--ssrc-change-every", type=_non_negative, default=0.0, metavar="S", help="new speaker SSRC")
    chaos.add_argument("--blackout-every", type=_non_negative, default=0.0, metavar="S", help="silence a media path")
    chaos.add_argument("--blackout-seconds", type=_non_negative, default=1.0, metavar="S", help="blackout length")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    return parser


def link_from_args(args: argparse.Namespace) -> LinkConditions:
    """The downlink conditions the flags describe."""
    return LinkConditions(
        loss=args.loss,
        burst_loss=args.burst_loss,
        reorder=args.reorder,
        duplicate=args.duplicate,
        jitter_ms=args.jitter,
        seed=args.seed,
        spike=args.spike,
        spike_ms=args.spike_ms,
        truncate=args.truncate,
        corrupt=args.corrupt,
        outage=args.outage,
        outage_ms=args.outage_ms,
    )


def plan_from_args(args: argparse.Namespace) -> ChaosPlan:
    """The connection faults the flags schedule."""
    return ChaosPlan(
        move_every=args.move_every,
        drop_ws_every=args.drop_ws_every,
        ssrc_change_every=args.ssrc_change_every,
        blackout_every=args.blackout_every,
        blackout_seconds=args.blackout_seconds,
        seed=args.seed,
    )


@dataclass(frozen=True)
class Talk:
    """The simulated speakers to add: how many, their clips (in turn), the quiet between clips, or silent."""

    speakers: int = 0
    clips: Sequence[str] = ()
    pause: float = 1.0
    quiet: bool = False


def talk_from_args(args: argparse.Namespace) -> Talk:
    """The speakers the flags ask for."""
    return Talk(speakers=args.speakers, clips=args.clip or list_clips(), pause=args.pause, quiet=args.quiet)


async def _serve(local: LocalDiscord, plan: ChaosPlan | None = None, talk: Talk = Talk()) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with local, ChaosMonkey(local, plan or ChaosPlan()):
        guilds = []
        turn = 0
        for guild in local.guilds.values():
            speakers = []
            for _ in range(talk.speakers):
                clip = talk.clips[turn % len(talk.clips)] if talk.clips else None
                turn += 1
                speaker = local.add_speaker(clip=clip, guild_id=guild.id)
                if not talk.quiet:
                    speaker.start(pause=talk.pause)
                speakers.append({"user_id": speaker.user_id, "name": speaker.name, "clip": speaker.clip})
            guilds.append(
                {
                    "guild_id": guild.id,
                    "voice_channel_id": guild.voice_channel_id,
                    "text_channel_id": guild.text_channel_id,
                    "speakers": speakers,
                }
            )
        line = {
            "url": local.url,
            "guild_id": local.guild_id,
            "voice_channel_id": local.voice_channel_id,
            "text_channel_id": local.text_channel_id,
            "speakers": guilds[0]["speakers"],
            "guilds": guilds,
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
    link = link_from_args(args)
    local = LocalDiscord(
        host=args.host,
        port=args.port,
        dave=not args.no_dave,
        link=None if link.is_perfect else link,
        guilds=args.guilds,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(local, plan_from_args(args), talk_from_args(args)))
    return 0
