"""Offline decode speed: a long multi-speaker pcap through ``decode_capture`` (what ``discord-voicerecv decode``
runs), as a real-time factor, with resident memory sampled while the WAV files grow."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from measure import peak_rss_mb, reset_peak_rss, rss_mb
from stream import XCHACHA, Speech

from discord_voicerecv.protocol.rtp import EXTENSION_PROFILE_ONE_BYTE, build_extension_body, build_rtp_header
from discord_voicerecv.protocol.transport import make_cipher
from discord_voicerecv.tools.capture import CapturedDatagram, write_pcap
from discord_voicerecv.tools.decode import decode_capture

__all__ = ("capture_rtf",)

_SRC = ("127.0.0.1", 50001)
_DST = ("127.0.0.1", 50002)


def _datagrams(speech: Speech, seconds: float, key: bytes, start: float) -> Iterator[CapturedDatagram]:
    rng = random.Random(7)
    speakers = len(speech.frames)
    ciphers = [make_cipher(XCHACHA, key) for _ in range(speakers)]
    body = build_extension_body([(1, b"\x30")], EXTENSION_PROFILE_ONE_BYTE)
    seq0 = [rng.randrange(1 << 16) for _ in range(speakers)]
    ts0 = [rng.randrange(1 << 32) for _ in range(speakers)]
    pools = speech.frames
    for k in range(round(seconds * 50)):
        for i in range(speakers):
            pool = pools[i]
            header = build_rtp_header(
                sequence=seq0[i] + k,
                timestamp=ts0[i] + 960 * k,
                ssrc=2000 + i,
                ext_profile=EXTENSION_PROFILE_ONE_BYTE,
                ext_words=1,
            )
            arrival = start + 0.02 * k + 0.002 + 0.003 * rng.random()
            yield CapturedDatagram(arrival, _SRC, _DST, ciphers[i].encrypt_rtp(header, body + pool[k % len(pool)]))


class _Sampler(threading.Thread):
    """Resident memory and the mix file's size every ``interval`` seconds."""

    def __init__(self, mix: Path, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.mix = mix
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                size = self.mix.stat().st_size
            except OSError:
                size = 0
            self.samples.append((rss_mb(), size))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def capture_rtf(speech: Speech, seconds: float, workdir: Path | None = None) -> dict[str, Any]:
    """Write a ``seconds``-long pcap of every speaker in ``speech``, decode it, report speed and memory.

    Everything goes to a temporary directory that is removed afterwards (WAV output is about 0.7 GB per track
    hour).
    """
    tmp = Path(tempfile.mkdtemp(prefix="voicerecv-capture-", dir=workdir))
    try:
        key = bytes(range(32))
        pcap = tmp / "voice.pcap"
        t = time.perf_counter()
        count = write_pcap(pcap, _datagrams(speech, seconds, key, 1_700_000_000.0))
        generated = time.perf_counter() - t
        out = tmp / "out"
        sampler = _Sampler(out / "mix.wav")
        rss_before = rss_mb()
        reset_peak_rss()
        sampler.start()
        c0, w0 = time.process_time(), time.perf_counter()
        summary = decode_capture(pcap, mode=XCHACHA, key=key, names={}, out=out)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        rss_peak = peak_rss_mb()
        sampler.stop()
        final = max((size for _, size in sampler.samples), default=0)
        steady = [rss for rss, size in sampler.samples if final and size >= final * 0.1]
        drift = max(steady) - steady[0] if steady else float("nan")
        decoded = summary["stats"].get("decoded", 0)
        return {
            "speakers": len(speech.frames),
            "audio_seconds": seconds,
            "datagrams": count,
            "pcap_mb": pcap.stat().st_size / 1e6,
            "generate_seconds": generated,
            "wall": wall,
            "cpu": cpu,
            "rtf": seconds / wall,
            "decoded": decoded,
            "dropped": summary["stats"].get("decrypt_failed", 0) + summary["stats"].get("late", 0),
            "rss_before": rss_before,
            "rss_peak": rss_peak,
            "rss_start": steady[0] if steady else float("nan"),
            "rss_drift": drift,
            "wav_gb": sum(p.stat().st_size for p in out.glob("*.wav")) / 1e9,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
