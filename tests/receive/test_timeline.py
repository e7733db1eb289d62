"""Tests for the RTP-timestamp-to-slot timeline: spurts, jitter, reordering, stalls and jumps."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voicerecv.receive.timeline import Placement, Timeline, slot_at

T0 = 1000.0


def _at(slot: float) -> float:
    """Clock time a fraction into ``slot``."""
    return T0 + 0.02 * slot


def test_slot_at_boundaries() -> None:
    assert slot_at(T0, T0) == 0
    assert slot_at(T0, T0 + 0.0199) == 0
    assert slot_at(T0, T0 + 0.02) == 1
    assert slot_at(T0, T0 + 1.0) == 50
    assert slot_at(T0, T0 - 0.001) == -1


def test_first_packet_anchors_on_arrival_and_rtp_keeps_spacing_despite_jitter() -> None:
    tl = Timeline(T0)
    first = tl.place(5000, _at(10.3), first_free=0, newest=True)
    assert first == Placement(10, 1, True)
    jitter = [0.9, 0.1, 2.5, 0.4, 3.9]
    for i, extra in enumerate(jitter, start=1):
        placed = tl.place(5000 + 960 * i, _at(10.3 + i + extra), first_free=0, newest=True)
        assert placed == Placement(10 + i, 1, False)
    assert tl.last_slot == 15


def test_silence_starts_a_new_spurt_anchored_on_arrival() -> None:
    tl = Timeline(T0, max_silence=0.2)
    for i in range(5):
        tl.place(960 * i, _at(i), first_free=0, newest=True)
    placed = tl.place(960 * 5, _at(40.2), first_free=35, newest=True)  # slots before 35 were played by then
    assert placed == Placement(40, 2, True)
    assert tl.spurt == 2
    again = tl.place(960 * 6, _at(41.1), first_free=0, newest=True)
    assert again == Placement(41, 2, False)


def test_a_stall_longer_than_max_silence_keeps_the_spurt_while_its_slots_can_still_play() -> None:
    tl = Timeline(T0, max_silence=0.2)
    for i in range(20):
        tl.place(960 * i, _at(i + 0.5), first_free=0, newest=True)
    # Nothing for 0.26 s (the network or this process stalled), then the next frame: its timestamp follows the spurt
    # without a pause and slot 20 has not been played, so it is the same spurt, not a new one anchored on arrival.
    assert tl.place(960 * 20, _at(33.5), first_free=15, newest=True) == Placement(20, 1, False)
    assert tl.place(960 * 23, _at(33.6), first_free=15, newest=True) == Placement(23, 1, False)


def test_a_stalled_frame_whose_slot_was_played_starts_a_spurt_on_arrival() -> None:
    tl = Timeline(T0, max_silence=0.2)
    for i in range(20):
        tl.place(960 * i, _at(i + 0.5), first_free=0, newest=True)
    assert tl.place(960 * 20, _at(33.5), first_free=25, newest=True) == Placement(33, 2, True)


def test_timestamps_that_kept_running_through_silence_also_anchor_on_arrival() -> None:
    tl = Timeline(T0)
    tl.place(0, _at(0), first_free=0, newest=True)
    placed = tl.place(960 * 50, _at(50.5), first_free=0, newest=True)
    assert placed is not None and placed.slot == 50 and placed.started


def test_reordered_first_packets_of_a_spurt_go_before_the_anchor() -> None:
    tl = Timeline(T0)
    second = tl.place(960 * 101, _at(20.1), first_free=0, newest=True)
    first = tl.place(960 * 100, _at(20.3), first_free=0, newest=False)
    assert second == Placement(20, 1, True)
    assert first == Placement(19, 1, False)


def test_an_old_packet_whose_slot_was_played_is_late() -> None:
    tl = Timeline(T0)
    for i in (0, 2, 3):
        tl.place(960 * i, _at(i), first_free=0, newest=True)
    assert tl.place(960, _at(9), first_free=5, newest=False) is None


def test_a_burst_after_a_delay_spike_loses_its_late_frames_and_keeps_the_spurt_in_place() -> None:
    tl = Timeline(T0, max_silence=0.5)
    for i in range(3):
        tl.place(960 * i, _at(i), first_free=0, newest=True)
    # packets 3..12 arrive together 0.2 s late, after slots up to 9 were played: 3..9 are late, each less than the
    # one before (a burst), and 10..12 keep the slots their timestamps give
    burst = [tl.place(960 * i, _at(12.5), first_free=10, newest=True) for i in range(3, 13)]
    assert burst[:7] == [None] * 7
    assert burst[7:] == [Placement(10, 1, False), Placement(11, 1, False), Placement(12, 1, False)]
    assert tl.shifts == 0


def test_lasting_lateness_moves_the_rest_of_the_spurt_later() -> None:
    tl = Timeline(T0)
    for i in range(3):
        tl.place(960 * i, _at(i + 0.5), first_free=0, newest=True)
    # from packet 3 on the delay grew by 0.15 s for good: every frame arrives 8 slots after it was sent, after the
    # slots up to 4 after it were played
    late = [tl.place(960 * i, _at(i + 8.5), first_free=i + 4, newest=True) for i in range(3, 7)]
    assert late[:2] == [None, None], "the first late frames could still be a burst"
    assert late[2] == Placement(9, 1, False) and tl.shifts == 1
    assert late[3] == Placement(10, 1, False)


def test_a_timestamp_jump_far_ahead_reanchors() -> None:
    tl = Timeline(T0, max_early=4.0)
    tl.place(0, _at(0), first_free=0, newest=True)
    tl.place(960, _at(1), first_free=0, newest=True)
    placed = tl.place(960 * 100_000, _at(2), first_free=0, newest=True)
    assert placed == Placement(2, 2, True)


def test_a_burst_that_arrived_before_the_first_free_slot_is_late_not_shifted() -> None:
    tl = Timeline(T0)
    assert [tl.place(960 * i, _at(25 + i), first_free=30, newest=True) for i in range(5)] == [None] * 5
    live = tl.place(960 * 5, _at(30.2), first_free=30, newest=True)
    assert live == Placement(30, 1, False)


def test_a_new_spurt_never_overlaps_the_previous_one() -> None:
    tl = Timeline(T0, max_silence=0.2)
    for i in range(5):
        tl.place(960 * i, _at(40 + i), first_free=40, newest=True)
    placed = tl.place(960 * 500, _at(30), first_free=40, newest=True)
    assert placed is not None and placed.slot == 45 and placed.started


def test_reset_ends_the_spurt() -> None:
    tl = Timeline(T0)
    tl.place(0, _at(0), first_free=0, newest=True)
    tl.reset()
    placed = tl.place(960, _at(7), first_free=0, newest=True)
    assert placed == Placement(7, 2, True)


def test_ten_millisecond_frames_share_slots() -> None:
    tl = Timeline(T0)
    placed = [tl.place(480 * i, _at(3 + i / 2), first_free=0, newest=True) for i in range(6)]
    assert [(p.slot, p.offset) for p in placed if p is not None] == [
        (3, 0),
        (3, 480),
        (4, 0),
        (4, 480),
        (5, 0),
        (5, 480),
    ]


def test_a_less_delayed_packet_moves_an_unplayed_spurt_earlier() -> None:
    tl = Timeline(T0)
    first = tl.place(0, _at(12.5), first_free=0, newest=True)  # sent in slot 10, delayed 50 ms
    assert first == Placement(12, 1, True)
    second = tl.place(960, _at(11.2), first_free=0, newest=True)  # sent in slot 11, delayed 4 ms
    assert second == Placement(11, 1, False, moved=2)
    third = tl.place(1920, _at(12.9), first_free=0, newest=True)
    assert third == Placement(12, 1, False)


def test_frames_moved_before_the_first_free_slot_are_dropped_not_the_spurt_shifted() -> None:
    tl = Timeline(T0)
    tl.place(0, _at(12.5), first_free=0, newest=True)
    moved = tl.place(960, _at(11.2), first_free=11, newest=True)
    assert moved == Placement(11, 1, False, moved=2)
    assert tl.place(1920, _at(12.1), first_free=12, newest=True) == Placement(12, 1, False)


def test_a_spurt_that_started_playing_no_longer_moves() -> None:
    tl = Timeline(T0)
    tl.place(0, _at(12.5), first_free=0, newest=True)
    tl.freeze()
    assert tl.place(960, _at(11.2), first_free=0, newest=True) == Placement(13, 1, False)


def test_a_frame_not_on_a_slot_boundary_carries_its_offset() -> None:
    tl = Timeline(T0)
    tl.place(0, _at(3), first_free=0, newest=True)
    assert tl.place(480 + 960, _at(4.5), first_free=0, newest=True) == Placement(4, 1, False, 0, 480)


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(2, 60),
    offset=st.floats(0, 500),
    delays=st.lists(st.floats(0, 0.15), min_size=60, max_size=60),
)
def test_an_unplayed_spurt_is_anchored_on_its_least_delayed_packet(
    count: int, offset: float, delays: list[float]
) -> None:
    arrivals = sorted((_at(offset + i) + delays[i], i) for i in range(count))
    tl = Timeline(T0, max_silence=1.0)
    highest = -1
    slots: dict[int, int] = {}
    for arrival, i in arrivals:
        placed = tl.place(960 * i, arrival, first_free=0, newest=i > highest)
        highest = max(highest, i)
        assert placed is not None and placed.spurt == 1
        for j in slots:
            slots[j] -= placed.moved
        slots[i] = placed.slot
    anchor = min(slot_at(T0, arrival) - i for arrival, i in arrivals)
    assert slots == {i: anchor + i for i in range(count)}


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(2, 80),
    ts0=st.integers(0, 2**40),
    offset=st.floats(0, 500),
    seed=st.integers(0, 2**32 - 1),
)
def test_jitter_and_reordering_inside_a_spurt_never_move_frames(count: int, ts0: int, offset: float, seed: int) -> None:
    rng = random.Random(seed)
    arrivals = [(_at(offset + i + rng.uniform(0.0, 0.9)), i) for i in range(count)]
    arrivals[0] = (_at(offset), 0)
    order = sorted(arrivals[1:], key=lambda a: a[0] + rng.uniform(0, 0.04))
    tl = Timeline(T0, max_silence=0.2)
    highest = -1
    slots: dict[int, int] = {}
    for arrival, i in [arrivals[0], *order]:
        newest = i > highest
        highest = max(highest, i)
        placed = tl.place(ts0 + 960 * i, arrival, first_free=0, newest=newest)
        assert placed is not None and placed.spurt == 1
        slots[i] = placed.slot
    anchor = slot_at(T0, _at(offset))
    assert slots == {i: anchor + i for i in range(count)}
