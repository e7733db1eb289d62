"""Tests for the per-SSRC jitter buffer: ordering, wraparound, duplicates, lateness, bounds and resync."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voicerecv.receive.jitter import Drop, JitterBuffer, JitterPacket


def _insert(jb: JitterBuffer, seq: int, ts: int | None = None, arrival: float = 0.0) -> JitterPacket | Drop:
    return jb.insert(seq & 0xFFFF, (ts if ts is not None else seq * 960) & 0xFFFFFFFF, b"p%d" % seq, arrival)


def _drain(jb: JitterBuffer) -> list[JitterPacket]:
    out = []
    while (packet := jb.pop()) is not None:
        out.append(packet)
    return out


def test_reorders_by_sequence() -> None:
    jb = JitterBuffer()
    for seq in (3, 1, 2, 5, 4):
        assert isinstance(_insert(jb, seq), JitterPacket)
    assert [p.sequence for p in _drain(jb)] == [1, 2, 3, 4, 5]
    assert jb.pop() is None


def test_sequence_wraparound_is_unwrapped() -> None:
    jb = JitterBuffer()
    seqs = [65533, 65534, 65535, 0, 1, 2]
    for seq in (65534, 0, 65533, 2, 65535, 1):
        _insert(jb, seq, ts=seq * 960)
    out = _drain(jb)
    assert [p.sequence & 0xFFFF for p in out] == seqs
    assert [p.sequence for p in out] == [65533, 65534, 65535, 65536, 65537, 65538]


def test_timestamp_wraparound_is_unwrapped() -> None:
    jb = JitterBuffer()
    base = 0xFFFFFFFF - 960 * 2 + 1
    for i in range(5):
        _insert(jb, 100 + i, ts=base + 960 * i)
    stamps = [p.timestamp for p in _drain(jb)]
    assert stamps == [base + 960 * i for i in range(5)]
    assert stamps[-1] > 0xFFFFFFFF


def test_reordered_packet_behind_a_timestamp_wrap() -> None:
    jb = JitterBuffer()
    _insert(jb, 10, ts=5)
    packet = _insert(jb, 9, ts=0xFFFFFFFF - 954)
    assert isinstance(packet, JitterPacket)
    assert packet.timestamp == 5 - 960


def test_duplicates_buffered_and_played_are_refused() -> None:
    jb = JitterBuffer()
    _insert(jb, 1)
    _insert(jb, 2)
    assert _insert(jb, 2) is Drop.DUPLICATE
    assert jb.pop() is not None
    assert _insert(jb, 1) is Drop.DUPLICATE
    assert jb.duplicates == 2


def test_packets_older_than_the_playout_point_are_late() -> None:
    jb = JitterBuffer()
    _insert(jb, 10)
    _insert(jb, 12)
    jb.pop()
    jb.pop()
    assert _insert(jb, 11) is Drop.LATE
    assert _insert(jb, 9) is Drop.LATE
    assert jb.late == 2
    assert isinstance(_insert(jb, 13), JitterPacket)


def test_capacity_drops_the_oldest() -> None:
    jb = JitterBuffer(capacity=4)
    for seq in range(1, 11):
        _insert(jb, seq)
    assert len(jb) == 4
    assert jb.overflow == 6
    assert [p.sequence for p in jb] == [7, 8, 9, 10]
    assert _insert(jb, 0) is Drop.LATE
    assert _insert(jb, 3) is Drop.DUPLICATE


def test_an_old_packet_into_a_full_buffer_is_the_one_dropped() -> None:
    jb = JitterBuffer(capacity=3)
    for seq in (5, 6, 7):
        _insert(jb, seq)
    assert _insert(jb, 4) is Drop.OVERFLOW
    assert [p.sequence for p in jb] == [5, 6, 7]
    assert jb.overflow == 1


def test_remove_does_not_mark_the_packet_played() -> None:
    jb = JitterBuffer()
    _insert(jb, 1)
    packet = _insert(jb, 2)
    assert isinstance(packet, JitterPacket)
    assert jb.remove(packet)
    assert not jb.remove(packet)
    assert [p.sequence for p in jb] == [1]
    assert isinstance(_insert(jb, 2), JitterPacket)


def test_sender_restart_resyncs_after_consecutive_far_packets() -> None:
    jb = JitterBuffer(resync_after=3, resync_distance=1000)
    for seq in range(20000, 20010):
        _insert(jb, seq)
    _drain(jb)
    results = [_insert(jb, seq, ts=7 + seq) for seq in (5, 6, 7, 8)]
    assert results[:2] == [Drop.LATE, Drop.LATE]
    third, fourth = results[2], results[3]
    assert isinstance(third, JitterPacket) and isinstance(fourth, JitterPacket)
    assert fourth.sequence == third.sequence + 1 > 20009
    assert (third.wire_sequence, fourth.wire_sequence) == (7, 8)
    assert jb.resyncs == 1


def test_an_isolated_replayed_old_packet_does_not_resync() -> None:
    jb = JitterBuffer(resync_after=3, resync_distance=100)
    for seq in range(5000, 5300):
        _insert(jb, seq)
        if seq % 3 == 0:
            assert _insert(jb, seq - 500) is Drop.LATE
        jb.pop()
    assert jb.resyncs == 0


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(0, 0xFFFF),
    count=st.integers(1, 120),
    ts_start=st.integers(0, 0xFFFFFFFF),
    seed=st.integers(0, 2**32 - 1),
    dup_rate=st.floats(0, 0.5),
)
def test_any_shuffle_with_duplicates_comes_out_in_order_once(
    start: int, count: int, ts_start: int, seed: int, dup_rate: float
) -> None:
    rng = random.Random(seed)
    seqs = [start + i for i in range(count)]
    feed = seqs + [s for s in seqs if rng.random() < dup_rate]
    rng.shuffle(feed)
    jb = JitterBuffer(capacity=256)
    for seq in feed:
        jb.insert(seq & 0xFFFF, (ts_start + 960 * (seq - start)) & 0xFFFFFFFF, bytes([seq & 0xFF]), 0.0)
    out = _drain(jb)
    ext = [p.sequence for p in out]
    assert ext == sorted(set(ext))
    assert [s & 0xFFFF for s in ext] == [s & 0xFFFF for s in seqs]
    assert all(b.sequence - a.sequence == 1 for a, b in itertools.pairwise(out))
    assert all(b.timestamp - a.timestamp == 960 for a, b in itertools.pairwise(out))
    assert jb.duplicates == len(feed) - count


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.booleans()), max_size=300))
def test_arbitrary_input_keeps_invariants(ops: list[tuple[int, bool]]) -> None:
    jb = JitterBuffer(capacity=16)
    popped: list[int] = []
    for seq, pop in ops:
        jb.insert(seq, seq * 960, b"x", 0.0)
        assert len(jb) <= 16
        keys = [p.sequence for p in jb]
        assert keys == sorted(set(keys))
        if pop and (packet := jb.pop()) is not None:
            popped.append(packet.sequence)
    assert popped == sorted(set(popped))
