"""``listen_stream()`` against the local Discord: every frame, in order, to a consumer that stalls; a consumer that
stops loses counted frames and nothing else waits for it."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import discord
import pytest

from discord_voicerecv import CallbackSink, MultiSink, VoiceRecvClient, WaveSink
from discord_voicerecv.sinks.limits import StopReason
from discord_voicerecv.sinks.stream import AudioStream, StreamFrame
from discord_voicerecv.testing import LocalDiscord, SimulatedSpeaker
from discord_voicerecv.testing.analysis import read_wav
from discord_voicerecv.testing.bots import new_client, running

ROOT = Path(__file__).resolve().parents[2]
CLIPS = ("en_us_male", "de_male", "fr_female")
Key = tuple[int | None, int, bytes | None]


async def _connect(client: discord.Client, local: LocalDiscord) -> VoiceRecvClient:
    channel = client.get_channel(local.voice_channel_id)
    assert isinstance(channel, discord.VoiceChannel)
    return await channel.connect(cls=VoiceRecvClient)


async def _speakers(local: LocalDiscord, count: int) -> list[SimulatedSpeaker]:
    speakers = [local.add_speaker(clip=CLIPS[i % len(CLIPS)]) for i in range(count)]
    await local.voice.wait_dave_settled(timeout=10)
    return speakers


def _talk(speakers: list[SimulatedSpeaker], seconds: float) -> None:
    """Each speaker repeats its clip with short pauses for about ``seconds``."""
    for i, speaker in enumerate(speakers):
        pause = 0.3 + 0.15 * i
        speaker.speak(times=max(1, int(seconds // (3.6 + pause))), pause=pause)


async def _consume(stream: AudioStream, got: list[StreamFrame], *, read_for: float, stall: float) -> float:
    """Read everything, but stop reading for ``stall`` seconds after every ``read_for`` seconds; returns the
    longest stall."""
    loop = asyncio.get_running_loop()
    reading_since = loop.time()
    longest = 0.0
    async for frame in stream:
        got.append(frame)
        if loop.time() - reading_since >= read_for:
            paused = loop.time()
            await asyncio.sleep(stall)
            longest = max(longest, loop.time() - paused)
            reading_since = loop.time()
    return longest


def _is_subsequence(part: list[bytes | None], whole: list[bytes | None]) -> bool:
    rest = iter(whole)
    return all(any(item == other for other in rest) for item in part)


def _keys(frames: list[StreamFrame]) -> list[Key]:
    return [(f.user_id, f.tick, f.opus) for f in frames]


async def _every_frame_to_a_stalling_consumer(local: LocalDiscord, seconds: float) -> None:
    client = new_client()
    async with running(client, "stream-recorder"):
        vc = await _connect(client, local)
        speakers = await _speakers(local, 3)
        seen: list[Key] = []
        vc.listen(CallbackSink(lambda user, frame: seen.append((frame.user_id, frame.tick, frame.opus))))
        listen_started = asyncio.get_running_loop().time()
        got: list[StreamFrame] = []
        async with vc.listen_stream() as stream:
            consumer = asyncio.create_task(_consume(stream, got, read_for=1.5, stall=2.0))
            _talk(speakers, seconds)
            await asyncio.gather(*(s.wait_idle() for s in speakers))
            await asyncio.sleep(0.3)
            vc.stop_listening()
            await vc.wait_listening_stopped()
            longest_stall = await asyncio.wait_for(consumer, 10)
        stats = vc.receive_stats()

    assert longest_stall >= 1.9, "the consumer did stall"
    assert stream.dropped == 0 and stats["stream_dropped"] == 0
    assert _keys(got) == seen, "the stream saw exactly what the sink saw, in the same order"
    for speaker in speakers:
        mine = [f for f in got if f.user_id == speaker.user_id]
        # Every frame, in order, but those the receiver counted late (a loaded machine can stall its threads for
        # longer than the playout delay; that is the receiver's loss, counted, not the stream's).
        counters = stats["by_user"].get(speaker.user_id, {})
        sent = [s.opus for s in speaker.sent]
        received = [f.opus for f in mine if not f.concealed]
        assert _is_subsequence(received, sent), f"{speaker.name}: frames out of order or not sent"
        assert len(sent) - len(received) == counters.get("late", 0), f"{speaker.name}: uncounted loss {counters}"
        assert sum(f.concealed for f in mine) <= counters.get("late", 0)
        ticks = [f.tick for f in mine]
        assert ticks == sorted(set(ticks))
        # On the listening timeline, never before it was sent (how soon after is a timing claim, checked against
        # the senders' clock by the timing tier of tests/e2e/test_record.py).
        first_sent = speaker.sent[0].sent_at - listen_started
        assert mine[0].elapsed == pytest.approx(mine[0].tick * 0.02)
        assert mine[0].elapsed >= first_sent - 0.02, f"{speaker.name}: {mine[0].elapsed:.3f} vs {first_sent:.3f}"
        assert mine[0].wall_time == pytest.approx(stream.started_at + mine[0].elapsed)
        assert len(mine[0].pcm) == 3840
    assert stats["sink_queue_full"] == 0


async def test_every_frame_reaches_a_consumer_that_stalls_for_two_seconds(local: LocalDiscord) -> None:
    await _every_frame_to_a_stalling_consumer(local, seconds=4.0)


@pytest.mark.slow
async def test_every_frame_of_a_minute_of_three_speakers_reaches_a_stalling_consumer(local: LocalDiscord) -> None:
    await _every_frame_to_a_stalling_consumer(local, seconds=60.0)


async def test_a_consumer_that_stops_loses_counted_frames_and_stalls_nothing(
    local: LocalDiscord, tmp_path: Path
) -> None:
    client = new_client()
    async with running(client, "stream-recorder"):
        vc = await _connect(client, local)
        alice, bob = await _speakers(local, 2)
        alice_member = vc.guild.get_member(alice.user_id)
        assert alice_member is not None
        wave = WaveSink(tmp_path)
        seen: list[Key] = []
        started = time.monotonic()
        vc.listen(MultiSink(wave, CallbackSink(lambda u, f: seen.append((f.user_id, f.tick, f.opus)))))
        stuck = vc.listen_stream(max_queue_seconds=0.5)
        only_alice = vc.listen_stream(users=[alice_member], opus=True)
        got: list[StreamFrame] = []
        consumer = asyncio.create_task(_consume(only_alice, got, read_for=10, stall=0))
        alice.speak()
        bob.speak()
        await asyncio.gather(alice.wait_idle(), bob.wait_idle())
        await asyncio.sleep(0.2)
        vc.stop_listening()
        await vc.wait_listening_stopped()
        listened = time.monotonic() - started
        await asyncio.wait_for(consumer, 5)
        stats = vc.receive_stats()

    assert stuck.queued == 2 * 25, "half a second per speaker waits, no more"
    assert stuck.dropped == stuck.received - 50 > 100
    assert set(stuck.dropped_by_user) == {alice.user_id, bob.user_id}
    assert stats["stream_dropped"] == stuck.dropped
    assert stats["sink_queue_full"] == 0
    assert _keys(got) == [(u, t, o) for u, t, o in seen if u == alice.user_id]
    assert [f.opus for f in got] == [s.opus for s in alice.sent]
    assert all(f.pcm == b"" for f in got)
    assert wave.mix_path is not None
    for path in [*wave.files.values(), wave.mix_path]:
        _, _, samples = read_wav(path)
        assert len(samples) == wave.slots * 960, "the file sink got every slot"
        # Slot 0 starts half a slot before listen() (frames land in the nearest slot) and stopping completes the
        # slot under way: at most 30 ms beyond the span measured around listen() and the stop.
        assert len(samples) / 48_000 <= listened + 0.03, "the timeline never runs ahead of the clock"


async def test_a_stream_alone_starts_listening_and_closing_it_stops(local: LocalDiscord) -> None:
    client = new_client()
    stopped: list[tuple[VoiceRecvClient, BaseException | None]] = []

    @client.event
    async def on_voice_listening_stopped(vc: VoiceRecvClient, error: BaseException | None) -> None:
        stopped.append((vc, error))

    async with running(client, "stream-only"):
        vc = await _connect(client, local)
        (speaker,) = await _speakers(local, 1)
        stream = vc.listen_stream()
        assert vc.is_listening()
        speaker.speak()
        frames = []
        async for frame in stream:
            frames.append(frame)
            if len(frames) == 50:
                break
        stream.close()
        assert not vc.is_listening()
        assert vc.stop_reason is StopReason.STOPPED
        await asyncio.sleep(0.1)
        assert stopped == [(vc, None)]
        assert vc.receive_stats()["stream_dropped"] == 0
        speaker.stop_now()
    assert {f.user_id for f in frames} == {speaker.user_id}
    assert [f.tick for f in frames] == list(range(frames[0].tick, frames[0].tick + 50))


async def test_live_levels_example_prints_a_meter_per_speaker(local: LocalDiscord) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from live_levels import print_levels
    finally:
        sys.path.remove(str(ROOT / "examples"))
    client = new_client()
    lines: list[str] = []
    async with running(client, "levels-bot"):
        vc = await _connect(client, local)
        alice, bob = await _speakers(local, 2)
        alice.speak()
        bob.speak()
        chunks = await print_levels(vc, seconds=2.0, out=lines.append)
        assert not vc.is_listening()
    assert set(chunks) == {alice.user_id, bob.user_id}
    for speaker in (alice, bob):
        mine = [line for line in lines if line.startswith(speaker.name)]
        assert len(mine) >= 3, lines
        assert any(float(line.split()[-2]) > -40 for line in mine), mine
