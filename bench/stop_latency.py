"""How long stopping a recording holds the bot's event loop.

A real discord.py bot records 5 speakers of the local Discord (on a loop and thread of its own) into a
``WaveSink`` and an ``FFmpegSink("mp3")`` at once; a ticker on the bot's loop wakes every 5 ms and keeps the
longest gap between two wake-ups. Each pass records ``--seconds`` and then stops:

- ``stop_listening``: the library's way; the gap is measured from the call until every file is final.
- ``blocking (baseline)``: the receiver stopped on the loop itself, joining its threads and cleaning the sinks up
  there (what ``stop_listening()`` did before it returned at once).
- ``recording``: the same ticker while the recording runs, the loop's background jitter for comparison.

Run: ``PYTHONPATH=. python bench/stop_latency.py [--seconds 5] [--passes 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import discord

from discord_voicerecv import VoiceRecvClient
from discord_voicerecv.opus import ensure_discord_opus
from discord_voicerecv.sinks import FFmpegSink, MultiSink, WaveSink
from discord_voicerecv.testing import LocalDiscord, restore_discord, use_local_discord
from discord_voicerecv.testing.bots import new_client, running
from discord_voicerecv.testing.clips import list_clips

TICK = 0.005
SPEAKERS = 5


class Ticker:
    """Wakes every :data:`TICK` seconds on the running loop and keeps the longest gap since :meth:`reset`."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._last = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.worst = 0.0
        self._last = time.perf_counter()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            self.worst = max(self.worst, now - self._last)
            self._last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def one_pass(vc: VoiceRecvClient, folder: Path, seconds: float, blocking: bool) -> tuple[float, float, float]:
    """Record, then stop; returns (worst gap while recording, worst gap while stopping, seconds to final files)."""
    wave, mp3 = WaveSink(folder / "wav"), FFmpegSink(folder / "mp3", "mp3")
    vc.listen(MultiSink(wave, mp3))
    with Ticker() as ticker:
        await asyncio.sleep(seconds)
        recording = ticker.worst
        ticker.reset()
        started = time.perf_counter()
        if blocking:
            receiver = vc._receiver
            assert receiver is not None
            receiver.stop()
            vc.stop_listening()
        else:
            vc.stop_listening()
        await vc.wait_listening_stopped()
        finished = time.perf_counter() - started
        await asyncio.sleep(2 * TICK)
        stopping = ticker.worst
    assert len(mp3.files) == SPEAKERS and len(wave.files) == SPEAKERS
    return recording, stopping, finished


class LocalDiscordThread:
    """The local Discord and its speakers on a loop of their own, so the ticker measures only the bot's loop."""

    def __init__(self, speakers: int) -> None:
        self.speakers = speakers
        self.loop = asyncio.new_event_loop()
        self.ready: concurrent.futures.Future[LocalDiscord] = concurrent.futures.Future()
        self._done = asyncio.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        clips = list_clips()
        async with LocalDiscord() as local:
            for i in range(self.speakers):
                local.add_speaker(clip=clips[i % len(clips)]).start()
            self.ready.set_result(local)
            await self._done.wait()

    async def run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Await ``coro`` on the local Discord's loop."""
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def __enter__(self) -> LocalDiscord:
        self._thread.start()
        return self.ready.result(30)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._done.set)
        self._thread.join(30)


async def main(seconds: float, passes: int) -> None:
    ensure_discord_opus()
    server = LocalDiscordThread(SPEAKERS)
    with server as local:
        use_local_discord(local.url)
        try:
            client = new_client()
            async with running(client, "stop-bench"):
                channel = client.get_channel(local.voice_channel_id)
                assert isinstance(channel, discord.VoiceChannel)
                vc = await channel.connect(cls=VoiceRecvClient)
                await server.run(local.voice.wait_dave_settled(timeout=10.0))
                rows: dict[str, list[tuple[float, float, float]]] = {"stop_listening": [], "blocking (baseline)": []}
                with tempfile.TemporaryDirectory(prefix="stop-bench-") as tmp:
                    for n in range(passes):
                        for name, blocking in (("stop_listening", False), ("blocking (baseline)", True)):
                            folder = Path(tmp) / f"{n}-{int(blocking)}"
                            rows[name].append(await one_pass(vc, folder, seconds, blocking))
                await vc.disconnect()
        finally:
            restore_discord()
    print(f"{SPEAKERS} speakers, WaveSink + FFmpegSink('mp3'), {seconds:g} s per recording, {passes} passes")
    print(f"{'stop':<22}{'worst gap recording ms':>24}{'worst gap stopping ms':>24}{'files final after s':>22}")
    for name, results in rows.items():
        recording = max(r[0] for r in results) * 1000
        stopping = max(r[1] for r in results) * 1000
        final = statistics.median(r[2] for r in results)
        print(f"{name:<22}{recording:>24.1f}{stopping:>24.1f}{final:>22.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds recorded per pass")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.passes))
