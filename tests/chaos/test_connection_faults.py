"""A recording through faults that hit a whole connection: the voice server moving, the voice websocket dropping,
a speaker's SSRC changing, the UDP path going silent, delay spikes and damaged packets.

Speakers talk continuously on perfect uplinks, so anything missing from a track is the fault's doing. Every test
runs twice: judged on content and accounting, and (in the timing tier, ``make bench``) also on the track lining up
with what was sent within 20 ms of the senders' clock, which a loaded machine can miss.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest

from discord_voicerecv.testing.chaos import (
    ChaosMonkey,
    ChaosPlan,
    FrameAccount,
    RecordingSession,
    SpeakerSpec,
    alignment_error,
    placement_score,
)
from discord_voicerecv.testing.link import LinkConditions

pytestmark = pytest.mark.e2e

TWO = (SpeakerSpec("en_gb_female"), SpeakerSpec("de_male"))
MAX_ALIGNMENT_ERROR = 0.020
FRAME = 0.020
IN_FLIGHT = 0.1
"""Audio on its way when a connection went away: in the relay, the sockets and the receiver's playout delay."""


async def _talk(session: RecordingSession, before: float) -> None:
    for speaker in session.speakers:
        speaker.start()
    await asyncio.sleep(before)


async def _finish(session: RecordingSession, after: float) -> None:
    await asyncio.sleep(after)
    for speaker in session.speakers:
        speaker.stop()
    await asyncio.gather(*(speaker.wait_idle() for speaker in session.speakers))
    await asyncio.sleep(0.3)
    await session.stop()


@pytest.fixture(params=["state", pytest.param("timing", marks=pytest.mark.timing)])
def tier(request: pytest.FixtureRequest) -> str:
    """``timing`` adds the wall-clock alignment bound to a test's content checks."""
    tier: str = request.param
    return tier


def _check_alignment(session: RecordingSession, tier: str, *, senders_clock: bool = False) -> list[float]:
    """Each track holds its speaker's audio in the slots the receiver played it in; the timing tier (or
    ``senders_clock``) also matches it against the senders' clock, which a stall of this process longer than the
    playout delay on a loaded machine moves (the rest of the spurt plays later)."""
    assert session.sink is not None
    errors = []
    for speaker in session.speakers:
        track = session.sink.files[speaker.user_id]
        placed = placement_score(speaker, track, session.tap.of_user(speaker.user_id))
        error, score = alignment_error(speaker, track, session.started)
        report = f"{speaker.name}: placement score {placed:.2f}, score {score:.2f} ({error * 1000:+.1f} ms)"
        assert placed >= 0.9, report
        if tier == "timing" or senders_clock:
            assert score >= 0.9, report
        if tier == "timing":
            assert abs(error) <= MAX_ALIGNMENT_ERROR, report
        errors.append(error)
    return errors


def _accounts(session: RecordingSession) -> list[FrameAccount]:
    """Each speaker's frames reconciled with the recording (perfect uplinks: nothing dropped before the relay)."""
    return [session.account(speaker) for speaker in session.speakers]


def _missing_seconds(session: RecordingSession) -> list[float]:
    out = []
    for speaker in session.speakers:
        account = session.account(speaker)
        assert account.decoded_but_dropped == 0
        out.append(account.missing * FRAME)
    return out


async def test_voice_server_move_mid_recording_loses_at_most_200_ms(tmp_path: Path, tier: str) -> None:
    """Only what is sent while the connection moves is lost: at most the time discord.py takes to be connected
    on the new endpoint (plus frames in flight), and, in the timing tier, at most 200 ms."""
    async with RecordingSession(tmp_path, speakers=TWO) as session:
        vc = session.vc
        assert vc is not None
        old_endpoint = session.local.voice.endpoint
        await _talk(session, 1.5)
        gateway = session.local.voice.gateway
        before = gateway.sessions.get(session.bot_id)
        loop = asyncio.get_running_loop()
        moved_at = loop.time()
        new_endpoint = await session.local.move_voice_server()

        def described_again() -> bool:  # the bot identified on the new endpoint and got its transport key
            now = gateway.sessions.get(session.bot_id)
            return now is not None and now is not before and now.ready

        await gateway.wait_for(described_again, 10)
        while not vc.is_connected():  # discord.py takes the key in a moment later
            assert loop.time() - moved_at < 10, "discord.py never connected to the new voice server"
            await asyncio.sleep(0.005)
        outage = loop.time() - moved_at
        await _finish(session, 2.0)
        assert new_endpoint != old_endpoint and vc.endpoint == new_endpoint
    lost = _missing_seconds(session)
    errors = _check_alignment(session, tier)
    print(
        f"\nmove: lost {[f'{s * 1000:.0f} ms' for s in lost]} in an outage of {outage * 1000:.0f} ms, "
        f"alignment {[f'{e * 1000:+.1f}' for e in errors]} ms"
    )
    assert max(lost) <= outage + IN_FLIGHT
    if tier == "timing":
        assert max(lost) <= 0.200


async def test_voice_websocket_drop_loses_nothing(tmp_path: Path, tier: str) -> None:
    """The voice websocket closes with 4015 mid-recording; media keeps flowing over UDP while the client resumes
    (op7 on a new websocket, see ``ReceivingConnectionState._connect``), so the recording misses nothing."""
    async with RecordingSession(tmp_path, speakers=TWO) as session:
        await _talk(session, 1.0)
        session.local.drop_voice_connection(session.bot_id)
        await _finish(session, 2.5)
        stats = session.stats
        assert stats is not None
    lost = _missing_seconds(session)
    _check_alignment(session, tier)
    assert lost == [0.0, 0.0], f"frames missing after a websocket drop: {lost}"
    assert stats["decrypt_failed"] == 0


async def test_speaker_ssrc_change_mid_stream(tmp_path: Path, tier: str) -> None:
    async with RecordingSession(tmp_path, speakers=TWO) as session:
        await _talk(session, 1.2)
        first = session.speakers[0]
        old_ssrc = first.ssrc
        new_ssrc = session.local.voice.change_ssrc(first.user_id)
        await _finish(session, 2.0)
        assert session.sink is not None
        assert len(session.sink.files) == 2, "an SSRC change must not start a second track for the same user"
    ssrcs = {r.ssrc for r in session.tap.of_user(first.user_id)}
    assert ssrcs == {old_ssrc, new_ssrc}
    lost = _missing_seconds(session)
    _check_alignment(session, tier)
    print(f"\nSSRC change: lost {[f'{s * 1000:.0f} ms' for s in lost]}")
    assert lost[0] <= 0.100 and lost[1] == 0.0


async def test_udp_path_silent_for_a_second(tmp_path: Path, tier: str) -> None:
    async with RecordingSession(tmp_path, speakers=TWO) as session:
        await _talk(session, 1.0)
        session.local.voice.blackout(session.bot_id, 1.0)
        await _finish(session, 3.5)
        link = session.local.voice.link_stats(session.bot_id)
    missing = _accounts(session)
    assert link.outages == 1 and link.outage_dropped > 0
    if tier == "timing":  # how many frames a 1 s blackout swallows depends on the senders keeping time
        assert 80 <= link.outage_dropped <= 110
    assert sum(account.absent + account.concealed for account in missing) == link.outage_dropped
    _check_alignment(session, tier)


async def _spiky_recording(tmp_path: Path, spike_ms: float) -> RecordingSession:
    spiky = LinkConditions(spike=0.02, spike_ms=spike_ms, seed=5)
    async with RecordingSession(tmp_path, speakers=TWO, downlink=spiky) as session:
        await _talk(session, 0.2)
        await _finish(session, 4.0)
        link = session.local.voice.link_stats(session.bot_id)
    assert link.spiked > 0 and link.dropped == 0
    return session


async def test_delay_spikes_within_the_playout_delay_are_absorbed(tmp_path: Path, tier: str) -> None:
    session = await _spiky_recording(tmp_path, spike_ms=70)
    assert session.stats is not None and session.stats["late"] == 0
    assert _missing_seconds(session) == [0.0, 0.0]
    _check_alignment(session, tier)


SPIKE_BEYOND_MAX_SILENCE = pytest.mark.xfail(
    reason="known: a spike longer than max_silence (0.2 s) makes the burst after it a new spurt anchored on arrival; "
    "its later packets move it back only until it starts playing, so the rest of the spurt can sit a slot late",
)


@pytest.mark.parametrize(
    "tier", ["state", pytest.param("timing", marks=[pytest.mark.timing, SPIKE_BEYOND_MAX_SILENCE])]
)
async def test_delay_spikes_beyond_the_playout_delay_keep_alignment(tmp_path: Path, tier: str) -> None:
    """Frames a 250 ms spike made late are lost, counted; the rest of the spurt keeps its slots."""
    session = await _spiky_recording(tmp_path, spike_ms=250)
    stats = session.stats
    assert stats is not None
    accounts = _accounts(session)
    assert sum(account.late for account in accounts) <= stats["late"]
    _check_alignment(session, tier)


async def test_truncated_and_bit_flipped_packets_are_counted_and_concealed(tmp_path: Path, tier: str) -> None:
    damaging = LinkConditions(truncate=0.03, corrupt=0.03, seed=9)
    async with RecordingSession(tmp_path, speakers=TWO, downlink=damaging) as session:
        await _talk(session, 0.2)
        await _finish(session, 3.0)
        link = session.local.voice.link_stats(session.bot_id)
        stats = session.stats
        assert stats is not None
    damaged = len(link.damaged_indices)
    refused = stats["decrypt_failed"] + stats["ignored_payload_type"] + stats["rtcp"]
    refused += sum(v for k, v in stats.items() if k.startswith("malformed:"))
    assert damaged > 0 and refused == damaged
    assert stats["internal_error"] == 0
    accounts = _accounts(session)
    # missing: the damaged frames, and those a stall of this process on a loaded machine made late (counted)
    assert sum(account.missing for account in accounts) == damaged + stats["late"]
    _check_alignment(session, tier)


@pytest.mark.slow
async def test_recording_through_three_minutes_of_scheduled_faults(tmp_path: Path) -> None:
    """Voice server moves, SSRC changes and outages at random on a lossy network: the recording carries on to
    the end, every file has the same length and the tracks end aligned. (Websocket drops are left out: discord.py
    2.7.1 cannot resume them, see ``test_voice_websocket_drop_loses_nothing``.)"""
    lossy = LinkConditions(loss=0.03, jitter_ms=30, seed=11)
    specs = [SpeakerSpec(clip, lossy) for clip in ("en_gb_female", "de_male", "fr_female")]
    plan = ChaosPlan(move_every=40, ssrc_change_every=25, blackout_every=30, blackout_seconds=1.5, seed=4)
    async with RecordingSession(tmp_path, speakers=specs) as session:
        talks = [s.speak(times=40, pause=1.0 + n * 0.3) for n, s in enumerate(session.speakers)]
        async with ChaosMonkey(session.local, plan) as monkey:
            await asyncio.gather(*talks)
        await asyncio.sleep(0.5)
        assert session.vc is not None and session.vc.is_connected() and session.vc.is_listening()
        stats = await session.stop()
    kinds = [event.kind for event in monkey.events]
    assert {"move", "ssrc_change", "blackout"} <= set(kinds)
    assert stats["internal_error"] == 0
    sink = session.sink
    assert sink is not None
    lengths = set()
    for path in [*sink.files.values(), sink.mix_path]:
        assert path is not None
        with wave.open(str(path), "rb") as wav:
            lengths.add(wav.getnframes())
    assert len(lengths) == 1 and len(sink.files) == 3
    errors = _check_alignment(session, "timing")
    print(
        f"\n{len(kinds)} faults ({', '.join(sorted(set(kinds)))}); alignment {[f'{e * 1000:+.1f}' for e in errors]} ms"
    )
