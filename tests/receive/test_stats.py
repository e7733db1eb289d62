"""Receive counters: per-stream tallies, snapshots, and pruning of departed speakers."""

from __future__ import annotations

from discord_voicerecv.receive.stats import ReceiveStats


def test_a_departed_streams_counts_fold_into_the_totals() -> None:
    stats = ReceiveStats()
    tally = stats.tally(1, 100)
    tally.rtp, tally.decoded, tally.frames = 5, 4, 4
    stats.incr("late", ssrc=1, user_id=100)
    stats.tally(2, 200).rtp = 3
    stats.forget_ssrc(1)
    stats.forget_user(100)
    snap = stats.snapshot()
    assert (snap["rtp"], snap["decoded"], snap["late"]) == (8, 4, 1)
    assert set(snap.by_ssrc) == {2} and set(snap.by_user) == {200}
    assert stats["rtp"] == 8


def test_snapshot_is_a_frozen_copy() -> None:
    stats = ReceiveStats()
    stats.incr("late", 2, ssrc=1, user_id=100)
    snap = stats.snapshot()
    stats.incr("late")
    assert snap["late"] == 2 and stats["late"] == 3
    assert snap.by_ssrc[1]["late"] == 2 and snap.dropped() == 2
