"""Discord voice transport encryption: the five modes, for RTP and RTCP, both directions.

Every mode lays a packet out the same way: the clear header, the sealed bytes (ciphertext with its 16-byte tag),
then a mode-specific nonce suffix. The modes differ only in how the nonce is formed and whether the clear header
is authenticated as AEAD additional data:

- ``aead_aes256_gcm_rtpsize`` / ``aead_xchacha20_poly1305_rtpsize``: 4-byte big-endian counter suffix, nonce =
  counter then zeros (12 / 24 bytes), clear header authenticated.
- ``xsalsa20_poly1305_lite``: same counter suffix and nonce, no additional data.
- ``xsalsa20_poly1305_suffix``: a random 24-byte nonce as the suffix.
- ``xsalsa20_poly1305``: no suffix; the nonce is the first 12 bytes of the header (8 for RTCP), zero padded.

For RTP the clear header is :attr:`RtpHeader.unencrypted_size` bytes in the rtpsize modes; the legacy modes seal
everything after the fixed header and CSRCs, the extension header word included (as Discord's servers did), so
use :meth:`TransportCipher.open_payload` to get the media payload in any mode. For RTCP the clear header is the
8-byte header (first word and sender SSRC).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_secretbox,
    crypto_secretbox_open,
)
from nacl.exceptions import CryptoError

try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _sodium
except ImportError:  # a PyNaCl without its cffi module: the public bindings below still work
    _ffi = _sodium = None

from ..errors import DecryptionFailed, MalformedPacket, UnsupportedMode
from .rtp import RTP_HEADER_SIZE, RtpHeader, strip_payload

__all__ = ("RTCP_HEADER_SIZE", "SUPPORTED_MODES", "TransportCipher", "make_cipher")

RTCP_HEADER_SIZE = 8
_TAG_SIZE = 16
_KEY_SIZE = 32
_ZEROS_8 = bytes(8)
_ZEROS_20 = bytes(20)
_ZEROS_24 = bytes(24)
_MAX_SEALED = 2048
"""Plaintext bytes the fast XChaCha20 path decrypts into its per-thread buffer; larger packets take the slow path."""
_NULL: Any = _ffi.NULL if _ffi is not None else None
_sodium_open: Any = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt if _sodium is not None else None


def _skip_extension(plaintext: bytes, start: int) -> bytes:
    """The payload after ``start`` bytes of extension body (rtpsize modes, no padding)."""
    if start > len(plaintext):
        raise MalformedPacket("extension", f"body of {start} bytes, {len(plaintext)} decrypted")
    return plaintext[start:] if start else plaintext


class TransportCipher:
    """Seals and opens voice packets for one mode and one secret key.

    Built once per key by :func:`make_cipher` (the underlying cipher objects are kept), then used for every packet.
    Encryption keeps its own 32-bit nonce counter, wrapping at 2**32, in the counter modes.

    Attributes
    ----------
    mode:
        The Discord name of the encryption mode.
    """

    __slots__ = ("_counter",)

    mode: ClassVar[str]
    _suffix_size: ClassVar[int]
    clear_extension_header: ClassVar[bool] = False
    """True when the extension header word travels in clear (the rtpsize modes): :meth:`open_unpadded` works."""

    def __init__(self) -> None:
        self._counter = 0

    def decrypt_rtp(self, packet: bytes, header: RtpHeader) -> bytes:
        """Return the plaintext after the clear header: extension body, payload and padding.

        Raises
        ------
        MalformedPacket
            ``"short"`` when the packet cannot hold the header, the tag and the nonce suffix.
        DecryptionFailed
            When authentication fails: wrong key, wrong mode or tampered bytes.
        """
        return self._open_at(packet, header.unencrypted_size)

    def encrypt_rtp(self, header: bytes, plaintext: bytes) -> bytes:
        """Return the full packet: ``header`` in clear, ``plaintext`` (extension body + payload) sealed."""
        return self._seal(header, plaintext)

    def open_rtp(self, packet: bytes, header: RtpHeader) -> tuple[RtpHeader, bytes]:
        """Decrypt; return the header as sent and the plaintext from the extension body on, in every mode.

        In the legacy modes the extension header word travels sealed, so the returned header takes its profile
        and length from the decrypted bytes; callers then treat all modes alike.
        """
        return header, self.decrypt_rtp(packet, header)

    def open_payload(self, packet: bytes, header: RtpHeader) -> bytes:
        """Decrypt and return the media payload alone: extension body and RTP padding removed.

        Raises
        ------
        MalformedPacket, DecryptionFailed
            As :meth:`decrypt_rtp`, and for an extension or padding that does not fit.
        """
        return strip_payload(*self.open_rtp(packet, header))

    def open_unpadded(self, packet: bytes, clear: int, skip: int) -> bytes:
        """Decrypt an RTP packet without padding whose first ``clear`` bytes travel in clear (the extension header
        word included) and return the payload after ``skip`` bytes of extension body: :meth:`open_payload` for a
        caller that read the header itself. Only the rtpsize modes (:attr:`clear_extension_header`) lay packets out
        this way.

        Raises
        ------
        MalformedPacket, DecryptionFailed
            As :meth:`open_payload`.
        """
        raise NotImplementedError

    def decrypt_rtcp(self, packet: bytes) -> bytes:
        """Return the whole RTCP packet in clear: the 8-byte header followed by the opened body."""
        return packet[:RTCP_HEADER_SIZE] + self._open_at(packet, RTCP_HEADER_SIZE)

    def encrypt_rtcp(self, packet: bytes) -> bytes:
        """Seal a plain RTCP packet, leaving its 8-byte header in clear."""
        if len(packet) < RTCP_HEADER_SIZE:
            raise MalformedPacket("short", f"RTCP packet of {len(packet)} bytes")
        return self._seal(packet[:RTCP_HEADER_SIZE], packet[RTCP_HEADER_SIZE:])

    def _open_at(self, packet: bytes, clear_size: int) -> bytes:
        end = len(packet) - self._suffix_size
        if end < clear_size + _TAG_SIZE:
            raise MalformedPacket("short", f"{len(packet)} bytes for {clear_size} clear in {self.mode}")
        clear = packet[:clear_size]
        return self._open(self._nonce(clear, packet[end:]), packet[clear_size:end], clear)

    def _seal(self, clear: bytes, plaintext: bytes) -> bytes:
        suffix = self._make_suffix()
        return clear + self._encrypt(self._nonce(clear, suffix), plaintext, clear) + suffix

    def _next_counter(self) -> bytes:
        n = self._counter
        self._counter = (n + 1) & 0xFFFFFFFF
        return n.to_bytes(4, "big")

    def _make_suffix(self) -> bytes:
        return self._next_counter()

    def _nonce(self, clear: bytes, suffix: bytes) -> bytes:
        raise NotImplementedError

    def _open(self, nonce: bytes, sealed: bytes, clear: bytes) -> bytes:
        raise NotImplementedError

    def _encrypt(self, nonce: bytes, plaintext: bytes, clear: bytes) -> bytes:
        raise NotImplementedError


class _AesGcmRtpsize(TransportCipher):
    __slots__ = ("_aead",)
    mode = "aead_aes256_gcm_rtpsize"
    _suffix_size = 4
    clear_extension_header = True

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self._aead = AESGCM(key)

    def _nonce(self, clear: bytes, suffix: bytes) -> bytes:
        return suffix + _ZEROS_8

    def _open(self, nonce: bytes, sealed: bytes, clear: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, clear)
        except InvalidTag:
            raise DecryptionFailed(f"{self.mode}: authentication failed") from None

    def open_payload(self, packet: bytes, header: RtpHeader) -> bytes:
        if header.padding:
            return super().open_payload(packet, header)
        return self.open_unpadded(packet, header.unencrypted_size, 4 * header.ext_words)

    def open_unpadded(self, packet: bytes, clear: int, skip: int) -> bytes:
        end = len(packet) - 4
        if end < clear + _TAG_SIZE:
            raise MalformedPacket("short", f"{len(packet)} bytes for {clear} clear in {self.mode}")
        try:
            plaintext: bytes = self._aead.decrypt(packet[end:] + _ZEROS_8, packet[clear:end], packet[:clear])
        except InvalidTag:
            raise DecryptionFailed(f"{self.mode}: authentication failed") from None
        return _skip_extension(plaintext, skip)

    def _encrypt(self, nonce: bytes, plaintext: bytes, clear: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, clear)


class _XChaChaRtpsize(TransportCipher):
    """Opens packets through libsodium's cffi function into a per-thread buffer: PyNaCl's public binding checks
    and allocates enough per call to cost more than the decryption itself."""

    __slots__ = ("_key", "_local")
    mode = "aead_xchacha20_poly1305_rtpsize"
    _suffix_size = 4
    clear_extension_header = True

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self._key = key
        self._local = threading.local()

    def open_payload(self, packet: bytes, header: RtpHeader) -> bytes:
        if header.padding:
            return super().open_payload(packet, header)
        return self.open_unpadded(packet, header.unencrypted_size, 4 * header.ext_words)

    def open_unpadded(self, packet: bytes, clear: int, skip: int) -> bytes:
        end = len(packet) - 4
        size = end - clear - _TAG_SIZE
        if size < 0:
            raise MalformedPacket("short", f"{len(packet)} bytes for {clear} clear in {self.mode}")
        if _sodium is None or size > _MAX_SEALED:
            return _skip_extension(self._open_at(packet, clear), skip)
        try:
            out, view = self._local.buffers
        except AttributeError:
            out = _ffi.new("unsigned char[]", _MAX_SEALED)
            view = _ffi.buffer(out)
            self._local.buffers = out, view
        sealed = packet[clear:end]
        if _sodium_open(
            out, _NULL, _NULL, sealed, size + _TAG_SIZE, packet[:clear], clear, packet[end:] + _ZEROS_20, self._key
        ):
            raise DecryptionFailed(f"{self.mode}: authentication failed")
        if skip > size:
            raise MalformedPacket("extension", f"body of {skip} bytes, {size} decrypted")
        return view[skip:size]  # type: ignore[no-any-return]

    def _nonce(self, clear: bytes, suffix: bytes) -> bytes:
        return suffix + _ZEROS_20

    def _open(self, nonce: bytes, sealed: bytes, clear: bytes) -> bytes:
        try:
            plaintext: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, clear, nonce, self._key)
        except CryptoError:
            raise DecryptionFailed(f"{self.mode}: authentication failed") from None
        return plaintext

    def _encrypt(self, nonce: bytes, plaintext: bytes, clear: bytes) -> bytes:
        sealed: bytes = crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, clear, nonce, self._key)
        return sealed


class _SecretBoxCipher(TransportCipher):
    """The legacy XSalsa20-Poly1305 modes: libsodium secretbox, the clear header is not authenticated.

    Unlike the rtpsize modes, they seal everything after the fixed header and CSRCs, the extension header word
    included, so :meth:`decrypt_rtp` returns plaintext that starts with that word when X is set.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self._key = key

    def decrypt_rtp(self, packet: bytes, header: RtpHeader) -> bytes:
        return self._open_at(packet, RTP_HEADER_SIZE + 4 * len(header.csrcs))

    def encrypt_rtp(self, header: bytes, plaintext: bytes) -> bytes:
        clear = RTP_HEADER_SIZE + 4 * (header[0] & 0x0F) if header else 0
        return self._seal(header[:clear], header[clear:] + plaintext)

    def open_rtp(self, packet: bytes, header: RtpHeader) -> tuple[RtpHeader, bytes]:
        plaintext = self.decrypt_rtp(packet, header)
        if not header.extension:
            return header, plaintext
        if len(plaintext) < 4:
            raise MalformedPacket("extension", f"{len(plaintext)} bytes cannot hold the sealed extension header")
        profile = int.from_bytes(plaintext[:2], "big")
        words = int.from_bytes(plaintext[2:4], "big")
        return header._replace(ext_profile=profile, ext_words=words), plaintext[4:]

    def _open(self, nonce: bytes, sealed: bytes, clear: bytes) -> bytes:
        try:
            plaintext: bytes = crypto_secretbox_open(sealed, nonce, self._key)
        except CryptoError:
            raise DecryptionFailed(f"{self.mode}: authentication failed") from None
        return plaintext

    def _encrypt(self, nonce: bytes, plaintext: bytes, clear: bytes) -> bytes:
        sealed: bytes = crypto_secretbox(plaintext, nonce, self._key)
        return sealed


class _XSalsa20Poly1305Lite(_SecretBoxCipher):
    __slots__ = ()
    mode = "xsalsa20_poly1305_lite"
    _suffix_size = 4

    def _nonce(self, clear: bytes, suffix: bytes) -> bytes:
        return suffix + _ZEROS_20


class _XSalsa20Poly1305Suffix(_SecretBoxCipher):
    __slots__ = ()
    mode = "xsalsa20_poly1305_suffix"
    _suffix_size = 24

    def _make_suffix(self) -> bytes:
        return os.urandom(24)

    def _nonce(self, clear: bytes, suffix: bytes) -> bytes:
        return suffix


class _XSalsa20Poly1305(_SecretBoxCipher):
    __slots__ = ()
    mode = "xsalsa20_poly1305"
    _suffix_size = 0

    def _make_suffix(self) -> bytes:
        return b""

    def _nonce(self, clear: bytes, suffix: bytes) -> bytes:
        head = clear[:12]
        return head + _ZEROS_24[len(head) :]


_CIPHERS: dict[str, Callable[[bytes], TransportCipher]] = {
    cls.mode: cls
    for cls in (_AesGcmRtpsize, _XChaChaRtpsize, _XSalsa20Poly1305Lite, _XSalsa20Poly1305Suffix, _XSalsa20Poly1305)
}

SUPPORTED_MODES: tuple[str, ...] = tuple(_CIPHERS)
"""Modes in order of preference: AES-GCM first (Discord's preferred), the plain legacy mode last."""


def make_cipher(mode: str, key: bytes | Sequence[int]) -> TransportCipher:
    """Build the cipher for ``mode`` with the 32-byte ``secret_key`` of op4 (bytes or a list of ints).

    Raises
    ------
    UnsupportedMode
        When ``mode`` is not in :data:`SUPPORTED_MODES`.
    ValueError
        When the key is not 32 bytes.
    """
    cls = _CIPHERS.get(mode)
    if cls is None:
        raise UnsupportedMode(mode)
    raw = bytes(key)
    if len(raw) != _KEY_SIZE:
        raise ValueError(f"secret key must be {_KEY_SIZE} bytes, got {len(raw)}")
    return cls(raw)
