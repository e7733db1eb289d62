"""``make demo``: record simulated speakers from an embedded local Discord, no token or network needed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import discord

from .client import VoiceRecvClient
from .opus import ensure_discord_opus
from .sinks.wave import WaveSink
from .testing import LocalDiscord, use_local_discord
from .testing.bots import new_client, running
from .testing.clips import list_clips

__all__ = ("run_demo",)


async def run_demo(*, seconds: float, speakers: int, out: Path, dave: bool = True) -> dict[str, Any]:
    """Serve a local Discord with ``speakers`` simulated speakers, record them for ``seconds`` into ``out``."""
    ensure_discord_opus()
    async with LocalDiscord(dave=dave) as local:
        use_local_discord(local.url)
        client = new_client()
        async with running(client, "demo-recorder"):
            channel = client.get_channel(local.voice_channel_id)
            assert isinstance(channel, discord.VoiceChannel)
            vc = await channel.connect(cls=VoiceRecvClient)
            clips = list_clips()
            talkers = [local.add_speaker(clip=clips[i % len(clips)]) for i in range(speakers)]
            await asyncio.sleep(0.5)  # let the DAVE group settle with the new members before recording
            sink = WaveSink(out)
            started = time.monotonic()
            vc.listen(sink)
            for i, talker in enumerate(talkers):
                talker.speak(times=1000, pause=0.4 + 0.3 * i)
            await asyncio.sleep(seconds)
            vc.stop_listening()
            await vc.wait_listening_stopped()
            elapsed = time.monotonic() - started
            stats = dict(vc.receive_stats())
            privacy = vc.voice_privacy_code
            dave_stats = vc.dave_stats
            for talker in talkers:
                talker.stop_now()
            await vc.disconnect()
    files = {str(key): str(path) for key, path in sink.files.items()}
    expected = {t.user_id for t in talkers}
    heard = {int(k) for k in sink.files if isinstance(k, int) or str(k).isdigit()}
    return {
        "ok": expected <= heard and stats.get("decoded", 0) > 0,
        "seconds": round(elapsed, 2),
        "out": str(out),
        "files": files,
        "mix": str(sink.mix_path),
        "dave": dave,
        "voice_privacy_code": privacy,
        "dave_decryption": {str(k): v for k, v in dave_stats.items()},
        "stats": {k: v for k, v in stats.items() if not isinstance(v, dict)},
    }
