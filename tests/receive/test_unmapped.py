"""The hold for packets of SSRCs not mapped to a user yet: bounds, order and expiry."""

from __future__ import annotations

from discord_voicerecv.receive.ingress import RtpPacket
from discord_voicerecv.receive.stats import ReceiveStats
from discord_voicerecv.receive.unmapped import UnmappedHold


def _packet(ssrc: int, sequence: int, arrival: float = 0.0) -> RtpPacket:
    return RtpPacket(ssrc, sequence & 0xFFFF, 960 * sequence, b"x", arrival)


def test_take_returns_fresh_packets_in_sequence_order_across_the_wrap() -> None:
    stats = ReceiveStats()
    hold = UnmappedHold(stats, window=1.0)
    for sequence, arrival in ((65535, 0.5), (65534, 0.5), (0, 0.5), (65533, 0.0)):
        hold.add(_packet(7, sequence, arrival))
    assert [p.sequence for p in hold.take(7, now=1.2)] == [65534, 65535, 0]
    assert stats["unknown_ssrc_expired"] == 1 and len(hold) == 0 and hold.ssrcs() == set()


def test_bounds_per_ssrc_per_count_of_ssrcs_and_in_total() -> None:
    stats = ReceiveStats()
    hold = UnmappedHold(stats, window=1.0)
    for sequence in range(150):
        hold.add(_packet(1, sequence))
    assert len(hold) == 100 and stats["unknown_ssrc_dropped"] == 50
    for ssrc in range(2, 80):
        for sequence in range(20):
            hold.add(_packet(ssrc, sequence))
    assert len(hold.ssrcs()) == 46 and len(hold) == 1000, "1000 packets in all"
    assert hold.drop(1) == 100 and len(hold) == 900
    many = UnmappedHold(ReceiveStats(), window=1.0)
    for ssrc in range(80):
        many.add(_packet(ssrc, 0))
    assert len(many.ssrcs()) == 64, "64 SSRCs at most"


def test_expire_drops_only_old_packets() -> None:
    stats = ReceiveStats()
    hold = UnmappedHold(stats, window=1.0)
    hold.add(_packet(1, 1, arrival=0.0))
    hold.add(_packet(1, 2, arrival=0.8))
    hold.add(_packet(2, 1, arrival=0.1))
    hold.expire(now=1.5)
    assert hold.ssrcs() == {1} and len(hold) == 1 and stats["unknown_ssrc_expired"] == 2
