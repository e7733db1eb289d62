"""AudioStream and SinkHub: frames cross from a sink thread to asyncio in order, bounded, never blocking the writer."""

from __future__ import annotations

import asyncio
import threading

import discord
import pytest

from discord_voicerecv.frames import FRAME_BYTES, VoiceFrame
from discord_voicerecv.sinks import AudioSink, SinkUser
from discord_voicerecv.sinks.stream import AudioStream, SinkHub, StreamFrame


def _frame(user_id: int | None, tick: int, *, fill: int = 1) -> VoiceFrame:
    return VoiceFrame(
        ssrc=1000 + (user_id or 0),
        user_id=user_id,
        tick=tick,
        pcm=bytes([fill]) * FRAME_BYTES,
        opus=bytes([tick % 256, user_id or 0]),
        sequence=tick,
        rtp_timestamp=tick * 960,
    )


def _write_from_thread(sink: AudioSink, frames: list[VoiceFrame]) -> None:
    """Write ``frames`` (then cleanup) on another thread, as the receiver does."""

    def run() -> None:
        for frame in frames:
            sink.write(discord.Object(id=frame.user_id or 1), frame)
            sink.advance(frame.tick)
        sink.cleanup()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


async def _collect(stream: AudioStream) -> list[StreamFrame]:
    return [frame async for frame in stream]


async def test_frames_written_on_a_thread_come_out_in_order_with_timestamps() -> None:
    stream = AudioStream(started_at=1000.0)
    frames = [_frame(user, tick) for tick in range(50) for user in (1, 2)]
    consumer = asyncio.create_task(_collect(stream))
    await asyncio.sleep(0)
    await asyncio.to_thread(_write_from_thread, stream, frames)
    got = await asyncio.wait_for(consumer, 2)
    assert [(f.user_id, f.tick) for f in got] == [(f.user_id, f.tick) for f in frames]
    first = got[2]
    assert first.elapsed == pytest.approx(0.02)
    assert first.wall_time == pytest.approx(1000.02)
    assert first.pcm == frames[2].pcm and first.opus == frames[2].opus
    assert isinstance(first.user, discord.Object) and first.user.id == 1
    assert stream.delivered == 100 and stream.dropped == 0 and stream.ended


async def test_a_waiting_consumer_is_woken_by_a_write() -> None:
    stream = AudioStream()
    waiter = asyncio.create_task(stream.get(timeout=30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await asyncio.to_thread(stream.write, None, _frame(7, 0))
    frame = await waiter  # a write that did not wake the waiter would end in TimeoutError
    assert frame is not None and frame.user_id == 7


async def test_users_filter_and_opus_only() -> None:
    stream = AudioStream(users=[discord.Object(id=2), 3], opus=True)
    assert stream.wants_pcm is False
    await asyncio.to_thread(_write_from_thread, stream, [_frame(u, t) for t in range(5) for u in (1, 2, 3)])
    got = await _collect(stream)
    assert {f.user_id for f in got} == {2, 3}
    assert all(f.pcm == b"" and f.opus for f in got)


async def test_opus_streams_yield_every_packet_of_a_slot() -> None:
    stream = AudioStream(opus=True)
    packets = (b"\xe4\x01", b"\xe4\x02")  # two 10 ms CELT packets in one slot
    frame = VoiceFrame(5, 2, 0, b"", packets[0], 0, 0, opus_packets=packets)
    await asyncio.to_thread(_write_from_thread, stream, [frame])
    (got,) = await _collect(stream)
    assert got.opus_packets == packets and got.opus == packets[0]


async def test_a_consumer_that_stops_reading_loses_the_newest_frames_per_speaker_and_never_blocks_the_writer() -> None:
    stream = AudioStream(max_queue_seconds=0.2)  # 10 frames per speaker
    assert stream.max_frames == 10
    frames = [_frame(user, tick) for tick in range(1000) for user in (1, 2)]
    # Nobody reads: a writer that waited for room would never finish.
    await asyncio.wait_for(asyncio.to_thread(_write_from_thread, stream, frames), 30)
    assert stream.queued == 20
    assert stream.dropped == 1980 and stream.dropped_by_user == {1: 990, 2: 990}
    got = await _collect(stream)
    assert [f.tick for f in got if f.user_id == 1] == list(range(10))
    assert stream.received == 2000


async def test_reading_frees_room_for_more() -> None:
    stream = AudioStream(max_queue_seconds=0.04)  # 2 frames per speaker
    for tick in range(3):
        stream.write(None, _frame(1, tick))
    assert stream.dropped == 1
    assert (await stream.get(1)) is not None
    stream.write(None, _frame(1, 3))
    stream.cleanup()
    assert [f.tick for f in await _collect(stream)] == [1, 3]


async def test_close_discards_the_queue_ends_iteration_and_detaches() -> None:
    hub = SinkHub(None)
    stream = AudioStream()
    hub.attach(stream)
    hub.write(None, _frame(1, 0))
    consumer = asyncio.create_task(_collect(stream))
    await asyncio.sleep(0.01)
    async with stream:
        pass
    assert await asyncio.wait_for(consumer, 1) == [StreamFrame(*_expected(stream, _frame(1, 0)))]
    assert hub.streams == ()
    hub.write(None, _frame(1, 2))
    assert stream.received == 1, "a closed stream takes nothing more"


def _expected(stream: AudioStream, frame: VoiceFrame) -> tuple[object, ...]:
    elapsed = frame.tick * 0.02
    return (
        None,
        frame.user_id,
        frame.ssrc,
        frame.tick,
        frame.pcm,
        frame.opus,
        elapsed,
        stream.started_at + elapsed,
        False,
        frame.opus_packets,
    )


async def test_close_of_an_empty_stream_wakes_the_consumer() -> None:
    stream = AudioStream()
    consumer = asyncio.create_task(_collect(stream))
    await asyncio.sleep(0.01)
    stream.close()
    assert await asyncio.wait_for(consumer, 1) == []


class _Recorder(AudioSink):
    def __init__(self, *, wants_pcm: bool = True, fail_at: int | None = None) -> None:
        self.wants_pcm = wants_pcm
        self.fail_at = fail_at
        self.frames: list[tuple[int | None, int]] = []
        self.ticks: list[int] = []
        self.cleaned = False

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if frame.tick == self.fail_at:
            raise OSError("disk full")
        self.frames.append((frame.user_id, frame.tick))

    def advance(self, tick: int) -> None:
        self.ticks.append(tick)

    def cleanup(self) -> None:
        self.cleaned = True


async def test_hub_feeds_the_main_sink_and_every_stream_and_follows_their_pcm_needs() -> None:
    main = _Recorder(wants_pcm=False)
    hub = SinkHub(main)
    assert hub.wants_pcm is False
    late = AudioStream(opus=True)
    pcm = AudioStream()
    hub.attach(late)
    assert hub.wants_pcm is False
    hub.attach(pcm)
    assert hub.wants_pcm is True
    hub.write(None, _frame(1, 0))
    hub.advance(0)
    pcm.close()
    assert hub.wants_pcm is False
    hub.write(None, _frame(1, 1))
    hub.advance(1)
    hub.cleanup()
    assert main.frames == [(1, 0), (1, 1)] and main.ticks == [0, 1] and main.cleaned
    assert [f.tick for f in await _collect(late)] == [0, 1]
    after = AudioStream()
    hub.attach(after)
    assert after.ended and await _collect(after) == []


async def test_hub_propagates_a_main_sink_error_and_counts_every_streams_drops() -> None:
    hub = SinkHub(_Recorder(fail_at=3))
    small = AudioStream(max_queue_seconds=0.02)
    gone = AudioStream(max_queue_seconds=0.02)
    hub.attach(small)
    hub.attach(gone)
    for tick in range(3):
        hub.write(None, _frame(1, tick))
    gone.close()
    assert hub.stream_dropped == 4
    with pytest.raises(OSError):
        hub.write(None, _frame(1, 3))
    assert hub.stream_dropped == 4


async def test_a_stream_can_be_the_main_sink() -> None:
    stream = AudioStream(max_queue_seconds=0.02)
    hub = SinkHub(stream)
    hub.write(None, _frame(1, 0))
    hub.write(None, _frame(1, 1))
    assert hub.stream_dropped == 1


def test_needs_a_loop_and_a_positive_queue() -> None:
    with pytest.raises(RuntimeError):
        AudioStream()
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            AudioStream(loop=loop, max_queue_seconds=0)
    finally:
        loop.close()
