from __future__ import annotations

import os
import wave
from pathlib import Path

import pytest

from discord_voicerecv.errors import SinkError
from discord_voicerecv.sinks._wavfile import WavWriter


def frames_in(path: Path) -> tuple[int, bytes]:
    with wave.open(str(path), "rb") as w:
        return w.getnframes(), w.readframes(w.getnframes())


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
    assert writer.data_bytes == path.stat().st_size - 44


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
