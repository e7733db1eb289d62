"""RTCP compound parsing and serialization."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voicerecv.errors import MalformedPacket
from discord_voicerecv.protocol.rtcp import (
    SDES_CNAME,
    Bye,
    RawRtcp,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    build_bye,
    build_receiver_report,
    build_sender_report,
    parse_rtcp,
    serialize_rtcp,
)
from discord_voicerecv.protocol.rtp import is_rtcp

u32 = st.integers(0, 0xFFFFFFFF)
words = st.binary(max_size=16).map(lambda b: b + bytes(-len(b) % 4))

blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-(2**23), 2**23 - 1),
    highest_sequence=u32,
    jitter=u32,
    last_sr=u32,
    delay_since_last_sr=u32,
)
block_lists = st.lists(blocks, max_size=4).map(tuple)
packets: st.SearchStrategy[RtcpPacket] = st.one_of(
    st.builds(SenderReport, u32, st.integers(0, 2**64 - 1), u32, u32, u32, block_lists, words),
    st.builds(ReceiverReport, u32, block_lists, words),
    st.builds(
        SourceDescription,
        st.lists(
            st.builds(
                SdesChunk,
                u32,
                st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=40)), max_size=4).map(tuple),
            ),
            max_size=4,
        ).map(tuple),
    ),
    st.builds(Bye, st.lists(u32, max_size=31).map(tuple), st.none() | st.binary(max_size=255)),
    st.builds(RawRtcp, st.integers(204, 255), st.integers(0, 31), st.binary(max_size=40)),
)


@given(st.lists(packets, min_size=1, max_size=5))
def test_compound_round_trip(compound: list[RtcpPacket]) -> None:
    data = serialize_rtcp(compound)
    assert len(data) % 4 == 0
    assert parse_rtcp(data) == compound


def test_sender_report_vector() -> None:
    block = ReportBlock(0x11111111, 0x40, -2, 0x0001FFFF, 17, 0x22223333, 0x00018000)
    data = build_sender_report(
        0xAABBCCDD,
        ntp_timestamp=0xE1234567_89ABCDEF,
        rtp_timestamp=960,
        packet_count=5,
        octet_count=300,
        reports=[block],
    )
    expected = (
        bytes([0x81, 200])
        + struct.pack(">H", 12)
        + struct.pack(">IQIII", 0xAABBCCDD, 0xE123456789ABCDEF, 960, 5, 300)
        + struct.pack(">IIIIII", 0x11111111, 0x40FFFFFE, 0x0001FFFF, 17, 0x22223333, 0x00018000)
    )
    assert data == expected
    assert is_rtcp(data)
    assert parse_rtcp(data) == [SenderReport(0xAABBCCDD, 0xE123456789ABCDEF, 960, 5, 300, (block,))]


def test_receiver_report_and_bye_vectors() -> None:
    assert build_receiver_report(7) == bytes([0x80, 201, 0, 1, 0, 0, 0, 7])
    assert build_bye([7], b"gone") == bytes([0x81, 203, 0, 3, 0, 0, 0, 7, 4]) + b"gone" + bytes(3)
    assert parse_rtcp(build_bye([1, 2])) == [Bye((1, 2), None)]


def test_sdes_cname_vector_pads_after_the_null_item() -> None:
    data = SourceDescription((SdesChunk(5, ((SDES_CNAME, b"user@host"),)),)).serialize()
    assert data == bytes([0x81, 202, 0, 4, 0, 0, 0, 5, 1, 9]) + b"user@host" + bytes(1)
    chunk_without_items = SourceDescription((SdesChunk(6),)).serialize()
    assert chunk_without_items == bytes([0x81, 202, 0, 2, 0, 0, 0, 6, 0, 0, 0, 0])
    assert parse_rtcp(data + chunk_without_items) == [
        SourceDescription((SdesChunk(5, ((1, b"user@host"),)),)),
        SourceDescription((SdesChunk(6),)),
    ]


def test_padding_is_removed() -> None:
    padded = bytes([0xA0, 201, 0, 2, 0, 0, 0, 9, 0, 0, 0, 4])
    assert parse_rtcp(padded) == [ReceiverReport(9)]


def test_unaligned_raw_body_is_serialized_with_padding() -> None:
    app = RawRtcp(204, 3, b"\x00\x00\x00\x09NAMEabc")
    data = app.serialize()
    assert data[0] & 0x20 and data[-1] == 1 and len(data) == 16
    assert parse_rtcp(data) == [app]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\xc8", "short"),
        (build_receiver_report(1) + b"\x80\xc9", "short"),
        (bytes([0x40, 201, 0, 1, 0, 0, 0, 1]), "version"),
        (bytes([0x80, 201, 0, 2, 0, 0, 0, 1]), "length"),
        (bytes([0xA0, 201, 0, 1, 0, 0, 0, 0]), "padding"),
        (bytes([0xA0, 201, 0, 1, 0, 0, 0, 5]), "padding"),
        (bytes([0x80, 200, 0, 1, 0, 0, 0, 1]), "rtcp"),
        (bytes([0x81, 201, 0, 1, 0, 0, 0, 1]), "rtcp"),
        (bytes([0x82, 203, 0, 1, 0, 0, 0, 1]), "rtcp"),
        (bytes([0x81, 203, 0, 2, 0, 0, 0, 1, 9, 0, 0, 0]), "rtcp"),
        (bytes([0x81, 202, 0, 2, 0, 0, 0, 1, 1, 2, 3, 4]), "rtcp"),
        (bytes([0x81, 202, 0, 1, 0, 0, 0, 1]), "rtcp"),
        (bytes([0x82, 202, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0]), "rtcp"),
    ],
)
def test_malformed_packets_name_their_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as info:
        parse_rtcp(data)
    assert info.value.reason == reason


@given(st.binary(max_size=120))
def test_parser_only_raises_malformed_packet(data: bytes) -> None:
    try:
        parsed = parse_rtcp(data)
    except MalformedPacket:
        return
    assert parsed
    assert len(data) % 4 == 0


@given(st.lists(packets, min_size=1, max_size=3), st.data())
def test_truncated_compounds_fail_cleanly(compound: list[RtcpPacket], data: st.DataObject) -> None:
    raw = serialize_rtcp(compound)
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        parsed = parse_rtcp(raw[:cut])
    except MalformedPacket:
        return
    assert parsed == compound[: len(parsed)]


@pytest.mark.parametrize(
    "packet",
    [
        RawRtcp(204, 32, b""),
        Bye(tuple(range(32))),
        SourceDescription((SdesChunk(1, ((0, b"x"),)),)),
        SourceDescription((SdesChunk(1, ((1, bytes(256)),)),)),
        Bye((), bytes(256)),
    ],
)
def test_serializers_reject_what_the_format_cannot_hold(packet: RtcpPacket) -> None:
    with pytest.raises(ValueError):
        packet.serialize()
