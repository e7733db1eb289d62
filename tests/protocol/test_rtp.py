"""RTP header parsing/building, extension elements, payload stripping."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voicerecv.errors import MalformedPacket
from discord_voicerecv.protocol.rtp import (
    EXTENSION_PROFILE_ONE_BYTE,
    EXTENSION_PROFILE_TWO_BYTE,
    OPUS_PAYLOAD_TYPE,
    RtpHeader,
    build_extension_body,
    build_rtp_header,
    is_rtcp,
    parse_extension_elements,
    parse_rtp_header,
    strip_payload,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def test_parses_a_discord_py_style_header() -> None:
    packet = bytes([0x80, 0x78]) + struct.pack(">HII", 513, 48000, 0xDEADBEEF) + b"opus"
    header = parse_rtp_header(packet)
    assert header == RtpHeader(2, False, False, False, OPUS_PAYLOAD_TYPE, 513, 48000, 0xDEADBEEF, (), None, 0)
    assert header.unencrypted_size == 12
    assert header.ext_body_size == 0
    assert strip_payload(header, packet[12:]) == b"opus"


def test_parses_csrcs_marker_and_extension_word() -> None:
    packet = (
        bytes([0x80 | 0x20 | 0x10 | 2, 0x80 | 111])
        + struct.pack(">HII", 1, 2, 3)
        + struct.pack(">II", 10, 11)
        + struct.pack(">HH", 0xBEDE, 3)
        + bytes(40)
    )
    header = parse_rtp_header(packet)
    assert (header.padding, header.extension, header.marker, header.payload_type) == (True, True, True, 111)
    assert header.csrcs == (10, 11)
    assert (header.ext_profile, header.ext_words) == (0xBEDE, 3)
    assert header.unencrypted_size == 12 + 8 + 4
    assert header.ext_body_size == 12


@given(
    sequence=u16,
    timestamp=u32,
    ssrc=u32,
    payload_type=st.integers(0, 127),
    marker=st.booleans(),
    csrcs=st.lists(u32, max_size=15),
    ext=st.none() | st.tuples(u16, u16),
    padding=st.booleans(),
)
def test_build_then_parse_round_trips(
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload_type: int,
    marker: bool,
    csrcs: list[int],
    ext: tuple[int, int] | None,
    padding: bool,
) -> None:
    profile, words = ext if ext is not None else (None, 0)
    raw = build_rtp_header(
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload_type=payload_type,
        marker=marker,
        csrcs=csrcs,
        ext_profile=profile,
        ext_words=words,
        padding=padding,
    )
    header = parse_rtp_header(raw)
    assert header == RtpHeader(
        2, padding, ext is not None, marker, payload_type, sequence, timestamp, ssrc, tuple(csrcs), profile, words
    )
    assert len(raw) == header.unencrypted_size


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (bytes([0x80, 0x78]) + bytes(9), "short"),
        (bytes([0x40, 0x78]) + bytes(10), "version"),
        (bytes([0x81, 0x78]) + bytes(10), "csrc"),
        (bytes([0x8F, 0x78]) + bytes(10 + 4 * 14), "csrc"),
        (bytes([0x90, 0x78]) + bytes(10) + b"\xbe\xde", "extension"),
        (bytes([0x91, 0x78]) + bytes(10 + 4), "extension"),
    ],
)
def test_malformed_headers_name_their_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as info:
        parse_rtp_header(data)
    assert info.value.reason == reason


@given(st.binary(max_size=120))
def test_parser_only_raises_malformed_packet(data: bytes) -> None:
    try:
        header = parse_rtp_header(data)
    except MalformedPacket as exc:
        assert exc.reason in {"short", "version", "csrc", "extension"}
    else:
        assert header.unencrypted_size <= len(data)
        assert header.version == 2


def test_parse_does_not_read_the_encrypted_extension_body() -> None:
    """The body is ciphertext in the rtpsize modes: only the 4-byte word is needed, even if the body is absent."""
    raw = build_rtp_header(sequence=1, timestamp=2, ssrc=3, ext_profile=0xBEDE, ext_words=200)
    header = parse_rtp_header(raw)
    assert header.ext_body_size == 800


def _plaintext(ext_body: bytes, payload: bytes, pad: int) -> bytes:
    return ext_body + payload + (bytes(pad - 1) + bytes((pad,)) if pad else b"")


@given(
    elements=st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=6),
    payload=st.binary(max_size=200),
    pad=st.integers(0, 255),
)
def test_strip_payload_skips_extension_body_and_padding(
    elements: list[tuple[int, bytes]], payload: bytes, pad: int
) -> None:
    body = build_extension_body(elements)
    raw = build_rtp_header(
        sequence=9, timestamp=9, ssrc=9, ext_profile=0xBEDE, ext_words=len(body) // 4, padding=pad > 0
    )
    header = parse_rtp_header(raw)
    assert strip_payload(header, _plaintext(body, payload, pad)) == payload


def test_strip_payload_returns_the_same_object_without_extension_or_padding() -> None:
    header = parse_rtp_header(build_rtp_header(sequence=1, timestamp=1, ssrc=1))
    plaintext = b"\xf8\xff\xfe"
    assert strip_payload(header, plaintext) is plaintext


@pytest.mark.parametrize(
    ("ext_words", "plaintext"),
    [(1, bytes(4) + b"payload\x00"), (1, bytes(4) + b"ab\x04"), (0, b"\x02"), (0, b"")],
)
def test_strip_payload_rejects_bad_pad_counts(ext_words: int, plaintext: bytes) -> None:
    profile = 0xBEDE if ext_words else None
    raw = build_rtp_header(sequence=1, timestamp=1, ssrc=1, padding=True, ext_profile=profile, ext_words=ext_words)
    with pytest.raises(MalformedPacket) as info:
        strip_payload(parse_rtp_header(raw), plaintext)
    assert info.value.reason == "padding"


def test_strip_payload_accepts_padding_that_fills_the_payload() -> None:
    header = parse_rtp_header(build_rtp_header(sequence=1, timestamp=1, ssrc=1, padding=True))
    assert strip_payload(header, b"\x00\x00\x03") == b""


def test_strip_payload_rejects_a_body_longer_than_the_plaintext() -> None:
    header = parse_rtp_header(build_rtp_header(sequence=1, timestamp=1, ssrc=1, ext_profile=0xBEDE, ext_words=3))
    with pytest.raises(MalformedPacket) as info:
        strip_payload(header, bytes(11))
    assert info.value.reason == "extension"


def test_one_byte_extension_vector() -> None:
    body = build_extension_body([(1, b"\x80"), (3, b"\x01\x02\x03")])
    assert body == bytes([0x10, 0x80, 0x32, 1, 2, 3, 0, 0])
    assert parse_extension_elements(EXTENSION_PROFILE_ONE_BYTE, body) == [(1, b"\x80"), (3, b"\x01\x02\x03")]


def test_two_byte_extension_vector() -> None:
    body = build_extension_body([(200, b""), (7, b"xy")], profile=0x1003)
    assert body == bytes([200, 0, 7, 2]) + b"xy" + bytes(2)
    assert parse_extension_elements(0x1003, body) == [(200, b""), (7, b"xy")]


@given(st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=10))
def test_one_byte_elements_round_trip(elements: list[tuple[int, bytes]]) -> None:
    body = build_extension_body(elements)
    assert len(body) % 4 == 0
    assert parse_extension_elements(EXTENSION_PROFILE_ONE_BYTE, body) == elements


@given(st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=255)), max_size=6), st.integers(0, 15))
def test_two_byte_elements_round_trip(elements: list[tuple[int, bytes]], appbits: int) -> None:
    profile = EXTENSION_PROFILE_TWO_BYTE | appbits
    body = build_extension_body(elements, profile)
    assert len(body) % 4 == 0
    assert parse_extension_elements(profile, body) == elements


def test_one_byte_id_15_ends_the_list() -> None:
    assert parse_extension_elements(0xBEDE, bytes([0x10, 0xAA, 0xF0, 0x20, 0xBB])) == [(1, b"\xaa")]


def test_unknown_profile_is_opaque() -> None:
    assert parse_extension_elements(0x1234, b"\x01\x02\x03\x04") == []


@pytest.mark.parametrize(
    ("profile", "body"), [(0xBEDE, bytes([0x13, 1, 2])), (0x1000, bytes([5, 4, 1])), (0x1000, b"\x05")]
)
def test_truncated_elements_raise(profile: int, body: bytes) -> None:
    with pytest.raises(MalformedPacket) as info:
        parse_extension_elements(profile, body)
    assert info.value.reason == "extension"


@given(st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_element_parser_only_raises_malformed_packet(profile: int, body: bytes) -> None:
    try:
        elements = parse_extension_elements(profile, body)
    except MalformedPacket as exc:
        assert exc.reason == "extension"
    else:
        assert sum(len(data) for _, data in elements) <= len(body)


@pytest.mark.parametrize(
    ("elements", "profile"),
    [
        ([(0, b"x")], 0xBEDE),
        ([(15, b"x")], 0xBEDE),
        ([(1, b"")], 0xBEDE),
        ([(1, bytes(17))], 0xBEDE),
        ([(0, b"")], 0x1000),
        ([(1, bytes(256))], 0x1000),
        ([], 0x1234),
    ],
)
def test_build_extension_body_rejects_what_the_form_cannot_hold(
    elements: list[tuple[int, bytes]], profile: int
) -> None:
    with pytest.raises(ValueError):
        build_extension_body(elements, profile)


def test_build_rtp_header_rejects_sixteen_csrcs() -> None:
    with pytest.raises(ValueError):
        build_rtp_header(sequence=0, timestamp=0, ssrc=0, csrcs=range(16))


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (200, True),
        (204, True),
        (192, True),
        (205, True),
        (223, True),
        (191, False),
        (224, False),
        (0x78, False),
        (0xF8, False),
    ],
)
def test_is_rtcp_looks_at_the_packet_type(second: int, expected: bool) -> None:
    assert is_rtcp(bytes([0x80, second, 0, 1])) is expected


def test_is_rtcp_needs_two_bytes() -> None:
    assert not is_rtcp(b"\x80")


@pytest.mark.parametrize("version", [0, 1, 3])
def test_a_datagram_of_another_version_is_not_rtcp_and_the_rtp_parser_refuses_it(version: int) -> None:
    data = bytes((version << 6, 200)) + bytes(30)
    assert not is_rtcp(data)
    with pytest.raises(MalformedPacket, match="version"):
        parse_rtp_header(data)
