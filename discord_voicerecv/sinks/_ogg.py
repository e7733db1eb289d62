"""Ogg pages (RFC 3533) carrying an Opus stream (RFC 7845): a streaming writer."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import SinkError

__all__ = (
    "CRC_OFFSET",
    "FLAG_BOS",
    "FLAG_CONTINUED",
    "FLAG_EOS",
    "PAGE_HEADER",
    "OggOpusWriter",
    "build_page",
    "ogg_crc",
    "opus_head",
    "opus_tags",
)

FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04

PAGE_HEADER = struct.Struct("<4sBBqIIIB")
"""An Ogg page header: capture pattern, version, flags, granule, serial, sequence, CRC, segment count."""
CRC_OFFSET = 22
_MAX_SEGMENTS = 255
_MAX_PACKET = _MAX_SEGMENTS * 255 - 1
_REVERSED_BYTES = bytes(int(f"{n:08b}"[::-1], 2) for n in range(256))


def ogg_crc(data: bytes | bytearray) -> int:
    """The CRC-32 of an Ogg page: polynomial 0x04C11DB7, not reflected, zero initial value, no final XOR.

    zlib computes the reflected form of the same polynomial; feeding it bit-reversed bytes (with its pre- and
    post-inversion cancelled) and reversing the result gives the Ogg checksum at C speed.
    """
    reflected = zlib.crc32(bytes(data).translate(_REVERSED_BYTES), 0xFFFF_FFFF) ^ 0xFFFF_FFFF
    return int(f"{reflected:032b}"[::-1], 2)


def build_page(flags: int, granule: int, serial: int, sequence: int, packets: Sequence[bytes]) -> bytes:
    """One Ogg page holding ``packets`` whole (at most 255 lacing values in all), checksum included."""
    lacing = bytearray()
    for packet in packets:
        if len(packet) > _MAX_PACKET:
            raise ValueError(f"a {len(packet)}-byte packet does not fit in one Ogg page")
        lacing += b"\xff" * (len(packet) // 255) + bytes((len(packet) % 255,))
    if len(lacing) > _MAX_SEGMENTS:
        raise ValueError("too many packets for one Ogg page")
    page = bytearray(PAGE_HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing)))
    page += lacing
    for packet in packets:
        page += packet
    page[CRC_OFFSET : CRC_OFFSET + 4] = ogg_crc(page).to_bytes(4, "little")
    return bytes(page)


def opus_head(*, channels: int = 2, pre_skip: int = 0, input_rate: int = 48_000) -> bytes:
    """The identification header (RFC 7845 section 5.1), channel mapping family 0, no output gain."""
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, input_rate, 0, 0)


def opus_tags(vendor: str, comments: Sequence[str] = ()) -> bytes:
    """The comment header (RFC 7845 section 5.2): ``comments`` are ``KEY=value`` strings."""
    out = bytearray(b"OpusTags")
    encoded = vendor.encode()
    out += struct.pack("<I", len(encoded)) + encoded + struct.pack("<I", len(comments))
    for comment in comments:
        encoded = comment.encode()
        out += struct.pack("<I", len(encoded)) + encoded
    return bytes(out)


def _lacing_values(packet: bytes) -> int:
    return len(packet) // 255 + 1


class OggOpusWriter:
    """An Ogg Opus file written packet by packet, pages on disk as soon as :meth:`flush` is called.

    Every page holds whole packets. The granule position of a page is the number of 48 kHz samples decoded up to
    the end of its last packet (``pre_skip`` is 0: the file starts exactly at its first packet). A file cut short
    after a :meth:`flush` is a valid stream up to that point; :meth:`close` marks the last page end-of-stream.
    """

    __slots__ = (
        "_file",
        "_flushed",
        "_last_page",
        "_last_page_at",
        "_page_sequence",
        "_pending",
        "_segments",
        "path",
        "samples",
        "serial",
    )

    def __init__(
        self,
        path: Path,
        *,
        serial: int,
        channels: int = 2,
        pre_skip: int = 0,
        vendor: str = "",
        comments: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.serial = serial & 0xFFFF_FFFF
        self.samples = 0
        """Samples per channel of every packet added so far."""
        self._pending: list[bytes] = []
        self._segments = 0
        self._page_sequence = 0
        self._flushed = 0
        self._last_page = b""
        self._last_page_at = 0
        try:
            self._file: BinaryIO | None = open(path, "wb")  # noqa: SIM115
        except OSError as exc:
            raise self._error(exc) from exc
        self._write_page(FLAG_BOS, 0, [opus_head(channels=channels, pre_skip=pre_skip)])
        self._write_page(0, 0, [opus_tags(vendor, comments)])
        self.flush()

    @property
    def flushed_samples(self) -> int:
        """The granule position of the last page written: the end of the audio a reader sees after a crash."""
        return self._flushed

    def add(self, packet: bytes, samples: int) -> None:
        """Append one Opus packet decoding to ``samples`` samples per channel."""
        lacing = _lacing_values(packet)
        if self._segments + lacing > _MAX_SEGMENTS:
            self._emit()
        self._pending.append(packet)
        self._segments += lacing
        self.samples += samples

    def flush(self) -> None:
        """Put the pending packets on a page and hand everything written to the operating system."""
        if self._pending:
            self._emit()
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                raise self._error(exc) from exc

    def close(self, end: int | None = None) -> None:
        """Write the last page, flagged end-of-stream, and close the file. Closing twice does nothing.

        ``end`` trims the stream to that many samples (RFC 7845 end trimming); it must not cut into pages already
        flushed, and is ignored when it is not shorter than :attr:`samples`.
        """
        file = self._file
        if file is None:
            return
        try:
            if self._pending:
                granule = self.samples if end is None else max(self._flushed, min(end, self.samples))
                self._write_page(FLAG_EOS, granule, self._pending)
                self._pending = []
            else:
                self._mark_last_page_eos(file)
            file.flush()
        except OSError as exc:
            raise self._error(exc) from exc
        finally:
            self._file = None
            try:
                file.close()
            except OSError as exc:
                raise self._error(exc) from exc

    def _emit(self) -> None:
        self._write_page(0, self.samples, self._pending)
        self._pending = []
        self._segments = 0

    def _write_page(self, flags: int, granule: int, packets: Sequence[bytes]) -> None:
        file = self._file
        if file is None:
            raise SinkError(str(self.path), "file already closed")
        page = build_page(flags, granule, self.serial, self._page_sequence, packets)
        try:
            self._last_page_at = file.tell()
            file.write(page)
        except OSError as exc:
            raise self._error(exc) from exc
        self._page_sequence += 1
        self._last_page = page
        self._flushed = granule

    def _mark_last_page_eos(self, file: BinaryIO) -> None:
        page = bytearray(self._last_page)
        page[5] |= FLAG_EOS
        page[CRC_OFFSET : CRC_OFFSET + 4] = bytes(4)
        page[CRC_OFFSET : CRC_OFFSET + 4] = ogg_crc(page).to_bytes(4, "little")
        file.seek(self._last_page_at)
        file.write(page)

    def _error(self, exc: OSError) -> SinkError:
        return SinkError(str(self.path), exc.strerror or str(exc))
