"""Ingress: classification, authentication and decryption of single datagrams, every drop counted."""

from __future__ import annotations

import os

import pytest

from discord_voicerecv.protocol.ipdiscovery import build_response
from discord_voicerecv.protocol.rtcp import Bye, RawRtcp, build_bye
from discord_voicerecv.protocol.rtp import build_extension_body, build_rtp_header
from discord_voicerecv.protocol.transport import TransportCipher, make_cipher
from discord_voicerecv.receive.ingress import Ingress, RtpPacket
from discord_voicerecv.receive.stats import ReceiveStats

MODE = "aead_xchacha20_poly1305_rtpsize"
KEY = bytes(range(32))
SENDER = make_cipher(MODE, KEY)


def _ingress() -> tuple[Ingress, ReceiveStats]:
    stats = ReceiveStats()
    ingress = Ingress(stats)
    ingress.set_transport(MODE, list(KEY))
    return ingress, stats


def _rtp(payload: bytes = b"\x78opus", ssrc: int = 77, payload_type: int = 120) -> bytes:
    header = build_rtp_header(sequence=5, timestamp=960, ssrc=ssrc, payload_type=payload_type)
    return SENDER.encrypt_rtp(header, payload)


def test_an_authentic_rtp_packet_comes_out_decrypted() -> None:
    ingress, stats = _ingress()
    datagram = _rtp()
    assert ingress.open(datagram, 12.5) == RtpPacket(77, 5, 960, b"\x78opus", 12.5)
    assert (stats["packets"], stats["bytes"]) == (1, len(datagram))


def test_forged_and_unkeyed_packets_are_counted_drops() -> None:
    ingress, stats = _ingress()
    forged = make_cipher(MODE, os.urandom(32)).encrypt_rtp(build_rtp_header(sequence=1, timestamp=1, ssrc=9), b"x")
    assert ingress.open(forged, 0.0) is None
    assert stats["decrypt_failed"] == 1
    fresh = Ingress(stats)
    assert fresh.open(_rtp(), 0.0) is None
    assert stats["no_transport_key"] == 1


def test_rtcp_is_told_apart_by_rfc_5761_types_and_opened() -> None:
    ingress, stats = _ingress()
    assert ingress.open(SENDER.encrypt_rtcp(build_bye([77])), 0.0) == [Bye((77,), None)]
    pli = bytes([0x81, 206, 0, 2]) + (77).to_bytes(4, "big") + (78).to_bytes(4, "big")
    opened = ingress.open(SENDER.encrypt_rtcp(pli), 0.0)
    assert isinstance(opened, list) and isinstance(opened[0], RawRtcp) and opened[0].packet_type == 206
    assert stats["rtcp"] == 2 and stats["ignored_payload_type"] == 0


def test_other_datagrams_are_sorted_by_reason() -> None:
    ingress, stats = _ingress()
    ingress.ignored.add(78)
    drops = [
        build_response(1, "1.2.3.4", 5),
        b"\x80\x78" + bytes(2000),
        _rtp(payload_type=101),
        _rtp(ssrc=78),
        _rtp(payload=b""),
        b"\x40" + _rtp()[1:],
    ]
    assert [ingress.open(d, 0.0) for d in drops] == [None] * len(drops)
    counted = {k: v for k, v in stats.snapshot().items() if v and k not in ("packets", "bytes")}
    assert counted == {
        "ip_discovery": 1,
        "malformed:oversized": 1,
        "ignored_payload_type": 1,
        "ignored_ssrc": 1,
        "malformed:empty": 1,
        "malformed:version": 1,
    }


def test_packets_sealed_just_before_a_key_change_still_open() -> None:
    ingress, stats = _ingress()
    in_flight = [_rtp(payload=bytes([0x78, i])) for i in range(3)]
    new_key = bytes(reversed(range(32)))
    ingress.set_transport(MODE, new_key)
    new_sender = make_cipher(MODE, new_key)
    header = build_rtp_header(sequence=9, timestamp=960, ssrc=77)
    assert ingress.open(new_sender.encrypt_rtp(header, b"\x78new"), 0.0) is not None
    opened = [ingress.open(datagram, 0.0) for datagram in in_flight]
    assert [p.payload if p else None for p in opened] == [b"\x78\x00", b"\x78\x01", b"\x78\x02"]
    for _ in range(60):
        ingress.open(new_sender.encrypt_rtp(header, b"\x78new"), 0.0)
    assert ingress.open(_rtp(), 0.0) is None, "the previous key is dropped once the new one carries the stream"
    assert stats["decrypt_failed"] == 1


RTPSIZE_MODES = ("aead_xchacha20_poly1305_rtpsize", "aead_aes256_gcm_rtpsize")


def _discord_rtp(sender: TransportCipher, payload: bytes, *, ssrc: int = 77, marker: bool = False) -> bytes:
    """Discord's layout: no CSRC, no padding, a one-byte-element header extension whose body is sealed."""
    body = build_extension_body([(1, b"\x10\x20"), (3, b"\x30")])
    header = build_rtp_header(
        sequence=65_535, timestamp=0xFFFF_FFF0, ssrc=ssrc, marker=marker, ext_profile=0xBEDE, ext_words=len(body) // 4
    )
    return sender.encrypt_rtp(header, body + payload)


@pytest.mark.parametrize("mode", RTPSIZE_MODES)
def test_discords_usual_layout_opens_like_any_other(mode: str) -> None:
    stats = ReceiveStats()
    ingress = Ingress(stats)
    ingress.set_transport(mode, KEY)
    ingress.ignored.add(78)
    sender = make_cipher(mode, KEY)
    opened = ingress.open(_discord_rtp(sender, b"\x78opus"), 3.5)
    assert opened == RtpPacket(77, 65_535, 0xFFFF_FFF0, b"\x78opus", 3.5)
    marked = ingress.open(_discord_rtp(sender, b"\x78m", marker=True), 0.0)
    assert isinstance(marked, RtpPacket) and marked.payload == b"\x78m"

    forged = _discord_rtp(make_cipher(mode, os.urandom(32)), b"\x78opus")
    lying = bytearray(_discord_rtp(sender, b"\x78opus"))
    lying[14:16] = (40).to_bytes(2, "big")  # an extension longer than the packet; authentication covers it
    drops = [forged, _discord_rtp(sender, b"\x78", ssrc=78), _discord_rtp(sender, b""), _discord_rtp(sender, b"")[:30]]
    assert [ingress.open(d, 0.0) for d in drops] == [None] * len(drops)
    assert ingress.open(bytes(lying), 0.0) is None
    counted = {k: v for k, v in stats.snapshot().items() if v and k not in ("packets", "bytes")}
    assert counted == {"decrypt_failed": 2, "ignored_ssrc": 1, "malformed:empty": 1, "malformed:short": 1}


@pytest.mark.parametrize("mode", RTPSIZE_MODES)
def test_an_extension_body_longer_than_the_plaintext_is_malformed(mode: str) -> None:
    stats = ReceiveStats()
    ingress = Ingress(stats)
    ingress.set_transport(mode, KEY)
    header = build_rtp_header(sequence=1, timestamp=1, ssrc=77, ext_profile=0xBEDE, ext_words=9)
    assert ingress.open(make_cipher(mode, KEY).encrypt_rtp(header, b"\x78abc"), 0.0) is None
    assert stats["malformed:extension"] == 1


@pytest.mark.parametrize("previous_mode", [*RTPSIZE_MODES, "xsalsa20_poly1305_lite"])
def test_discords_usual_layout_sealed_with_the_previous_key_still_opens(previous_mode: str) -> None:
    stats = ReceiveStats()
    ingress = Ingress(stats)
    ingress.set_transport(previous_mode, KEY)
    in_flight = _discord_rtp(make_cipher(previous_mode, KEY), b"\x78old")
    new_key = bytes(reversed(range(32)))
    ingress.set_transport(MODE, new_key)
    assert ingress.open(_discord_rtp(make_cipher(MODE, new_key), b"\x78new"), 0.0) is not None
    opened = ingress.open(in_flight, 0.0)
    assert isinstance(opened, RtpPacket) and opened.payload == b"\x78old"
    assert stats["decrypt_failed"] == 0
