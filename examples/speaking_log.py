"""Log who joins, speaks and leaves, record the call, and stop once everyone has left: events and limits.

Run it against real Discord with ``DISCORD_TOKEN=... python examples/speaking_log.py CHANNEL_ID``, or offline
against the local Discord (see docs/local-discord.md): the tests run exactly this bot there.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import discord

from discord_voicerecv import VoiceRecvClient, WaveSink


def _name(member: discord.abc.Snowflake) -> str:
    return str(getattr(member, "display_name", member.id))


class SpeakingLog(discord.Client):
    """Joins one voice channel, records it to WAV files and logs every voice event with its time."""

    def __init__(self, channel_id: int, out_dir: Path, *, max_duration: float | None = None, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.members = True
        super().__init__(intents=intents, **options)
        self.channel_id = channel_id
        self.out_dir = out_dir
        self.max_duration = max_duration
        self.lines: list[str] = []
        self.finished = asyncio.Event()
        self._started = time.monotonic()

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self._started:7.2f}s  {text}"
        self.lines.append(line)
        print(line, flush=True)

    async def on_ready(self) -> None:
        if self.voice_clients:
            return  # a gateway reconnect: already in the channel
        channel = self.get_channel(self.channel_id)
        if not isinstance(channel, discord.VoiceChannel):
            raise SystemExit(f"{self.channel_id} is not a voice channel")
        vc = await channel.connect(cls=VoiceRecvClient)
        self._started = time.monotonic()
        vc.listen(WaveSink(self.out_dir), stop_when_alone=True, max_duration=self.max_duration)
        self.note(f"recording #{channel.name} to {self.out_dir}")

    async def on_voice_member_connect(self, member: discord.abc.Snowflake) -> None:
        self.note(f"{_name(member)} joined")

    async def on_voice_member_disconnect(self, member: discord.abc.Snowflake) -> None:
        self.note(f"{_name(member)} left")

    async def on_voice_member_speaking_start(self, member: discord.abc.Snowflake) -> None:
        self.note(f"{_name(member)} speaks")

    async def on_voice_member_speaking_stop(self, member: discord.abc.Snowflake) -> None:
        self.note(f"{_name(member)} is quiet")

    async def on_voice_listening_stopped(self, vc: VoiceRecvClient, error: BaseException | None) -> None:
        reason = vc.stop_reason.value if vc.stop_reason else "?"
        self.note(f"recording stopped ({reason}){f': {error}' if error else ''}")
        await vc.disconnect()
        self.finished.set()


async def main(channel_id: int, token: str) -> None:
    bot = SpeakingLog(channel_id, Path("recordings") / time.strftime("%Y%m%d-%H%M%S"))
    async with bot:
        runner = asyncio.create_task(bot.start(token))
        await bot.finished.wait()
    runner.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), os.environ["DISCORD_TOKEN"]))
