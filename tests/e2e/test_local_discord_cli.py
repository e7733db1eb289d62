"""``discord-voicerecv local-discord`` in its own process: its speakers talk, a bot elsewhere records them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import discord

from discord_voicerecv import VoiceRecvClient, WaveSink
from discord_voicerecv.opus import ensure_discord_opus
from discord_voicerecv.testing import restore_discord, use_local_discord
from discord_voicerecv.testing.analysis import best_alignment, read_wav
from discord_voicerecv.testing.bots import new_client, running
from discord_voicerecv.testing.clips import list_clips, load_clip

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def local_discord_process(*args: str) -> AsyncIterator[dict[str, Any]]:
    """Run the command, yield its first JSON line with this process pointed at it, and stop it after."""
    ensure_discord_opus()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discord_voicerecv", "local-discord", *args, stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        info: dict[str, Any] = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=30))
        use_local_discord(info["url"])
        yield info
    finally:
        restore_discord()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)


async def record(info: dict[str, Any], out: Path, seconds: float) -> dict[str, Any]:
    """Join the voice channel from here, record ``seconds`` with a WaveSink, return the receive counters."""
    client = new_client()
    async with running(client, "cli-recorder"):
        channel = client.get_channel(int(info["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        vc = await channel.connect(cls=VoiceRecvClient)
        finished = asyncio.Event()
        loop = asyncio.get_running_loop()
        vc.listen(WaveSink(out), after=lambda error: loop.call_soon_threadsafe(finished.set))
        await asyncio.sleep(seconds)
        vc.stop_listening()
        await vc.wait_listening_stopped()
        await asyncio.wait_for(finished.wait(), timeout=10)
        return dict(vc.receive_stats())


def excerpts() -> dict[str, bytes]:
    """One second from the middle of every shipped clip: a recording that starts mid-clip still holds it whole."""
    second = 48000 * 4
    return {name: load_clip(name)[len(load_clip(name)) // 2 :][:second] for name in list_clips()}


async def test_command_line_speakers_talk_their_clips(tmp_path: Path) -> None:
    clips = ("fr_female", "en_us_male")  # at most 3.5 s each: with 0.3 s pauses, 5 s hold every second of them
    async with local_discord_process(
        "--speakers", "2", "--clip", clips[0], "--clip", clips[1], "--pause", "0.3"
    ) as info:
        assert tuple(s["clip"] for s in info["speakers"]) == clips
        stats = await record(info, tmp_path, 5.0)
    assert stats["packets"] > 200
    assert stats["decrypt_failed"] == 0
    for speaker in info["speakers"]:
        track = next(tmp_path.glob(f"*{speaker['user_id']}.wav"))
        _, _, samples = read_wav(track)
        match = best_alignment(samples, excerpts())
        assert (match.name, speaker["name"]) == (speaker["clip"], speaker["name"])
        assert match.score >= 0.9


async def test_quiet_speakers_send_nothing(tmp_path: Path) -> None:
    async with local_discord_process("--speakers", "1", "--quiet") as info:
        assert [s["name"] for s in info["speakers"]] == ["Speaker 1"]
        stats = await record(info, tmp_path, 1.5)
    assert stats["packets"] == 0


async def test_several_guilds_on_different_shards_each_with_its_speakers() -> None:
    async with local_discord_process("--guilds", "2", "--speakers", "1", "--quiet") as info:
        guilds = info["guilds"]
        assert len(guilds) == 2 and guilds[0]["guild_id"] == info["guild_id"]
        assert {(g["guild_id"] >> 22) % 2 for g in guilds} == {0, 1}  # one per shard of a 2-shard bot
        client = new_client()
        async with running(client, "cli-guilds"):
            for guild in guilds:
                channel = client.get_channel(guild["voice_channel_id"])
                assert isinstance(channel, discord.VoiceChannel) and channel.guild.id == guild["guild_id"]
                assert [m.id for m in channel.members] == [s["user_id"] for s in guild["speakers"]]
