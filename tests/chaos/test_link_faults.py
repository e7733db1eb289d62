"""The chaos additions to link conditions (delay spikes, damage, outages), the fault scheduler and the CLI flags."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.chaos import ChaosMonkey, ChaosPlan
from discord_voicerecv.testing.cli import _parser, link_from_args, plan_from_args
from discord_voicerecv.testing.link import Link, LinkConditions


class _Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _FakeLoop:
    """Just enough of an event loop for :class:`Link`: a settable clock and scheduled callbacks."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(self.now + delay, callback)
        self.handles.append(handle)
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = sorted((h for h in self.handles if h.when <= self.now and not h.cancelled), key=lambda h: h.when)
        self.handles = [h for h in self.handles if h not in due]
        for handle in due:
            handle.callback()


def _link(conditions: LinkConditions, got: list[tuple[float, bytes]], loop: _FakeLoop) -> Link:
    return Link(conditions, lambda packet: got.append((loop.now, packet)), loop=loop, clock=loop.time)  # type: ignore[arg-type]


def _packets(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") * 5 for i in range(n)]


@pytest.mark.parametrize("name", ["spike", "truncate", "corrupt", "outage"])
def test_new_probabilities_are_validated(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LinkConditions(**{name: 1.5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outage_ms"):
        LinkConditions(outage_ms=-1)
    assert not LinkConditions(**{name: 0.1}).is_perfect  # type: ignore[arg-type]


def test_delay_spike_holds_packets_and_releases_them_together() -> None:
    loop = _FakeLoop()
    got: list[tuple[float, bytes]] = []
    link = _link(LinkConditions(spike=1.0, spike_ms=100), got, loop)
    packets = _packets(5)
    for packet in packets:
        link.send(packet)
        loop.advance(0.019)
    assert got == [], "nothing leaves during the spike"
    loop.advance(0.02)
    assert [p for _, p in got] == packets
    assert len({t for t, _ in got}) == 1, "packets held by one spike leave together"
    assert link.stats.spiked == 5 and link.stats.delivered == 5


def test_truncated_packets_are_shorter_and_listed() -> None:
    loop = _FakeLoop()
    got: list[tuple[float, bytes]] = []
    link = _link(LinkConditions(truncate=0.3, seed=4), got, loop)
    packets = _packets(200)
    for packet in packets:
        link.send(packet)
    damaged = {i for i, ((_, out), sent) in enumerate(zip(got, packets, strict=True)) if out != sent}
    assert damaged == set(link.stats.damaged_indices) and len(damaged) == link.stats.truncated > 30
    assert all(len(got[i][1]) < len(packets[i]) and packets[i].startswith(got[i][1]) for i in damaged)


def test_corruption_flips_exactly_one_bit() -> None:
    loop = _FakeLoop()
    got: list[tuple[float, bytes]] = []
    link = _link(LinkConditions(corrupt=1.0, seed=2), got, loop)
    for packet in _packets(50):
        link.send(packet)
    for (_, out), sent in zip(got, _packets(50), strict=True):
        diff = int.from_bytes(out, "big") ^ int.from_bytes(sent, "big")
        assert bin(diff).count("1") == 1
    assert link.stats.corrupted == 50 and link.stats.damaged_indices == list(range(50))


def test_blackout_drops_everything_for_its_duration() -> None:
    loop = _FakeLoop()
    got: list[tuple[float, bytes]] = []
    link = _link(LinkConditions(), got, loop)
    packets = _packets(100)
    for n, packet in enumerate(packets):
        if n == 20:
            link.blackout(0.49)
        link.send(packet)
        loop.advance(0.02)
    stats = link.stats
    assert stats.outages == 1 and stats.outage_dropped == stats.dropped == 25
    assert stats.dropped_indices == list(range(20, 45))
    assert [p for _, p in got] == packets[:20] + packets[45:]


def test_random_outages_are_counted_as_drops() -> None:
    loop = _FakeLoop()
    got: list[tuple[float, bytes]] = []
    link = _link(LinkConditions(outage=0.01, outage_ms=200, seed=8), got, loop)
    for packet in _packets(3000):
        link.send(packet)
        loop.advance(0.02)
    stats = link.stats
    assert stats.outages > 5 and stats.outage_dropped == stats.dropped == len(stats.dropped_indices)
    assert stats.delivered == 3000 - stats.dropped


def test_reordered_packets_are_listed() -> None:
    loop = _FakeLoop()
    got: list[tuple[float, bytes]] = []
    link = _link(LinkConditions(reorder=0.2, seed=3), got, loop)
    for packet in _packets(100):
        link.send(packet)
        loop.advance(0.02)
    loop.advance(1.0)
    assert len(link.stats.reordered_indices) == link.stats.reordered > 5
    order = [int.from_bytes(p[:4], "big") for _, p in got]
    assert order != sorted(order) and sorted(order) == list(range(100))


def test_cli_flags_make_link_conditions_and_a_fault_plan() -> None:
    args = _parser().parse_args(
        [
            *("--loss", "10", "--burst-loss", "50", "--reorder", "5", "--duplicate", "1", "--jitter", "60"),
            *("--spike", "2", "--spike-ms", "400", "--truncate", "1", "--corrupt", "0.5", "--outage", "0.1"),
            *("--outage-ms", "1500", "--seed", "7", "--move-every", "30", "--drop-ws-every", "45"),
            *("--ssrc-change-every", "20", "--blackout-every", "60", "--blackout-seconds", "2"),
        ]
    )
    link = link_from_args(args)
    assert link == LinkConditions(
        loss=0.1,
        burst_loss=0.5,
        reorder=0.05,
        duplicate=0.01,
        jitter_ms=60,
        seed=7,
        spike=0.02,
        spike_ms=400,
        truncate=0.01,
        corrupt=0.005,
        outage=0.001,
        outage_ms=1500,
    )
    assert plan_from_args(args) == ChaosPlan(
        move_every=30, drop_ws_every=45, ssrc_change_every=20, blackout_every=60, blackout_seconds=2, seed=7
    )
    assert link_from_args(_parser().parse_args([])).is_perfect
    assert plan_from_args(_parser().parse_args([])).is_calm


@pytest.mark.e2e
async def test_chaos_monkey_moves_the_server_changes_ssrcs_and_silences_paths() -> None:
    async with LocalDiscord(speakers=2) as local:
        speakers = list(local.voice.speakers.values())
        ssrcs = {s.ssrc for s in speakers}
        endpoint = local.voice.endpoint
        plan = ChaosPlan(move_every=0.05, ssrc_change_every=0.03, blackout_every=0.03, blackout_seconds=0.1, seed=3)
        deadline = asyncio.get_running_loop().time() + 20
        async with ChaosMonkey(local, plan) as monkey:

            def every_fault_happened() -> bool:
                kinds = {event.kind for event in monkey.events}
                return kinds == {"move", "ssrc_change", "blackout"} and {s.ssrc for s in speakers}.isdisjoint(ssrcs)

            while not every_fault_happened():
                assert asyncio.get_running_loop().time() < deadline, monkey.events
                await asyncio.sleep(0.05)
        kinds = {event.kind for event in monkey.events}
        assert kinds == {"move", "ssrc_change", "blackout"}
        assert local.voice.endpoint != endpoint
        assert {s.ssrc for s in speakers}.isdisjoint(ssrcs)
        assert all(local.voice.relay.peer(s.user_id) is s.peer for s in speakers)
        assert sum(s.uplink.stats.outages for s in speakers) == sum(e.kind == "blackout" for e in monkey.events)
        times: list[Any] = [event.time for event in monkey.events]
        assert times == sorted(times)


@pytest.mark.e2e
async def test_local_discord_command_runs_the_scheduled_faults() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discord_voicerecv", "local-discord", "--speakers", "1", "--loss", "5",
        "--spike", "1", "--move-every", "0.2", "--ssrc-change-every", "0.2", "--seed", "3", "-v",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert line["url"].startswith("http://127.0.0.1:")
        seen: list[str] = []

        async def until_both_faults() -> None:
            assert proc.stderr is not None
            while not any("chaos: move" in t for t in seen) or not any("chaos: ssrc_change" in t for t in seen):
                text = await proc.stderr.readline()
                if not text:
                    return
                seen.append(text.decode())

        await asyncio.wait_for(until_both_faults(), 20)
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = "".join(seen) + rest.decode()
    assert proc.returncode == 0, log
    assert "chaos: move" in log and "chaos: ssrc_change" in log
