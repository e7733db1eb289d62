"""UDP IP discovery packets."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voicerecv.errors import MalformedPacket
from discord_voicerecv.protocol.ipdiscovery import (
    PACKET_SIZE,
    build_request,
    build_response,
    is_request,
    is_response,
    parse_request,
    parse_response,
)
from discord_voicerecv.protocol.rtp import build_rtp_header


def test_request_matches_what_discord_py_sends() -> None:
    expected = bytearray(74)
    struct.pack_into(">HHI", expected, 0, 1, 70, 0x01020304)
    assert build_request(0x01020304) == bytes(expected)
    assert parse_request(bytes(expected)) == 0x01020304


def test_response_is_read_the_way_discord_py_reads_it() -> None:
    data = build_response(99, "203.0.113.7", 50123)
    assert len(data) == PACKET_SIZE and data[1] == 0x02
    assert data[8 : data.index(0, 8)].decode("ascii") == "203.0.113.7"
    assert struct.unpack_from(">H", data, len(data) - 2)[0] == 50123
    assert parse_response(data) == ("203.0.113.7", 50123)


@given(
    st.integers(0, 2**32 - 1), st.text(alphabet="0123456789abcdef.:", min_size=1, max_size=63), st.integers(0, 65535)
)
def test_round_trips(ssrc: int, ip: str, port: int) -> None:
    request = build_request(ssrc)
    assert parse_request(request) == ssrc
    response = build_response(ssrc, ip, port)
    assert is_response(response) and not is_request(response)
    assert is_request(request) and not is_response(request)
    assert parse_response(response) == (ip, port)


def test_rtp_of_the_same_size_is_not_a_response() -> None:
    rtp = build_rtp_header(sequence=2, timestamp=0, ssrc=1) + bytes(62)
    assert len(rtp) == PACKET_SIZE
    assert not is_response(rtp) and not is_request(rtp)


@pytest.mark.parametrize("build", [build_request, lambda ssrc: build_response(ssrc, "10.0.0.1", 9)])
def test_a_wrong_length_field_or_size_is_neither_request_nor_response(build: Callable[[int], bytes]) -> None:
    good = build(7)
    for bad in (good[:2] + b"\x00\x45" + good[4:], good + b"\x00", good[:-1]):
        assert not is_request(bad) and not is_response(bad)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x02\x00\x46", "short"),
        (build_response(1, "1.2.3.4", 5) + b"\x00", "ipdiscovery"),
        (build_request(1), "ipdiscovery"),
        (b"\x00\x02\x00\x45" + build_response(1, "1.2.3.4", 5)[4:], "ipdiscovery"),
        (build_response(1, "1.2.3.4", 5)[:8] + b"\xff" + bytes(65), "ipdiscovery"),
        (build_response(1, "1.2.3.4", 5)[:8] + bytes(66), "ipdiscovery"),
    ],
)
def test_malformed_responses(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as info:
        parse_response(data)
    assert info.value.reason == reason


def test_parse_request_rejects_a_response() -> None:
    with pytest.raises(MalformedPacket):
        parse_request(build_response(1, "1.2.3.4", 5))


def test_address_must_leave_room_for_its_terminator() -> None:
    with pytest.raises(ValueError):
        build_response(1, "1" * 64, 5)
