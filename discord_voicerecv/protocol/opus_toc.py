"""The Opus table of contents (RFC 6716 section 3.1): how long a packet plays, read from its first bytes alone."""

from __future__ import annotations

__all__ = ("MAX_PACKET_SAMPLES", "frame_samples", "packet_samples")

MAX_PACKET_SAMPLES = 5760
"""Samples per channel in the longest valid Opus packet (120 ms at 48 kHz)."""

_CONFIG_FRAME_SAMPLES = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
"""Samples per channel at 48 kHz of one frame, by configuration (the TOC's top five bits): SILK NB/MB/WB
10-60 ms, hybrid SWB/FB 10-20 ms, CELT NB/WB/SWB/FB 2.5-20 ms."""
_TOC_SAMPLES = tuple(
    0 if toc & 3 == 3 else _CONFIG_FRAME_SAMPLES[toc >> 3] * (1 if toc & 3 == 0 else 2) for toc in range(256)
)
"""Samples of a code 0 (one frame), 1 or 2 (two frames) packet by its TOC byte; 0 for code 3 (count in byte 1)."""


def frame_samples(toc: int) -> int:
    """Samples per channel at 48 kHz of one frame of the configuration in TOC byte ``toc``."""
    return _CONFIG_FRAME_SAMPLES[toc >> 3]


def packet_samples(packet: bytes) -> int | None:
    """Samples per channel at 48 kHz that ``packet`` decodes to (960 for a 20 ms packet).

    None when the TOC is invalid: an empty packet, code 3 without its frame-count byte, or more than 120 ms. A
    code 3 packet that declares zero frames decodes to 0 samples, as libopus says.
    """
    if not packet:
        return None
    known = _TOC_SAMPLES[packet[0]]
    if known:
        return known
    if len(packet) < 2:
        return None
    samples = (packet[1] & 0x3F) * _CONFIG_FRAME_SAMPLES[packet[0] >> 3]
    return samples if samples <= MAX_PACKET_SAMPLES else None
