"""VoiceRecvClient's own behaviour on a real connection: keepalives, listen/stop rules, stats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import discord
import pytest

from discord_voicerecv import AlreadyListening, CallbackSink, VoiceFrame, VoiceRecvClient, WaveSink
from discord_voicerecv.sinks.base import SinkUser
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.bots import new_client, running


async def _join(client: discord.Client, local: LocalDiscord) -> VoiceRecvClient:
    channel = client.get_channel(local.voice_channel_id)
    assert isinstance(channel, discord.VoiceChannel)
    return await channel.connect(cls=VoiceRecvClient)


async def test_keepalives_flow_only_while_listening(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    async with running(client, "keepalive-bot"):
        vc = await _join(client, local)
        vc.keepalive_interval = interval = 0.1
        stats = local.voice.relay_stats
        before = stats.keepalives
        await asyncio.sleep(3.5 * interval)
        assert stats.keepalives == before, "no keepalives before listen()"
        loop = asyncio.get_running_loop()
        started = loop.time()
        vc.listen(WaveSink(tmp_path))
        await _until(lambda: stats.keepalives >= before + 4)
        during, elapsed = stats.keepalives - before, loop.time() - started
        await asyncio.to_thread(vc.stop_listening)
        await asyncio.sleep(3 * interval)  # one already on the wire may still reach the relay
        stopped_at = stats.keepalives
        await asyncio.sleep(3.5 * interval)
        assert stats.keepalives == stopped_at, "keepalives stop with stop_listening()"
    # Repeated, and never faster than the interval (a loaded machine only makes them later).
    assert during <= elapsed / interval + 1, f"{during} keepalives in {elapsed:.2f} s"


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_listen_twice_raises_and_stop_is_idempotent(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    ended: list[BaseException | None] = []
    async with running(client, "twice-bot"):
        vc = await _join(client, local)
        assert not vc.is_listening()
        vc.listen(WaveSink(tmp_path / "a"), after=ended.append)
        assert vc.is_listening()
        with pytest.raises(AlreadyListening):
            vc.listen(WaveSink(tmp_path / "b"))
        await asyncio.to_thread(vc.stop_listening)
        await asyncio.to_thread(vc.stop_listening)
        assert not vc.is_listening()
        assert ended == [None]
        vc.listen(WaveSink(tmp_path / "c"))
        assert vc.is_listening()
        await vc.disconnect()
        assert not vc.is_listening(), "disconnect stops listening"
    assert (tmp_path / "c" / "mix.wav").exists()


async def test_frames_name_members_and_stats_count_them(local: LocalDiscord) -> None:
    speaker = local.add_speaker(clip="fr_female")
    seen: dict[int, SinkUser] = {}
    frames: list[VoiceFrame] = []

    def collect(user: SinkUser, frame: VoiceFrame) -> None:
        if frame.user_id is not None:
            seen[frame.user_id] = user
        frames.append(frame)

    client = new_client()
    async with running(client, "names-bot"):
        vc = await _join(client, local)
        await local.voice.wait_dave_settled(timeout=10)
        vc.listen(CallbackSink(collect))
        speaker.speak()
        await speaker.wait_idle()
        await asyncio.sleep(0.3)
        await asyncio.to_thread(vc.stop_listening)
        stats = vc.receive_stats()
    member = seen[speaker.user_id]
    assert isinstance(member, discord.Member) and member.name == speaker.name
    ticks = [f.tick for f in frames if f.user_id == speaker.user_id]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    assert stats["decoded"] == len(ticks) - stats["fec"] - stats["plc"]
    assert all(len(f.pcm) == 3840 for f in frames)


async def test_listen_requires_a_connection(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    async with running(client, "offline-bot"):
        vc = await _join(client, local)
        await vc.disconnect()
        with pytest.raises(discord.ClientException):
            vc.listen(WaveSink(tmp_path))
