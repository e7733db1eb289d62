"""``discord-voicerecv record``: join a voice channel with a bot token and record it to files until Ctrl-C.

The token is read from an environment variable and never printed. A progress line (elapsed time, speakers,
bytes written) goes to stderr about once a second; Ctrl-C or ``--seconds`` finishes the files cleanly and a JSON
summary is printed on stdout. Further Ctrl-Cs while the files are being finished only say so. Arguments (token
variable, channel, output folder, format and its ffmpeg) are checked before logging in; nothing is written before
listening starts, and an existing recording in ``--out`` is never overwritten (new files get ``-2``, ``-3``...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import discord

from ..client import VoiceRecvClient
from ..errors import FFmpegNotFound, SinkError, VoiceRecvError
from ..frames import FRAME_BYTES, FRAME_DURATION, VoiceFrame
from ..opus import ensure_discord_opus
from ..sinks._naming import directory_problem
from ..sinks.base import AudioSink, SinkUser
from ..sinks.limits import StopReason
from ..sinks.multi import MultiSink
from ..sinks.wave import WaveSink

__all__ = ("FORMATS", "add_arguments", "make_sink", "run")

FORMATS = ("wav", "flac", "mp3", "ogg")
"""Output formats: ``wav`` (WaveSink), ``flac``/``mp3`` (FFmpegSink), ``ogg`` (per-speaker ``.opus`` files re-encoded
without in-band FEC by ``OggOpusSink(reencode=True)`` so that every player decodes them, plus an encoded
``mix.opus``)."""

PROGRESS_INTERVAL = 1.0
_READY_TIMEOUT = 60.0

_log = logging.getLogger(__name__)


class RecordError(Exception):
    """A problem the user can fix (missing token, wrong channel); printed without a traceback."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``record`` options to ``parser``."""
    parser.add_argument("--token-env", required=True, metavar="VAR", help="environment variable holding the bot token")
    parser.add_argument("--channel", required=True, type=int, metavar="ID", help="voice channel id to record")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the recordings")
    parser.add_argument("--format", choices=FORMATS, default="wav", help="file format (default wav)")
    parser.add_argument("--seconds", type=float, default=None, metavar="N", help="stop after N seconds")
    parser.add_argument("--stop-when-alone", action="store_true", help="stop when everyone else has left the channel")
    parser.add_argument(
        "--local-discord",
        metavar="URL",
        default=None,
        help="record from a local Discord (the url printed by `discord-voicerecv local-discord`) instead of Discord",
    )


def make_sink(fmt: str, out: Path) -> AudioSink:
    """The sink writing ``fmt`` files (one per speaker plus a mix) into ``out``; raises :class:`SinkError` when the
    ffmpeg in use cannot write the format."""
    if fmt == "wav":
        return WaveSink(out)
    from ..sinks.ffmpeg import FFmpegSink

    if fmt == "ogg":
        from ..sinks.multi import MultiSink
        from ..sinks.ogg import OggOpusSink

        encoder = FFmpegSink(out, format="opus", per_user=False)
        encoder.check_writable()
        return MultiSink(OggOpusSink(out, reencode=True), encoder)
    if fmt in FORMATS:
        sink = FFmpegSink(out, format=fmt)
        sink.check_writable()
        return sink
    raise RecordError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def run(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run ``record`` with parsed ``args``; returns the exit status. Output goes to ``sys.stdout``/``sys.stderr``
    as they are at the call unless given."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    token = os.environ.get(args.token_env, "").strip()
    if not token:
        print(f"error: environment variable {args.token_env} is missing or empty; put the bot token in it", file=stderr)
        return 2
    _redact_logs(token)
    if args.seconds is not None and not args.seconds > 0:
        print("error: --seconds must be positive", file=stderr)
        return 2
    if args.channel <= 0:
        print("error: --channel must be a voice channel id (a positive number)", file=stderr)
        return 2
    problem = directory_problem(args.out)
    if problem is not None:
        print(f"error: --out {str(args.out)!r}: {problem}", file=stderr)
        return 2
    try:
        sink = make_sink(args.format, args.out)
    except (RecordError, FFmpegNotFound, SinkError) as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    interrupts = _Interrupts(stderr)
    try:
        with interrupts.installed():
            summary = asyncio.run(_record(args, token, stderr, sink, interrupts))
    except RecordError as exc:
        print(f"error: {_redact(str(exc), token)}", file=stderr)
        return 2
    except discord.LoginFailure as exc:
        print(f"error: Discord refused the token in {args.token_env}: {_redact(str(exc), token)}", file=stderr)
        return 1
    except (discord.DiscordException, OSError, TimeoutError, VoiceRecvError) as exc:
        print(f"error: {type(exc).__name__}: {_redact(str(exc), token)}", file=stderr)
        return 1
    print(json.dumps(summary, sort_keys=True), file=stdout)
    return 0 if summary.get("error") is None else 1


class _Recorder(discord.Client):
    """A client that tracks who is speaking for the progress line."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default())
        self.speaking: set[int] = set()
        self.heard: set[int] = set()

    async def on_voice_member_speaking_start(self, member: discord.abc.Snowflake) -> None:
        self.speaking.add(member.id)
        self.heard.add(member.id)

    async def on_voice_member_speaking_stop(self, member: discord.abc.Snowflake) -> None:
        self.speaking.discard(member.id)


class _Interrupts:
    """Ctrl-C and SIGTERM for the whole command: the first stops the recording, later ones only say that the files
    are being finished (and are ignored once they are), so no traceback ever cuts the files or the summary short."""

    def __init__(self, stderr: TextIO) -> None:
        self.count = 0
        self._stderr = stderr
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the signals while the block runs; once one came, they stay ignored for the rest of the command."""
        previous: dict[signal.Signals, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for restored, handler in previous.items():
                signal.signal(restored, signal.SIG_IGN if self.count else handler)

    def attach(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """Set ``event`` on ``loop`` at the first signal (at once if one already came)."""
        self._loop, self._event = loop, event
        if self.count:
            event.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        loop, event = self._loop, self._event
        if loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop just closed
            if self.count == 1:
                loop.call_soon_threadsafe(event.set)
            else:
                loop.call_soon_threadsafe(self._say_finishing)

    def _say_finishing(self) -> None:
        print("still finishing the files; they will be complete in a moment", file=self._stderr, flush=True)


async def _record(
    args: argparse.Namespace, token: str, stderr: TextIO, sink: AudioSink, interrupts: _Interrupts
) -> dict[str, Any]:
    if args.local_discord:
        from ..testing import use_local_discord

        try:
            use_local_discord(args.local_discord)
        except ValueError as exc:
            raise RecordError(f"--local-discord: {exc}") from exc
    ensure_discord_opus()
    interrupted = asyncio.Event()
    interrupts.attach(asyncio.get_running_loop(), interrupted)
    client = _Recorder()
    print("logging in to Discord...", file=stderr, flush=True)
    runner = asyncio.create_task(client.start(token), name="record: discord client")
    try:
        await _wait_ready(client, runner, interrupted)
        if interrupted.is_set():
            return {"error": None, "seconds": 0.0, "files": [], "out": str(args.out), "interrupted": True}
        channel = await _voice_channel(client, args.channel)
        print(f"joining #{channel.name}...", file=stderr, flush=True)
        vc = await channel.connect(cls=VoiceRecvClient)
        return await _listen(client, vc, args, interrupted, stderr, sink)
    finally:
        for vc_ in list(client.voice_clients):
            with contextlib.suppress(Exception):
                await vc_.disconnect(force=True)
        await client.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(runner, timeout=5)


async def _wait_ready(client: discord.Client, runner: asyncio.Task[None], interrupted: asyncio.Event) -> None:
    ready = asyncio.create_task(client.wait_until_ready())
    stop = asyncio.create_task(interrupted.wait())
    try:
        done, _ = await asyncio.wait({runner, ready, stop}, timeout=_READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
        stop.cancel()
    if runner in done:
        runner.result()
        raise RecordError("the Discord client stopped before it was ready")
    if not done:
        raise TimeoutError(f"not logged in to Discord within {_READY_TIMEOUT:.0f} s")


async def _voice_channel(client: discord.Client, channel_id: int) -> discord.VoiceChannel | discord.StageChannel:
    channel = client.get_channel(channel_id)
    if channel is None:
        try:
            channel = await client.fetch_channel(channel_id)
        except (discord.NotFound, discord.Forbidden) as exc:
            raise RecordError(f"channel {channel_id} not found or not visible to the bot") from exc
    if not isinstance(channel, (discord.VoiceChannel, discord.StageChannel)):
        raise RecordError(f"channel {channel_id} is not a voice channel")
    return channel


async def _listen(
    client: _Recorder,
    vc: VoiceRecvClient,
    args: argparse.Namespace,
    interrupted: asyncio.Event,
    stderr: TextIO,
    sink: AudioSink,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: Path = args.out
    ended = asyncio.Event()
    errors: list[BaseException | None] = []

    def after(error: BaseException | None) -> None:
        errors.append(error)
        loop.call_soon_threadsafe(ended.set)

    started_wall = time.time()
    started = loop.time()
    tally = _Tally()
    vc.listen(MultiSink(sink, tally), after=after, max_duration=args.seconds, stop_when_alone=args.stop_when_alone)
    name = getattr(vc.channel, "name", args.channel)
    print(f"recording #{name} to {out} as {args.format}; Ctrl-C stops", file=stderr, flush=True)
    tty = stderr.isatty()
    while not ended.is_set() and not interrupted.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_either(ended, interrupted), PROGRESS_INTERVAL)
        line = _progress(loop.time() - started, client, vc, tally.bytes)
        print(("\r" + line + "\x1b[K") if tty else line, end="" if tty else "\n", file=stderr, flush=True)
    if tty:
        print(file=stderr)
    if interrupted.is_set():
        print("finishing the files...", file=stderr, flush=True)
    if vc.is_listening():
        vc.stop_listening()
        await vc.wait_listening_stopped()
    await ended.wait()
    stats = vc.receive_stats()
    reason = vc.stop_reason
    error = errors[0] if errors else None
    files = sorted(str(p) for p in out.iterdir() if p.is_file() and p.stat().st_mtime >= started_wall - 1)
    print(f"{_stopped(reason, args.seconds)}; {_plural(len(files), 'file')} in {out}", file=stderr, flush=True)
    return {
        "out": str(out),
        "format": args.format,
        "seconds": round(tally.seconds, 3),
        "files": files,
        "bytes": _bytes_written(out, started_wall),
        "speakers": sorted(str(u) for u in client.heard),
        "reason": reason.value if reason else None,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "stats": {k: v for k, v in stats.items() if not isinstance(v, dict)},
    }


class _Tally(AudioSink):
    """Counts what the files are given: audio bytes (20 ms of PCM per speaker frame) and timeline slots."""

    __slots__ = ("bytes", "slots")

    wants_pcm = False

    def __init__(self) -> None:
        self.bytes = 0
        self.slots = 0

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.bytes += FRAME_BYTES

    def advance(self, tick: int) -> None:
        self.slots = tick + 1

    @property
    def seconds(self) -> float:
        """The recording's timeline so far: what every file holds."""
        return self.slots * FRAME_DURATION


_STOPPED = {
    StopReason.STOPPED: "stopped on request",
    StopReason.DISCONNECTED: "stopped: disconnected from voice",
    StopReason.MAX_BYTES: "stopped at the size limit",
    StopReason.ALONE: "stopped: everyone else left the channel",
    StopReason.ERROR: "stopped by an error",
}


def _stopped(reason: StopReason | None, seconds: float | None) -> str:
    if reason is StopReason.MAX_DURATION:
        return f"stopped after {seconds:g} s"
    return _STOPPED.get(reason, "stopped") if reason is not None else "stopped"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


async def _either(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _progress(elapsed: float, client: _Recorder, vc: VoiceRecvClient, written: int) -> str:
    minutes, seconds = divmod(int(elapsed), 60)
    me = client.user.id if client.user is not None else None
    present = [uid for uid in getattr(vc.channel, "voice_states", {}) if uid != me]
    return (
        f"recording {minutes:02d}:{seconds:02d}  speakers {len(present)} ({len(client.speaking)} speaking)  "
        f"written {_size(written)}"
    )


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _bytes_written(out: Path, since: float) -> int:
    """Bytes in the files of ``out`` written since ``since`` (the recording's files)."""
    total = 0
    try:
        entries = list(out.iterdir())
    except OSError:
        return 0
    for path in entries:
        with contextlib.suppress(OSError):
            stat = path.stat()
            if path.is_file() and stat.st_mtime >= since - 1:
                total += stat.st_size
    return total


def _redact(text: str, token: str) -> str:
    return text.replace(token, "[token]") if token else text


class _RedactToken(logging.Filter):
    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._token in message:
            record.msg = _redact(message, self._token)
            record.args = ()
        return True


def _redact_logs(token: str) -> None:
    """Make sure no log line can carry the token, whatever logs it."""
    redact = _RedactToken(token)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
