from __future__ import annotations

import os
import struct
import subprocess
import wave
from pathlib import Path

import pytest

from discord_voicerecv.errors import SinkError
from discord_voicerecv.ffmpeg import find_ffmpeg
from discord_voicerecv.sinks._wavfile import HEADER_SIZE, WavWriter


def frames_in(path: Path) -> tuple[int, bytes]:
    with wave.open(str(path), "rb") as w:
        return w.getnframes(), w.readframes(w.getnframes())


def decode_with_ffmpeg(path: Path) -> bytes:
    return subprocess.run(
        [find_ffmpeg(), "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "2", "-ar", "48000", "-"],
        check=True,
        capture_output=True,
    ).stdout


def test_header_follows_sync_and_close(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    writer = WavWriter(path, rate=8000, channels=1)
    assert frames_in(path) == (0, b"")
    writer.write(b"\x01\x00\x02\x00")
    writer.sync()
    writer.write(b"\x03\x00")
    assert frames_in(path) == (2, b"\x01\x00\x02\x00")
    writer.write_silence(300_001 * 2)
    writer.close()
    writer.close()
    count, data = frames_in(path)
    assert count == 3 + 300_001
    assert data[:6] == b"\x01\x00\x02\x00\x03\x00" and not any(data[6:])
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
    assert writer.data_bytes == path.stat().st_size - HEADER_SIZE


def test_write_after_close_is_a_sink_error(tmp_path: Path) -> None:
    writer = WavWriter(tmp_path / "b.wav")
    writer.close()
    with pytest.raises(SinkError, match=r"b\.wav"):
        writer.write(b"\x00\x00\x00\x00")


def test_os_errors_while_writing_name_the_file(tmp_path: Path) -> None:
    writer = WavWriter(tmp_path / "c.wav")
    os.close(writer._file.fileno())  # type: ignore[union-attr]
    with pytest.raises(SinkError, match=r"c\.wav") as caught:
        writer.write_silence(1 << 20)
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(SinkError):
        writer.close()


def test_opening_a_directory_is_a_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match=str(tmp_path)):
        WavWriter(tmp_path)


def _read_header(path: Path) -> dict[str, object]:
    raw = path.read_bytes()[:HEADER_SIZE]
    fields = struct.unpack("<4sI4s4sIQQQI4sIHHIIHH4sI", raw)
    names = (
        "riff", "riff_size", "wave", "ds64", "ds64_size", "riff_size64", "data_size64", "samples64", "table",
        "fmt", "fmt_size", "format", "channels", "rate", "byte_rate", "block", "bits", "data", "data_size",
    )  # fmt: skip
    return dict(zip(names, fields, strict=True))


def test_a_file_past_the_riff_limit_becomes_rf64_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    writer = WavWriter(path, rate=48_000, channels=2, rf64_after=4000)  # a 4 GiB recording, scaled down
    writer.write(bytes(range(256)) * 15)  # 3840 bytes: still a plain WAV
    writer.sync()
    plain = _read_header(path)
    assert plain == {
        "riff": b"RIFF", "riff_size": HEADER_SIZE - 8 + 3840, "wave": b"WAVE",
        "ds64": b"JUNK", "ds64_size": 28, "riff_size64": 0, "data_size64": 0, "samples64": 0, "table": 0,
        "fmt": b"fmt ", "fmt_size": 16, "format": 1, "channels": 2, "rate": 48_000, "byte_rate": 192_000,
        "block": 4, "bits": 16, "data": b"data", "data_size": 3840,
    }  # fmt: skip
    assert frames_in(path) == (960, bytes(range(256)) * 15), "the reserved JUNK chunk is skipped by readers"
    writer.write_silence(3840)
    writer.close()
    rf64 = _read_header(path)
    assert rf64 == {
        **plain,
        "riff": b"RF64", "riff_size": 0xFFFF_FFFF, "ds64": b"ds64", "riff_size64": HEADER_SIZE - 8 + 7680,
        "data_size64": 7680, "samples64": 1920, "data_size": 0xFFFF_FFFF,
    }  # fmt: skip
    assert path.stat().st_size == HEADER_SIZE + 7680
    assert decode_with_ffmpeg(path) == bytes(range(256)) * 15 + bytes(3840), "ffmpeg reads it as RF64"
    probe = subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, check=False
    ).stderr
    assert "Input #0, wav" in probe
    try:  # Python's wave (3.11) refuses RF64; whatever its version, it must never misread the file
        result: object = frames_in(path)
    except wave.Error as exc:
        result = exc
    assert result == (1920, bytes(range(256)) * 15 + bytes(3840)) or isinstance(result, wave.Error)


def test_the_default_limit_is_what_a_32_bit_riff_size_can_state(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rf64_after"):
        WavWriter(tmp_path / "x.wav", rf64_after=0xFFFF_FFFF)
    path = tmp_path / "limit.wav"
    writer = WavWriter(path)
    limit = 0xFFFF_FFFF - (HEADER_SIZE - 8)
    writer.write(bytes(4))
    writer.data_bytes = limit  # the size counter as it stands after 6.2 h, without writing 4 GiB
    writer.sync()
    assert _read_header(path)["riff"] == b"RIFF" and _read_header(path)["riff_size"] == 0xFFFF_FFFF
    writer.data_bytes = limit + 4
    writer.close()
    header = _read_header(path)
    assert (header["riff"], header["riff_size"], header["data_size"]) == (b"RF64", 0xFFFF_FFFF, 0xFFFF_FFFF)
    assert (header["data_size64"], header["riff_size64"], header["samples64"]) == (
        limit + 4,
        0x1_0000_0003,
        (limit + 4) // 4,
    )
