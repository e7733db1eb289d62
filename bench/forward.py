"""CPU cost of RTPForwardSink per forwarded packet, next to a no-op sink driven the same way in the same run.

Frames of real Opus speech go straight into ``write``/``advance`` as fast as the machine allows, so the figure is
the sink's own work per packet (building the RTP header, the ``sendto`` system call, the per-slot bookkeeping and
the RTCP reports), with no waiting for the network or the playout clock. Every stream has a bound receiver on
loopback, as it would with ffmpeg listening, so the kernel delivers the datagrams instead of answering with ICMP.

Run from the repository with the package installed (``make setup``, or ``PYTHONPATH=.``):
``python bench/forward.py [--speakers 5] [--seconds 60] [--repeats 5]``. Exits 1 when forwarding costs more
than the budget (10 us per packet).
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from discord_voicerecv.frames import FRAME_SAMPLES, VoiceFrame
from discord_voicerecv.opus import OpusEncoder
from discord_voicerecv.sinks import AudioSink, RTPForwardSink, SinkUser
from discord_voicerecv.testing.clips import clip_frames, list_clips

BUDGET_US = 10.0
_RCVBUF = 4 << 20


class NoopSink(AudioSink):
    """Takes every call and does nothing: what the loop feeding a sink costs by itself."""

    wants_pcm = False

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        pass

    def advance(self, tick: int) -> None:
        pass


@dataclass
class Result:
    name: str
    packets: int
    slots: int
    wall: float
    cpu: float

    @property
    def us_per_packet(self) -> float:
        return self.cpu / self.packets * 1e6

    @property
    def us_per_slot(self) -> float:
        return self.cpu / self.slots * 1e6


def speech(speakers: int, slots: int, talk: float, with_pcm: bool) -> list[list[VoiceFrame]]:
    """Per slot, the frames of the speakers talking in it: real Opus packets of the shipped clips.

    With ``talk`` < 1 each speaker talks in spurts of 1-3 s and is silent the rest of the time, like a call.
    """
    rng = random.Random(3)
    names = list_clips()
    pools = []
    for i in range(speakers):
        encoder = OpusEncoder()
        frames = list(clip_frames(names[i % len(names)], loop=False))
        pools.append([(encoder.encode(frame), frame) for frame in frames])
    timeline: list[list[VoiceFrame]] = [[] for _ in range(slots)]
    for i in range(speakers):
        tick = 0
        while tick < slots:
            spurt = rng.randrange(50, 150)
            for k in range(tick, min(slots, tick + spurt)):
                packet, pcm = pools[i][k % len(pools[i])]
                timeline[k].append(
                    VoiceFrame(1000 + i, 100 + i, k, pcm if with_pcm else b"", packet, k & 0xFFFF, k * FRAME_SAMPLES)
                )
            tick += spurt
            if talk < 1:
                tick += round(spurt * (1 - talk) / talk)
    return timeline


def drive(sink: AudioSink, timeline: list[list[VoiceFrame]]) -> tuple[float, float]:
    """Feed every slot to ``sink``; wall and CPU seconds."""
    write, advance = sink.write, sink.advance
    wall, cpu = time.perf_counter(), time.process_time()
    for tick, frames in enumerate(timeline):
        for frame in frames:
            write(None, frame)
        advance(tick)
    return time.perf_counter() - wall, time.process_time() - cpu


def receivers(count: int) -> tuple[int, list[socket.socket]]:
    """``count`` consecutive bound RTP/RTCP port pairs on loopback, with big buffers."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000, 2)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + 2 * count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
                sock.bind(("127.0.0.1", port))
                sock.setblocking(False)
        except OSError:
            for sock in socks:
                sock.close()
            continue
        return base, socks
    raise RuntimeError("no free UDP ports")


def drain(socks: list[socket.socket]) -> int:
    count = 0
    for sock in socks:
        while True:
            try:
                sock.recv(4096)
            except BlockingIOError:
                break
            count += 1
    return count


def measure(
    name: str,
    make: Callable[[int], AudioSink],
    timeline: list[list[VoiceFrame]],
    socks: list[socket.socket],
    base: int,
    repeats: int,
    packets_of: Callable[[AudioSink], int],
) -> Result:
    runs = []
    packets = 0
    for _ in range(repeats):
        drain(socks)
        sink = make(base)
        wall, cpu = drive(sink, timeline)
        packets = packets_of(sink)
        sink.cleanup()
        runs.append((cpu, wall))
    cpu, wall = sorted(runs)[len(runs) // 2]
    return Result(name, packets, len(timeline), wall, cpu)


def sent(sink: AudioSink) -> int:
    assert isinstance(sink, RTPForwardSink)
    outputs = [out for out in sink._outputs.values() if out is not None]
    if sink._mix is not None:
        outputs.append(sink._mix)
    return sum(out.packets for out in outputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    slots = round(args.seconds * 50)
    speakers = args.speakers
    base, socks = receivers(speakers + 1)
    talking = speech(speakers, slots, 1.0, with_pcm=False)
    call = speech(speakers, slots, 0.4, with_pcm=False)
    call_pcm = speech(speakers, slots, 0.4, with_pcm=True)
    frames_talking = sum(map(len, talking))
    frames_call = sum(map(len, call))

    def forward(silence: str, **options: object) -> Callable[[int], AudioSink]:
        return lambda port: RTPForwardSink(base_port=port, silence=silence, bye_delay=0, **options)  # type: ignore[arg-type]

    rows = [
        measure(
            "no-op sink, everybody talking",
            lambda _: NoopSink(),
            talking,
            socks,
            base,
            args.repeats,
            lambda _: frames_talking,
        ),
        measure("forward, everybody talking", forward("skip"), talking, socks, base, args.repeats, sent),
        measure(
            "no-op sink, call (40% talk)", lambda _: NoopSink(), call, socks, base, args.repeats, lambda _: frames_call
        ),
        measure("forward skip, call", forward("skip"), call, socks, base, args.repeats, sent),
        measure("forward opus_silence, call", forward("opus_silence"), call, socks, base, args.repeats, sent),
        measure("forward + mix, call", forward("opus_silence", mix=True), call_pcm, socks, base, args.repeats, sent),
    ]
    for sock in socks:
        sock.close()

    print(
        f"RTPForwardSink, {speakers} speakers, {args.seconds:g} s of timeline ({slots} slots), "
        f"median of {args.repeats} runs, process CPU time"
    )
    print(f"{'case':34} {'packets':>9} {'us/packet':>10} {'us/slot':>9} {'x realtime':>11}")
    for row in rows:
        speed = args.seconds / row.wall if row.wall else float("inf")
        print(f"{row.name:34} {row.packets:9d} {row.us_per_packet:10.2f} {row.us_per_slot:9.1f} {speed:11.0f}")
    worst = max(rows[1].us_per_packet, rows[3].us_per_packet, rows[4].us_per_packet)
    verdict = "ok" if worst <= BUDGET_US else "OVER BUDGET"
    print(
        f"forwarding: worst {worst:.2f} us/packet (no-op baseline {rows[0].us_per_packet:.2f}), "
        f"budget {BUDGET_US:g} us: {verdict}"
    )
    print(
        f"mix (sum of the PCM frames + one libopus encode per slot): {rows[5].us_per_slot - rows[4].us_per_slot:.0f} "
        "us/slot on top of forwarding"
    )
    return 0 if worst <= BUDGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
