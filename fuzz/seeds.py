"""Valid inputs to start each fuzz target from, built with the library's own writers (nothing is checked in)."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable

from discord_voicerecv.protocol import ipdiscovery
from discord_voicerecv.protocol.rtcp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    SdesChunk,
    SenderReport,
    SourceDescription,
    serialize_rtcp,
)
from discord_voicerecv.protocol.rtp import EXTENSION_PROFILE_TWO_BYTE, build_extension_body, build_rtp_header
from discord_voicerecv.tools.capture import CapturedDatagram, write_pcap, write_rtpdump

__all__ = ("SEEDS",)


def _rtp() -> list[bytes]:
    one_byte = build_extension_body([(1, b"\x80"), (5, b"\x01\x02")])
    two_byte = build_extension_body([(200, b""), (3, b"abc")], EXTENSION_PROFILE_TWO_BYTE)
    return [
        build_rtp_header(sequence=1, timestamp=960, ssrc=7) + b"\xf8\xff\xfe",
        build_rtp_header(sequence=2, timestamp=1920, ssrc=7, ext_profile=0xBEDE, ext_words=len(one_byte) // 4)
        + one_byte
        + b"opus",
        build_rtp_header(
            sequence=3, timestamp=0, ssrc=9, csrcs=(1, 2), ext_profile=0x1000, ext_words=len(two_byte) // 4
        )
        + two_byte
        + b"\x00\x00\x03",
        build_rtp_header(sequence=65535, timestamp=2**32 - 1, ssrc=1, padding=True, marker=True) + b"ab\x00\x02",
    ]


def _rtcp() -> list[bytes]:
    block = ReportBlock(5, 12, -3, 70000, 40, 0x12345678, 65536)
    return [
        serialize_rtcp([SenderReport(1, 2**40, 960, 10, 1000, (block,)), Bye((1,), b"left")]),
        serialize_rtcp([ReceiverReport(2, (block, block)), SourceDescription((SdesChunk(2, ((1, b"cname"),)),))]),
        serialize_rtcp([Bye((3, 4), None)]),
        b"\x81\xcc\x00\x02" + b"name" + b"data",
    ]


def _ipdiscovery() -> list[bytes]:
    return [ipdiscovery.build_request(1234), ipdiscovery.build_response(1234, "203.0.113.7", 50000)]


def _transport() -> list[bytes]:
    return [bytes((mode, action)) + bytes(range(40)) for mode in range(5) for action in range(3)]


def _capture() -> list[bytes]:
    datagrams = [
        CapturedDatagram(1_700_000_000.0 + i * 0.02, ("10.0.0.1", 5000), ("10.0.0.2", 6000), packet)
        for i, packet in enumerate(_rtp())
    ]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for writer in (write_pcap, write_rtpdump):
            path = os.path.join(tmp, "seed")
            writer(path, datagrams)
            with open(path, "rb") as f:
                out.append(f.read())
    out.append(_pcapng(datagrams[0].data))
    return out


def _pcapng(payload: bytes) -> bytes:
    def block(kind: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        size = len(body) + 12
        return struct.pack("<II", kind, size) + body + struct.pack("<I", size)

    udp = struct.pack(">HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), bytes(4)) + udp
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", 101, 0, 0xFFFF))
    epb = block(6, struct.pack("<IIIII", 0, 0, 1000, len(ip), len(ip)) + ip)
    return shb + idb + epb


def _mls() -> list[bytes]:
    import davey

    from discord_voicerecv.testing import mls

    channel = 42
    key = mls.ExternalSenderKey()
    sender = mls.build_external_sender(key.public_key, b"gateway")
    a = davey.DaveSession(1, 111, channel)
    b = davey.DaveSession(1, 222, channel)
    a.set_external_sender(sender)
    b.set_external_sender(sender)
    kp_b = bytes(b.get_serialized_key_package())
    add = mls.build_add_proposal(channel, 0, kp_b, key)
    proposals = mls.build_proposals(mls.PROPOSALS_APPEND, [add])
    result = a.process_proposals(davey.ProposalsOperationType.append, proposals[1:])
    assert result is not None and result.welcome is not None
    commit, welcome = bytes(result.commit), bytes(result.welcome)
    return [kp_b, commit, commit + welcome, welcome, add, sender]


def _receiver() -> list[bytes]:
    talk = bytes((1, 0, 1, 0, 0))
    clock = bytes((5, 10))
    return [
        bytes((0x00,)) + (talk + clock) * 30 + bytes((9, 20)),
        bytes((0x81,)) + bytes((8, 200)) + (talk + bytes((2, 1, 1, 0, 1))) * 20 + bytes((6, 0, 0, 9, 30)),
        bytes((0x03,)) + bytes((1, 3, 1, 0, 0, 7, 3, 4)) + (talk + clock) * 10 + bytes((8, 5, 9, 40)),
    ]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "rtp": _rtp,
    "rtcp": _rtcp,
    "ipdiscovery": _ipdiscovery,
    "transport": _transport,
    "capture": _capture,
    "mls": _mls,
    "receiver": _receiver,
}
"""Seed inputs per target, built on demand."""
