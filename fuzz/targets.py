"""The fuzz targets: one per parser, plus the receive pipeline as a whole, each ``target(data: bytes) -> None``.

A target catches exactly the exceptions its code documents (``MalformedPacket``, ``DecryptionFailed``...) and
checks what must hold for any input: parse/serialize round trips, bounds, and for :func:`receiver` that every
datagram is accounted for by exactly one counter. Anything else escaping is a bug.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from discord_voicerecv.errors import (
    CaptureFormatError,
    DecryptionFailed,
    E2EEDecryptError,
    MalformedMlsMessage,
    MalformedPacket,
)
from discord_voicerecv.frames import FRAME_BYTES, OPUS_SILENCE, VoiceFrame
from discord_voicerecv.protocol import ipdiscovery
from discord_voicerecv.protocol.rtcp import Bye, SenderReport, parse_rtcp, serialize_rtcp
from discord_voicerecv.protocol.rtp import (
    EXTENSION_PROFILE_ONE_BYTE,
    build_extension_body,
    build_rtp_header,
    parse_extension_elements,
    parse_rtp_header,
    strip_payload,
)
from discord_voicerecv.protocol.transport import SUPPORTED_MODES, TransportCipher, make_cipher
from discord_voicerecv.receive import Receiver
from discord_voicerecv.sinks.base import AudioSink, SinkUser
from discord_voicerecv.testing import mls
from discord_voicerecv.tools.capture import iter_capture

__all__ = ("TARGETS", "ByteReader")

KEY = bytes(range(32))
_CIPHERS = {mode: make_cipher(mode, KEY) for mode in SUPPORTED_MODES}
_RTP_REASONS = frozenset({"short", "version", "csrc", "extension"})


class ByteReader:
    """Consumes fuzz input as small integers and byte strings; reads past the end give zeros / empty bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def __bool__(self) -> bool:
        return self.pos < len(self.data)

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.u8() << 8 | self.u8()

    def u32(self) -> int:
        return self.u16() << 16 | self.u16()

    def take(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk


# -- protocol parsers ----------------------------------------------------------------------------------------------


def rtp(data: bytes) -> None:
    """RTP header, payload stripping and header extension elements."""
    try:
        header = parse_rtp_header(data)
    except MalformedPacket as exc:
        assert exc.reason in _RTP_REASONS, exc.reason
        return
    clear = header.unencrypted_size
    assert clear <= len(data)
    rebuilt = build_rtp_header(
        sequence=header.sequence,
        timestamp=header.timestamp,
        ssrc=header.ssrc,
        payload_type=header.payload_type,
        marker=header.marker,
        csrcs=header.csrcs,
        ext_profile=header.ext_profile,
        ext_words=header.ext_words,
        padding=header.padding,
    )
    assert rebuilt == data[:clear], "header does not round-trip"
    body = data[clear:]
    try:
        payload = strip_payload(header, body)
    except MalformedPacket as exc:
        assert exc.reason in ("extension", "padding"), exc.reason
    else:
        start = header.ext_body_size
        assert body[start : start + len(payload)] == payload
    if header.ext_profile is not None:
        _extension_elements(header.ext_profile, body[: header.ext_body_size])


def _extension_elements(profile: int, body: bytes) -> None:
    try:
        elements = parse_extension_elements(profile, body)
    except MalformedPacket as exc:
        assert exc.reason == "extension"
        return
    one_byte = profile == EXTENSION_PROFILE_ONE_BYTE
    for ident, value in elements:
        assert (0 <= ident <= 14 and 1 <= len(value) <= 16) if one_byte else (1 <= ident <= 255 and len(value) <= 255)
    if elements and all(ident >= 1 for ident, _ in elements):
        encoded = build_extension_body(elements, profile)
        assert parse_extension_elements(profile, encoded) == elements, "extension elements do not round-trip"


def rtcp(data: bytes) -> None:
    """Compound RTCP parsing; what parses must serialize and parse back to the same packets."""
    try:
        packets = parse_rtcp(data)
    except MalformedPacket as exc:
        assert exc.reason in ("short", "version", "length", "padding", "rtcp"), exc.reason
        return
    assert packets
    again = parse_rtcp(serialize_rtcp(packets))
    assert again == packets, "RTCP does not round-trip"


def ipdiscovery_packets(data: bytes) -> None:
    """IP discovery requests and responses."""
    try:
        ssrc = ipdiscovery.parse_request(data)
    except MalformedPacket as exc:
        assert exc.reason in ("short", "ipdiscovery")
    else:
        assert ipdiscovery.build_request(ssrc)[:8] == data[:8]
    try:
        ip, port = ipdiscovery.parse_response(data)
    except MalformedPacket as exc:
        assert exc.reason in ("short", "ipdiscovery")
        return
    assert ipdiscovery.is_response(data)
    if len(ip) < 64:
        assert ipdiscovery.parse_response(ipdiscovery.build_response(0, ip, port)) == (ip, port)


def transport(data: bytes) -> None:
    """Transport decryption in every mode: garbage never authenticates, sealed packets open to what was sealed,
    and a flipped bit in the sealed part or the nonce suffix is always refused."""
    reader = ByteReader(data)
    mode = SUPPORTED_MODES[reader.u8() % len(SUPPORTED_MODES)]
    cipher = _CIPHERS[mode]
    action = reader.u8() % 3
    rest = data[reader.pos :]
    if action == 0:
        _open_garbage(cipher, rest)
        return
    header = build_rtp_header(
        sequence=reader.u16(),
        timestamp=reader.u32(),
        ssrc=reader.u32(),
        csrcs=tuple(range(reader.u8() % 3)),
        ext_profile=EXTENSION_PROFILE_ONE_BYTE if reader.u8() & 1 else None,
        ext_words=reader.u8() % 4,
    )
    plaintext = data[reader.pos :]
    packet = cipher.encrypt_rtp(header, plaintext)
    parsed = parse_rtp_header(packet)
    legacy = mode.startswith("xsalsa")
    sealed_from = 12 + 4 * len(parsed.csrcs) if legacy else parsed.unencrypted_size
    if action == 1:
        opened = cipher.decrypt_rtp(packet, parsed)
        assert packet[:sealed_from] + opened == header + plaintext, "sealed packet does not open to what was sealed"
        return
    bit = reader.u16() % (8 * len(packet))
    byte = bit >> 3
    if legacy and byte < sealed_from and not (mode == "xsalsa20_poly1305" and byte < 12):
        return
    tampered = bytearray(packet)
    tampered[byte] ^= 1 << (bit & 7)
    try:
        cipher.decrypt_rtp(bytes(tampered), parse_rtp_header(bytes(tampered)))
    except (DecryptionFailed, MalformedPacket):
        return
    raise AssertionError(f"{mode}: a tampered packet authenticated (bit {bit})")


def _open_garbage(cipher: TransportCipher, data: bytes) -> None:
    try:
        header = parse_rtp_header(data)
    except MalformedPacket:
        header = None
    if header is not None:
        try:
            cipher.open_payload(data, header)
        except (DecryptionFailed, MalformedPacket):
            pass
        else:
            raise AssertionError("random bytes authenticated")
    try:
        cipher.decrypt_rtcp(data)
    except (DecryptionFailed, MalformedPacket):
        return
    raise AssertionError("random bytes authenticated as RTCP")


_capture_path: str | None = None


def _scratch_capture_path() -> str:
    """One scratch file per process, made on first use and removed at exit (importing this module creates nothing)."""
    global _capture_path
    if _capture_path is None:
        directory = tempfile.mkdtemp(prefix="voicerecv-fuzz-")
        atexit.register(shutil.rmtree, directory, True)
        _capture_path = os.path.join(directory, "capture")
    return _capture_path


def capture(data: bytes) -> None:
    """rtpdump, pcap and pcapng readers (the input is written to a file and read back)."""
    path = _scratch_capture_path()
    with open(path, "wb") as f:
        f.write(data)
    try:
        for datagram in iter_capture(path):
            assert isinstance(datagram.data, bytes)
            assert len(datagram.data) <= len(data)
            assert 0 <= datagram.src[1] <= 0xFFFF and 0 <= datagram.dst[1] <= 0xFFFF
    except CaptureFormatError:
        return


def mls_messages(data: bytes) -> None:
    """The MLS parsers the local Discord's DAVE group uses on what clients send (op26, op28)."""
    for parse in (mls.parse_key_package, mls.welcome_recipients):
        with contextlib.suppress(MalformedMlsMessage):
            parse(data)
    try:
        info = mls.parse_commit(data)
    except MalformedMlsMessage:
        pass
    else:
        assert 0 < info.size <= len(data)
    try:
        commit, welcome = mls.split_commit_welcome(data)
    except MalformedMlsMessage:
        pass
    else:
        assert commit + (welcome or b"") == data
    if len(data) > 2:
        with contextlib.suppress(MalformedMlsMessage):
            mls.targeted_welcome(data, data[:2])
    assert mls.unwrap_key_package(data) in (data, data[4:])


# -- the receive pipeline ------------------------------------------------------------------------------------------

_MAPPED = {1: 101, 2: 102, 3: 103}
_SSRCS = (1, 2, 3, 4, 5)
_FINAL = (
    "not_listening",
    "inbox_full",
    "ip_discovery",
    "rtcp",
    "decrypt_failed",
    "no_transport_key",
    "ignored_payload_type",
    "ignored_ssrc",
    "unknown_ssrc_dropped",
    "unknown_ssrc_expired",
    "e2ee_expired",
    "duplicate",
    "late",
    "buffer_overflow",
    "forgotten",
    "decoded",
    "opus_error",
)
"""Counters of a datagram's final fate; each datagram ends in exactly one (or is still waiting somewhere)."""


class _Clock:
    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _CheckingSink(AudioSink):
    """Checks the sink contract: ticks advance one by one, at most one frame per stream per tick."""

    def __init__(self) -> None:
        self.next_tick = 0
        self.seen: set[int] = set()
        self.frames = 0
        self.cleanups = 0

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        assert frame.tick == self.next_tick, (frame.tick, self.next_tick)
        assert frame.ssrc not in self.seen, "two frames of one stream in a slot"
        assert len(frame.pcm) == FRAME_BYTES
        self.seen.add(frame.ssrc)
        self.frames += 1

    def advance(self, tick: int) -> None:
        assert tick == self.next_tick, (tick, self.next_tick)
        self.next_tick += 1
        self.seen.clear()

    def cleanup(self) -> None:
        self.cleanups += 1


class _Decryptor:
    """A DAVE layer stand-in: frames starting 0xFA fail, users without a key yet get "not yet"."""

    def __init__(self) -> None:
        self.ready: set[int] = set()

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        if frame[:1] == b"\xfa":
            raise E2EEDecryptError("auth")
        if user_id not in self.ready:
            return None
        return frame


_OPUS: list[bytes] = []


def _opus_frames() -> list[bytes]:
    if not _OPUS:
        import math

        from discord_voicerecv.opus import OpusEncoder

        encoder = OpusEncoder()
        for k in range(4):
            samples = [int(8000 * math.sin(2 * math.pi * 330 * (k * 960 + n) / 48000)) for n in range(960)]
            _OPUS.append(encoder.encode(b"".join(struct.pack("<hh", s, s) for s in samples)))
        _OPUS.append(encoder.encode(bytes(FRAME_BYTES * 3), frame_samples=2880))
        _OPUS.append(OPUS_SILENCE)
    return _OPUS


def receiver(data: bytes) -> None:
    """The Receiver fed a scripted mix of garbage and authentic packets on a fake clock.

    The script comes from the input: raw datagrams, encrypted packets with chosen SSRC, sequence, timestamp,
    extension and padding, RTCP, clock steps with playout, SSRC mapping, users leaving, keys arriving. At the end
    every datagram must be accounted for by one counter or still be waiting, nothing internal may have failed, and
    the sink must have seen whole, ordered slots.
    """
    reader = ByteReader(data)
    setup = reader.u8()
    mode = SUPPORTED_MODES[setup % len(SUPPORTED_MODES)]
    sender = make_cipher(mode, KEY)
    clock = _Clock()
    sink = _CheckingSink()
    decryptor = _Decryptor() if setup & 0x80 else None
    rx = Receiver(
        sink,
        user_resolver=lambda uid: None,
        decryptor=decryptor,
        playout_delay=0.06,
        clock=clock,
        unknown_ssrc_hold=0.4,
        max_silence=0.2,
        sink_queue_slots=1000,
    )
    if not setup & 0x40:
        rx.set_transport(mode, KEY)
    for ssrc, user in _MAPPED.items():
        rx.map_ssrc(ssrc, user)
    rx.start(threaded=False)
    seqs = dict.fromkeys(_SSRCS, 0)
    opus_frames = _opus_frames()
    steps = 0
    while reader and steps < 200:
        steps += 1
        op = reader.u8() % 10
        if op == 0:
            rx.feed(reader.take(reader.u8() * (reader.u8() % 8 + 1)))
        elif op <= 4:
            ssrc = _SSRCS[reader.u8() % len(_SSRCS)]
            step = reader.u8()
            seqs[ssrc] = (seqs[ssrc] + (step if step < 200 else step - 256)) & 0xFFFF
            rx.feed(_packet(reader, sender, ssrc, seqs[ssrc], opus_frames))
        elif op == 5:
            clock.t += reader.u8() % 16 * 0.02 + reader.u8() % 20 * 0.001
            rx.pump()
        elif op == 6:
            _rtcp(reader, sender, rx)
        elif op == 7:
            rx.map_ssrc(_SSRCS[reader.u8() % len(_SSRCS)], 100 + reader.u8() % 6)
        elif op == 8:
            choice = reader.u8()
            if choice < 32:
                rx.forget_user(100 + choice % 6)
            elif choice < 40:
                rx.ignore_ssrc(_SSRCS[choice % len(_SSRCS)])
            elif choice < 48:
                rx.set_transport(mode, KEY)
            elif decryptor is not None:
                decryptor.ready.add(100 + choice % 6)
        else:
            clock.t += reader.u8() % 64 * 0.02
            rx.pump()
    clock.t += 0.5
    rx.pump()
    rx.stop()
    _check_accounting(rx, sink)


def _packet(reader: ByteReader, sender: TransportCipher, ssrc: int, seq: int, opus_frames: list[bytes]) -> bytes:
    flags = reader.u8()
    timestamp = (seq * 960 + (reader.u8() if flags & 0x01 else 0) * 120) & 0xFFFFFFFF
    ext = b""
    if flags & 0x02:
        ext = build_extension_body([(1 + flags % 14, bytes((reader.u8(),)))])
    pick = reader.u8()
    payload = opus_frames[pick % len(opus_frames)] if pick < 200 else reader.take(pick - 199)
    pad = b""
    if flags & 0x04:
        size = reader.u8() % 8 + 1
        pad = bytes(size - 1) + bytes((size,))
    header = build_rtp_header(
        sequence=seq,
        timestamp=timestamp,
        ssrc=ssrc,
        payload_type=120 if not flags & 0x08 else reader.u8() & 0x7F,
        marker=bool(flags & 0x10),
        ext_profile=EXTENSION_PROFILE_ONE_BYTE if ext else None,
        ext_words=len(ext) // 4,
        padding=bool(pad),
    )
    return sender.encrypt_rtp(header, ext + payload + pad)


def _rtcp(reader: ByteReader, sender: TransportCipher, rx: Receiver) -> None:
    kind = reader.u8() % 3
    ssrc = _SSRCS[reader.u8() % len(_SSRCS)]
    if kind == 0:
        packet = Bye((ssrc,), None).serialize()
    elif kind == 1:
        packet = SenderReport(ssrc, reader.u32(), reader.u32(), reader.u16(), reader.u16(), ()).serialize()
    else:
        packet = b"\x80\xc9" + reader.take(reader.u8())
    if len(packet) >= 8:
        packet = sender.encrypt_rtcp(packet)
    rx.feed(packet)


def _check_accounting(rx: Any, sink: _CheckingSink) -> None:
    stats = rx.stats()
    assert stats["internal_error"] == 0, "an internal error was logged"
    final = sum(stats[name] for name in _FINAL if name in stats)
    final += sum(v for k, v in stats.items() if k.startswith(("malformed:", "e2ee_failed:")))
    waiting = len(rx._unmapped) + (len(rx._e2ee) if rx._e2ee is not None else 0)
    waiting += sum(len(s.jitter) for s in rx._streams.values())
    assert stats["packets"] == final + waiting, f"{stats['packets']} datagrams, {final} fates + {waiting} waiting"
    assert len(rx._unmapped) == sum(len(q) for q in rx._unmapped._queues.values())
    assert not set(rx._streams) & rx._ingress.ignored, "a stream exists for an ignored SSRC"
    assert sink.cleanups == 1
    assert sink.frames == stats["frames"] - stats["sink_queue_full"]
    assert sink.next_tick == rx.elapsed_slots


TARGETS: dict[str, Callable[[bytes], None]] = {
    "rtp": rtp,
    "rtcp": rtcp,
    "ipdiscovery": ipdiscovery_packets,
    "transport": transport,
    "capture": capture,
    "mls": mls_messages,
    "receiver": receiver,
}
"""Every fuzz target by name."""
