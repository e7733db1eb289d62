"""Small ctypes bindings to libopus: a 48 kHz stereo decoder and encoder without per-frame copies.

discord.py's own decoder copies every frame through ``array('h')``; these bindings decode into one preallocated
buffer per decoder and return the PCM with a single copy. ctypes releases the GIL during each call, so decoding
does not stall the socket thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

from .errors import OpusError, OpusNotAvailable
from .frames import CHANNELS, FRAME_SAMPLES, SAMPLE_RATE
from .protocol import opus_toc

__all__ = (
    "LIBOPUS_ENV",
    "MAX_FRAME_SAMPLES",
    "OpusDecoder",
    "OpusEncoder",
    "ensure_discord_opus",
    "libopus_path",
    "packet_samples",
)

LIBOPUS_ENV = "DISCORD_VOICERECV_LIBOPUS"
"""Environment variable naming a libopus shared library to use instead of the bundled one."""

MAX_FRAME_SAMPLES = opus_toc.MAX_PACKET_SAMPLES
"""Samples per channel in the longest Opus packet (120 ms at 48 kHz)."""
_OPUS_INVALID_PACKET = -4

_APPLICATIONS = {"voip": 2048, "audio": 2049, "lowdelay": 2051}
_SET_BITRATE = 4002
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_RESET_STATE = 4028
_MAX_PACKET_BYTES = 1275 * 3 + 7
_INSTALL_HINT = (
    "libopus not found: install the 'opuslib-next-bundled' package (pip install opuslib-next-bundled), "
    f"install a system libopus (e.g. apt install libopus0), or set {LIBOPUS_ENV} to the library path"
)

_c_int16_p = ctypes.POINTER(ctypes.c_int16)
_c_ubyte_p = ctypes.POINTER(ctypes.c_ubyte)

_lib_lock = threading.Lock()
_lib: Any = None
_lib_path: str | None = None


def _bundled_path() -> str | None:
    """Path of the libopus shipped in the ``opuslib_next`` wheel, found without importing the package."""
    try:
        spec = importlib.util.find_spec("opuslib_next")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    native = Path(next(iter(spec.submodule_search_locations))) / "_native"
    names = {"darwin": ("libopus.dylib",), "win32": ("opus.dll", "libopus.dll")}.get(sys.platform, ("libopus.so",))
    for name in names:
        candidate = native / name
        if candidate.is_file():
            return str(candidate)
    return None


def libopus_path() -> str:
    """Return the libopus to load: ``$DISCORD_VOICERECV_LIBOPUS``, the bundled wheel's copy, then the system's.

    Raises
    ------
    OpusNotAvailable
        When none of them exists.
    """
    override = os.environ.get(LIBOPUS_ENV)
    if override:
        return override
    bundled = _bundled_path()
    if bundled is not None:
        return bundled
    system = ctypes.util.find_library("opus")
    if system is not None:
        return system
    raise OpusNotAvailable(_INSTALL_HINT)


def _declare(lib: Any) -> None:
    ptr = ctypes.c_void_p
    i32 = ctypes.c_int32
    specs: dict[str, tuple[list[Any], Any]] = {
        "opus_decoder_create": ([i32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)], ptr),
        "opus_decoder_destroy": ([ptr], None),
        "opus_decode": ([ptr, ctypes.c_char_p, i32, _c_int16_p, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "opus_decoder_ctl": ([ptr, ctypes.c_int], ctypes.c_int),
        "opus_encoder_create": ([i32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)], ptr),
        "opus_encoder_destroy": ([ptr], None),
        "opus_encode": ([ptr, ctypes.c_char_p, ctypes.c_int, _c_ubyte_p, i32], i32),
        "opus_encoder_ctl": ([ptr, ctypes.c_int, i32], ctypes.c_int),
        "opus_packet_get_nb_samples": ([ctypes.c_char_p, i32, i32], ctypes.c_int),
        "opus_get_version_string": ([], ctypes.c_char_p),
    }
    for name, (argtypes, restype) in specs.items():
        func = getattr(lib, name)
        func.argtypes = argtypes
        func.restype = restype


def _load() -> Any:
    """Load libopus once per process and declare the functions used here."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is None:
            path = libopus_path()
            try:
                lib = ctypes.CDLL(path)
                _declare(lib)
            except (OSError, AttributeError) as exc:
                raise OpusNotAvailable(f"could not load libopus from {path!r} ({exc}); {_INSTALL_HINT}") from exc
            _lib_path = path
            _lib = lib
    return _lib


def version() -> str:
    """The loaded libopus version string."""
    result: bytes = _load().opus_get_version_string()
    return result.decode("ascii", "replace")


def ensure_discord_opus() -> None:
    """Load the same libopus into ``discord.opus`` so ``VoiceClient.play`` can encode."""
    import discord.opus

    if not discord.opus.is_loaded():
        _load()
        assert _lib_path is not None
        discord.opus.load_opus(_lib_path)


def packet_samples(packet: bytes) -> int:
    """Samples per channel an Opus packet decodes to at 48 kHz (960 for a 20 ms packet).

    Raises
    ------
    OpusError
        When the packet's table of contents is invalid (``OPUS_INVALID_PACKET``, as libopus reports it).
    """
    samples = opus_toc.packet_samples(packet)
    if samples is None:
        raise OpusError(_OPUS_INVALID_PACKET, "packet_samples")
    return samples


class OpusDecoder:
    """A 48 kHz stereo Opus decoder that writes into its own preallocated buffer.

    Decoding is stateful (PLC and FEC use the previous frames), so keep one decoder per SSRC and feed it the
    frames in order. Calls on one instance are serialised by a lock.
    """

    __slots__ = ("__weakref__", "_buffer", "_frame_view", "_lib", "_lock", "_state", "_view")

    def __init__(self) -> None:
        self._lib = _load()
        self._state: int | None = None
        error = ctypes.c_int(0)
        state = self._lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(error))
        if error.value != 0 or not state:
            raise OpusError(error.value, "opus_decoder_create")
        self._state = state
        self._buffer = (ctypes.c_int16 * (MAX_FRAME_SAMPLES * CHANNELS))()
        self._view = memoryview(self._buffer).cast("B")
        self._frame_view = self._view[: FRAME_SAMPLES * CHANNELS * 2]
        self._lock = threading.Lock()

    def decode(self, packet: bytes | None, *, fec: bool = False, frame_samples: int = FRAME_SAMPLES) -> bytes:
        """Decode one packet to s16le 48 kHz stereo PCM.

        Parameters
        ----------
        packet:
            The Opus packet, or ``None`` to conceal one lost frame (packet-loss concealment).
        fec:
            Decode the in-band forward error correction data of ``packet`` instead of its own audio: this
            recovers the frame *before* ``packet``. ``frame_samples`` must then be that lost frame's duration.
        frame_samples:
            Samples per channel to produce for concealment and FEC (a multiple of 120); ignored for a normal
            decode, which yields the packet's own duration.

        Raises
        ------
        OpusError
            When libopus rejects the packet (corrupt data).
        """
        if packet:
            length = len(packet)
            size, decode_fec = (frame_samples, 1) if fec else (MAX_FRAME_SAMPLES, 0)
        else:
            size = frame_samples if packet is None or fec else MAX_FRAME_SAMPLES
            packet, length, decode_fec = None, 0, 0
        lock = self._lock
        lock.acquire()  # acquire/release: under half the cost of a with block, paid per frame
        try:
            result: int = self._lib.opus_decode(self._state, packet, length, self._buffer, size, decode_fec)
            if result < 0:
                raise OpusError(result, "opus_decode")
            if result == FRAME_SAMPLES:
                return self._frame_view.tobytes()
            return self._view[: result * CHANNELS * 2].tobytes()
        finally:
            lock.release()

    def reset(self) -> None:
        """Forget the decoder's history (use after a stream restarts)."""
        with self._lock:
            self._lib.opus_decoder_ctl(self._state, _RESET_STATE)

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_decoder_destroy(state)


class OpusEncoder:
    """A 48 kHz stereo Opus encoder for 20 ms frames (used by simulated speakers and tests).

    Parameters
    ----------
    bitrate:
        Target bits per second.
    application:
        ``"audio"``, ``"voip"`` or ``"lowdelay"``.
    fec:
        Put in-band forward error correction data in each packet (needs ``expected_loss_pct`` > 0 to be used).
    expected_loss_pct:
        Packet loss the encoder plans for, 0-100.
    """

    __slots__ = ("__weakref__", "_lib", "_lock", "_out", "_state")

    def __init__(
        self, *, bitrate: int = 64000, application: str = "audio", fec: bool = True, expected_loss_pct: int = 15
    ) -> None:
        if application not in _APPLICATIONS:
            raise ValueError(f"application must be one of {sorted(_APPLICATIONS)}, not {application!r}")
        self._lib = _load()
        self._state: int | None = None
        error = ctypes.c_int(0)
        state = self._lib.opus_encoder_create(SAMPLE_RATE, CHANNELS, _APPLICATIONS[application], ctypes.byref(error))
        if error.value != 0 or not state:
            raise OpusError(error.value, "opus_encoder_create")
        self._state = state
        self._out = (ctypes.c_ubyte * _MAX_PACKET_BYTES)()
        self._lock = threading.Lock()
        self._ctl(_SET_BITRATE, bitrate)
        self._ctl(_SET_INBAND_FEC, 1 if fec else 0)
        self._ctl(_SET_PACKET_LOSS_PERC, max(0, min(100, expected_loss_pct)))

    def _ctl(self, request: int, value: int) -> None:
        result: int = self._lib.opus_encoder_ctl(self._state, request, value)
        if result < 0:
            raise OpusError(result, f"opus_encoder_ctl({request})")

    def encode(self, pcm: bytes, frame_samples: int = FRAME_SAMPLES) -> bytes:
        """Encode ``frame_samples`` of s16le stereo PCM (3840 bytes for 20 ms) into one Opus packet.

        Raises
        ------
        ValueError
            When ``pcm`` does not hold exactly ``frame_samples`` stereo samples.
        OpusError
            When libopus rejects the frame size.
        """
        if len(pcm) != frame_samples * CHANNELS * 2:
            raise ValueError(f"expected {frame_samples * CHANNELS * 2} bytes of PCM, got {len(pcm)}")
        with self._lock:
            result: int = self._lib.opus_encode(self._state, pcm, frame_samples, self._out, _MAX_PACKET_BYTES)
            if result < 0:
                raise OpusError(result, "opus_encode")
            return ctypes.string_at(self._out, result)

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_encoder_destroy(state)
