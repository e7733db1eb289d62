"""A Cog with ``!record`` and ``!stop``: join the caller's voice channel and record everyone to WAV files.

Run it against real Discord with ``DISCORD_TOKEN=... python examples/record_cog.py``, or offline against the local
Discord (see docs/local-discord.md): the tests run exactly this Cog there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import discord
from discord.ext import commands

from discord_voicerecv import VoiceRecvClient, WaveSink


class Recorder(commands.Cog):
    """Records the voice channel of whoever asks, one WAV per speaker plus ``mix.wav``."""

    def __init__(self, bot: commands.Bot, out_dir: Path = Path("recordings")) -> None:
        self.bot = bot
        self.out_dir = out_dir
        self.last_recording: Path | None = None

    @commands.command()
    async def record(self, ctx: commands.Context[commands.Bot]) -> None:
        author = ctx.author
        voice = getattr(author, "voice", None)
        if voice is None or voice.channel is None:
            await ctx.send("Join a voice channel first.")
            return
        vc = ctx.voice_client
        if vc is None:
            vc = await voice.channel.connect(cls=VoiceRecvClient)
        assert isinstance(vc, VoiceRecvClient)
        if vc.is_listening():
            await ctx.send("Already recording.")
            return
        target = self.out_dir / time.strftime("%Y%m%d-%H%M%S")
        self.last_recording = target
        vc.listen(WaveSink(target), after=lambda error: print("recording ended", error or ""))
        await ctx.send(f"Recording to {target}.")

    @commands.command()
    async def stop(self, ctx: commands.Context[commands.Bot]) -> None:
        vc = ctx.voice_client
        if not isinstance(vc, VoiceRecvClient) or not vc.is_listening():
            await ctx.send("Not recording.")
            return
        vc.stop_listening()  # returns at once; the files are finished off the event loop
        await vc.wait_listening_stopped()
        await vc.disconnect()
        await ctx.send(f"Saved to {self.last_recording}.")


def make_bot(out_dir: Path = Path("recordings")) -> commands.Bot:
    intents = discord.Intents.default()
    intents.message_content = True
    intents.voice_states = True
    intents.members = True
    bot = commands.Bot(command_prefix="!", intents=intents)

    @bot.event
    async def setup_hook() -> None:
        await bot.add_cog(Recorder(bot, out_dir))

    return bot


if __name__ == "__main__":
    make_bot().run(os.environ["DISCORD_TOKEN"])
