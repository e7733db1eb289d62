"""The ``discord-voicerecv`` command: demo, local Discord, offline decode, recording with a bot token."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ("main",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="discord-voicerecv", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="record from simulated speakers on an embedded local Discord (no token)")
    demo.add_argument("--seconds", type=float, default=10.0)
    demo.add_argument("--speakers", type=int, default=3)
    demo.add_argument("--out", type=Path, default=Path("recordings"))
    demo.add_argument("--no-dave", action="store_true", help="turn DAVE end-to-end encryption off (legacy)")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")

    sub.add_parser(
        "local-discord", help="serve a local Discord on loopback (see --help of the subcommand)", add_help=False
    )

    decode = sub.add_parser("decode", help="decode an rtpdump or pcap capture of voice packets to WAV files")
    decode.add_argument("capture", type=Path)
    decode.add_argument("--mode", required=True, help="transport mode, e.g. aead_xchacha20_poly1305_rtpsize")
    decode.add_argument("--key", required=True, help="the 32-byte secret key as hex (from op4)")
    decode.add_argument("--user", action="append", default=[], metavar="SSRC=NAME", help="name an SSRC's track")
    decode.add_argument("--out", type=Path, required=True)

    from .record import add_arguments as add_record_arguments

    record = sub.add_parser("record", help="record a voice channel with a bot token (from an env var) until Ctrl-C")
    add_record_arguments(record)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "local-discord":
        from ..testing.cli import main as local_main

        return local_main(args_list[1:])
    args = _parser().parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        from ..sinks._naming import directory_problem
        from .demo import format_summary, run_demo

        problem = directory_problem(args.out)
        if not args.seconds > 0 or args.speakers < 1 or problem is not None:
            error = f"--out {str(args.out)!r}: {problem}" if problem else "--seconds must be positive, --speakers >= 1"
            print(f"error: {error}", file=sys.stderr)
            return 2

        summary = asyncio.run(
            run_demo(
                seconds=args.seconds,
                speakers=args.speakers,
                out=args.out,
                dave=not args.no_dave,
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
        )
        print(json.dumps(summary, indent=2, sort_keys=True) if args.json else format_summary(summary))
        return 0 if summary.get("ok") else 1
    if args.command == "decode":
        from ..errors import VoiceRecvError
        from .decode import DecodeError, check_arguments, decode_capture

        try:
            key, names = check_arguments(args.capture, mode=args.mode, key=args.key, users=args.user, out=args.out)
            summary = decode_capture(args.capture, mode=args.mode, key=key, names=names, out=args.out)
        except DecodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.status
        except VoiceRecvError as exc:  # e.g. no libopus
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(summary, sort_keys=True))
        return 0
    if args.command == "record":
        from .record import run as run_record

        return run_record(args)
    return 2
