"""The shipped example Cog and the ``local-discord`` command, run for real."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import discord

from discord_voicerecv import VoiceRecvClient, WaveSink
from discord_voicerecv.opus import ensure_discord_opus
from discord_voicerecv.testing import LocalDiscord, restore_discord, use_local_discord
from discord_voicerecv.testing.analysis import best_alignment, read_wav
from discord_voicerecv.testing.bots import new_client, running

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

from record_cog import make_bot  # noqa: E402


async def test_record_cog_records_the_callers_channel(local: LocalDiscord, tmp_path: Path) -> None:
    bot = make_bot(tmp_path)
    speaker = local.add_speaker(clip="en_us_male")
    async with running(bot, "cog-bot"):
        command = local.send_message(local.text_channel_id, "!record", author=speaker.user_id)
        reply = await local.wait_for_message(after=command["id"], timeout=10)
        assert reply["content"].startswith("Recording to")
        await local.voice.wait_dave_settled(timeout=10)
        speaker.speak()
        await speaker.wait_idle()
        command = local.send_message(local.text_channel_id, "!stop", author=speaker.user_id)
        reply = await local.wait_for_message(after=command["id"], check=lambda m: "Saved" in m["content"], timeout=10)
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1
    track = next(p for p in folders[0].iterdir() if p.name.endswith(f"{speaker.user_id}.wav"))
    _, _, samples = read_wav(track)
    assert best_alignment(samples).name == "en_us_male"
    assert best_alignment(samples).score >= 0.9


async def test_local_discord_command_serves_a_bot_in_another_process(tmp_path: Path) -> None:
    ensure_discord_opus()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discord_voicerecv", "local-discord", "--speakers", "1",
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        info = json.loads(line)
        assert {"url", "guild_id", "voice_channel_id"} <= info.keys()
        use_local_discord(info["url"])
        client = new_client()
        async with running(client, "remote-recorder"):
            channel = client.get_channel(int(info["voice_channel_id"]))
            assert isinstance(channel, discord.VoiceChannel)
            assert any(m.name == "Speaker 1" for m in channel.members)
            vc = await channel.connect(cls=VoiceRecvClient)
            vc.listen(WaveSink(tmp_path))
            await asyncio.sleep(1.0)
            vc.stop_listening()
            await vc.wait_listening_stopped()
            assert vc.receive_stats()["decrypt_failed"] == 0
        assert (tmp_path / "mix.wav").exists()
    finally:
        restore_discord()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
