"""The floor: the C primitives alone, called from the tightest Python loop we can write, no framework.

Per packet: transport decrypt (libsodium through its cffi module, or cryptography's AES-GCM), skip the one-word
header extension, DAVE decrypt (davey), Opus decode (libopus through ctypes, into one preallocated buffer). The
loop knows the stream's fixed layout (16-byte clear header, one extension word), keeps nothing and counts nothing,
so everything a real receiver adds on top of this is overhead.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any

import davey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl._sodium import ffi, lib
from stream import AESGCM as AESGCM_MODE
from stream import XCHACHA, Stream

from discord_voicerecv.opus import libopus_path

__all__ = ("Floor",)

_CLEAR = 16
_MAX_SAMPLES = 5760
_libopus: Any = None


def _opus() -> Any:
    global _libopus
    if _libopus is None:
        opus = ctypes.CDLL(libopus_path())
        opus.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        opus.opus_decoder_create.restype = ctypes.c_void_p
        opus.opus_decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_int16),
            ctypes.c_int,
            ctypes.c_int,
        ]
        opus.opus_decode.restype = ctypes.c_int
        opus.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        _libopus = opus
    return _libopus


class Floor:
    """One pass over a stream's packets with the bare primitives; a new instance per pass (fresh decoders)."""

    def __init__(self, stream: Stream, dave_session: davey.DaveSession | None) -> None:
        self.stream = stream
        opus = _opus()
        error = ctypes.c_int(0)
        self._opus = opus
        self._states = {
            ssrc.to_bytes(4, "big"): opus.opus_decoder_create(48000, 2, ctypes.byref(error))
            for ssrc in stream.ssrc_users
        }
        self._users = {ssrc.to_bytes(4, "big"): user for ssrc, user in stream.ssrc_users.items()}
        self._pcm = (ctypes.c_int16 * (_MAX_SAMPLES * 2))()
        self._session = dave_session
        self.decoded = 0
        self.process: Callable[[list[bytes]], None] = self._build()

    def close(self) -> None:
        for state in self._states.values():
            self._opus.opus_decoder_destroy(state)
        self._states.clear()

    def _build(self) -> Callable[[list[bytes]], None]:
        key = self.stream.key
        states = self._states
        users = self._users
        pcm = self._pcm
        decode = self._opus.opus_decode
        session = self._session
        audio = davey.MediaType.audio
        zeros = bytes(20 if self.stream.mode == XCHACHA else 8)
        if self.stream.mode == XCHACHA:
            out = ffi.new("unsigned char[]", 2048)
            view = ffi.buffer(out)
            open_xchacha = lib.crypto_aead_xchacha20poly1305_ietf_decrypt
            null = ffi.NULL

            def transport(d: bytes) -> bytes:
                sealed = d[_CLEAR:-4]
                if open_xchacha(out, null, null, sealed, len(sealed), d[:_CLEAR], _CLEAR, d[-4:] + zeros, key):
                    raise ValueError("decrypt failed")
                return view[4 : len(sealed) - 16]

        elif self.stream.mode == AESGCM_MODE:
            aead = AESGCM(key)

            def transport(d: bytes) -> bytes:
                return aead.decrypt(d[-4:] + zeros, d[_CLEAR:-4], d[:_CLEAR])[4:]

        else:
            raise ValueError(self.stream.mode)

        if session is None:

            def process(datagrams: list[bytes]) -> None:
                for d in datagrams:
                    frame = transport(d)
                    if decode(states[d[8:12]], frame, len(frame), pcm, _MAX_SAMPLES, 0) < 0:
                        raise ValueError("opus")
                self.decoded += len(datagrams)

        else:
            dave_decrypt = session.decrypt

            def process(datagrams: list[bytes]) -> None:
                for d in datagrams:
                    ssrc = d[8:12]
                    frame = dave_decrypt(users[ssrc], audio, transport(d))
                    if decode(states[ssrc], frame, len(frame), pcm, _MAX_SAMPLES, 0) < 0:
                        raise ValueError("opus")
                self.decoded += len(datagrams)

        return process

    def run(self) -> int:
        """Every packet as fast as possible; returns the packet count."""
        process = self.process
        for slot in self.stream.slots:
            process(slot)
        return self.decoded

    def run_paced(self) -> int:
        """Each datagram at its arrival time (:meth:`Stream.schedule`), handled at once like a socket callback."""
        process = self.process
        t0 = time.monotonic()
        for at, datagram in self.stream.schedule():
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            process([datagram])
        return self.decoded


def run_threads(targets: list[Callable[[], int]]) -> int:
    """Run each target in its own thread at once; returns the packets they handled in total."""
    results = [0] * len(targets)

    def body(i: int) -> None:
        results[i] = targets[i]()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(results)
