"""The local Discord's UDP media relay: IP discovery and a selective forwarding unit (SFU) for RTP.

Every datagram from a member is authenticated with that member's transport cipher, then re-encrypted with each
other member's cipher and sent on, keeping the sender's SSRC, sequence and timestamp the way Discord's SFU does.
Packets that carry no header extension get Discord's one-byte (0xBEDE) extension with an audio-level element, so
receivers see X=1 as they do on real Discord. Simulated speakers inject their packets in-process through
:meth:`MediaRelay.forward`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass
from typing import cast

from ..errors import DecryptionFailed, MalformedPacket
from ..frames import OPUS_SILENCE
from ..protocol import ipdiscovery
from ..protocol.rtp import (
    EXTENSION_PROFILE_ONE_BYTE,
    RTP_HEADER_SIZE,
    RtpHeader,
    build_extension_body,
    build_rtp_header,
    is_rtcp,
    parse_rtp_header,
)
from ..protocol.transport import TransportCipher
from .link import Link, LinkConditions

__all__ = ("AUDIO_LEVEL_EXTENSION_ID", "MediaRelay", "RelayPeer", "RelayStats")

_log = logging.getLogger(__name__)

AUDIO_LEVEL_EXTENSION_ID = 1
"""One-byte extension element id the relay uses for the RFC 6464 client-to-mixer audio level."""

Address = tuple[str, int]


_KEEPALIVE_SIZE = 8


@dataclass(slots=True)
class RelayStats:
    """What the relay saw and did, for tests to compare with what members received."""

    datagrams: int = 0
    ip_discovery: int = 0
    rtp: int = 0
    rtcp: int = 0
    rtcp_decrypt_failures: int = 0
    malformed: int = 0
    unknown_ssrc: int = 0
    decrypt_failures: int = 0
    unannounced: int = 0
    """Packets dropped because their sender had not sent op5 SPEAKING yet (Discord requires it before media)."""
    injected: int = 0
    """Packets simulated speakers handed over in-process."""
    forwarded: int = 0
    """Packets offered to receivers' links (one per receiver per packet)."""
    keepalives: int = 0
    """8-byte UDP keepalives from members (Discord's clients send one every few seconds)."""


class RelayPeer:
    """One member as the relay knows it: SSRC, transport cipher, UDP address and downlink.

    ``cipher`` is ``None`` until the member selected a protocol; ``address`` is ``None`` until the member's first
    authenticated datagram or IP discovery (``declared_address``, from SELECT_PROTOCOL, is the fallback). A peer
    with ``receives=False`` (a simulated speaker) only sends. ``announced`` turns true with the member's first
    op5 SPEAKING; until then its media is dropped, as Discord does.
    """

    __slots__ = (
        "address",
        "announced",
        "cipher",
        "declared_address",
        "link",
        "packets_in",
        "receives",
        "ssrc",
        "user_id",
    )

    def __init__(self, user_id: int, ssrc: int, *, receives: bool = True) -> None:
        self.user_id = user_id
        self.ssrc = ssrc
        self.receives = receives
        self.cipher: TransportCipher | None = None
        self.address: Address | None = None
        self.declared_address: Address | None = None
        self.link: Link | None = None
        self.packets_in = 0
        self.announced = False

    @property
    def destination(self) -> Address | None:
        """Where the relay sends this member's media."""
        return self.address if self.address is not None else self.declared_address


class MediaRelay(asyncio.DatagramProtocol):
    """UDP endpoint of the local voice server.

    Parameters
    ----------
    link:
        Conditions applied to every receiving member's downlink unless :meth:`set_link` overrides them.
    """

    def __init__(self, *, link: LinkConditions | None = None) -> None:
        self.stats = RelayStats()
        self.default_link = link if link is not None else LinkConditions()
        self._peers: dict[int, RelayPeer] = {}
        self._by_ssrc: dict[int, RelayPeer] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- registry -------------------------------------------------------------------------------------------

    def add_peer(self, peer: RelayPeer, link: LinkConditions | None = None) -> None:
        """Start relaying to and from ``peer``; replaces a previous peer of the same user."""
        old = self._peers.get(peer.user_id)
        if old is not None:
            self.remove_peer(old.user_id)
        self._peers[peer.user_id] = peer
        self._by_ssrc[peer.ssrc] = peer
        if peer.receives:
            self.set_link(peer.user_id, link if link is not None else self.default_link)

    def remove_peer(self, user_id: int) -> RelayPeer | None:
        """Stop relaying for ``user_id``; its held-back packets are discarded."""
        peer = self._peers.pop(user_id, None)
        if peer is None:
            return None
        if self._by_ssrc.get(peer.ssrc) is peer:
            del self._by_ssrc[peer.ssrc]
        if peer.link is not None:
            peer.link.close()
        return peer

    def peer(self, user_id: int) -> RelayPeer | None:
        """The peer of ``user_id``, if relayed."""
        return self._peers.get(user_id)

    def send_raw(self, user_id: int, datagram: bytes) -> bool:
        """Send ``datagram`` to ``user_id`` from the relay's socket, bypassing its downlink conditions.

        discord.py connects its UDP socket to the voice server, so only datagrams from the server's address reach
        it: this is how tests play an attacker who forges that address. Returns False when there is nowhere to send.
        """
        peer = self._peers.get(user_id)
        if peer is None or peer.destination is None or self._transport is None:
            return False
        self._sendto(datagram, peer.destination)
        return True

    def change_ssrc(self, user_id: int, ssrc: int) -> None:
        """Relay ``user_id``'s media under ``ssrc`` from now on (a client that restarted its stream)."""
        peer = self._peers[user_id]
        if self._by_ssrc.get(peer.ssrc) is peer:
            del self._by_ssrc[peer.ssrc]
        peer.ssrc = ssrc
        self._by_ssrc[ssrc] = peer

    def set_link(self, user_id: int, conditions: LinkConditions) -> Link:
        """Replace the downlink conditions of ``user_id`` (stats start again from zero)."""
        peer = self._peers[user_id]
        if peer.link is not None:
            peer.link.close()

        def deliver(packet: bytes) -> None:
            self._sendto(packet, peer.destination)

        peer.link = Link(conditions, deliver, loop=self._loop, salt=user_id)
        return peer.link

    # -- asyncio.DatagramProtocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for peer in self._peers.values():
            if peer.link is not None:
                peer.link.close()

    def error_received(self, exc: Exception) -> None:
        _log.debug("voice relay socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.stats.datagrams += 1
        address: Address = (str(addr[0]), int(addr[1]))
        if ipdiscovery.is_request(data):
            self._ip_discovery(data, address)
        elif len(data) == _KEEPALIVE_SIZE:
            self.stats.keepalives += 1
        elif is_rtcp(data):
            self._rtcp(data, address)
        else:
            self._rtp(data, address)

    # -- media ----------------------------------------------------------------------------------------------

    def forward(self, sender: RelayPeer, header: RtpHeader, header_bytes: bytes, plaintext: bytes) -> None:
        """Send one authenticated packet of ``sender`` to every other receiving member.

        ``header_bytes`` is the clear part of the packet (``header.unencrypted_size`` bytes) and ``plaintext``
        what follows once transport encryption is off (extension body, payload, padding).
        """
        if not header.extension:
            header_bytes, plaintext = _with_audio_level(header, plaintext)
        stats = self.stats
        for peer in self._peers.values():
            if peer is sender or not peer.receives or peer.cipher is None or peer.link is None:
                continue
            if peer.destination is None:
                continue
            stats.forwarded += 1
            peer.link.send(peer.cipher.encrypt_rtp(header_bytes, plaintext))

    def inject(self, sender: RelayPeer, packet: bytes) -> None:
        """Take a simulated speaker's packet, a whole RTP packet in clear, as if it arrived and authenticated."""
        stats = self.stats
        stats.injected += 1
        try:
            header = parse_rtp_header(packet)
        except MalformedPacket:
            stats.malformed += 1
            return
        sender.packets_in += 1
        if not sender.announced:
            stats.unannounced += 1
            return
        clear = header.unencrypted_size
        self.forward(sender, header, packet[:clear], packet[clear:])

    def _rtp(self, data: bytes, address: Address) -> None:
        stats = self.stats
        stats.rtp += 1
        try:
            header = parse_rtp_header(data)
        except MalformedPacket:
            stats.malformed += 1
            return
        peer = self._by_ssrc.get(header.ssrc)
        if peer is None or peer.cipher is None:
            stats.unknown_ssrc += 1
            return
        try:
            header, plaintext = peer.cipher.open_rtp(data, header)
        except (DecryptionFailed, MalformedPacket):
            stats.decrypt_failures += 1
            return
        peer.address = address
        peer.packets_in += 1
        if not peer.announced:
            stats.unannounced += 1
            return
        clear = data[: RTP_HEADER_SIZE + 4 * len(header.csrcs)]
        if header.extension:
            clear += struct.pack(">HH", header.ext_profile or 0, header.ext_words)
        self.forward(peer, header, clear, plaintext)

    def _rtcp(self, data: bytes, address: Address) -> None:
        stats = self.stats
        stats.rtcp += 1
        if len(data) < 8:
            stats.malformed += 1
            return
        peer = self._by_ssrc.get(int.from_bytes(data[4:8], "big"))
        if peer is None or peer.cipher is None:
            stats.unknown_ssrc += 1
            return
        try:
            peer.cipher.decrypt_rtcp(data)
        except (DecryptionFailed, MalformedPacket):
            stats.rtcp_decrypt_failures += 1
            return
        peer.address = address

    def _ip_discovery(self, data: bytes, address: Address) -> None:
        try:
            ssrc = ipdiscovery.parse_request(data)
        except MalformedPacket:
            self.stats.malformed += 1
            return
        self.stats.ip_discovery += 1
        peer = self._by_ssrc.get(ssrc)
        if peer is not None:
            peer.address = address
        self._sendto(ipdiscovery.build_response(ssrc, address[0], address[1]), address)

    def _sendto(self, packet: bytes, address: Address | None) -> None:
        if self._transport is None or address is None or self._transport.is_closing():
            return
        self._transport.sendto(packet, address)


def _with_audio_level(header: RtpHeader, plaintext: bytes) -> tuple[bytes, bytes]:
    """Rebuild a packet without extension so it carries the audio-level element Discord's SFU adds."""
    silent = plaintext == OPUS_SILENCE
    level = 127 if silent else 0x80 | 30
    body = build_extension_body([(AUDIO_LEVEL_EXTENSION_ID, bytes((level,)))], EXTENSION_PROFILE_ONE_BYTE)
    clear = build_rtp_header(
        sequence=header.sequence,
        timestamp=header.timestamp,
        ssrc=header.ssrc,
        payload_type=header.payload_type,
        marker=header.marker,
        csrcs=header.csrcs,
        ext_profile=EXTENSION_PROFILE_ONE_BYTE,
        ext_words=len(body) // 4,
        padding=header.padding,
    )
    return clear, body + plaintext
