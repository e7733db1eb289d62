"""Read and write packet captures for offline decoding: rtpdump, pcap and pcapng.

:func:`iter_capture` tells the format by its magic bytes and yields the UDP datagrams in file order, reading one at
a time. Frames that are not UDP over IPv4/IPv6 (ARP, TCP, IP fragments...) are skipped. The writers take any
iterable and write as they go, so a test or a benchmark can record what it sent and decode it again later.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

from ..errors import CaptureFormatError
from ..protocol.rtp import is_rtcp

__all__ = ("CapturedDatagram", "iter_capture", "write_pcap", "write_rtpdump")

Address = tuple[str, int]


class CapturedDatagram(NamedTuple):
    """One UDP datagram from a capture: capture time in seconds since the epoch, endpoints and UDP payload.

    rtpdump files do not record the sender, so ``src`` is ``("0.0.0.0", 0)`` for them.
    """

    time: float
    src: Address
    dst: Address
    data: bytes


_RTPDUMP_MAGIC = b"#!rtpplay1.0 "
_RTPDUMP_HEADER = struct.Struct(">IIIHH")
_RTPDUMP_PACKET = struct.Struct(">HHI")
_UNKNOWN: Address = ("0.0.0.0", 0)

_PCAP_MAGICS = {
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"

_LINK_NULL = 0
_LINK_ETHERNET = 1
_LINK_RAW = 101
_LINK_LOOP = 108
_LINK_SLL = 113
_LINK_IPV4 = 228
_LINK_IPV6 = 229
_LINK_SLL2 = 276
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)
_UDP = 17
_IPV6_SKIPPABLE = (0, 43, 60)
"""Hop-by-hop, routing and destination options headers, which may sit between IPv6 and UDP."""


def iter_capture(path: str | os.PathLike[str]) -> Iterator[CapturedDatagram]:
    """Yield every UDP datagram of an rtpdump, pcap or pcapng file, in file order.

    Raises
    ------
    CaptureFormatError
        When the file is none of these formats, uses a link type we do not read, or is cut short (the datagrams
        before the cut have already been yielded).
    """
    with open(path, "rb") as f:
        head = f.read(4)
        if head == _RTPDUMP_MAGIC[:4]:
            yield from _read_rtpdump(f, head)
        elif head in _PCAP_MAGICS:
            yield from _read_pcap(f, head)
        elif head == _PCAPNG_SHB:
            yield from _read_pcapng(f, head)
        else:
            raise CaptureFormatError(f"{os.fspath(path)!r} is not an rtpdump, pcap or pcapng file")


def write_rtpdump(path: str | os.PathLike[str], datagrams: Iterable[CapturedDatagram]) -> int:
    """Write datagrams in rtptools' rtpdump format; returns how many were written.

    The recording starts at the first datagram's time and is addressed to its ``dst``; rtpdump keeps millisecond
    offsets, so times come back rounded to the millisecond.
    """
    count = 0
    start = 0.0
    with open(path, "wb") as f:
        for datagram in datagrams:
            if count == 0:
                start = datagram.time
                host, port = datagram.dst
                address = ipaddress.ip_address(host)
                source = int(address) if address.version == 4 else 0
                sec, usec = _split_time(start, 1_000_000)
                f.write(_RTPDUMP_MAGIC + f"{host}/{port}\n".encode("ascii"))
                f.write(_RTPDUMP_HEADER.pack(sec, usec, source, port, 0))
            offset = round((datagram.time - start) * 1000)
            size = len(datagram.data) + _RTPDUMP_PACKET.size
            if not 0 <= offset <= 0xFFFFFFFF or size > 0xFFFF:
                raise CaptureFormatError(f"datagram {count} does not fit rtpdump (offset {offset} ms, {size} bytes)")
            plen = 0 if is_rtcp(datagram.data) else len(datagram.data)
            f.write(_RTPDUMP_PACKET.pack(size, plen, offset) + datagram.data)
            count += 1
        if count == 0:
            f.write(_RTPDUMP_MAGIC + b"0.0.0.0/0\n" + _RTPDUMP_HEADER.pack(0, 0, 0, 0, 0))
    return count


def write_pcap(path: str | os.PathLike[str], datagrams: Iterable[CapturedDatagram]) -> int:
    """Write datagrams as a classic little-endian microsecond pcap of raw IP packets; returns how many."""
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 0xFFFF, _LINK_RAW))
        for datagram in datagrams:
            packet = _ip_udp_packet(datagram, count)
            sec, usec = _split_time(datagram.time, 1_000_000)
            f.write(struct.pack("<IIII", sec, usec, len(packet), len(packet)) + packet)
            count += 1
    return count


def _read_exact(f: BinaryIO, size: int, what: str) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise CaptureFormatError(f"capture cut short in {what}: {len(data)} of {size} bytes")
    return data


def _split_time(t: float, units: int) -> tuple[int, int]:
    sec = int(t // 1)
    frac = round((t - sec) * units)
    if frac >= units:
        sec, frac = sec + 1, frac - units
    return sec, frac


def _read_rtpdump(f: BinaryIO, head: bytes) -> Iterator[CapturedDatagram]:
    line = head + f.readline(256)
    if not line.startswith(_RTPDUMP_MAGIC) or not line.endswith(b"\n"):
        raise CaptureFormatError("rtpdump file without its '#!rtpplay1.0 address/port' line")
    host, _, port = line[len(_RTPDUMP_MAGIC) :].strip().decode("ascii", "replace").rpartition("/")
    if not port.isdigit() or int(port) > 0xFFFF:
        raise CaptureFormatError(f"rtpdump address line {line!r} has no port")
    dst = (host.strip("[]"), int(port))
    sec, usec, _source, _port, _pad = _RTPDUMP_HEADER.unpack(_read_exact(f, _RTPDUMP_HEADER.size, "rtpdump header"))
    start = sec + usec / 1e6
    while True:
        record = f.read(_RTPDUMP_PACKET.size)
        if not record:
            return
        if len(record) != _RTPDUMP_PACKET.size:
            raise CaptureFormatError("capture cut short in an rtpdump packet header")
        length, _plen, offset = _RTPDUMP_PACKET.unpack(record)
        if length < _RTPDUMP_PACKET.size:
            raise CaptureFormatError(f"rtpdump packet length {length} is shorter than its own header")
        data = _read_exact(f, length - _RTPDUMP_PACKET.size, "an rtpdump packet")
        yield CapturedDatagram(start + offset / 1000, _UNKNOWN, dst, data)


def _read_pcap(f: BinaryIO, head: bytes) -> Iterator[CapturedDatagram]:
    order, units = _PCAP_MAGICS[head]
    *_, network = struct.unpack(order + "HHiIII", _read_exact(f, 20, "pcap header"))
    link_type = network & 0xFFFF
    _check_link_type(link_type)
    record = struct.Struct(order + "IIII")
    while True:
        raw = f.read(record.size)
        if not raw:
            return
        if len(raw) != record.size:
            raise CaptureFormatError("capture cut short in a pcap record header")
        sec, frac, captured, _original = record.unpack(raw)
        frame = _read_exact(f, captured, "a pcap record")
        found = _decode_frame(link_type, frame)
        if found is not None:
            yield CapturedDatagram(sec + frac / units, *found)


class _Interface(NamedTuple):
    link_type: int
    units_per_second: int
    offset: int


def _read_pcapng(f: BinaryIO, head: bytes) -> Iterator[CapturedDatagram]:
    order = ">"
    interfaces: list[_Interface] = []
    block_type = head
    while True:
        if block_type == _PCAPNG_SHB:
            raw_length = _read_exact(f, 4, "a pcapng section header")
            magic = _read_exact(f, 4, "a pcapng section header")
            if magic == b"\x1a\x2b\x3c\x4d":
                order = ">"
            elif magic == b"\x4d\x3c\x2b\x1a":
                order = "<"
            else:
                raise CaptureFormatError("pcapng section header with an unknown byte-order magic")
            (length,) = struct.unpack(order + "I", raw_length)
            if length < 28 or length % 4:
                raise CaptureFormatError(f"pcapng section header of {length} bytes")
            _read_exact(f, length - 12, "a pcapng section header")
            interfaces = []
        else:
            (kind,) = struct.unpack(order + "I", block_type)
            (length,) = struct.unpack(order + "I", _read_exact(f, 4, "a pcapng block"))
            if length < 12 or length % 4:
                raise CaptureFormatError(f"pcapng block of {length} bytes")
            body = _read_exact(f, length - 8, "a pcapng block")[:-4]
            if kind == 1:
                interfaces.append(_parse_interface(body, order))
            elif kind in (3, 6):
                datagram = _pcapng_packet(kind, body, order, interfaces)
                if datagram is not None:
                    yield datagram
        block_type = f.read(4)
        if not block_type:
            return
        if len(block_type) != 4:
            raise CaptureFormatError("capture cut short between pcapng blocks")


def _parse_interface(body: bytes, order: str) -> _Interface:
    if len(body) < 8:
        raise CaptureFormatError("pcapng interface description cut short")
    (link_type,) = struct.unpack_from(order + "H", body)
    _check_link_type(link_type)
    units = 1_000_000
    offset = 0
    pos = 8
    while pos + 4 <= len(body):
        code, size = struct.unpack_from(order + "HH", body, pos)
        value = body[pos + 4 : pos + 4 + size]
        if code == 0:
            break
        if len(value) < size:
            raise CaptureFormatError("pcapng interface option cut short")
        if code == 9 and size == 1:
            units = 2 ** (value[0] & 0x7F) if value[0] & 0x80 else 10 ** value[0]
        elif code == 14 and size == 8:
            (offset,) = struct.unpack(order + "q", value)
        pos += 4 + size + (-size % 4)
    return _Interface(link_type, units, offset)


def _pcapng_packet(kind: int, body: bytes, order: str, interfaces: list[_Interface]) -> CapturedDatagram | None:
    if kind == 6:
        if len(body) < 20:
            raise CaptureFormatError("pcapng enhanced packet block cut short")
        index, high, low, captured, _original = struct.unpack_from(order + "IIIII", body)
        frame = body[20 : 20 + captured]
    else:
        if len(body) < 4:
            raise CaptureFormatError("pcapng simple packet block cut short")
        (original,) = struct.unpack_from(order + "I", body)
        index, high, low = 0, 0, 0
        frame = body[4 : 4 + original]
    if index >= len(interfaces):
        raise CaptureFormatError(f"pcapng packet on undeclared interface {index}")
    interface = interfaces[index]
    found = _decode_frame(interface.link_type, frame)
    if found is None:
        return None
    return CapturedDatagram((high << 32 | low) / interface.units_per_second + interface.offset, *found)


def _check_link_type(link_type: int) -> None:
    known = (_LINK_NULL, _LINK_ETHERNET, _LINK_RAW, _LINK_LOOP, _LINK_SLL, _LINK_IPV4, _LINK_IPV6, _LINK_SLL2)
    if link_type not in known:
        raise CaptureFormatError(f"link type {link_type} is not one we read (Ethernet, raw IP, Linux SLL, loopback)")


def _ip_offset(link_type: int, frame: bytes) -> int | None:
    if link_type in (_LINK_RAW, _LINK_IPV4, _LINK_IPV6):
        return 0
    if link_type in (_LINK_NULL, _LINK_LOOP):
        return 4
    if link_type == _LINK_ETHERNET:
        pos = 12
        while len(frame) >= pos + 2:
            ethertype = int.from_bytes(frame[pos : pos + 2], "big")
            if ethertype not in _ETHERTYPE_VLAN:
                return pos + 2 if ethertype in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6) else None
            pos += 4
        return None
    at, header = (14, 16) if link_type == _LINK_SLL else (0, 20)
    if len(frame) < header or int.from_bytes(frame[at : at + 2], "big") not in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6):
        return None
    return header


def _decode_frame(link_type: int, frame: bytes) -> tuple[Address, Address, bytes] | None:
    pos = _ip_offset(link_type, frame)
    if pos is None or len(frame) <= pos:
        return None
    version = frame[pos] >> 4
    if version == 4:
        return _decode_ipv4(frame, pos)
    if version == 6:
        return _decode_ipv6(frame, pos)
    return None


def _decode_ipv4(frame: bytes, pos: int) -> tuple[Address, Address, bytes] | None:
    if len(frame) < pos + 20:
        return None
    header_size = (frame[pos] & 0x0F) * 4
    total, fragment, protocol = struct.unpack_from(">2xH2xHxB", frame, pos)
    if protocol != _UDP or fragment & 0x3FFF or header_size < 20:
        return None
    end = pos + total if total else len(frame)
    src = str(ipaddress.IPv4Address(frame[pos + 12 : pos + 16]))
    dst = str(ipaddress.IPv4Address(frame[pos + 16 : pos + 20]))
    return _decode_udp(frame, pos + header_size, min(end, len(frame)), src, dst)


def _decode_ipv6(frame: bytes, pos: int) -> tuple[Address, Address, bytes] | None:
    if len(frame) < pos + 40:
        return None
    length = int.from_bytes(frame[pos + 4 : pos + 6], "big")
    next_header = frame[pos + 6]
    src = ipaddress.IPv6Address(frame[pos + 8 : pos + 24]).compressed
    dst = ipaddress.IPv6Address(frame[pos + 24 : pos + 40]).compressed
    end = min(pos + 40 + length, len(frame)) if length else len(frame)
    pos += 40
    while next_header in _IPV6_SKIPPABLE:
        if pos + 2 > end:
            return None
        next_header, size = frame[pos], (frame[pos + 1] + 1) * 8
        pos += size
    if next_header != _UDP:
        return None
    return _decode_udp(frame, pos, end, src, dst)


def _decode_udp(frame: bytes, pos: int, end: int, src: str, dst: str) -> tuple[Address, Address, bytes] | None:
    if pos + 8 > end:
        return None
    sport, dport, length = struct.unpack_from(">HHH", frame, pos)
    if length < 8 or pos + length > end:
        return None
    return (src, sport), (dst, dport), bytes(frame[pos + 8 : pos + length])


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip_udp_packet(datagram: CapturedDatagram, ident: int) -> bytes:
    src = ipaddress.ip_address(datagram.src[0])
    dst = ipaddress.ip_address(datagram.dst[0])
    if src.version != dst.version:
        raise CaptureFormatError(f"datagram from {src} to {dst} mixes IPv4 and IPv6")
    size = 8 + len(datagram.data)
    limit = 0xFFFF - 20 if src.version == 4 else 0xFFFF
    if size > limit:
        raise CaptureFormatError(f"datagram of {len(datagram.data)} bytes does not fit one UDP packet")
    udp = struct.pack(">HHHH", datagram.src[1], datagram.dst[1], size, 0)
    if src.version == 4:
        header = struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, 20 + size, ident & 0xFFFF, 0, 64, _UDP, 0, src.packed, dst.packed
        )
        header = header[:10] + _checksum(header).to_bytes(2, "big") + header[12:]
        return header + udp + datagram.data
    pseudo = src.packed + dst.packed + struct.pack(">I3xB", size, _UDP)
    checksum = _checksum(pseudo + udp + datagram.data) or 0xFFFF
    udp = udp[:6] + checksum.to_bytes(2, "big")
    return struct.pack(">IHBB16s16s", 6 << 28, size, _UDP, 64, src.packed, dst.packed) + udp + datagram.data
