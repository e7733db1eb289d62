"""Read Ogg files back, page by page and packet by packet, to check what the Ogg Opus sink wrote."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..sinks._ogg import CRC_OFFSET, FLAG_CONTINUED, PAGE_HEADER, ogg_crc

__all__ = ("OggPage", "iter_pages", "read_packets")


@dataclass(frozen=True, slots=True)
class OggPage:
    """One page as read back: header fields and the packets (or packet parts) it carries."""

    flags: int
    granule: int
    serial: int
    sequence: int
    segments: tuple[bytes, ...]
    """The page's data split at lacing boundaries; the last one continues on the next page when ``complete`` is
    False."""
    complete: bool


def iter_pages(data: bytes) -> Iterator[OggPage]:
    """Parse the pages of an Ogg file, checking capture patterns and checksums.

    Raises
    ------
    ValueError
        A page is cut short, lacks ``OggS`` or fails its checksum.
    """
    pos = 0
    while pos < len(data):
        if len(data) - pos < PAGE_HEADER.size:
            raise ValueError(f"truncated page header at byte {pos}")
        magic, version, flags, granule, serial, sequence, crc, count = PAGE_HEADER.unpack_from(data, pos)
        if magic != b"OggS" or version != 0:
            raise ValueError(f"no Ogg page at byte {pos}")
        lacing = data[pos + PAGE_HEADER.size : pos + PAGE_HEADER.size + count]
        body = pos + PAGE_HEADER.size + count
        end = body + sum(lacing)
        if len(lacing) != count or end > len(data):
            raise ValueError(f"truncated page at byte {pos}")
        page = bytearray(data[pos:end])
        page[CRC_OFFSET : CRC_OFFSET + 4] = bytes(4)
        if ogg_crc(page) != crc:
            raise ValueError(f"bad checksum in page {sequence} at byte {pos}")
        segments: list[bytes] = []
        start = run = body
        for value in lacing:
            run += value
            if value < 255:
                segments.append(data[start:run])
                start = run
        complete = not lacing or lacing[-1] < 255
        if not complete:
            segments.append(data[start:run])
        yield OggPage(flags, granule, serial, sequence, tuple(segments), complete)
        pos = end


def read_packets(data: bytes) -> list[tuple[bytes, int]]:
    """Every packet of a single-stream Ogg file with the granule position of the page it ends on."""
    packets: list[tuple[bytes, int]] = []
    partial = b""
    for page in iter_pages(data):
        parts = list(page.segments)
        if partial:
            if not page.flags & FLAG_CONTINUED or not parts:
                raise ValueError(f"page {page.sequence} does not continue the previous packet")
            parts[0] = partial + parts[0]
            partial = b""
        if not page.complete:
            partial = parts.pop()
        packets.extend((packet, page.granule) for packet in parts)
    return packets
