"""Link conditions: what a simulated network path does to packets, and that it counts it truthfully."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voicerecv.testing.link import FRAME_INTERVAL, Link, LinkConditions


def _packets(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def test_perfect_link_delivers_synchronously_in_order() -> None:
    got: list[bytes] = []
    link = Link(LinkConditions(), got.append)
    for packet in _packets(50):
        link.send(packet)
    assert got == _packets(50)
    assert (link.stats.offered, link.stats.delivered, link.stats.dropped) == (50, 50, 0)


@pytest.mark.parametrize("name", ["loss", "burst_loss", "reorder", "duplicate"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_probabilities_outside_unit_interval_are_rejected(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        LinkConditions(**{name: value})  # type: ignore[arg-type]


def test_negative_jitter_is_rejected() -> None:
    with pytest.raises(ValueError, match="jitter"):
        LinkConditions(jitter_ms=-1)


def test_loss_is_deterministic_for_a_seed_and_salt() -> None:
    def run(seed: int, salt: int) -> list[int]:
        got: list[bytes] = []
        link = Link(LinkConditions(loss=0.2, seed=seed), got.append, salt=salt)
        for packet in _packets(500):
            link.send(packet)
        assert len(got) == 500 - link.stats.dropped
        return link.stats.dropped_indices

    assert run(7, 1) == run(7, 1)
    assert run(7, 1) != run(7, 2)
    assert run(7, 1) != run(8, 1)
    assert 60 < len(run(7, 1)) < 140


def test_dropped_indices_are_exactly_the_missing_packets() -> None:
    got: list[bytes] = []
    link = Link(LinkConditions(loss=0.3, seed=3), got.append)
    sent = _packets(300)
    for packet in sent:
        link.send(packet)
    missing = [i for i, packet in enumerate(sent) if packet not in got]
    assert missing == link.stats.dropped_indices


def _mean_burst(indices: list[int]) -> float:
    bursts = 0
    for n, index in enumerate(indices):
        if n == 0 or indices[n - 1] != index - 1:
            bursts += 1
    return len(indices) / bursts


def test_burst_loss_makes_longer_runs_of_drops() -> None:
    def run(burst: float) -> Link:
        link = Link(LinkConditions(loss=0.05, burst_loss=burst, seed=11), lambda _: None)
        for packet in _packets(4000):
            link.send(packet)
        return link

    independent, bursty = run(0.0), run(0.75)
    assert independent.stats.burst_dropped == 0
    assert bursty.stats.burst_dropped > 0
    assert _mean_burst(independent.stats.dropped_indices) < 1.3
    assert _mean_burst(bursty.stats.dropped_indices) > 2.5


def test_duplicate_delivers_twice() -> None:
    got: list[bytes] = []
    link = Link(LinkConditions(duplicate=1.0, seed=1), got.append)
    for packet in _packets(10):
        link.send(packet)
    assert got == [p for p in _packets(10) for _ in range(2)]
    assert link.stats.duplicated == 10
    assert link.stats.delivered == 20


@given(
    loss=st.floats(0, 1),
    burst=st.floats(0, 1),
    duplicate=st.floats(0, 1),
    seed=st.integers(0, 2**32),
    count=st.integers(0, 200),
)
@settings(max_examples=60, deadline=None)
def test_counts_add_up_without_delays(loss: float, burst: float, duplicate: float, seed: int, count: int) -> None:
    got: list[bytes] = []
    link = Link(LinkConditions(loss=loss, burst_loss=burst, duplicate=duplicate, seed=seed), got.append)
    for packet in _packets(count):
        link.send(packet)
    stats = link.stats
    assert stats.offered == count
    assert stats.delivered == len(got) == count - stats.dropped + stats.duplicated
    assert stats.burst_dropped <= stats.dropped == len(stats.dropped_indices)
    assert sorted(set(got)) == [p for i, p in enumerate(_packets(count)) if i not in set(stats.dropped_indices)]


async def test_reorder_lets_later_packets_overtake_and_loses_nothing() -> None:
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    link = Link(LinkConditions(reorder=0.3, seed=5), got.append)
    sent = _packets(40)
    for packet in sent:
        link.send(packet)
        await asyncio.sleep(0.002)
    deadline = loop.time() + 1.0
    while link.pending and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert link.pending == 0
    assert sorted(got) == sent
    assert got != sent
    assert link.stats.reordered > 0
    assert link.stats.delivered == 40


@pytest.mark.timing
async def test_reorder_delay_is_one_to_three_intervals() -> None:
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    link = Link(LinkConditions(reorder=1.0, seed=9), lambda _: arrivals.append(loop.time()))
    start = loop.time()
    link.send(b"x")
    while not arrivals:
        await asyncio.sleep(0.005)
    assert FRAME_INTERVAL <= arrivals[0] - start <= 3.5 * FRAME_INTERVAL + 0.15


@pytest.mark.timing
async def test_jitter_delays_within_bound() -> None:
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    link = Link(LinkConditions(jitter_ms=30, seed=2), lambda _: arrivals.append(loop.time()))
    delays: list[float] = []
    for n in range(20):
        start = loop.time()
        link.send(b"x")
        while len(arrivals) <= n:
            await asyncio.sleep(0.001)
        delays.append(arrivals[n] - start)
    assert link.stats.delayed == 20
    assert max(delays) <= 0.030 + 0.15, "bounded by jitter_ms plus scheduling latency"
    assert max(delays) - min(delays) > 0.005, "delays vary"


async def test_close_cancels_held_back_packets() -> None:
    got: list[bytes] = []
    link = Link(LinkConditions(jitter_ms=50, seed=4), got.append)
    for packet in _packets(5):
        link.send(packet)
    assert link.pending == 5
    link.close()
    await asyncio.sleep(0.08)
    assert got == []
    assert link.pending == 0
