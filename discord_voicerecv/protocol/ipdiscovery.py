"""Discord's UDP IP discovery: a 74-byte request carrying our SSRC, answered with our external address and port.

Layout (big-endian): type u16 (1 request, 2 response), length u16 (always 70), SSRC u32, address (64 bytes of
ASCII, NUL padded), port u16.
"""

from __future__ import annotations

import struct

from ..errors import MalformedPacket

__all__ = (
    "PACKET_SIZE",
    "build_request",
    "build_response",
    "is_request",
    "is_response",
    "parse_request",
    "parse_response",
)

_PACKET = struct.Struct(">HHI64sH")
PACKET_SIZE = _PACKET.size
"""Bytes in a discovery request or reply (74)."""
_BODY_LENGTH = PACKET_SIZE - 4
"""The length field: every byte after type and length (70)."""
_BODY_LENGTH_FIELD = _BODY_LENGTH.to_bytes(2, "big")
_REQUEST = 1
_RESPONSE = 2
_ADDRESS_SIZE = 64


def build_request(ssrc: int) -> bytes:
    """Build the request a client sends before Select Protocol."""
    return _PACKET.pack(_REQUEST, _BODY_LENGTH, ssrc, b"", 0)


def parse_request(data: bytes) -> int:
    """Return the SSRC of a discovery request.

    Raises
    ------
    MalformedPacket
        ``"short"`` when shorter than :data:`PACKET_SIZE`, ``"ipdiscovery"`` when the size, type or length field
        is wrong.
    """
    kind, ssrc, _address, _port = _unpack(data)
    if kind != _REQUEST:
        raise MalformedPacket("ipdiscovery", f"type {kind} is not a request")
    return ssrc


def build_response(ssrc: int, ip: str, port: int) -> bytes:
    """Build the server's reply carrying the external ``ip`` (ASCII, at most 63 characters so a NUL ends it)."""
    address = ip.encode("ascii")
    if len(address) >= _ADDRESS_SIZE:
        raise ValueError(f"address {ip!r} does not fit in {_ADDRESS_SIZE - 1} bytes")
    return _PACKET.pack(_RESPONSE, _BODY_LENGTH, ssrc, address, port)


def is_request(data: bytes) -> bool:
    """Tell a discovery request from RTP/RTCP arriving on the same socket."""
    return _is_kind(data, _REQUEST)


def is_response(data: bytes) -> bool:
    """Tell a discovery reply from RTP/RTCP arriving on the same socket."""
    return _is_kind(data, _RESPONSE)


def _is_kind(data: bytes, kind: int) -> bool:
    return len(data) == PACKET_SIZE and data[0] == 0 and data[1] == kind and data[2:4] == _BODY_LENGTH_FIELD


def parse_response(data: bytes) -> tuple[str, int]:
    """Return the ``(ip, port)`` of a discovery reply.

    Raises
    ------
    MalformedPacket
        ``"short"`` when shorter than :data:`PACKET_SIZE`, ``"ipdiscovery"`` when the size, type, length or
        address is wrong.
    """
    kind, _ssrc, address, port = _unpack(data)
    if kind != _RESPONSE:
        raise MalformedPacket("ipdiscovery", f"type {kind} is not a response")
    try:
        ip = address.split(b"\0", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedPacket("ipdiscovery", "address is not ASCII") from None
    if not ip:
        raise MalformedPacket("ipdiscovery", "empty address")
    return ip, port


def _unpack(data: bytes) -> tuple[int, int, bytes, int]:
    if len(data) != PACKET_SIZE:
        raise MalformedPacket("short" if len(data) < PACKET_SIZE else "ipdiscovery", f"{len(data)} bytes")
    kind, length, ssrc, address, port = _PACKET.unpack(data)
    if length != _BODY_LENGTH:
        raise MalformedPacket("ipdiscovery", f"length field {length}")
    return kind, ssrc, address, port
