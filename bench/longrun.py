"""An hour of recording in a few minutes: does the receiver's memory stay flat?

``python bench/longrun.py [--minutes 60] [--speakers 10]`` drives a :class:`Receiver` in manual mode
(``start(threaded=False)`` and ``pump()``) on a fake clock with pre-encoded Opus packets, AES-GCM transport
encryption and a network that loses, reorders and delays packets. Speakers talk in spurts with pauses, and now and
then one leaves and rejoins with a new SSRC. Every few simulated minutes it prints the process RSS and what the
receiver holds; at the end it says whether RSS after warm-up stayed within the bound (10 MB by default).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from discord_voicerecv.frames import FRAME_BYTES, FRAME_DURATION, OPUS_SILENCE, VoiceFrame
from discord_voicerecv.opus import OpusEncoder
from discord_voicerecv.protocol.rtp import build_extension_body, build_rtp_header
from discord_voicerecv.protocol.transport import make_cipher
from discord_voicerecv.receive import Receiver
from discord_voicerecv.sinks.base import AudioSink, SinkUser

MODE = "aead_aes256_gcm_rtpsize"
KEY = bytes(range(32))
SLOT = FRAME_DURATION
SILENCE = OPUS_SILENCE


class _Clock:
    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = 10_000.0

    def __call__(self) -> float:
        return self.t


class _Sink(AudioSink):
    """Takes PCM (so every frame is decoded) and keeps nothing but counts."""

    def __init__(self) -> None:
        self.frames = 0
        self.slots = 0

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.frames += 1

    def advance(self, tick: int) -> None:
        self.slots = tick + 1


def _encoded_speech(count: int, seed: int) -> list[bytes]:
    """Opus packets of a wandering two-tone signal with noise (FEC on), encoded once."""
    rng = random.Random(seed)
    encoder = OpusEncoder(fec=True, expected_loss_pct=10)
    packets = []
    phase = 0.0
    for _ in range(count):
        freq = rng.uniform(120, 900)
        samples = bytearray()
        for _ in range(960):
            phase += 2 * math.pi * freq / 48_000
            value = int(7000 * math.sin(phase) + 2500 * math.sin(3.1 * phase) + rng.gauss(0, 400))
            sample = max(-32768, min(32767, value)).to_bytes(2, "little", signed=True)
            samples += sample + sample
        assert len(samples) == FRAME_BYTES
        packets.append(encoder.encode(bytes(samples)))
    return packets


@dataclass
class _Talker:
    user_id: int
    ssrc: int
    rng: random.Random
    sequence: int = 0
    timestamp: int = 0
    talking_until: float = 0.0
    silent_until: float = 0.0
    trailing: int = 0
    sent: int = 0
    next_frame: int = 0
    rejoins: int = field(default=0)


def run(minutes: float, speakers: int, seed: int, report_every: float, bound_mb: float) -> bool:
    rng = random.Random(seed)
    clock = _Clock()
    sink = _Sink()
    rx = Receiver(sink, clock=clock, user_resolver=lambda uid: None, playout_delay=0.1)
    rx.set_transport(MODE, KEY)
    cipher = make_cipher(MODE, KEY)
    speech = _encoded_speech(250, seed)
    ext = build_extension_body([(1, b"\x9e")])
    next_ssrc = 1000
    talkers = []
    for n in range(speakers):
        talkers.append(_Talker(100 + n, next_ssrc, random.Random(rng.random()), rng.randrange(65536)))
        rx.map_ssrc(next_ssrc, 100 + n)
        next_ssrc += 1
    rx.start(threaded=False)
    t0 = clock.t
    in_flight: list[tuple[float, int, bytes]] = []
    order = 0
    total_slots = int(minutes * 60 / SLOT)
    report_slots = int(report_every * 60 / SLOT)
    rss: list[tuple[float, float]] = []
    started = time.perf_counter()
    print(f"{'sim min':>7} {'RSS MB':>8} {'streams':>7} {'held':>5} {'frames':>9} {'decoded':>9} {'fec+plc':>8} "
          f"{'late':>6} {'wall s':>7}")  # fmt: skip
    for slot in range(total_slots):
        now = t0 + slot * SLOT
        for talker in talkers:
            packet = _next_packet(talker, now, speech, ext, cipher, rng)
            if packet is None:
                continue
            if rng.random() < 0.02:
                continue
            delay = 0.005 + rng.random() * 0.03 + (0.05 if rng.random() < 0.01 else 0.0)
            order += 1
            heapq.heappush(in_flight, (now + delay, order, packet))
        if rng.random() < speakers / (10 * 60 / SLOT):
            talker = rng.choice(talkers)
            rx.forget_user(talker.user_id)
            talker.ssrc = next_ssrc
            talker.rejoins += 1
            next_ssrc += 1
            rx.map_ssrc(talker.ssrc, talker.user_id)
        horizon = now + SLOT
        while in_flight and in_flight[0][0] < horizon:
            arrival, _, packet = heapq.heappop(in_flight)
            clock.t = max(clock.t, arrival)
            rx.pump(until=clock.t)
            rx.feed(packet)
        clock.t = horizon
        rx.pump(until=horizon)
        if (slot + 1) % report_slots == 0:
            gc.collect()
            mb = _rss() / 1e6
            minute = (slot + 1) * SLOT / 60
            rss.append((minute, mb))
            stats = rx.stats()
            print(
                f"{minute:>7.0f} {mb:>8.1f} {len(rx._streams):>7} {len(rx._unmapped.ssrcs()):>5} {stats['frames']:>9} "
                f"{stats['decoded']:>9} {stats['fec'] + stats['plc']:>8} {stats['late']:>6} "
                f"{time.perf_counter() - started:>7.0f}",
                flush=True,
            )
    rx.stop()
    stats = rx.stats()
    warm = [mb for minute, mb in rss if minute >= min(5.0, minutes / 4)]
    growth = max(warm) - min(warm) if warm else 0.0
    flat = growth <= bound_mb
    print(
        f"\n{minutes:g} simulated minutes, {speakers} speakers, {stats['packets']} datagrams, {sink.frames} frames, "
        f"{sum(t.rejoins for t in talkers)} rejoins, {time.perf_counter() - started:.0f} s wall; "
        f"internal errors {stats['internal_error']}"
    )
    print(f"RSS after warm-up: {min(warm):.1f}..{max(warm):.1f} MB, spread {growth:.1f} MB "
          f"({'flat' if flat else 'GROWING'}, bound {bound_mb:g} MB)")  # fmt: skip
    return flat and stats["internal_error"] == 0


def _next_packet(
    talker: _Talker, now: float, speech: list[bytes], ext: bytes, cipher: object, rng: random.Random
) -> bytes | None:
    """The talker's packet for the slot starting at ``now``, or None while it is silent."""
    if now >= talker.talking_until and talker.trailing == 0:
        if now < talker.silent_until:
            talker.timestamp = (talker.timestamp + 960) & 0xFFFFFFFF
            return None
        talker.talking_until = now + talker.rng.uniform(1.0, 8.0)
        talker.silent_until = talker.talking_until + talker.rng.uniform(0.5, 15.0)
        talker.trailing = 5
    if now >= talker.talking_until:
        talker.trailing -= 1
        payload = SILENCE
    else:
        payload = speech[talker.next_frame % len(speech)]
        talker.next_frame += 1
    header = build_rtp_header(
        sequence=talker.sequence, timestamp=talker.timestamp, ssrc=talker.ssrc, ext_profile=0xBEDE, ext_words=1
    )
    talker.sequence = (talker.sequence + 1) & 0xFFFF
    talker.timestamp = (talker.timestamp + 960) & 0xFFFFFFFF
    talker.sent += 1
    return cipher.encrypt_rtp(header, ext + payload)  # type: ignore[attr-defined, no-any-return]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="simulated minutes (default 60)")
    parser.add_argument("--speakers", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report-every", type=float, default=5.0, metavar="MIN", help="simulated minutes")
    parser.add_argument("--bound", type=float, default=10.0, metavar="MB", help="allowed RSS spread after warm-up")
    args = parser.parse_args()
    return 0 if run(args.minutes, args.speakers, args.seed, args.report_every, args.bound) else 1


if __name__ == "__main__":
    sys.exit(main())
