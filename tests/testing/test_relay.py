"""The UDP media relay on its own: IP discovery, authentication, re-encryption per receiver, header extension."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from discord_voicerecv.frames import OPUS_SILENCE
from discord_voicerecv.protocol import ipdiscovery
from discord_voicerecv.protocol.rtp import (
    EXTENSION_PROFILE_ONE_BYTE,
    build_extension_body,
    build_rtp_header,
    parse_extension_elements,
    parse_rtp_header,
    strip_payload,
)
from discord_voicerecv.protocol.transport import TransportCipher, make_cipher
from discord_voicerecv.testing.link import LinkConditions
from discord_voicerecv.testing.relay import AUDIO_LEVEL_EXTENSION_ID, MediaRelay, RelayPeer


@dataclass
class _Endpoint(asyncio.DatagramProtocol):
    """A member's UDP socket: its own cipher (same key as the relay's peer) and what arrived."""

    peer: RelayPeer
    cipher: TransportCipher
    received: list[bytes] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received.append(data)
        self.arrived.set()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def wait(self, count: int, timeout: float = 2.0) -> list[bytes]:
        async def until() -> None:
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(until(), timeout)
        return self.received

    def open(self, packet: bytes) -> tuple[int, int, int, bytes, list[tuple[int, bytes]], bool]:
        header, plaintext = self.cipher.open_rtp(packet, parse_rtp_header(packet))
        elements = parse_extension_elements(header.ext_profile or 0, plaintext[: header.ext_body_size])
        return (
            header.ssrc,
            header.sequence,
            header.timestamp,
            strip_payload(header, plaintext),
            elements,
            header.extension,
        )


class _Rig:
    def __init__(self, relay: MediaRelay, address: tuple[str, int]) -> None:
        self.relay = relay
        self.address = address
        self.endpoints: list[_Endpoint] = []

    async def member(self, user_id: int, ssrc: int, mode: str, *, link: LinkConditions | None = None) -> _Endpoint:
        key = os.urandom(32)
        peer = RelayPeer(user_id, ssrc)
        peer.cipher = make_cipher(mode, key)
        peer.announced = True  # as after its op5
        self.relay.add_peer(peer, link)
        loop = asyncio.get_running_loop()
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(peer, make_cipher(mode, key)), remote_addr=self.address
        )
        self.endpoints.append(endpoint)
        endpoint.send(ipdiscovery.build_request(ssrc))
        await endpoint.wait(1)
        endpoint.received.clear()
        return endpoint


@pytest.fixture
async def rig() -> AsyncIterator[_Rig]:
    relay = MediaRelay()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    rig = _Rig(relay, transport.get_extra_info("sockname")[:2])
    yield rig
    for endpoint in rig.endpoints:
        if endpoint.transport is not None:
            endpoint.transport.close()
    transport.close()


def _packet(cipher: TransportCipher, ssrc: int, sequence: int, payload: bytes, **extra: object) -> bytes:
    header = build_rtp_header(sequence=sequence, timestamp=sequence * 960, ssrc=ssrc, **extra)  # type: ignore[arg-type]
    return cipher.encrypt_rtp(header, payload)


async def test_ip_discovery_reports_the_senders_address_and_learns_it(rig: _Rig) -> None:
    loop = asyncio.get_running_loop()
    peer = RelayPeer(5, 4242)
    rig.relay.add_peer(peer)
    _, endpoint = await loop.create_datagram_endpoint(
        lambda: _Endpoint(peer, make_cipher("xsalsa20_poly1305", bytes(32))), remote_addr=rig.address
    )
    rig.endpoints.append(endpoint)
    endpoint.send(ipdiscovery.build_request(4242))
    (reply,) = await endpoint.wait(1)
    assert endpoint.transport is not None
    local = endpoint.transport.get_extra_info("sockname")[:2]
    assert ipdiscovery.is_response(reply)
    assert ipdiscovery.parse_response(reply) == local
    assert int.from_bytes(reply[4:8], "big") == 4242
    assert peer.address == local
    assert rig.relay.stats.ip_discovery == 1


@pytest.mark.parametrize(
    ("sender_mode", "receiver_mode"),
    [
        ("aead_xchacha20_poly1305_rtpsize", "aead_aes256_gcm_rtpsize"),
        ("aead_aes256_gcm_rtpsize", "xsalsa20_poly1305_lite"),
        ("xsalsa20_poly1305", "xsalsa20_poly1305_suffix"),
    ],
)
async def test_forwards_reencrypted_keeping_ssrc_sequence_timestamp(
    rig: _Rig, sender_mode: str, receiver_mode: str
) -> None:
    alice = await rig.member(1, 111, sender_mode)
    bob = await rig.member(2, 222, receiver_mode)
    payloads = [os.urandom(40 + i) for i in range(5)]
    for i, payload in enumerate(payloads):
        alice.send(_packet(alice.cipher, 111, 1000 + i, payload))
    received = await bob.wait(5)
    opened = [bob.open(packet) for packet in received]
    assert [(o[0], o[1], o[2]) for o in opened] == [(111, 1000 + i, (1000 + i) * 960) for i in range(5)]
    assert [o[3] for o in opened] == payloads
    assert all(o[5] for o in opened), "the relay adds a header extension like Discord's SFU"
    assert all(o[4][0][0] == AUDIO_LEVEL_EXTENSION_ID for o in opened)
    assert alice.received == [], "a sender does not get its own packets back"
    assert rig.relay.stats.forwarded == 5
    assert alice.peer.packets_in == 5


async def test_keeps_the_senders_own_extension_and_padding(rig: _Rig) -> None:
    alice = await rig.member(1, 111, "aead_aes256_gcm_rtpsize")
    bob = await rig.member(2, 222, "aead_xchacha20_poly1305_rtpsize")
    body = build_extension_body([(3, b"\x01\x02\x03"), (5, b"\xaa")])
    header = build_rtp_header(
        sequence=9,
        timestamp=99,
        ssrc=111,
        ext_profile=EXTENSION_PROFILE_ONE_BYTE,
        ext_words=len(body) // 4,
        padding=True,
    )
    alice.send(alice.cipher.encrypt_rtp(header, body + b"opus!" + b"\x00\x00\x03"))
    (packet,) = await bob.wait(1)
    ssrc, sequence, timestamp, payload, elements, extension = bob.open(packet)
    assert extension
    assert (ssrc, sequence, timestamp, payload) == (111, 9, 99, b"opus!")
    assert elements == [(3, b"\x01\x02\x03"), (5, b"\xaa")]
    assert parse_rtp_header(packet).padding


async def test_silence_gets_a_silent_audio_level(rig: _Rig) -> None:
    alice = await rig.member(1, 111, "aead_aes256_gcm_rtpsize")
    bob = await rig.member(2, 222, "aead_aes256_gcm_rtpsize")
    alice.send(_packet(alice.cipher, 111, 1, OPUS_SILENCE))
    alice.send(_packet(alice.cipher, 111, 2, b"\x78voice"))
    silent, loud = [bob.open(p)[4][0][1][0] for p in await bob.wait(2)]
    assert silent == 127
    assert loud & 0x80 and loud & 0x7F < 127


async def test_forged_and_unknown_packets_are_counted_and_dropped(rig: _Rig) -> None:
    alice = await rig.member(1, 111, "aead_aes256_gcm_rtpsize")
    bob = await rig.member(2, 222, "aead_aes256_gcm_rtpsize")
    forger = make_cipher("aead_aes256_gcm_rtpsize", os.urandom(32))
    alice.send(_packet(forger, 111, 1, b"forged"))
    alice.send(_packet(alice.cipher, 999, 2, b"nobody"))
    alice.send(b"\x00\x01")
    alice.send(_packet(alice.cipher, 111, 3, b"real"))
    (packet,) = await bob.wait(1)
    assert bob.open(packet)[3] == b"real"
    stats = rig.relay.stats
    assert (stats.decrypt_failures, stats.unknown_ssrc, stats.malformed, stats.forwarded) == (1, 1, 1, 1)


async def test_rtcp_is_authenticated_and_counted_not_forwarded(rig: _Rig) -> None:
    alice = await rig.member(1, 111, "aead_aes256_gcm_rtpsize")
    bob = await rig.member(2, 222, "aead_aes256_gcm_rtpsize")
    receiver_report = bytes((0x80, 201)) + (1).to_bytes(2, "big") + (111).to_bytes(4, "big")
    alice.send(alice.cipher.encrypt_rtcp(receiver_report))
    alice.send(make_cipher("aead_aes256_gcm_rtpsize", os.urandom(32)).encrypt_rtcp(receiver_report))
    alice.send(_packet(alice.cipher, 111, 1, b"after"))
    await bob.wait(1)
    assert rig.relay.stats.rtcp == 2
    assert rig.relay.stats.rtcp_decrypt_failures == 1
    assert len(bob.received) == 1


async def test_address_follows_the_latest_authenticated_packet(rig: _Rig) -> None:
    alice = await rig.member(1, 111, "aead_aes256_gcm_rtpsize")
    bob = await rig.member(2, 222, "aead_aes256_gcm_rtpsize")
    loop = asyncio.get_running_loop()
    _, moved = await loop.create_datagram_endpoint(lambda: _Endpoint(bob.peer, bob.cipher), remote_addr=rig.address)
    rig.endpoints.append(moved)
    moved.send(_packet(bob.cipher, 222, 1, b"from the new port"))
    await alice.wait(1)
    alice.send(_packet(alice.cipher, 111, 1, b"to bob"))
    (packet,) = await moved.wait(1)
    assert moved.open(packet)[3] == b"to bob"
    assert bob.received == []


async def test_injected_packets_reach_everyone_but_the_injector(rig: _Rig) -> None:
    bob = await rig.member(2, 222, "aead_aes256_gcm_rtpsize")
    carol = await rig.member(3, 333, "xsalsa20_poly1305_lite")
    speaker = RelayPeer(9, 999, receives=False)
    rig.relay.add_peer(speaker)
    rig.relay.inject(speaker, build_rtp_header(sequence=4, timestamp=7, ssrc=999) + b"before its op5")
    assert rig.relay.stats.unannounced == 1
    speaker.announced = True
    rig.relay.inject(speaker, build_rtp_header(sequence=5, timestamp=7, ssrc=999) + b"clear opus")
    for endpoint in (bob, carol):
        (packet,) = await endpoint.wait(1)
        assert endpoint.open(packet)[:4] == (999, 5, 7, b"clear opus")
    assert rig.relay.stats.injected == 2


async def test_downlink_loss_matches_what_the_receiver_misses(rig: _Rig) -> None:
    alice = await rig.member(1, 111, "aead_aes256_gcm_rtpsize")
    bob = await rig.member(2, 222, "aead_aes256_gcm_rtpsize", link=LinkConditions(loss=0.25, seed=12))
    carol = await rig.member(3, 333, "aead_aes256_gcm_rtpsize")
    for i in range(100):
        alice.send(_packet(alice.cipher, 111, i, i.to_bytes(2, "big")))
    await carol.wait(100)
    assert bob.peer.link is not None
    stats = bob.peer.link.stats
    await bob.wait(100 - stats.dropped)
    await asyncio.sleep(0.05)
    got = sorted(bob.open(p)[1] for p in bob.received)
    missing = sorted(set(range(100)) - set(got))
    assert len(got) == 100 - stats.dropped
    assert missing == stats.dropped_indices
    assert stats.dropped > 5


async def test_removed_peer_gets_nothing_and_is_unknown(rig: _Rig) -> None:
    alice = await rig.member(1, 111, "aead_aes256_gcm_rtpsize")
    bob = await rig.member(2, 222, "aead_aes256_gcm_rtpsize")
    carol = await rig.member(3, 333, "aead_aes256_gcm_rtpsize")
    assert rig.relay.remove_peer(2) is bob.peer
    alice.send(_packet(alice.cipher, 111, 1, b"x"))
    bob.send(_packet(bob.cipher, 222, 1, b"y"))
    await carol.wait(1)
    await asyncio.sleep(0.02)
    assert bob.received == []
    assert len(carol.received) == 1
    assert rig.relay.stats.unknown_ssrc == 1
