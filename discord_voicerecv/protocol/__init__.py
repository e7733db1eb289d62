"""Sans-I/O voice protocol: RTP/RTCP parsing and building, transport encryption, IP discovery.

Bytes in, values out: nothing here opens sockets, starts threads, reads clocks or imports discord.py, so every
function can be tested with plain bytes and fuzzed.
"""

from __future__ import annotations

from .ipdiscovery import build_request, build_response, is_request, is_response, parse_request, parse_response
from .rtcp import (
    Bye,
    RawRtcp,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    parse_rtcp,
    serialize_rtcp,
)
from .rtp import (
    OPUS_PAYLOAD_TYPE,
    RTP_HEADER_SIZE,
    RtpHeader,
    build_extension_body,
    build_rtp_header,
    is_rtcp,
    parse_extension_elements,
    parse_rtp_header,
    strip_payload,
)
from .transport import SUPPORTED_MODES, TransportCipher, make_cipher

__all__ = (
    "OPUS_PAYLOAD_TYPE",
    "RTP_HEADER_SIZE",
    "SUPPORTED_MODES",
    "Bye",
    "RawRtcp",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "RtpHeader",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "TransportCipher",
    "build_extension_body",
    "build_request",
    "build_response",
    "build_rtp_header",
    "is_request",
    "is_response",
    "is_rtcp",
    "make_cipher",
    "parse_extension_elements",
    "parse_request",
    "parse_response",
    "parse_rtcp",
    "parse_rtp_header",
    "serialize_rtcp",
    "strip_payload",
)
