"""Offline decode of a synthetic pcap: two speakers, one of them late, must come out aligned to capture time."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from discord_voicerecv.frames import FRAME_SAMPLES
from discord_voicerecv.opus import OpusEncoder
from discord_voicerecv.protocol.rtp import build_extension_body, build_rtp_header
from discord_voicerecv.protocol.transport import make_cipher
from discord_voicerecv.receive import Receiver
from discord_voicerecv.testing.analysis import normalized_xcorr, read_wav
from discord_voicerecv.testing.clips import clip_frames, load_clip
from discord_voicerecv.tools import decode
from discord_voicerecv.tools.capture import CapturedDatagram, iter_capture, write_pcap, write_rtpdump
from discord_voicerecv.tools.cli import main
from discord_voicerecv.tools.decode import DecodeError, decode_capture, parse_user_names

MODE = "aead_xchacha20_poly1305_rtpsize"
KEY = bytes(range(32))


def _stream(clip: str, ssrc: int, start: float, cipher_key: bytes) -> list[CapturedDatagram]:
    cipher = make_cipher(MODE, cipher_key)
    encoder = OpusEncoder()
    ext = build_extension_body([(1, b"\x80")])
    seq, ts = random.randrange(65536), random.randrange(2**32)
    out = []
    for i, pcm in enumerate(clip_frames(clip)):
        header = build_rtp_header(
            sequence=(seq + i) & 0xFFFF,
            timestamp=(ts + 960 * i) & 0xFFFFFFFF,
            ssrc=ssrc,
            ext_profile=0xBEDE,
            ext_words=len(ext) // 4,
        )
        packet = cipher.encrypt_rtp(header, ext + encoder.encode(pcm))
        out.append(CapturedDatagram(start + 0.02 * i, ("10.0.0.1", 50000), ("10.0.0.2", 40000), packet))
    return out


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    datagrams = _stream("en_us_male", 111, 100.0, KEY) + _stream("fr_female", 222, 101.0, KEY)
    datagrams.sort(key=lambda d: d.time)
    path = tmp_path / "voice.pcap"
    write_pcap(path, datagrams)
    return path


def _score(path: Path, clip: str, expected_start: float) -> tuple[float, float]:
    rate, _, samples = read_wav(path)
    score, lag = normalized_xcorr(samples, load_clip(clip))
    return score, lag / rate - expected_start


def test_decode_writes_aligned_tracks_that_match_the_sources(capture: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = decode_capture(capture, mode=MODE, key=KEY, names={111: "alice"}, out=out)
    files = {Path(p).name for p in summary["files"].values()}
    assert files == {"alice.wav", "222.wav"}
    assert summary["stats"].get("decrypt_failed", 0) == 0
    assert summary["stats"]["decoded"] >= 300
    alice_score, alice_offset = _score(out / "alice.wav", "en_us_male", 0.0)
    bob_score, bob_offset = _score(out / "222.wav", "fr_female", 1.0)
    assert alice_score >= 0.9 and bob_score >= 0.9
    assert abs(bob_offset - alice_offset) <= 0.02  # both relative to their own start in capture time
    sizes = {(out / name).stat().st_size for name in ("alice.wav", "222.wav", "mix.wav")}
    assert len(sizes) == 1


def test_a_wrong_key_of_the_right_length_writes_nothing_and_says_so(capture: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(DecodeError, match=r"wrong key or mode\?") as caught:
        decode_capture(capture, mode=MODE, key=bytes(32), names={}, out=out)
    assert caught.value.status == 1
    assert not out.exists()


def test_cli_wrong_key_exits_non_zero_and_keeps_an_earlier_recording(
    capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert main(["decode", str(capture), "--mode", MODE, "--key", KEY.hex(), "--out", str(out)]) == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    rc = main(["decode", str(capture), "--mode", MODE, "--key", "00" * 32, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "wrong key or mode?" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good


def _bad_arguments(tmp_path: Path, capture: Path) -> dict[str, tuple[list[str], str]]:
    base = {"capture": str(capture), "--mode": MODE, "--key": KEY.hex(), "--out": str(tmp_path / "out")}
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "junk.pcap").write_bytes(b"not a capture at all")

    def args(**changes: str) -> list[str]:
        merged = dict(base)
        merged.update({("capture" if k == "capture" else f"--{k}"): v for k, v in changes.items()})
        out = ["decode", merged.pop("capture")]
        for key, value in merged.items():
            out += [key, value]
        return out

    return {
        "missing capture": (args(capture=str(tmp_path / "nope.pcap")), "cannot read capture"),
        "unknown format": (args(capture=str(tmp_path / "junk.pcap")), "not an rtpdump, pcap or pcapng"),
        "key not hex": (args(key="zz" * 32), "hexadecimal"),
        "short key": (args(key="00" * 16), "must be 32 bytes"),
        "bad mode": (args(mode="rot13"), "supported: aead_aes256_gcm_rtpsize"),
        "bad user": ([*args(), "--user", "alice"], "SSRC=NAME"),
        "out is a file": (args(out=str(tmp_path / "a-file")), "not a folder"),
        "out under a file": (args(out=str(tmp_path / "a-file" / "sub")), "is not a folder"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing capture", "unknown format", "key not hex", "short key", "bad mode", "bad user", "out is a file",
     "out under a file"],
)  # fmt: skip
def test_cli_bad_arguments_one_line_exit_2_nothing_created(
    case: str, capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, message = _bad_arguments(tmp_path, capture)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "no file or folder created"


def test_cli_bad_argument_in_a_subprocess_prints_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "discord_voicerecv", "decode", str(tmp_path / "none.pcap"), "--mode", MODE,
         "--key", KEY.hex(), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot read capture") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_decode_reads_rtpdump_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "voice.rtp"
    write_rtpdump(path, _stream("de_male", 333, 5.0, KEY))
    rc = main(
        ["decode", str(path), "--mode", MODE, "--key", KEY.hex(), "--user", "333=dieter", "--out", str(tmp_path / "o")]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["streams"] == {"333": "dieter"}
    assert summary["stats"]["decoded"] > 100
    score, _ = _score(tmp_path / "o" / "dieter.wav", "de_male", 0.0)
    assert score >= 0.9


def test_parse_user_names_rejects_bad_items() -> None:
    assert parse_user_names(["1=a", "22=b c"]) == {1: "a", 22: "b c"}
    with pytest.raises(ValueError, match="SSRC=NAME"):
        parse_user_names(["alice"])


def _slots(path: Path) -> float:
    with wave.open(str(path), "rb") as f:
        return f.getnframes() / FRAME_SAMPLES


def test_tracks_end_where_the_capture_ends(tmp_path: Path) -> None:
    """The last datagram's slot is the last slot of every track: nothing is played out past the capture."""
    alice = _stream("en_us_male", 111, 100.0, KEY)[:150]
    bob = _stream("fr_female", 222, 100.5, KEY)[:50]  # stops a second before the capture ends
    path = tmp_path / "voice.pcap"
    write_pcap(path, sorted(alice + bob, key=lambda d: d.time))
    out = tmp_path / "out"
    summary = decode_capture(path, mode=MODE, key=KEY, names={}, out=out)
    assert summary["seconds"] == 150 * 0.02
    for name in ("111.wav", "222.wav", "mix.wav"):
        assert _slots(out / name) == 150, name
    assert summary["stats"]["decoded"] == 200


def test_the_capture_is_streamed_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capture: Path) -> None:
    """decode reads one datagram, feeds it, then reads the next: it never holds more than one of them."""
    fed = [0]
    most_held = [0]

    class CountingReceiver(Receiver):
        def feed(self, datagram: bytes) -> None:
            fed[0] += 1
            super().feed(datagram)

    def counting_reader(path: Path) -> Iterator[CapturedDatagram]:
        for read, datagram in enumerate(iter_capture(path)):
            most_held[0] = max(most_held[0], read - fed[0])
            yield datagram

    monkeypatch.setattr(decode, "Receiver", CountingReceiver)
    monkeypatch.setattr(decode, "iter_capture", counting_reader)
    summary = decode_capture(capture, mode=MODE, key=KEY, names={}, out=tmp_path / "out")
    assert fed[0] == summary["datagrams"] > 300
    assert most_held[0] == 0


def test_cli_a_write_failure_while_decoding_exits_non_zero(
    capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from discord_voicerecv.errors import SinkError
    from discord_voicerecv.sinks._wavfile import WavWriter

    write = WavWriter.write

    def disk_fills_up(self: WavWriter, data: bytes | memoryview) -> None:
        if self.data_bytes > 100 * 3840:
            raise SinkError(str(self.path), "No space left on device")
        write(self, data)

    monkeypatch.setattr(WavWriter, "write", disk_fills_up)
    rc = main(["decode", str(capture), "--mode", MODE, "--key", KEY.hex(), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1, "a recording cut short by the disk is not a success"
    assert err.startswith("error: ") and err.count("\n") == 1 and "No space left on device" in err, err
