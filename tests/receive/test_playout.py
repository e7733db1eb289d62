"""One stream's playout, driven slot by slot without a receiver: what is decoded, concealed or left silent."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import numpy as np

from discord_voicerecv.frames import FRAME_BYTES, VoiceFrame
from discord_voicerecv.opus import OpusEncoder
from discord_voicerecv.receive.playout import CARRY, DECODE, FEC, PLC, StreamPlayout
from discord_voicerecv.receive.stats import ReceiveStats

SSRC, USER = 42, 7


@functools.cache
def _opus(count: int = 60, samples: int = 960) -> tuple[bytes, ...]:
    encoder = OpusEncoder(fec=True, expected_loss_pct=25)
    out = []
    for k in range(count):
        t = np.arange(k * samples, (k + 1) * samples) / 48000.0
        mono = (8000 * np.sin(2 * math.pi * 500 * t)).astype("<i2")
        out.append(encoder.encode(np.repeat(mono, 2).tobytes(), frame_samples=samples))
    return tuple(out)


def _feed(playout: StreamPlayout, items: Iterable[tuple[int, int, int]], samples: int = 960) -> None:
    """Insert ``(index, sequence, slot sent)``: packet ``index`` of the tone, timestamped by its slot."""
    for index, sequence, slot in items:
        arrival = 0.02 * slot + 0.003
        playout.insert(sequence, slot * 960, _opus(samples=samples)[index], arrival, 0, replayed=False)


def _play(playout: StreamPlayout, ticks: range, want_pcm: bool = True) -> tuple[list[VoiceFrame], list[str]]:
    frames, events, kinds = [], [], []
    for tick in ticks:
        plan = playout.plan(tick, events)
        kinds.append("-" if plan is None else "DFPC"[[DECODE, FEC, PLC, CARRY].index(plan.kind)])
        if plan is not None and (frame := playout.render(plan, tick, want_pcm)) is not None:
            frames.append(frame)
    return frames, ["".join(kinds)] + [f"{name}@{payload['tick']}" for name, payload in events]


def test_consecutive_sequences_with_a_timestamp_jump_are_a_pause_not_a_loss() -> None:
    stats = ReceiveStats()
    playout = StreamPlayout(SSRC, USER, 0.0, 0.2, stats)
    _feed(playout, [(i, 100 + i, i) for i in range(5)] + [(i, 100 + i, i + 4) for i in range(5, 10)])
    frames, log = _play(playout, range(15))
    assert log[0] == "DDDDD----DDDDD-"
    assert not any(f.concealed for f in frames) and stats["plc"] == stats["fec"] == 0


def test_a_lost_packet_is_recovered_by_fec_and_a_longer_loss_by_plc_then_fec() -> None:
    stats = ReceiveStats()
    playout = StreamPlayout(SSRC, USER, 0.0, 0.5, stats)
    lost = {3, *range(6, 15)}
    _feed(playout, [(i, 100 + i, i) for i in range(20) if i not in lost])
    frames, log = _play(playout, range(20))
    assert log[0] == "DDDFDDPPPPP---FDDDDD", "PLC stops after 5 slots; FEC still recovers the slot before a packet"
    assert [f.sequence for f in frames if f.concealed] == [103, 106, 107, 108, 109, 110, 114]
    assert all(len(f.pcm) == FRAME_BYTES and f.opus is None and f.opus_packets == () for f in frames if f.concealed)
    assert (stats["fec"], stats["plc"]) == (2, 5)


def test_a_packet_longer_than_a_slot_carries_into_the_next() -> None:
    playout = StreamPlayout(SSRC, USER, 0.0, 0.2, ReceiveStats())
    _feed(playout, [(i, i, 2 * i) for i in range(3)], samples=1920)
    frames, log = _play(playout, range(8))
    assert log[0].startswith("DCDCDC")
    assert [f.opus is not None for f in frames] == [True, False] * 3
    assert [f.rtp_timestamp for f in frames] == [960 * k for k in range(6)]


def test_two_short_packets_share_a_slot_and_both_reach_the_frame() -> None:
    playout = StreamPlayout(SSRC, USER, 0.0, 0.2, ReceiveStats())
    packets = _opus(samples=480)
    for i in range(4):
        playout.insert(i, 480 * i, packets[i], 0.01 * i + 0.003, 0, replayed=False)
    frames, _ = _play(playout, range(3))
    assert [f.opus_packets for f in frames] == [(packets[0], packets[1]), (packets[2], packets[3])]
    assert not any(f.concealed for f in frames)


def test_opus_only_plays_without_a_decoder_and_counts_losses() -> None:
    stats = ReceiveStats()
    playout = StreamPlayout(SSRC, USER, 0.0, 0.2, stats)
    _feed(playout, [(i, i, i) for i in range(6) if i != 2])
    frames, _ = _play(playout, range(6), want_pcm=False)
    assert [f.concealed for f in frames] == [False, False, True, False, False, False]
    assert playout.decoder is None and stats["lost"] == 1 and all(f.pcm == b"" for f in frames)


def test_a_leaving_stream_plays_its_buffer_then_stops_speaking() -> None:
    playout = StreamPlayout(SSRC, USER, 0.0, 0.2, ReceiveStats())
    _feed(playout, [(i, i, i) for i in range(4)])
    playout.leaving = True
    frames, log = _play(playout, range(6))
    assert len(frames) == 4 and log[1:] == ["speaking_start@0", "speaking_stop@4"]
    assert playout.drained


def test_a_frame_whose_slot_has_passed_is_late() -> None:
    stats = ReceiveStats()
    playout = StreamPlayout(SSRC, USER, 0.0, 0.2, stats)
    playout.insert(1, 960, _opus()[0], 0.023, 5, replayed=True)
    assert stats["late"] == 1 and not len(playout.jitter)


def test_a_stall_of_this_process_mid_spurt_continues_the_spurt() -> None:
    """Frames continuing a spurt after this process stalled (no datagram read, no slot played for 0.2 s) play in
    their own slots, the ones still missing are concealed: the stall is not a pause that starts a new spurt."""
    stats = ReceiveStats()
    playout = StreamPlayout(SSRC, USER, 0.0, 0.2, stats)

    def arrive(indices: Iterable[int], at: float, first_free: int) -> None:
        for i in indices:
            playout.insert(100 + i, 960 * i, _opus()[i], at, first_free, replayed=False)

    # Frame i is sent at 20 ms * i and lands in slot i; slot t plays once the clock passes 20 ms * (t + 1) + 0.1 s.
    for i in range(17):
        arrive([i], 0.02 * i + 0.003, 0)
    _, before = _play(playout, range(11))
    # Stalled from 0.33 s to 0.535 s; then the first datagrams of the backlog are read and the due slots played,
    arrive([17, 20], 0.535, 11)
    frames, during = _play(playout, range(11, 21))
    # and the rest of the backlog right after.
    arrive([18, 19, *range(21, 27)], 0.536, 21)
    _, after = _play(playout, range(21, 40))
    assert (before[0], during[0], after[0]) == ("D" * 11, "DDDDDDDPFD", "D" * 6 + "-" * 13)
    assert [f.sequence for f in frames[6:]] == [117, 118, 119, 120]
    assert before[1:] + during[1:] + after[1:] == ["speaking_start@0", "speaking_stop@37"]
    assert (stats["late"], stats["plc"], stats["fec"]) == (2, 1, 1), "only frames 18 and 19 came after their slots"


def test_play_opus_gives_the_frames_of_plan_then_opus_frame() -> None:
    """The no-PCM path (no plan for a slot of received packets) against plan + opus_frame, on the same stream:
    a loss, a DTX pause, packets of 40 ms and of 10 ms, a new spurt and a leaving user."""
    long, short = _opus(samples=1920), _opus(samples=480)
    items: list[tuple[int, int, bytes]] = []  # (sequence, timestamp, payload); sent in order, 20 ms apart
    items += [(i, 960 * i, _opus()[i]) for i in range(12) if i != 4]
    items += [(12 + i, 960 * (16 + i), _opus()[12 + i]) for i in range(4)]  # sequence goes on, timestamp jumps
    items += [(16 + i, 960 * 20 + 1920 * i, long[i]) for i in range(3)]
    items += [(19 + i, 960 * 26 + 480 * i, short[i]) for i in range(4)]
    items += [(40 + i, 960 * (60 + i), _opus()[30 + i]) for i in range(5)]  # a new spurt after silence

    def run(lean: bool) -> tuple[list[VoiceFrame], list[tuple[str, int]], dict[str, int]]:
        stats = ReceiveStats()
        playout = StreamPlayout(SSRC, USER, 0.0, 0.2, stats)
        for sequence, timestamp, payload in items:
            playout.insert(sequence, timestamp, payload, timestamp / 48_000 + 0.003, 0, replayed=False)
        playout.leaving = True
        frames: list[VoiceFrame] = []
        events: list[tuple[str, dict[str, int]]] = []
        for tick in range(80):
            if lean:
                frame = playout.play_opus(tick, events)
            else:
                plan = playout.plan(tick, events)
                frame = None if plan is None or plan.kind == CARRY else playout.opus_frame(plan, tick)
            if frame is not None:
                frames.append(frame)
        assert playout.decoder is None and playout.drained
        return frames, [(name, payload["tick"]) for name, payload in events], dict(stats.snapshot())

    lean, general = run(True), run(False)
    assert lean == general
    frames, events, stats = lean
    assert [f.tick for f in frames if f.concealed] == [4] and stats["lost"] == 1
    assert [f.tick for f in frames if 16 <= f.tick < 30] == [16, 17, 18, 19, 20, 22, 24, 26, 27]
    assert [len(f.opus_packets) for f in frames if f.tick in (24, 26, 27)] == [1, 2, 2]
    assert events == [("speaking_start", 0), ("speaking_stop", 28), ("speaking_start", 60), ("speaking_stop", 65)]
    assert stats["frames"] == len(frames) == 26
