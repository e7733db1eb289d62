"""RTP header parsing and building (RFC 3550, header extensions per RFC 8285).

Pure functions over bytes: no sockets, no clocks. The receiver calls :func:`parse_rtp_header` before decryption and
:func:`strip_payload` after it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..errors import MalformedPacket

__all__ = (
    "EXTENSION_PROFILE_ONE_BYTE",
    "EXTENSION_PROFILE_TWO_BYTE",
    "OPUS_PAYLOAD_TYPE",
    "RTP_HEADER_SIZE",
    "RtpHeader",
    "build_extension_body",
    "build_rtp_header",
    "is_rtcp",
    "parse_extension_elements",
    "parse_rtp_header",
    "strip_payload",
)

RTP_HEADER_SIZE = 12
OPUS_PAYLOAD_TYPE = 120
EXTENSION_PROFILE_ONE_BYTE = 0xBEDE
EXTENSION_PROFILE_TWO_BYTE = 0x1000
"""The two-byte element form; the low 4 bits of the profile are application bits (0x1000-0x100F)."""

_FIXED = struct.Struct(">BBHII")
_EXT_HEADER = struct.Struct(">HH")
_CSRC_STRUCTS = tuple(struct.Struct(f">{n}I") for n in range(16))
_NO_CSRCS: tuple[int, ...] = ()


class RtpHeader(NamedTuple):
    """The clear part of one RTP packet.

    ``ext_profile`` and ``ext_words`` come from the 4-byte extension header word (``None`` and 0 when X is clear);
    the extension body itself is encrypted and is skipped by :func:`strip_payload`.
    """

    version: int
    padding: bool
    extension: bool
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    ext_profile: int | None
    ext_words: int

    @property
    def unencrypted_size(self) -> int:
        """Bytes that travel in clear: fixed header, CSRCs and, when X is set, the extension header word."""
        return RTP_HEADER_SIZE + 4 * len(self.csrcs) + (4 if self.extension else 0)

    @property
    def ext_body_size(self) -> int:
        """Bytes of extension body at the start of the decrypted plaintext."""
        return 4 * self.ext_words


def is_rtcp(data: bytes) -> bool:
    """Tell RTCP from RTP by byte 1 (RFC 5761 section 4: 192-223 holds SR, RR, SDES, BYE, APP, the feedback
    types RTPFB/PSFB and XR; RTP must not use payload types whose marker-bit form falls there). Both are version 2:
    anything else is neither, and is left to the RTP parser to refuse."""
    return len(data) >= 2 and data[0] >> 6 == 2 and 192 <= data[1] <= 223


def parse_rtp_header(data: bytes) -> RtpHeader:
    """Parse the clear header of an RTP packet.

    Parameters
    ----------
    data:
        The whole datagram. Only the fixed header, the CSRCs and the extension header word are read.

    Raises
    ------
    MalformedPacket
        ``"short"`` under 12 bytes, ``"version"`` unless version 2, ``"csrc"`` when the CSRC list is cut, and
        ``"extension"`` when X is set but the extension header word is missing.
    """
    if len(data) < RTP_HEADER_SIZE:
        raise MalformedPacket("short")
    b0, b1, sequence, timestamp, ssrc = _FIXED.unpack_from(data)
    if b0 >> 6 != 2:
        raise MalformedPacket("version")
    cc = b0 & 0x0F
    end = RTP_HEADER_SIZE + 4 * cc
    if len(data) < end:
        raise MalformedPacket("csrc")
    csrcs = _CSRC_STRUCTS[cc].unpack_from(data, RTP_HEADER_SIZE) if cc else _NO_CSRCS
    if b0 & 0x10:
        if len(data) < end + 4:
            raise MalformedPacket("extension")
        profile, words = _EXT_HEADER.unpack_from(data, end)
        return RtpHeader(
            2, bool(b0 & 0x20), True, bool(b1 & 0x80), b1 & 0x7F, sequence, timestamp, ssrc, csrcs, profile, words
        )
    return RtpHeader(2, bool(b0 & 0x20), False, bool(b1 & 0x80), b1 & 0x7F, sequence, timestamp, ssrc, csrcs, None, 0)


def strip_payload(header: RtpHeader, plaintext: bytes) -> bytes:
    """Return the media payload from decrypted bytes: skip the extension body, drop RTP padding.

    Raises
    ------
    MalformedPacket
        ``"extension"`` when the plaintext is shorter than the declared extension body, ``"padding"`` when the
        pad count (the last byte) is zero or runs into the extension body.
    """
    return _strip(header, plaintext, 4 * header.ext_words)


def _strip(header: RtpHeader, plaintext: bytes, start: int) -> bytes:
    end = len(plaintext)
    if start > end:
        raise MalformedPacket("extension", f"body of {start} bytes, {end} decrypted")
    if header.padding:
        pad = plaintext[-1] if end else 0
        if pad == 0 or pad > end - start:
            raise MalformedPacket("padding", f"pad count {pad} with {end - start} bytes after the extension")
        end -= pad
    if start == 0 and end == len(plaintext):
        return plaintext
    return plaintext[start:end]


def build_rtp_header(
    *,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload_type: int = OPUS_PAYLOAD_TYPE,
    marker: bool = False,
    csrcs: Sequence[int] = (),
    ext_profile: int | None = None,
    ext_words: int = 0,
    padding: bool = False,
) -> bytes:
    """Build the clear header: fixed header, CSRCs and, when ``ext_profile`` is given, the extension header word.

    ``ext_words`` is the length of the extension body in 32-bit words; the body (see :func:`build_extension_body`)
    belongs to the plaintext the caller encrypts, followed by the payload and, with ``padding``, the pad bytes
    whose last byte is their count.
    """
    if len(csrcs) > 15:
        raise ValueError("at most 15 CSRCs fit in an RTP header")
    if not 0 <= payload_type <= 0x7F:
        raise ValueError(f"payload type {payload_type} is not 7 bits")
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext_profile is not None else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | payload_type
    out = _FIXED.pack(b0, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
    if csrcs:
        out += _CSRC_STRUCTS[len(csrcs)].pack(*csrcs)
    if ext_profile is not None:
        out += _EXT_HEADER.pack(ext_profile, ext_words)
    return out


def _is_two_byte(profile: int) -> bool:
    return profile & 0xFFF0 == EXTENSION_PROFILE_TWO_BYTE


def build_extension_body(elements: Iterable[tuple[int, bytes]], profile: int = EXTENSION_PROFILE_ONE_BYTE) -> bytes:
    """Encode RFC 8285 header extension elements, zero-padded to whole 32-bit words.

    One-byte form (0xBEDE): ids 1-14, 1-16 bytes of data each. Two-byte form (0x1000-0x100F): ids 1-255, 0-255
    bytes each. The body length in words is ``len(result) // 4``, the ``ext_words`` of :func:`build_rtp_header`.
    """
    out = bytearray()
    if profile == EXTENSION_PROFILE_ONE_BYTE:
        for ident, data in elements:
            if not 1 <= ident <= 14 or not 1 <= len(data) <= 16:
                raise ValueError(f"one-byte element needs id 1-14 and 1-16 bytes, got id {ident}, {len(data)} bytes")
            out.append(ident << 4 | (len(data) - 1))
            out += data
    elif _is_two_byte(profile):
        for ident, data in elements:
            if not 1 <= ident <= 255 or len(data) > 255:
                raise ValueError(f"two-byte element needs id 1-255 and <= 255 bytes, got id {ident}, {len(data)}")
            out.append(ident)
            out.append(len(data))
            out += data
    else:
        raise ValueError(f"profile {profile:#06x} is neither the one-byte nor the two-byte element form")
    out += bytes(-len(out) % 4)
    return bytes(out)


def parse_extension_elements(profile: int, body: bytes) -> list[tuple[int, bytes]]:
    """Decode the elements of an RFC 8285 extension body; other profiles are opaque and give an empty list.

    Padding bytes (zero) between elements are skipped; a one-byte element with id 15 ends the list, as the RFC asks.

    Raises
    ------
    MalformedPacket
        ``"extension"`` when an element runs past the end of the body.
    """
    elements: list[tuple[int, bytes]] = []
    n = len(body)
    i = 0
    if profile == EXTENSION_PROFILE_ONE_BYTE:
        while i < n:
            b = body[i]
            if b == 0:
                i += 1
                continue
            ident = b >> 4
            if ident == 15:
                break
            size = (b & 0x0F) + 1
            if i + 1 + size > n:
                raise MalformedPacket("extension", f"element {ident} runs past the body")
            elements.append((ident, bytes(body[i + 1 : i + 1 + size])))
            i += 1 + size
    elif _is_two_byte(profile):
        while i < n:
            ident = body[i]
            if ident == 0:
                i += 1
                continue
            if i + 2 > n:
                raise MalformedPacket("extension", f"element {ident} has no length byte")
            size = body[i + 1]
            if i + 2 + size > n:
                raise MalformedPacket("extension", f"element {ident} runs past the body")
            elements.append((ident, bytes(body[i + 2 : i + 2 + size])))
            i += 2 + size
    return elements
