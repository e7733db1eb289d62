"""A WAV file written as it goes, with a header that can be made valid at any moment."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import SinkError

__all__ = ("WavWriter",)

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_RIFF_SIZE_OFFSET = 4
_DATA_SIZE_OFFSET = 40
_MAX_DATA = 0xFFFF_FFFF - (_HEADER.size - 8)
"""Largest data size a RIFF header can state; longer recordings keep growing but report this size."""
_ZEROS = bytes(192_000)
_BUFFER = 1 << 16


def _header(rate: int, channels: int, sample_width: int) -> bytes:
    """A canonical 44-byte PCM WAV header for an empty data chunk."""
    block = channels * sample_width
    fmt = (1, channels, rate, rate * block, block, sample_width * 8)
    return _HEADER.pack(b"RIFF", _HEADER.size - 8, b"WAVE", b"fmt ", 16, *fmt, b"data", 0)


class WavWriter:
    """PCM appended to a WAV file on disk, never held in memory.

    The header is written with the sizes known so far; :meth:`sync` rewrites them in place and flushes, so a
    process that dies afterwards leaves a playable file holding the audio up to that point. Every
    :class:`OSError` comes out as :class:`~discord_voicerecv.errors.SinkError` naming the file.
    """

    __slots__ = ("_file", "_synced", "data_bytes", "path")

    def __init__(self, path: Path, *, rate: int = 48_000, channels: int = 2, sample_width: int = 2) -> None:
        self.path = path
        self.data_bytes = 0
        self._synced = 0
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
        """Rewrite the RIFF and data sizes for the bytes written so far and flush them to the OS."""
        file = self._file
        if file is None or self._synced == self.data_bytes:
            return
        size = min(self.data_bytes, _MAX_DATA)
        try:
            file.seek(_RIFF_SIZE_OFFSET)
            file.write((size + _HEADER.size - 8).to_bytes(4, "little"))
            file.seek(_DATA_SIZE_OFFSET)
            file.write(size.to_bytes(4, "little"))
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
