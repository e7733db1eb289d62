"""A WAV file written as it goes, with a header that can be made valid at any moment, RF64 past 4 GiB."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import SinkError

__all__ = ("HEADER_SIZE", "WavWriter")

_HEADER = struct.Struct("<4sI4s4sIQQQI4sIHHIIHH4sI")
"""RIFF/WAVE, a 28-byte chunk (``JUNK`` while the file is plain WAV, ``ds64`` once it is RF64), ``fmt `` and
``data``: the layout of EBU Tech 3306, so a file can turn into RF64 in place when it passes 4 GiB."""
HEADER_SIZE = _HEADER.size
"""Bytes before the audio in every file this writer makes (80)."""
_DS64 = struct.Struct("<4sI4s4sIQQQ")
"""The first fields of :data:`_HEADER`: RIFF id and size, WAVE, the reserved chunk's id and size, and its 64-bit
RIFF size, data size and sample count (the ds64 table length, zero, follows)."""
_DATA_SIZE_OFFSET = HEADER_SIZE - 4
_DS64_BODY = 28
_MAX_DATA = 0xFFFF_FFFF - (HEADER_SIZE - 8)
"""Largest data size a RIFF header can state; past it the file becomes RF64 (sizes in the ds64 chunk)."""
_UNKNOWN_SIZE = 0xFFFF_FFFF
_ZEROS = bytes(192_000)
_BUFFER = 1 << 16


def _header(rate: int, channels: int, sample_width: int) -> bytes:
    """An 80-byte PCM WAV header for an empty data chunk, with room reserved for a ds64 chunk."""
    block = channels * sample_width
    fmt = (1, channels, rate, rate * block, block, sample_width * 8)
    return _HEADER.pack(
        b"RIFF", HEADER_SIZE - 8, b"WAVE", b"JUNK", _DS64_BODY, 0, 0, 0, 0, b"fmt ", 16, *fmt, b"data", 0
    )


class WavWriter:
    """PCM appended to a WAV file on disk, never held in memory.

    The header is written with the sizes known so far; :meth:`sync` rewrites them in place and flushes, so a
    process that dies afterwards leaves a playable file holding the audio up to that point. A file whose audio
    passes ``rf64_after`` bytes (what a 32-bit RIFF size can state, 6.2 h of 48 kHz stereo) becomes RF64 (EBU Tech
    3306): ``RF64`` instead of ``RIFF``, the reserved ``JUNK`` chunk turned into ``ds64`` carrying the 64-bit sizes,
    and the 32-bit sizes set to ``0xFFFFFFFF``, which ffmpeg, sox, libsndfile and most players read. Every
    :class:`OSError` comes out as :class:`~discord_voicerecv.errors.SinkError` naming the file.
    """

    __slots__ = ("_block", "_file", "_rf64_after", "_synced", "data_bytes", "path")

    def __init__(
        self,
        path: Path,
        *,
        rate: int = 48_000,
        channels: int = 2,
        sample_width: int = 2,
        rf64_after: int = _MAX_DATA,
    ) -> None:
        if not 0 < rf64_after <= _MAX_DATA:
            raise ValueError(f"rf64_after must be between 1 and {_MAX_DATA}")
        self.path = path
        self.data_bytes = 0
        self._synced = 0
        self._block = channels * sample_width
        self._rf64_after = rf64_after
        try:
            self._file: BinaryIO | None = open(path, "wb", buffering=_BUFFER)  # noqa: SIM115
            self._file.write(_header(rate, channels, sample_width))
            self._file.flush()
        except OSError as exc:
            raise self._error(exc) from exc

    def write(self, data: bytes | memoryview) -> None:
        """Append PCM bytes."""
        if self._file is None:
            raise SinkError(str(self.path), "file already closed")
        try:
            self._file.write(data)
        except OSError as exc:
            raise self._error(exc) from exc
        self.data_bytes += len(data)

    def write_silence(self, nbytes: int) -> None:
        """Append ``nbytes`` zero bytes, in chunks so that long silences cost no memory."""
        while nbytes > 0:
            chunk = min(nbytes, len(_ZEROS))
            self.write(_ZEROS if chunk == len(_ZEROS) else memoryview(_ZEROS)[:chunk])
            nbytes -= chunk

    def sync(self) -> None:
        """Rewrite the sizes for the bytes written so far (RF64 past ``rf64_after``) and flush them to the OS."""
        file = self._file
        if file is None or self._synced == self.data_bytes:
            return
        size = self.data_bytes
        riff_size = size + HEADER_SIZE - 8
        if size > self._rf64_after:
            start = _DS64.pack(
                b"RF64", _UNKNOWN_SIZE, b"WAVE", b"ds64", _DS64_BODY, riff_size, size, size // self._block
            )
            data_size = _UNKNOWN_SIZE
        else:
            start = _DS64.pack(b"RIFF", riff_size, b"WAVE", b"JUNK", _DS64_BODY, 0, 0, 0)
            data_size = size
        try:
            file.seek(0)
            file.write(start)
            file.seek(_DATA_SIZE_OFFSET)
            file.write(data_size.to_bytes(4, "little"))
            file.seek(0, os.SEEK_END)
            file.flush()
        except OSError as exc:
            raise self._error(exc) from exc
        self._synced = self.data_bytes

    def close(self) -> None:
        """Write the final header and close the file. Closing twice does nothing."""
        file = self._file
        if file is None:
            return
        try:
            self.sync()
        finally:
            self._file = None
            try:
                file.close()
            except OSError as exc:
                raise self._error(exc) from exc

    def _error(self, exc: OSError) -> SinkError:
        return SinkError(str(self.path), exc.strerror or str(exc))
