"""The sink hand-off: bounded queue with merged empty ticks, and a sink that fails or finishes."""

from __future__ import annotations

from discord_voicerecv.frames import VoiceFrame
from discord_voicerecv.receive.sinkfeed import SinkFeed, SlotQueue
from discord_voicerecv.receive.stats import ReceiveStats
from discord_voicerecv.sinks.base import AudioSink, SinkUser


def _frame(tick: int) -> VoiceFrame:
    return VoiceFrame(1, 7, tick, b"", b"o", tick, tick * 960)


def test_a_full_queue_drops_frames_but_keeps_every_tick() -> None:
    queue = SlotQueue(max_slots=2)
    assert queue.put(0, 0, [_frame(0)]) and queue.put(1, 1, [_frame(1)])
    assert not queue.put(2, 2, [_frame(2)])
    assert queue.put(3, 9, [])
    items = []
    while (item := queue.get(0)) is not None:
        items.append((item[0], item[1], len(item[2])))
    assert items == [(0, 0, 1), (1, 1, 1), (2, 9, 0)]
    queue.close()
    assert queue.get() is None


class Sink(AudioSink):
    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.log: list[object] = []

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.log.append(("write", user, frame.tick))

    def advance(self, tick: int) -> None:
        if tick == self.fail_at:
            raise OSError("disk full")
        self.log.append(tick)

    def cleanup(self) -> None:
        self.log.append("cleanup")


def test_frames_then_ticks_reach_the_sink_with_resolved_users_and_finish_runs_once() -> None:
    sink, after = Sink(), []
    feed = SinkFeed(sink, SlotQueue(10), ReceiveStats(), resolver=lambda uid: None, after=after.append)
    feed.queue.put(0, 0, [_frame(0)])
    feed.queue.put(1, 3, [])
    assert feed.deliver_all() == 4
    feed.finish()
    feed.finish()
    assert sink.log == [("write", None, 0), 0, 1, 2, 3, "cleanup"] and after == [None]


def test_a_failing_sink_is_detached_and_its_error_reported() -> None:
    sink, after, stats = Sink(fail_at=2), [], ReceiveStats()
    feed = SinkFeed(sink, SlotQueue(10), stats, resolver=None, after=after.append)
    feed.queue.put(0, 5, [])
    feed.deliver_all()
    feed.finish()
    assert sink.log == [0, 1, "cleanup"] and not feed.attached and stats["sink_error"] == 1
    assert len(after) == 1 and isinstance(after[0], OSError)
