"""Does an ffmpeg's native Opus decoder play Opus that carries in-band FEC (LBRR)?

``python bench/ffmpeg_fec.py [FFMPEG ...]`` encodes a shipped speech clip twice with our libopus binding, at
Discord's settings (64 kbit/s stereo, ``voip``, in-band FEC on with 10 % expected loss) and with FEC off, writes
each as an Ogg Opus file, and decodes both with every ffmpeg given (default: ``find_ffmpeg()``) through its native
``opus`` decoder. Each row is the normalised correlation of that decode with libopus' decode of the same packets:
about 1 means the native decoder plays the file, about 0 means it plays noise. The last column is the FEC stream
written by ``OggOpusSink(reencode=True)``, against the same reference (one generation of coding loss included).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

from discord_voicerecv.ffmpeg import find_ffmpeg  # noqa: E402
from discord_voicerecv.frames import FRAME_SAMPLES, VoiceFrame  # noqa: E402
from discord_voicerecv.opus import OpusDecoder, OpusEncoder  # noqa: E402
from discord_voicerecv.sinks import OggOpusSink  # noqa: E402
from discord_voicerecv.sinks._ogg import OggOpusWriter  # noqa: E402
from discord_voicerecv.testing.clips import clip_frames  # noqa: E402

CLIP = "en_us_male"


def encode(path: Path, *, fec: bool) -> tuple[bytes, list[bytes]]:
    """Write the clip as Ogg Opus; return libopus' own decode of the packets written, and the packets."""
    encoder = OpusEncoder(application="voip", fec=fec, expected_loss_pct=10 if fec else 0)
    decoder = OpusDecoder()
    writer = OggOpusWriter(path, serial=1, vendor="bench", comments=[])
    reference, packets = [], []
    for pcm in clip_frames(CLIP):
        packet = encoder.encode(pcm)
        writer.add(packet, FRAME_SAMPLES)
        packets.append(packet)
        reference.append(decoder.decode(packet))
    writer.close(writer.samples)
    return b"".join(reference), packets


def reencode(directory: Path, packets: list[bytes]) -> Path:
    """The packets through ``OggOpusSink(reencode=True)``, as one speaker from slot 0."""
    sink = OggOpusSink(directory, reencode=True)
    for tick, packet in enumerate(packets):
        sink.write(None, VoiceFrame(1, 1, tick, b"", packet, tick, tick * FRAME_SAMPLES))
        sink.advance(tick)
    sink.cleanup()
    return next(iter(sink.files.values()))


def native_decode(ffmpeg: str, path: Path) -> bytes:
    command = [ffmpeg, "-v", "error", "-c:a", "opus", "-i", str(path), "-f", "s16le", "-ac", "2", "-ar", "48000", "-"]
    return subprocess.run(command, capture_output=True, check=True).stdout


def correlation(a: bytes, b: bytes) -> float:
    n = min(len(a), len(b)) // 2
    x = np.frombuffer(a[: 2 * n], dtype="<i2").astype(float)
    y = np.frombuffer(b[: 2 * n], dtype="<i2").astype(float)
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))


def version(ffmpeg: str) -> str:
    first = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    found = re.search(r"version (\S+)", first)
    return found.group(1) if found else first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ffmpeg", nargs="*", help="ffmpeg executables to compare (default: find_ffmpeg())")
    args = parser.parse_args()
    binaries = args.ffmpeg or [find_ffmpeg()]
    with tempfile.TemporaryDirectory() as tmp:
        files = {fec: Path(tmp) / f"fec{int(fec)}.opus" for fec in (True, False)}
        encoded = {fec: encode(path, fec=fec) for fec, path in files.items()}
        references = {fec: reference for fec, (reference, _) in encoded.items()}
        reencoded = reencode(Path(tmp) / "reencoded", encoded[True][1])
        print(f"{'ffmpeg':<40} {'FEC on':>8} {'FEC off':>8} {'re-encoded':>10}")
        for ffmpeg in binaries:
            scores = [correlation(native_decode(ffmpeg, files[fec]), references[fec]) for fec in (True, False)]
            scores.append(correlation(native_decode(ffmpeg, reencoded), references[True]))
            print(f"{version(ffmpeg):<40} {scores[0]:>8.4f} {scores[1]:>8.4f} {scores[2]:>10.4f}")


if __name__ == "__main__":
    main()
