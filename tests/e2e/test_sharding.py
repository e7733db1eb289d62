"""The scale-out path of docs/scaling.md, run: 2 processes x 2 shards over 4 guilds, each records only its own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.analysis import best_alignment, read_wav
from discord_voicerecv.testing.clips import list_clips, load_clip

ROOT = Path(__file__).resolve().parents[2]
SHARDS, PROCESSES, SECONDS = 4, 2, 5.5

BOT = """
import asyncio, json, os, sys
from pathlib import Path

import discord
from discord.ext import commands

from discord_voicerecv import VoiceRecvClient, WaveSink
from discord_voicerecv.testing import use_local_discord

use_local_discord(sys.argv[1])
SHARD_COUNT, PROCESSES, INDEX = (int(os.environ[k]) for k in ("SHARD_COUNT", "PROCESSES", "PROCESS_INDEX"))
intents = discord.Intents.default()
intents.members = True
bot = commands.AutoShardedBot(
    command_prefix="!",
    intents=intents,
    shard_count=SHARD_COUNT,
    shard_ids=[shard for shard in range(SHARD_COUNT) if shard % PROCESSES == INDEX],
)


@bot.event
async def on_ready():
    loop = asyncio.get_running_loop()
    done = []
    for guild in bot.guilds:
        vc = await guild.voice_channels[0].connect(cls=VoiceRecvClient)
        finished = asyncio.Event()
        out = Path(sys.argv[2]) / str(guild.id)
        vc.listen(WaveSink(out), after=lambda error, f=finished: loop.call_soon_threadsafe(f.set))
        done.append((vc, finished))
    await asyncio.sleep(float(sys.argv[3]))
    for vc, finished in done:
        vc.stop_listening()
        await finished.wait()
        await vc.disconnect()
    print(json.dumps({"guilds": sorted(g.id for g in bot.guilds), "shards": sorted(bot.shards)}), flush=True)
    await bot.close()


bot.run("sharded-recorder", log_handler=None)
"""


def excerpts() -> dict[str, bytes]:
    """One second from the middle of each clip: a recording that starts mid-clip still holds it whole."""
    return {name: load_clip(name)[len(load_clip(name)) // 2 :][: 48000 * 4] for name in list_clips()}


async def test_two_processes_of_two_shards_record_only_their_guilds(tmp_path: Path) -> None:
    async with LocalDiscord(guilds=4) as local:
        guilds = list(local.guilds)
        assert sorted((g >> 22) % SHARDS for g in guilds) == [0, 1, 2, 3]  # one guild per shard, as Discord places them
        clips = dict(zip(guilds, list_clips(), strict=True))
        for guild_id, clip in clips.items():
            local.add_speaker(guild_id=guild_id, clip=clip).start(pause=0.3)
        script = tmp_path / "bot.py"
        script.write_text(BOT, encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SHARD_COUNT": str(SHARDS), "PROCESSES": str(PROCESSES)}
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                local.url,
                str(tmp_path / f"p{i}"),
                str(SECONDS),
                env={**env, "PROCESS_INDEX": str(i)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(PROCESSES)
        ]
        outputs = [await asyncio.wait_for(proc.communicate(), 90) for proc in procs]
    reports = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    for index, report in enumerate(reports):
        mine = sorted(g for g in guilds if ((g >> 22) % SHARDS) % PROCESSES == index)
        assert report["guilds"] == mine and len(mine) == 2
        assert report["shards"] == [s for s in range(SHARDS) if s % PROCESSES == index]
        recorded = sorted(int(p.name) for p in (tmp_path / f"p{index}").iterdir())
        assert recorded == mine, "a process recorded only its own guilds"
        for guild_id in mine:
            tracks = [p for p in (tmp_path / f"p{index}" / str(guild_id)).glob("*.wav") if p.name != "mix.wav"]
            assert len(tracks) == 1, tracks  # the guild's one speaker (the bot itself sends nothing)
            _, _, samples = read_wav(tracks[0])
            match = best_alignment(samples, excerpts())
            assert (match.name, round(match.score, 1) >= 0.9) == (clips[guild_id], True), (guild_id, match)
