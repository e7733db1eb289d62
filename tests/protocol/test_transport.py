"""Transport encryption: round trips in every mode, interop with discord.py's sender, tamper and fuzz checks."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from discord_voicerecv.errors import DecryptionFailed, MalformedPacket, UnsupportedMode
from discord_voicerecv.protocol.rtcp import ReportBlock, build_receiver_report, build_sender_report, parse_rtcp
from discord_voicerecv.protocol.rtp import (
    build_extension_body,
    build_rtp_header,
    parse_rtp_header,
    strip_payload,
)
from discord_voicerecv.protocol.transport import SUPPORTED_MODES, TransportCipher, make_cipher

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
RTPSIZE_MODES = ("aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize")
DISCORD_PY_MODES = (
    "aead_xchacha20_poly1305_rtpsize",
    "xsalsa20_poly1305_lite",
    "xsalsa20_poly1305_suffix",
    "xsalsa20_poly1305",
)

u32 = st.integers(0, 0xFFFFFFFF)


def _receive(cipher: TransportCipher, packet: bytes) -> bytes:
    return cipher.open_payload(packet, parse_rtp_header(packet))


def _clear_size(mode: str, header: bytes) -> int:
    """Bytes in clear: the whole clear header in the rtpsize modes; the legacy ones seal the extension word too."""
    return len(header) if mode in RTPSIZE_MODES else 12 + 4 * (header[0] & 0x0F)


@st.composite
def rtp_parts(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """A clear header, the plaintext to seal after it (extension body + payload + padding), and the payload."""
    use_ext = draw(st.booleans())
    body = b""
    if use_ext:
        elements = draw(st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=8))
        body = build_extension_body(elements)
    pad = draw(st.integers(0, 64))
    payload = draw(st.binary(max_size=400))
    header = build_rtp_header(
        sequence=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(u32),
        ssrc=draw(u32),
        marker=draw(st.booleans()),
        csrcs=draw(st.lists(u32, max_size=15)),
        ext_profile=0xBEDE if use_ext else None,
        ext_words=len(body) // 4,
        padding=pad > 0,
    )
    padding = bytes(pad - 1) + bytes((pad,)) if pad else b""
    return header, body + payload + padding, payload


def test_supported_modes_prefer_aes_gcm_and_end_with_plain_xsalsa() -> None:
    assert SUPPORTED_MODES == (
        "aead_aes256_gcm_rtpsize",
        "aead_xchacha20_poly1305_rtpsize",
        "xsalsa20_poly1305_lite",
        "xsalsa20_poly1305_suffix",
        "xsalsa20_poly1305",
    )
    assert all(make_cipher(mode, KEY).mode == mode for mode in SUPPORTED_MODES)


def test_make_cipher_rejects_unknown_modes_and_bad_keys() -> None:
    with pytest.raises(UnsupportedMode) as info:
        make_cipher("aead_aes256_gcm", KEY)
    assert info.value.mode == "aead_aes256_gcm"
    with pytest.raises(ValueError):
        make_cipher("xsalsa20_poly1305", bytes(31))


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
def test_key_as_list_of_ints_matches_bytes(mode: str) -> None:
    header = build_rtp_header(sequence=1, timestamp=2, ssrc=3)
    packet = make_cipher(mode, list(KEY)).encrypt_rtp(header, b"payload")
    assert _receive(make_cipher(mode, KEY), packet) == b"payload"


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
@settings(max_examples=60)
@given(parts=rtp_parts())
def test_rtp_round_trip(mode: str, parts: tuple[bytes, bytes, bytes]) -> None:
    header, plaintext, payload = parts
    packet = make_cipher(mode, KEY).encrypt_rtp(header, plaintext)
    clear = _clear_size(mode, header)
    assert packet.startswith(header[:clear])
    assert packet[clear : len(header)] != header[clear:] or clear == len(header)
    assert _receive(make_cipher(mode, KEY), packet) == payload


def test_aes_gcm_layout_matches_an_independent_construction() -> None:
    header = build_rtp_header(sequence=7, timestamp=960, ssrc=42, ext_profile=0xBEDE, ext_words=1)
    plaintext = build_extension_body([(1, b"\x10")]) + b"opus frame"
    cipher = make_cipher("aead_aes256_gcm_rtpsize", KEY)
    cipher.encrypt_rtp(header, b"first")
    packet = cipher.encrypt_rtp(header, plaintext)
    nonce = (1).to_bytes(4, "big") + bytes(8)
    assert packet == header + AESGCM(KEY).encrypt(nonce, plaintext, header) + nonce[:4]


class _DiscordPySender:
    """Just enough of a VoiceClient to run discord.py's own packet building and encryption."""

    checked_add: Any = discord.VoiceClient.checked_add
    _get_voice_packet: Any = discord.VoiceClient._get_voice_packet
    _encrypt_aead_xchacha20_poly1305_rtpsize: Any = discord.VoiceClient._encrypt_aead_xchacha20_poly1305_rtpsize
    _encrypt_xsalsa20_poly1305: Any = discord.VoiceClient._encrypt_xsalsa20_poly1305
    _encrypt_xsalsa20_poly1305_suffix: Any = discord.VoiceClient._encrypt_xsalsa20_poly1305_suffix
    _encrypt_xsalsa20_poly1305_lite: Any = discord.VoiceClient._encrypt_xsalsa20_poly1305_lite

    def __init__(self, mode: str, key: bytes) -> None:
        self.mode = mode
        self.secret_key = list(key)
        self._incr_nonce = 0
        self.sequence = 65534
        self.timestamp = 0xFFFFFC00
        self.ssrc = 0x1234ABCD
        self._connection: Any = SimpleNamespace(dave_session=None, can_encrypt=False)

    def send(self, opus: bytes) -> bytes:
        packet = bytes(self._get_voice_packet(opus))
        self.checked_add("sequence", 1, 65535)
        self.checked_add("timestamp", 960, 4294967295)
        return packet


@pytest.mark.parametrize("mode", DISCORD_PY_MODES)
def test_decrypts_discord_py_sender(mode: str) -> None:
    sender = _DiscordPySender(mode, KEY)
    cipher = make_cipher(mode, KEY)
    frames = [bytes([0xFC, n]) * (n + 1) for n in range(5)]
    for n, frame in enumerate(frames):
        packet = sender.send(frame)
        header = parse_rtp_header(packet)
        assert (header.sequence, header.ssrc, header.payload_type) == ((65534 + n) % 65536, 0x1234ABCD, 120)
        assert strip_payload(header, cipher.decrypt_rtp(packet, header)) == frame
        assert cipher.open_payload(packet, header) == frame


@pytest.mark.parametrize("mode", ["aead_xchacha20_poly1305_rtpsize", "xsalsa20_poly1305_lite"])
def test_counter_suffix_matches_discord_py(mode: str) -> None:
    sender = _DiscordPySender(mode, KEY)
    ours = make_cipher(mode, KEY)
    for _ in range(3):
        header = build_rtp_header(sequence=sender.sequence, timestamp=sender.timestamp, ssrc=sender.ssrc)
        assert ours.encrypt_rtp(header, b"frame") == sender.send(b"frame")


def test_counter_wraps_at_two_to_the_32() -> None:
    cipher = make_cipher("aead_xchacha20_poly1305_rtpsize", KEY)
    cipher._counter = 0xFFFFFFFF
    header = build_rtp_header(sequence=0, timestamp=0, ssrc=1)
    assert cipher.encrypt_rtp(header, b"a")[-4:] == b"\xff\xff\xff\xff"
    assert cipher.encrypt_rtp(header, b"b")[-4:] == b"\x00\x00\x00\x00"


def test_suffix_mode_uses_a_fresh_nonce_each_packet() -> None:
    cipher = make_cipher("xsalsa20_poly1305_suffix", KEY)
    header = build_rtp_header(sequence=0, timestamp=0, ssrc=1)
    assert cipher.encrypt_rtp(header, b"same")[-24:] != cipher.encrypt_rtp(header, b"same")[-24:]


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
def test_wrong_key_fails_authentication(mode: str) -> None:
    packet = make_cipher(mode, KEY).encrypt_rtp(build_rtp_header(sequence=0, timestamp=0, ssrc=1), b"secret")
    with pytest.raises(DecryptionFailed):
        _receive(make_cipher(mode, OTHER_KEY), packet)


def _authenticated_positions(mode: str, header_size: int, total: int) -> list[int]:
    """Bytes whose change must fail authentication: all of them in the AEAD modes; in the legacy modes the header
    is not authenticated, except the 12 bytes the plain mode uses as its nonce."""
    if mode in RTPSIZE_MODES:
        return list(range(total))
    if mode == "xsalsa20_poly1305":
        return [*range(12), *range(header_size, total)]
    return list(range(header_size, total))


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
@settings(max_examples=40)
@given(parts=rtp_parts(), data=st.data())
def test_flipped_bits_fail_authentication(mode: str, parts: tuple[bytes, bytes, bytes], data: st.DataObject) -> None:
    header_bytes, plaintext, _ = parts
    packet = make_cipher(mode, KEY).encrypt_rtp(header_bytes, plaintext)
    header = parse_rtp_header(packet)
    clear = _clear_size(mode, header_bytes)
    index = data.draw(st.sampled_from(_authenticated_positions(mode, clear, len(packet))))
    tampered = bytearray(packet)
    tampered[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(DecryptionFailed):
        make_cipher(mode, KEY).decrypt_rtp(bytes(tampered), header)


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
@settings(max_examples=40)
@given(parts=rtp_parts(), data=st.data())
def test_any_change_to_a_packet_never_decodes_silently_wrong(
    mode: str, parts: tuple[bytes, bytes, bytes], data: st.DataObject
) -> None:
    """Through the whole receive path, a flipped bit or a cut packet ends in one of our two errors, or (legacy modes,
    unauthenticated header bits only) in the original payload."""
    header_bytes, plaintext, payload = parts
    packet = make_cipher(mode, KEY).encrypt_rtp(header_bytes, plaintext)
    if data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(packet) - 1))
        changed = bytearray(packet)
        changed[index] ^= 1 << data.draw(st.integers(0, 7))
        candidate = bytes(changed)
    else:
        candidate = packet[: data.draw(st.integers(0, len(packet) - 1))]
    try:
        result = _receive(make_cipher(mode, KEY), candidate)
    except (MalformedPacket, DecryptionFailed):
        return
    assert mode not in RTPSIZE_MODES
    clear = _clear_size(mode, header_bytes)
    resealed = make_cipher("xsalsa20_poly1305_lite", KEY)
    reread = resealed.encrypt_rtp(candidate[:clear] + header_bytes[clear:], plaintext)
    assert result == payload or resealed.open_payload(reread, parse_rtp_header(reread)) == result


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_our_errors(mode: str, data: bytes) -> None:
    cipher = make_cipher(mode, KEY)
    with pytest.raises((MalformedPacket, DecryptionFailed)):
        _receive(cipher, data)


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
def test_too_short_for_tag_and_nonce_is_malformed(mode: str) -> None:
    header = build_rtp_header(sequence=0, timestamp=0, ssrc=1, csrcs=[5])
    with pytest.raises(MalformedPacket) as info:
        make_cipher(mode, KEY).decrypt_rtp(header + bytes(15), parse_rtp_header(header + bytes(15)))
    assert info.value.reason == "short"


SR = build_sender_report(
    0xCAFE, ntp_timestamp=0x0123456789ABCDEF, rtp_timestamp=48000, packet_count=10, octet_count=1200
)
RR = build_receiver_report(0xBEEF, [ReportBlock(0xCAFE, 12, -3, 70000, 40, 0x456789AB, 65536)])


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
@pytest.mark.parametrize("plain", [SR, RR, SR + RR])
def test_rtcp_round_trip_keeps_the_header_clear(mode: str, plain: bytes) -> None:
    sealed = make_cipher(mode, KEY).encrypt_rtcp(plain)
    assert sealed[:8] == plain[:8]
    assert plain[8:] not in sealed
    opened = make_cipher(mode, KEY).decrypt_rtcp(sealed)
    assert opened == plain
    assert parse_rtcp(opened) == parse_rtcp(plain)


def test_rtcp_rtpsize_layout_uses_the_8_byte_header_as_additional_data() -> None:
    cipher = make_cipher("aead_aes256_gcm_rtpsize", KEY)
    sealed = cipher.encrypt_rtcp(RR)
    nonce = bytes(12)
    assert sealed == RR[:8] + AESGCM(KEY).encrypt(nonce, RR[8:], RR[:8]) + nonce[:4]


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
def test_rtcp_tamper_and_truncation(mode: str) -> None:
    sealed = make_cipher(mode, KEY).encrypt_rtcp(SR)
    tampered = bytearray(sealed)
    tampered[9] ^= 0x40
    with pytest.raises(DecryptionFailed):
        make_cipher(mode, KEY).decrypt_rtcp(bytes(tampered))
    with pytest.raises(MalformedPacket):
        make_cipher(mode, KEY).decrypt_rtcp(sealed[: 8 + 15])
    with pytest.raises(MalformedPacket):
        make_cipher(mode, KEY).encrypt_rtcp(b"\x80\xc9\x00")


@pytest.mark.parametrize("mode", SUPPORTED_MODES)
@given(st.binary(max_size=80))
def test_rtcp_random_bytes_only_raise_our_errors(mode: str, data: bytes) -> None:
    with pytest.raises((MalformedPacket, DecryptionFailed)):
        make_cipher(mode, KEY).decrypt_rtcp(data)


def test_plain_xsalsa_rtcp_nonce_is_the_8_byte_header() -> None:
    import nacl.bindings

    sealed = make_cipher("xsalsa20_poly1305", KEY).encrypt_rtcp(SR)
    assert sealed == SR[:8] + nacl.bindings.crypto_secretbox(SR[8:], SR[:8] + bytes(16), KEY)


def test_header_fields_are_independent_of_payload_encryption() -> None:
    """The receive path learns the SSRC before decryption: it sits in clear in every mode."""
    header = build_rtp_header(sequence=5, timestamp=6, ssrc=0xABCDEF01)
    for mode in SUPPORTED_MODES:
        packet = make_cipher(mode, KEY).encrypt_rtp(header, b"x")
        assert struct.unpack_from(">I", packet, 8)[0] == 0xABCDEF01


@pytest.mark.parametrize("mode", ["xsalsa20_poly1305_lite", "xsalsa20_poly1305_suffix", "xsalsa20_poly1305"])
def test_legacy_packet_with_sealed_extension_word_as_discord_sent_it(mode: str) -> None:
    """Old Discord servers sealed the 0xBEDE word with the payload; the clear header was the 12 fixed bytes only."""
    from nacl.bindings import crypto_secretbox

    fixed = build_rtp_header(sequence=9, timestamp=960, ssrc=77)
    fixed = bytes([fixed[0] | 0x10]) + fixed[1:]
    sealed_part = b"\xbe\xde\x00\x01" + build_extension_body([(1, b"\x42")]) + b"opus!"
    if mode == "xsalsa20_poly1305_lite":
        suffix = (5).to_bytes(4, "big")
        nonce = suffix + bytes(20)
    elif mode == "xsalsa20_poly1305_suffix":
        suffix = bytes(range(24))
        nonce = suffix
    else:
        suffix = b""
        nonce = fixed + bytes(12)
    packet = fixed + crypto_secretbox(sealed_part, nonce, KEY) + suffix
    assert _receive(make_cipher(mode, KEY), packet) == b"opus!"
