"""Capture readers and writers: rtpdump, pcap (every link type we read, both byte orders, micro/nano), pcapng."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discord_voicerecv.errors import CaptureFormatError
from discord_voicerecv.protocol.rtcp import build_receiver_report
from discord_voicerecv.protocol.rtp import build_rtp_header, parse_rtp_header, strip_payload
from discord_voicerecv.protocol.transport import make_cipher
from discord_voicerecv.tools.capture import CapturedDatagram, iter_capture, write_pcap, write_rtpdump

SRC = ("192.0.2.10", 50000)
DST = ("198.51.100.20", 50001)
PAYLOAD = b"\x90\x78rtp-ish payload"


def _ipv4(src: str, dst: str, body: bytes, *, protocol: int = 17, fragment: int = 0) -> bytes:
    return (
        struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(body), 1, fragment, 64, protocol, 0)
        + bytes(int(part) for part in src.split("."))
        + bytes(int(part) for part in dst.split("."))
        + body
    )


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def _ipv4_udp(payload: bytes = PAYLOAD, src: tuple[str, int] = SRC, dst: tuple[str, int] = DST) -> bytes:
    return _ipv4(src[0], dst[0], _udp(src[1], dst[1], payload))


def _ipv6_udp(payload: bytes, *, hop_by_hop: bool = False) -> bytes:
    udp = _udp(5000, 6000, payload)
    extension = bytes([17, 0]) + bytes(6) if hop_by_hop else b""
    first = 0 if hop_by_hop else 17
    src = bytes(15) + b"\x01"
    dst = b"\xfe\x80" + bytes(13) + b"\x02"
    return struct.pack(">IHBB", 6 << 28, len(extension) + len(udp), first, 64) + src + dst + extension + udp


def _ethernet(ip: bytes, ethertype: int = 0x0800, vlan: bool = False) -> bytes:
    tag = struct.pack(">HH", 0x8100, 42) if vlan else b""
    return b"\x02" * 6 + b"\x04" * 6 + tag + struct.pack(">H", ethertype) + ip


def _frame(link: int, ip: bytes) -> bytes:
    ethertype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    if link == 1:
        return _ethernet(ip, ethertype)
    if link == 0:
        return struct.pack("<I", 2 if ethertype == 0x0800 else 30) + ip
    if link == 113:
        return struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 6, ethertype) + ip
    if link == 276:
        return struct.pack(">HHIHBB8s", ethertype, 0, 3, 1, 0, 6, b"\x02" * 6) + ip
    return ip


def _pcap(link: int, frames: list[tuple[float, bytes]], *, order: str = "<", nano: bool = False) -> bytes:
    units = 1_000_000_000 if nano else 1_000_000
    out = struct.pack(order + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, link)
    for t, frame in frames:
        sec = int(t)
        out += struct.pack(order + "IIII", sec, round((t - sec) * units), len(frame), len(frame)) + frame
    return out


def _write(tmp_path: Path, data: bytes, name: str = "capture") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_hand_built_ethernet_ipv4_udp_pcap(tmp_path: Path) -> None:
    frames = [
        (1700000000.25, _ethernet(_ipv4_udp())),
        (1700000000.5, _ethernet(b"\x00\x01\x08\x00" + bytes(24), ethertype=0x0806)),
        (1700000000.75, _ethernet(_ipv4(SRC[0], DST[0], bytes(20), protocol=6))),
        (1700000001.0, _ethernet(_ipv4(SRC[0], DST[0], _udp(1, 2, b"frag"), fragment=0x2000))),
        (1700000001.25, _ethernet(_ipv4_udp(b"second", src=("10.0.0.1", 1), dst=("10.0.0.2", 2)), vlan=True)),
    ]
    path = _write(tmp_path, _pcap(1, frames, order=">"))
    assert list(iter_capture(path)) == [
        CapturedDatagram(1700000000.25, SRC, DST, PAYLOAD),
        CapturedDatagram(1700000001.25, ("10.0.0.1", 1), ("10.0.0.2", 2), b"second"),
    ]


def test_ethernet_trailer_and_frame_check_sequence_are_not_payload(tmp_path: Path) -> None:
    path = _write(tmp_path, _pcap(1, [(1.0, _ethernet(_ipv4_udp(b"x")) + bytes(17))]))
    assert [d.data for d in iter_capture(path)] == [b"x"]


@pytest.mark.parametrize("link", [0, 1, 101, 113, 228, 276])
@pytest.mark.parametrize(("order", "nano"), [("<", False), (">", False), ("<", True), (">", True)])
def test_pcap_link_types_byte_orders_and_resolutions(tmp_path: Path, link: int, order: str, nano: bool) -> None:
    path = _write(tmp_path, _pcap(link, [(12.000123, _frame(link, _ipv4_udp()))], order=order, nano=nano))
    [datagram] = iter_capture(path)
    assert (datagram.src, datagram.dst, datagram.data) == (SRC, DST, PAYLOAD)
    assert datagram.time == pytest.approx(12.000123, abs=1e-9)


@pytest.mark.parametrize("link", [0, 1, 101, 113, 229, 276])
@pytest.mark.parametrize("hop_by_hop", [False, True])
def test_ipv6_udp(tmp_path: Path, link: int, hop_by_hop: bool) -> None:
    path = _write(tmp_path, _pcap(link, [(3.5, _frame(link, _ipv6_udp(b"six", hop_by_hop=hop_by_hop)))]))
    assert list(iter_capture(path)) == [CapturedDatagram(3.5, ("::1", 5000), ("fe80::2", 6000), b"six")]


def _option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(order: str, kind: int, body: bytes) -> bytes:
    size = 12 + len(body)
    return struct.pack(order + "II", kind, size) + body + struct.pack(order + "I", size)


def _pcapng(order: str, link: int, packets: list[tuple[int, bytes]], tsresol: int | None = None) -> bytes:
    shb = _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    options = _option(order, 9, bytes([tsresol])) + _option(order, 0, b"") if tsresol is not None else b""
    idb = _block(order, 1, struct.pack(order + "HHI", link, 0, 0) + options)
    out = shb + idb + _block(order, 5, bytes(8))
    for ticks, frame in packets:
        head = struct.pack(order + "IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
        out += _block(order, 6, head + frame + bytes(-len(frame) % 4) + _option(order, 1, b"note"))
    return out


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_enhanced_packets_with_default_and_nanosecond_resolution(tmp_path: Path, order: str) -> None:
    micro = _write(tmp_path, _pcapng(order, 1, [(1_700_000_000_250_000, _ethernet(_ipv4_udp(b"abc")))]), "a.pcapng")
    assert list(iter_capture(micro)) == [CapturedDatagram(1_700_000_000.25, SRC, DST, b"abc")]
    nano = _write(tmp_path, _pcapng(order, 101, [(2_500_000_001, _ipv4_udp(b"d"))], tsresol=9), "b.pcapng")
    [datagram] = iter_capture(nano)
    assert datagram.data == b"d" and datagram.time == pytest.approx(2.500000001, abs=1e-9)


def test_pcapng_sections_may_change_byte_order(tmp_path: Path) -> None:
    first = _pcapng("<", 101, [(1_000_000, _ipv4_udp(b"le"))])
    second = _pcapng(">", 1, [(2_000_000, _ethernet(_ipv4_udp(b"be")))])
    path = _write(tmp_path, first + second, "two.pcapng")
    assert [(d.time, d.data) for d in iter_capture(path)] == [(1.0, b"le"), (2.0, b"be")]


def test_pcapng_simple_packet_block(tmp_path: Path) -> None:
    frame = _ipv4_udp(b"simple")
    data = _pcapng("<", 101, []) + _block("<", 3, struct.pack("<I", len(frame)) + frame + bytes(-len(frame) % 4))
    assert [d.data for d in iter_capture(_write(tmp_path, data))] == [b"simple"]


def _rtpdump(packets: list[tuple[int, bytes, int]]) -> bytes:
    out = b"#!rtpplay1.0 198.51.100.20/50001\n" + struct.pack(">IIIHH", 1700000000, 500000, 0xC6336414, 50001, 0)
    for offset, data, plen in packets:
        out += struct.pack(">HHI", len(data) + 8, plen, offset) + data
    return out


def test_hand_built_rtpdump(tmp_path: Path) -> None:
    rtp = build_rtp_header(sequence=1, timestamp=960, ssrc=7) + b"opus"
    rtcp = build_receiver_report(7)
    path = _write(tmp_path, _rtpdump([(0, rtp, len(rtp)), (20, rtcp, 0)]))
    assert list(iter_capture(path)) == [
        CapturedDatagram(1700000000.5, ("0.0.0.0", 0), DST, rtp),
        CapturedDatagram(1700000000.52, ("0.0.0.0", 0), DST, rtcp),
    ]


addresses_v4 = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
addresses_v6 = st.tuples(st.ip_addresses(v=6).map(lambda a: a.compressed), st.integers(0, 65535))


@st.composite
def datagram_lists(draw: st.DrawFn) -> list[CapturedDatagram]:
    start = draw(st.integers(0, 2**31).map(float)) + draw(st.integers(0, 999_999)) / 1e6
    steps = draw(st.lists(st.integers(0, 5_000_000), max_size=6))
    addresses = addresses_v4 if draw(st.booleans()) else addresses_v6
    out = []
    t = start
    for step in steps:
        t += step / 1e6
        out.append(CapturedDatagram(t, draw(addresses), draw(addresses), draw(st.binary(max_size=300))))
    return out


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datagrams=datagram_lists())
def test_pcap_writer_round_trips(tmp_path: Path, datagrams: list[CapturedDatagram]) -> None:
    path = tmp_path / "out.pcap"
    assert write_pcap(path, datagrams) == len(datagrams)
    back = list(iter_capture(path))
    assert [(d.src, d.dst, d.data) for d in back] == [(d.src, d.dst, d.data) for d in datagrams]
    assert all(abs(a.time - b.time) <= 1e-6 for a, b in zip(back, datagrams, strict=True))


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datagrams=datagram_lists())
def test_rtpdump_writer_round_trips_to_the_millisecond(tmp_path: Path, datagrams: list[CapturedDatagram]) -> None:
    path = tmp_path / "out.rtp"
    assert write_rtpdump(path, datagrams) == len(datagrams)
    back = list(iter_capture(path))
    assert [(d.dst, d.data) for d in back] == [(datagrams[0].dst, d.data) for d in datagrams]
    assert all(abs(a.time - b.time) <= 0.0005 + 1e-6 for a, b in zip(back, datagrams, strict=True))


def _ones_complement_sum(data: bytes) -> int:
    data += bytes(len(data) % 2)
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_written_checksums_verify(tmp_path: Path) -> None:
    path = tmp_path / "sums.pcap"
    write_pcap(path, [CapturedDatagram(1.0, SRC, DST, b"v4"), CapturedDatagram(2.0, ("::1", 1), ("::2", 2), b"v6!")])
    data = path.read_bytes()
    first = data[24 + 16 : 24 + 16 + 20 + 8 + 2]
    assert _ones_complement_sum(first[:20]) == 0xFFFF
    second = data[24 + 16 + len(first) + 16 :]
    pseudo = second[8:40] + struct.pack(">I3xB", 8 + 3, 17)
    assert _ones_complement_sum(pseudo + second[40:]) == 0xFFFF


def test_encrypted_voice_survives_a_pcap_round_trip(tmp_path: Path) -> None:
    cipher = make_cipher("aead_aes256_gcm_rtpsize", bytes(32))
    frames = [bytes([0xFC]) + bytes([n]) * 40 for n in range(5)]
    packets = [
        cipher.encrypt_rtp(build_rtp_header(sequence=n, timestamp=960 * n, ssrc=99), frame)
        for n, frame in enumerate(frames)
    ]
    write_pcap(tmp_path / "voice.pcap", [CapturedDatagram(n * 0.02, SRC, DST, p) for n, p in enumerate(packets)])
    received = []
    for datagram in iter_capture(tmp_path / "voice.pcap"):
        header = parse_rtp_header(datagram.data)
        received.append(strip_payload(header, cipher.decrypt_rtp(datagram.data, header)))
    assert received == frames


def test_empty_rtpdump_is_readable(tmp_path: Path) -> None:
    assert write_rtpdump(tmp_path / "empty.rtp", []) == 0
    assert list(iter_capture(tmp_path / "empty.rtp")) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a",
        b"#!rtpplay1.0 nothing\n" + bytes(16),
        b"#!rtpplay1.0 1.2.3.4/5\n" + bytes(10),
        b"#!rtpplay1.0 1.2.3.4/5\n" + bytes(16) + struct.pack(">HHI", 4, 0, 0),
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147),
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)[:20],
        b"\x0a\x0d\x0d\x0a" + struct.pack("<I", 28) + b"\x00\x00\x00\x00" + bytes(16),
        _pcapng("<", 101, [])[:-2],
        _pcapng("<", 101, []) + _block("<", 6, struct.pack("<IIIII", 3, 0, 0, 0, 0)),
    ],
)
def test_unreadable_files_raise_capture_format_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(CaptureFormatError):
        list(iter_capture(_write(tmp_path, data)))


def test_truncated_pcap_yields_what_came_before_the_cut(tmp_path: Path) -> None:
    data = _pcap(101, [(1.0, _ipv4_udp(b"whole")), (2.0, _ipv4_udp(b"cut off"))])
    reader = iter_capture(_write(tmp_path, data[:-3]))
    assert next(reader).data == b"whole"
    with pytest.raises(CaptureFormatError):
        next(reader)


def test_writer_rejects_mixed_families_and_oversized_datagrams(tmp_path: Path) -> None:
    with pytest.raises(CaptureFormatError):
        write_pcap(tmp_path / "x.pcap", [CapturedDatagram(0.0, ("::1", 1), DST, b"")])
    with pytest.raises(CaptureFormatError):
        write_rtpdump(tmp_path / "x.rtp", [CapturedDatagram(0.0, SRC, DST, bytes(65530))])
    with pytest.raises(CaptureFormatError):
        write_rtpdump(tmp_path / "y.rtp", [CapturedDatagram(5.0, SRC, DST, b""), CapturedDatagram(4.0, SRC, DST, b"")])
