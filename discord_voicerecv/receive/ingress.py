"""Ingress: one UDP datagram in, an authenticated and decrypted RTP packet (or RTCP packets) out.

Every drop is counted under its reason. Nothing here looks up or keeps anything per SSRC: a forged packet is refused
by authentication before the SSRC it names can cost memory.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import DecryptionFailed, MalformedPacket
from ..protocol.ipdiscovery import PACKET_SIZE as _IP_DISCOVERY_SIZE
from ..protocol.ipdiscovery import is_response as _is_ip_discovery
from ..protocol.rtcp import RtcpPacket, parse_rtcp
from ..protocol.rtp import OPUS_PAYLOAD_TYPE, RTP_HEADER_SIZE, RtpHeader, is_rtcp, parse_rtp_header
from ..protocol.transport import TransportCipher, make_cipher
from .stats import ReceiveStats

__all__ = ("MAX_DATAGRAM", "Ingress", "RtpPacket")

MAX_DATAGRAM = 1500
"""Datagrams above this size are not voice and are dropped unparsed."""
_USUAL_BYTE0 = 0x90
"""RTP version 2, extension bit set, no padding, no CSRC: every packet Discord relays."""
_USUAL_HEADER = struct.Struct(">HIIxxH")
"""Sequence, timestamp, SSRC and the extension length in words, read from byte 2 of such a packet."""
_USUAL_CLEAR = RTP_HEADER_SIZE + 4
_USUAL_MIN_SIZE = _USUAL_CLEAR + 20
"""Clear header, AEAD tag and nonce counter: anything shorter takes the general path and is refused there."""
_PREVIOUS_KEY_PACKETS = 50
"""After a key change, packets that fail with the new key are tried with the previous one until this many packets
authenticated with the new key: datagrams sealed just before the change may still be queued."""


@dataclass(slots=True)
class RtpPacket:
    """An authenticated Opus packet with its transport encryption removed (the DAVE layer may remain)."""

    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes
    arrival: float


class Ingress:
    """Classifies, authenticates and decrypts datagrams with the current transport key.

    ``ignored`` holds SSRCs whose packets are dropped after authentication (our own).
    """

    __slots__ = ("_cipher", "_previous", "_previous_left", "_stats", "ignored")

    def __init__(self, stats: ReceiveStats) -> None:
        self._stats = stats
        self._cipher: TransportCipher | None = None
        self._previous: TransportCipher | None = None
        self._previous_left = 0
        self.ignored: set[int] = set()

    def set_transport(self, mode: str, secret_key: bytes | Sequence[int]) -> None:
        """Use a new transport mode and key.

        Raises
        ------
        UnsupportedMode
            When ``mode`` is not implemented.
        """
        cipher = make_cipher(mode, bytes(secret_key))
        self._previous, self._previous_left = self._cipher, _PREVIOUS_KEY_PACKETS
        self._cipher = cipher

    def open(self, data: bytes, arrival: float) -> RtpPacket | list[RtcpPacket] | None:
        """The RTP packet or the RTCP packets in ``data``; None when it was dropped (counted)."""
        stats = self._stats
        size = len(data)
        received = stats.received
        received.packets += 1
        received.bytes += size
        cipher = self._cipher
        if (
            _USUAL_MIN_SIZE <= size <= MAX_DATAGRAM
            and data[0] == _USUAL_BYTE0
            and data[1] & 0x7F == OPUS_PAYLOAD_TYPE
            and cipher is not None
            and cipher.clear_extension_header
        ):
            # Discord's layout in the rtpsize modes: no CSRC, no padding, a clear extension header word.
            sequence, timestamp, ssrc, ext_words = _USUAL_HEADER.unpack_from(data, 2)
            try:
                payload: bytes | None = cipher.open_unpadded(data, _USUAL_CLEAR, 4 * ext_words)
            except DecryptionFailed:
                payload = None
            except MalformedPacket as exc:
                stats.incr("malformed:" + exc.reason)
                return None
            return self._packet(data, None, ssrc, sequence, timestamp, payload, arrival)
        if size == _IP_DISCOVERY_SIZE and _is_ip_discovery(data):
            stats.incr("ip_discovery")
            return None
        if size > MAX_DATAGRAM:
            stats.incr("malformed:oversized")
            return None
        if is_rtcp(data):
            return self._open_rtcp(data, cipher)
        try:
            header = parse_rtp_header(data)
        except MalformedPacket as exc:
            stats.incr("malformed:" + exc.reason)
            return None
        if header.payload_type != OPUS_PAYLOAD_TYPE:
            stats.incr("ignored_payload_type")
            return None
        if cipher is None:
            stats.incr("no_transport_key")
            return None
        try:
            payload = cipher.open_payload(data, header)
        except DecryptionFailed:
            payload = None
        except MalformedPacket as exc:
            stats.incr("malformed:" + exc.reason)
            return None
        return self._packet(data, header, header.ssrc, header.sequence, header.timestamp, payload, arrival)

    def _packet(
        self,
        data: bytes,
        header: RtpHeader | None,
        ssrc: int,
        sequence: int,
        timestamp: int,
        payload: bytes | None,
        arrival: float,
    ) -> RtpPacket | None:
        """A packet the current key opened (``payload``) or did not (``None``: the previous key may), unless its
        SSRC is ignored or nothing is left in it."""
        if payload is None:
            payload = self._open_previous(data, header if header is not None else parse_rtp_header(data))
            if payload is None:
                return None
        elif self._previous is not None:
            self._count_previous()
        if ssrc in self.ignored:
            self._stats.incr("ignored_ssrc")
            return None
        if not payload:
            self._stats.incr("malformed:empty")
            return None
        return RtpPacket(ssrc, sequence, timestamp, payload, arrival)

    def _count_previous(self) -> None:
        """One more packet opened with the new key; the previous one is dropped after enough of them."""
        self._previous_left -= 1
        if self._previous_left <= 0:
            self._previous = None

    def _open_previous(self, data: bytes, header: RtpHeader) -> bytes | None:
        """The payload of a packet the current key refused, opened with the previous key; None when that fails too
        (counted)."""
        previous = self._previous
        try:
            if previous is None:
                self._stats.incr("decrypt_failed")
                return None
            return previous.open_payload(data, header)
        except DecryptionFailed:
            self._stats.incr("decrypt_failed")
            return None
        except MalformedPacket as exc:
            self._stats.incr("malformed:" + exc.reason)
            return None

    def _open_rtcp(self, data: bytes, cipher: TransportCipher | None) -> list[RtcpPacket] | None:
        stats = self._stats
        if cipher is None:
            stats.incr("no_transport_key")
            return None
        try:
            packets = parse_rtcp(cipher.decrypt_rtcp(data))
        except DecryptionFailed:
            stats.incr("decrypt_failed")
            return None
        except MalformedPacket as exc:
            stats.incr("malformed:rtcp_" + exc.reason)
            return None
        stats.incr("rtcp")
        return packets
