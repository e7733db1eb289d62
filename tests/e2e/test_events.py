"""Events on a real discord.py bot (``@client.event``), and the filters and stop conditions of ``listen()``."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import discord

from discord_voicerecv import VoiceRecvClient, WaveSink
from discord_voicerecv.frames import FRAME_BYTES
from discord_voicerecv.sinks.limits import StopReason
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.analysis import read_wav
from discord_voicerecv.testing.bots import new_client, running

ROOT = Path(__file__).resolve().parents[2]


class _Events:
    """Every voice event a bot gets, with the loop time it came at."""

    NAMES = (
        "voice_member_connect",
        "voice_member_disconnect",
        "voice_member_speaking_start",
        "voice_member_speaking_stop",
        "voice_listening_stopped",
    )

    def __init__(self, client: discord.Client) -> None:
        self.log: list[tuple[str, tuple[Any, ...], float]] = []
        self._changed = asyncio.Event()
        for name in self.NAMES:
            setattr(client, f"on_{name}", self._handler(name))

    def _handler(self, name: str) -> Any:
        async def handler(*args: Any) -> None:
            self.log.append((name, args, asyncio.get_running_loop().time()))
            self._changed.set()

        return handler

    def of(self, name: str, user_id: int | None = None) -> list[tuple[Any, ...]]:
        return [a for n, a, _ in self.log if n == name and (user_id is None or getattr(a[0], "id", None) == user_id)]

    def names_for(self, user_id: int) -> list[str]:
        return [n for n, a, _ in self.log if a and getattr(a[0], "id", None) == user_id]

    async def wait(self, name: str, count: int = 1, timeout: float = 10.0) -> list[tuple[Any, ...]]:
        async def until() -> None:
            while len(self.of(name)) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.of(name)


async def _connect(client: discord.Client, local: LocalDiscord) -> VoiceRecvClient:
    channel = client.get_channel(local.voice_channel_id)
    assert isinstance(channel, discord.VoiceChannel)
    return await channel.connect(cls=VoiceRecvClient)


async def test_membership_and_speaking_events_with_and_without_listening(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    events = _Events(client)
    async with running(client, "events-bot"):
        vc = await _connect(client, local)
        alice = local.add_speaker(tone_hz=330.0, tone_seconds=0.6)
        await events.wait("voice_member_connect")
        await local.voice.wait_dave_settled(timeout=10)
        (joined,) = events.of("voice_member_connect")
        assert isinstance(joined[0], discord.Member) and joined[0].display_name == "Speaker 1"

        await alice.speak()  # not listening: op5 drives the events
        await events.wait("voice_member_speaking_stop")
        vc.listen(WaveSink(tmp_path))
        spoke_at = asyncio.get_running_loop().time()
        await alice.speak()  # listening: the audio itself drives them
        await events.wait("voice_member_speaking_stop", 2)
        local.remove_speaker(alice.user_id)
        await events.wait("voice_member_disconnect")
        vc.stop_listening()
        await vc.wait_listening_stopped()
        ((stopped_vc, error),) = await events.wait("voice_listening_stopped")

    assert stopped_vc is vc and error is None and vc.stop_reason is StopReason.STOPPED
    assert events.names_for(alice.user_id) == [
        "voice_member_connect",
        "voice_member_speaking_start",
        "voice_member_speaking_stop",
        "voice_member_speaking_start",
        "voice_member_speaking_stop",
        "voice_member_disconnect",
    ]
    audio_start = next(t for n, _, t in events.log if n == "voice_member_speaking_start" and t >= spoke_at)
    assert audio_start - spoke_at < 0.5, "speaking_start comes with the first audio"
    for name in ("voice_member_speaking_start", "voice_member_disconnect"):
        assert all(isinstance(args[0], discord.Member) for args in events.of(name))


async def test_max_duration_stops_with_exact_files_and_tells_after_and_the_bot(
    local: LocalDiscord, tmp_path: Path
) -> None:
    client = new_client()
    events = _Events(client)
    after_calls: list[tuple[BaseException | None, str]] = []
    async with running(client, "limits-bot"):
        vc = await _connect(client, local)
        local.add_speaker(clip="de_male").start()
        sink = WaveSink(tmp_path)
        vc.listen(
            sink,
            max_duration=1.0,
            after=lambda error: after_calls.append((error, threading.current_thread().name)),
        )
        ((stopped_vc, error),) = await events.wait("voice_listening_stopped", timeout=5)
        assert not vc.is_listening()
        assert vc.stop_reason is StopReason.MAX_DURATION
    assert stopped_vc is vc and error is None
    assert after_calls == [(None, "voice-recv sink")]
    assert sink.mix_path is not None
    for path in [sink.mix_path, *sink.files.values()]:
        _, _, samples = read_wav(path)
        assert len(samples) == 48_000, path.name


async def test_users_filter_and_max_bytes(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    events = _Events(client)
    async with running(client, "filter-bot"):
        vc = await _connect(client, local)
        alice = local.add_speaker(clip="en_gb_female")
        bob = local.add_speaker(clip="en_us_male")
        await local.voice.wait_dave_settled(timeout=10)
        alice_member = vc.guild.get_member(alice.user_id)
        assert alice_member is not None
        sink = WaveSink(tmp_path)
        vc.listen(sink, users=[alice_member], max_bytes=50 * FRAME_BYTES)
        alice.speak()
        bob.speak()
        await events.wait("voice_listening_stopped", timeout=10)
        stats = vc.receive_stats()
        alice.stop_now()
        bob.stop_now()
    assert vc.stop_reason is StopReason.MAX_BYTES
    assert list(sink.files) == [alice.user_id]
    assert stats["by_user"][bob.user_id]["decoded"] > 0, "bob was received, just not written"
    _, _, samples = read_wav(sink.files[alice.user_id])
    heard = samples.reshape(-1, 960 * 2)
    assert sum(bool(frame.any()) for frame in heard) <= 50


async def test_stop_when_alone_ignores_bots_and_disconnect_is_a_reason(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    other_bot = new_client()
    events = _Events(client)
    async with running(client, "alone-bot"), running(other_bot, "other-bot"):
        vc = await _connect(client, local)
        await _connect(other_bot, local)
        alice = local.add_speaker(clip="fr_female")
        bob = local.add_speaker(clip="de_male")
        await events.wait("voice_member_connect", 3)
        vc.listen(WaveSink(tmp_path / "alone"), stop_when_alone=True)
        local.remove_speaker(alice.user_id)
        await asyncio.sleep(0.6)
        assert vc.is_listening(), "bob is still there"
        local.remove_speaker(bob.user_id)
        left_at = asyncio.get_running_loop().time()
        await events.wait("voice_listening_stopped", timeout=5)
        stopped_after = events.log[-1][2] - left_at
        assert vc.stop_reason is StopReason.ALONE

        vc.listen(WaveSink(tmp_path / "disconnect"))
        await vc.disconnect()
        await events.wait("voice_listening_stopped", 2, timeout=5)
        assert vc.stop_reason is StopReason.DISCONNECTED
    assert stopped_after < 1.0


async def test_speaking_log_example_logs_the_call_and_stops_when_everyone_left(
    local: LocalDiscord, tmp_path: Path
) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from speaking_log import SpeakingLog
    finally:
        sys.path.remove(str(ROOT / "examples"))
    speaker = local.add_speaker(tone_hz=300.0, tone_seconds=0.5)
    bot = SpeakingLog(local.voice_channel_id, tmp_path, guild_ready_timeout=0.1)
    async with running(bot, "speaking-log"):
        await local.wait_for_voice(local.bot_user_id("speaking-log"))
        await local.voice.wait_dave_settled(timeout=10)
        await speaker.speak()
        await asyncio.sleep(0.4)
        local.remove_speaker(speaker.user_id)
        await asyncio.wait_for(bot.finished.wait(), 5)
    events = [line.strip().split("  ", 1)[1] for line in bot.lines]
    assert sum(e.startswith("recording #") for e in events) == 1
    assert [e for e in events if not e.startswith("recording #")] == [
        "Speaker 1 joined",
        "Speaker 1 speaks",
        "Speaker 1 is quiet",
        "Speaker 1 left",
        "recording stopped (alone)",
    ]
    assert (tmp_path / "mix.wav").exists() and (tmp_path / f"Speaker_1-{speaker.user_id}.wav").exists()


async def test_a_session_finishing_late_sends_no_speaking_stop_for_the_next_one(local: LocalDiscord) -> None:
    """stop_listening(), listen() again at once, then the first session's files finish: someone speaking in the
    new session does not get a speaking_stop from the old one."""
    from discord_voicerecv.sinks import AudioSink

    class SlowCleanup(AudioSink):
        def __init__(self) -> None:
            self.release = threading.Event()

        def write(self, user: Any, frame: Any) -> None:
            pass

        def cleanup(self) -> None:
            self.release.wait(20)

    first = SlowCleanup()
    client = new_client()
    events = _Events(client)
    async with running(client, "restart-events-bot"):
        vc = await _connect(client, local)
        vc.listen(first)
        vc.stop_listening()
        second = SlowCleanup()
        second.release.set()
        vc.listen(second)
        vc._on_receiver_event("speaking_start", {"user_id": 4242})  # the new session's receiver reports Ann
        first.release.set()
        await events.wait("voice_listening_stopped")  # dispatched after any speaking_stop of that session
        assert events.of("voice_member_speaking_stop") == [], "Ann is still speaking in the new session"
        vc.stop_listening()
        await vc.wait_listening_stopped()
        await events.wait("voice_member_speaking_stop")
    assert [getattr(a[0], "id", None) for a in events.of("voice_member_speaking_stop")] == [4242]
