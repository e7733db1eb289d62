"""Frame accounting of a recording under faults: what the bot received and when, reconciled with what was sent."""

from __future__ import annotations

import itertools
import wave
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from discord_voicerecv.frames import FRAME_BYTES
from discord_voicerecv.protocol.rtp import build_rtp_header
from discord_voicerecv.testing.chaos import (
    DatagramTap,
    FrameRecord,
    RecordingSession,
    SentMeta,
    account_frames,
    placement_score,
)
from discord_voicerecv.testing.clips import clip_frames
from discord_voicerecv.testing.link import LinkStats
from discord_voicerecv.testing.speakers import SimulatedSpeaker

SSRC, USER = 4242, 7


def _rtp(sequence: int, ssrc: int = SSRC) -> bytes:
    return build_rtp_header(sequence=sequence, timestamp=960 * sequence, ssrc=ssrc) + b"\x90payload"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_datagram_tap_keeps_when_the_first_copy_of_each_rtp_packet_came() -> None:
    clock = _Clock()
    tap = DatagramTap(clock)
    for now, datagram in [
        (1.0, _rtp(65535)),
        (1.1, _rtp(0)),
        (1.2, _rtp(65535)),  # a duplicate: the first copy counts
        (1.3, _rtp(1, ssrc=99)),  # another SSRC
        (1.4, bytes([0x80, 200]) + bytes(26)),  # RTCP sender report
        (1.5, b"\x80\x78\x00"),  # too short to be RTP
    ]:
        clock.now = now
        tap(datagram)
    sent = [SentMeta(index, sequence, 0) for index, sequence in enumerate([65535, 65536, 65537, 65538])]
    assert tap.arrivals(SSRC, sent) == {0: 1.0, 1: 1.1}
    assert tap.arrivals(99, sent) == {2: 1.3}


def _one_lost_frame() -> tuple[list[SentMeta], list[FrameRecord]]:
    """Ten frames of one spurt played in slots 10-19; the network lost frame 5 and its slot 15 stayed silent."""
    sent = [SentMeta(index, 500 + index, 0) for index in range(10)]
    records = [FrameRecord(SSRC, USER, 10 + index, 500 + index, False) for index in range(10) if index != 5]
    return sent, records


def _deadline(slot: int) -> float:
    return 0.02 * (slot + 1) + 0.1


def test_a_lost_frame_is_unexplained_only_when_its_successor_reached_the_bot_before_the_slot_played() -> None:
    sent, records = _one_lost_frame()
    in_time = account_frames(sent, records, [5], arrivals={6: _deadline(15) - 0.05}, deadline=_deadline)
    assert (in_time.absent, in_time.late_successor, in_time.unexplained_absent) == (1, 0, 1)
    after = account_frames(sent, records, [5], arrivals={6: _deadline(15) + 0.001}, deadline=_deadline)
    assert (after.absent, after.late_successor, after.unexplained_absent) == (1, 1, 0)


def test_the_session_accounts_with_when_the_bot_got_each_packet_not_when_the_link_delivered_it(
    tmp_path: Path,
) -> None:
    """This process stalled: the uplink delivered frame 6 in time for slot 15, but the bot read it only after slot
    15 had played, so the silent slot 15 is explained (the receiver had nothing to conceal towards)."""
    sent, records = _one_lost_frame()
    stats = LinkStats(dropped=1, dropped_indices=[5], delivered_at={i: _deadline(10 + i) - 0.08 for i in range(10)})
    speaker: Any = SimpleNamespace(
        user_id=USER, ssrc=SSRC, sent=sent, uplink=SimpleNamespace(stats=stats), name="Speaker 1"
    )
    session = RecordingSession(tmp_path)
    session.speakers.append(cast(SimulatedSpeaker, speaker))
    session.tap.records.extend(records)
    clock = _Clock()
    session.datagrams = DatagramTap(clock)
    for index in range(10):
        if index != 5:
            clock.now = _deadline(10 + index) - (0.08 if index != 6 else -0.01)
            session.datagrams(_rtp(500 + index))
    account = session.account(speaker)
    assert (account.dropped, account.absent, account.late_successor, account.unexplained_absent) == (1, 1, 1, 0)


def _track(path: Path, slots: dict[int, bytes], length: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(48000)
        wav.writeframes(b"".join(slots.get(tick, bytes(FRAME_BYTES)) for tick in range(length)))
    return path


def test_the_placement_score_checks_the_audio_is_in_the_slots_the_recording_names(tmp_path: Path) -> None:
    pcm = list(itertools.islice(clip_frames("en_gb_female"), 150))[50:]
    sent = [SimpleNamespace(sequence=65500 + n, pcm=frame) for n, frame in enumerate(pcm)]
    speaker: Any = SimpleNamespace(sent=sent)
    records = [FrameRecord(SSRC, USER, 20 + n, 65500 + n, n == 40) for n in range(100)]
    good = _track(tmp_path / "good.wav", {20 + n: frame for n, frame in enumerate(pcm)}, 140)
    assert placement_score(speaker, good, records) > 0.99
    # A track whose second half sits ten slots later than the records say.
    moved = _track(tmp_path / "moved.wav", {20 + n + 10 * (n >= 50): frame for n, frame in enumerate(pcm)}, 140)
    assert placement_score(speaker, moved, records) < 0.8
