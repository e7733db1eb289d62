"""listen() opens a sink only once it accepted it: a refused listen() leaves the live recording and the disk alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import discord
import pytest

from discord_voicerecv import AlreadyListening, FFmpegSink, VoiceRecvClient, WaveSink
from discord_voicerecv.sinks._wavfile import HEADER_SIZE
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.bots import new_client, running

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")


def ffmpeg_children() -> list[str]:
    """This process's child processes running ffmpeg, from /proc (state, not timing)."""
    found = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            comm = Path(f"/proc/{pid}/comm")
            if comm.exists() and "ffmpeg" in comm.read_text():
                found.append(pid)
    return found


async def test_a_refused_listen_touches_no_file_and_starts_no_process(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    async with running(client, "refused-bot"):
        channel = client.get_channel(local.voice_channel_id)
        assert isinstance(channel, discord.VoiceChannel)
        vc = await channel.connect(cls=VoiceRecvClient)
        threads_before = {t.ident for t in threading.enumerate()}
        processes_before = ffmpeg_children()
        vc.listen(WaveSink(tmp_path / "same", header_interval=0.1))
        mix = tmp_path / "same" / "mix.wav"
        for _ in range(1000):  # until the live file holds audio (the receiver runs rarely while nobody talks)
            if mix.exists() and mix.stat().st_size > HEADER_SIZE:
                break
            await asyncio.sleep(0.01)
        size = mix.stat().st_size
        assert size > HEADER_SIZE

        with pytest.raises(AlreadyListening):
            vc.listen(WaveSink(tmp_path / "same"))
        with pytest.raises(AlreadyListening):
            vc.listen(FFmpegSink(tmp_path / "same", "flac"))
        with pytest.raises(AlreadyListening):
            vc.listen(FFmpegSink(tmp_path / "other", "mp3"))
        assert mix.stat().st_size >= size, "the live mix.wav was not truncated"
        assert sorted(p.name for p in (tmp_path / "same").iterdir()) == ["mix.wav"]
        assert not (tmp_path / "other").exists()
        assert ffmpeg_children() == processes_before
        assert not [t for t in threading.enumerate() if t.ident not in threads_before and t.name.startswith("ffmpeg")]
        vc.stop_listening()
        await vc.wait_listening_stopped()
        await vc.disconnect()
    assert not [t.name for t in threading.enumerate() if t.ident not in threads_before and t.name.startswith("ffmpeg")]
