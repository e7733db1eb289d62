"""RTCP packets (RFC 3550 section 6): parse compound packets, serialize single ones.

Sender and receiver reports, source descriptions and BYE become small frozen dataclasses; APP and every other
packet type are kept raw so nothing is lost. Each class has ``serialize()``, and
``parse_rtcp(serialize_rtcp(packets)) == packets``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from ..errors import MalformedPacket

__all__ = (
    "RTCP_APP",
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "SDES_CNAME",
    "Bye",
    "RawRtcp",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "build_bye",
    "build_receiver_report",
    "build_sender_report",
    "parse_rtcp",
    "serialize_rtcp",
)

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
SDES_CNAME = 1

_HEADER = struct.Struct(">BBH")
_U32 = struct.Struct(">I")
_SENDER_INFO = struct.Struct(">IQIII")
_BLOCK = struct.Struct(">IIIIII")
_MAX_COUNT = 31


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """Reception statistics about one source, carried in SR and RR.

    ``fraction_lost`` is the 8-bit fixed-point loss fraction (``/256``), ``packets_lost`` the signed 24-bit
    cumulative count, ``last_sr`` and ``delay_since_last_sr`` are in NTP middle-32-bit and 1/65536 s units.
    """

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int

    def serialize(self) -> bytes:
        """Encode the 24-byte report block."""
        lost = (self.fraction_lost & 0xFF) << 24 | (self.packets_lost & 0xFFFFFF)
        return _BLOCK.pack(self.ssrc, lost, self.highest_sequence, self.jitter, self.last_sr, self.delay_since_last_sr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR (200): what a sender sent and when (``ntp_timestamp`` is the whole 64-bit NTP time), plus report blocks.

    ``extension`` holds profile-specific bytes after the report blocks.
    """

    packet_type: ClassVar[int] = RTCP_SR

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        info = _SENDER_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count)
        return _frame(len(self.reports), RTCP_SR, info + _blocks(self.reports) + self.extension)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR (201): report blocks from a participant that is not sending (``ssrc`` is the reporter)."""

    packet_type: ClassVar[int] = RTCP_RR

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        return _frame(len(self.reports), RTCP_RR, _U32.pack(self.ssrc) + _blocks(self.reports) + self.extension)


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One source's description items as ``(type, text)`` pairs; type 1 is CNAME."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    def serialize(self) -> bytes:
        """Encode the chunk, ending with the null item and padding to a 32-bit boundary."""
        out = bytearray(_U32.pack(self.ssrc))
        for kind, text in self.items:
            if not 1 <= kind <= 255 or len(text) > 255:
                raise ValueError(f"SDES item needs type 1-255 and <= 255 bytes, got type {kind}, {len(text)} bytes")
            out.append(kind)
            out.append(len(text))
            out += text
        out.append(0)
        out += bytes(-len(out) % 4)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES (202): a list of chunks, one per described source."""

    packet_type: ClassVar[int] = RTCP_SDES

    chunks: tuple[SdesChunk, ...] = ()

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        return _frame(len(self.chunks), RTCP_SDES, b"".join(chunk.serialize() for chunk in self.chunks))


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (203): sources leaving, with an optional reason (``None`` when absent, ``b""`` when empty)."""

    packet_type: ClassVar[int] = RTCP_BYE

    ssrcs: tuple[int, ...] = ()
    reason: bytes | None = None

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        body = b"".join(_U32.pack(ssrc) for ssrc in self.ssrcs)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise ValueError(f"BYE reason of {len(self.reason)} bytes exceeds 255")
            text = bytes((len(self.reason),)) + self.reason
            body += text + bytes(-len(text) % 4)
        return _frame(len(self.ssrcs), RTCP_BYE, body)


@dataclass(frozen=True, slots=True)
class RawRtcp:
    """Any other packet (APP, feedback...): its type, the 5-bit count field and the body after the first word.

    A body that is not whole 32-bit words is serialized with RTCP padding.
    """

    packet_type: int
    count: int
    body: bytes

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        return _frame(self.count, self.packet_type, self.body)


RtcpPacket: TypeAlias = SenderReport | ReceiverReport | SourceDescription | Bye | RawRtcp


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP datagram (already decrypted) into its packets.

    Raises
    ------
    MalformedPacket
        ``"short"``, ``"version"``, ``"length"`` (a packet runs past the datagram), ``"padding"``, or ``"rtcp"``
        when a packet's body does not hold what its count field announces.
    """
    n = len(data)
    if n < 4:
        raise MalformedPacket("short", f"RTCP datagram of {n} bytes")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < n:
        if n - pos < 4:
            raise MalformedPacket("short", f"{n - pos} trailing bytes")
        b0, packet_type, length = _HEADER.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise MalformedPacket("version")
        end = pos + 4 * (length + 1)
        if end > n:
            raise MalformedPacket("length", f"packet of {end - pos} bytes, {n - pos} left")
        body_end = end
        if b0 & 0x20:
            pad = data[end - 1]
            if pad == 0 or pad > end - pos - 4:
                raise MalformedPacket("padding", f"pad count {pad}")
            body_end -= pad
        count = b0 & 0x1F
        parser = _PARSERS.get(packet_type)
        if parser is None:
            packets.append(RawRtcp(packet_type, count, bytes(data[pos + 4 : body_end])))
        else:
            packets.append(parser(data, pos + 4, body_end, count))
        pos = end
    return packets


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """Encode packets back to back as one compound RTCP datagram."""
    return b"".join(packet.serialize() for packet in packets)


def build_sender_report(
    ssrc: int,
    *,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Iterable[ReportBlock] = (),
) -> bytes:
    """Encode an SR, the report a sender emits every few seconds."""
    return SenderReport(ssrc, ntp_timestamp, rtp_timestamp, packet_count, octet_count, tuple(reports)).serialize()


def build_receiver_report(ssrc: int, reports: Iterable[ReportBlock] = ()) -> bytes:
    """Encode an RR from ``ssrc`` about the given sources."""
    return ReceiverReport(ssrc, tuple(reports)).serialize()


def build_bye(ssrcs: Iterable[int], reason: bytes | None = None) -> bytes:
    """Encode a BYE for ``ssrcs``."""
    return Bye(tuple(ssrcs), reason).serialize()


def _blocks(reports: tuple[ReportBlock, ...]) -> bytes:
    return b"".join(block.serialize() for block in reports)


def _frame(count: int, packet_type: int, body: bytes) -> bytes:
    if not 0 <= count <= _MAX_COUNT:
        raise ValueError(f"RTCP count field {count} is not 5 bits")
    pad = -len(body) % 4
    if pad:
        body += bytes(pad - 1) + bytes((pad,))
    return _HEADER.pack(0x80 | (0x20 if pad else 0) | count, packet_type, len(body) // 4) + body


def _parse_blocks(data: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
        pos += _BLOCK.size
    return tuple(blocks)


def _parse_sr(data: bytes, start: int, end: int, count: int) -> SenderReport:
    blocks_at = start + _SENDER_INFO.size
    ext_at = blocks_at + count * _BLOCK.size
    if ext_at > end:
        raise MalformedPacket("rtcp", f"SR with {count} report blocks in {end - start} bytes")
    ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, start)
    return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _parse_blocks(data, blocks_at, count), data[ext_at:end])


def _parse_rr(data: bytes, start: int, end: int, count: int) -> ReceiverReport:
    ext_at = start + 4 + count * _BLOCK.size
    if ext_at > end:
        raise MalformedPacket("rtcp", f"RR with {count} report blocks in {end - start} bytes")
    (ssrc,) = _U32.unpack_from(data, start)
    return ReceiverReport(ssrc, _parse_blocks(data, start + 4, count), data[ext_at:end])


def _parse_sdes(data: bytes, start: int, end: int, count: int) -> SourceDescription:
    chunks = []
    pos = start
    for _ in range(count):
        if pos + 4 > end:
            raise MalformedPacket("rtcp", "SDES chunk cut short")
        (ssrc,) = _U32.unpack_from(data, pos)
        pos += 4
        items = []
        while True:
            if pos >= end:
                raise MalformedPacket("rtcp", "SDES chunk without its null item")
            kind = data[pos]
            if kind == 0:
                pos = start + (pos - start + 4) // 4 * 4
                break
            if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                raise MalformedPacket("rtcp", f"SDES item {kind} runs past the packet")
            size = data[pos + 1]
            items.append((kind, bytes(data[pos + 2 : pos + 2 + size])))
            pos += 2 + size
        chunks.append(SdesChunk(ssrc, tuple(items)))
    if pos > end:
        raise MalformedPacket("rtcp", "SDES chunk padding runs past the packet")
    return SourceDescription(tuple(chunks))


def _parse_bye(data: bytes, start: int, end: int, count: int) -> Bye:
    reason_at = start + 4 * count
    if reason_at > end:
        raise MalformedPacket("rtcp", f"BYE with {count} sources in {end - start} bytes")
    ssrcs = struct.unpack_from(f">{count}I", data, start)
    reason = None
    if reason_at < end:
        size = data[reason_at]
        if reason_at + 1 + size > end:
            raise MalformedPacket("rtcp", "BYE reason runs past the packet")
        reason = bytes(data[reason_at + 1 : reason_at + 1 + size])
    return Bye(ssrcs, reason)


_PARSERS: dict[int, Callable[[bytes, int, int, int], RtcpPacket]] = {
    RTCP_SR: _parse_sr,
    RTCP_RR: _parse_rr,
    RTCP_SDES: _parse_sdes,
    RTCP_BYE: _parse_bye,
}
