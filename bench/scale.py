"""Many voice connections in one process: N Receivers, each with the stream's speakers, manual or threaded."""

from __future__ import annotations

import time
from typing import Any

from measure import peak_rss_mb, reset_peak_rss, rss_mb
from pipeline import CountingSink
from stream import Stream

from discord_voicerecv.receive import Receiver

__all__ = ("scale_manual", "scale_threaded")


def _receivers(stream: Stream, count: int, clock: Any) -> tuple[list[Receiver], list[CountingSink]]:
    sinks = [CountingSink() for _ in range(count)]
    receivers = []
    for sink in sinks:
        receiver = Receiver(sink, clock=clock)
        receiver.set_transport(stream.mode, stream.key)
        for ssrc, user in stream.ssrc_users.items():
            receiver.map_ssrc(ssrc, user)
        receivers.append(receiver)
    return receivers, sinks


def scale_manual(stream: Stream, count: int) -> dict[str, Any]:
    """One thread drives ``count`` Receivers slot by slot (fake clock): CPU per second of audio."""
    now = [0.0]
    receivers, sinks = _receivers(stream, count, lambda: now[0])
    for receiver in receivers:
        receiver.start(threaded=False)
    reset_peak_rss()
    before = rss_mb()
    c0, w0 = time.process_time(), time.perf_counter()
    for k, slot in enumerate(stream.slots):
        now[0] = 0.02 * k + 0.004
        for receiver in receivers:
            feed = receiver.feed
            for datagram in slot:
                feed(datagram)
            receiver.pump(now[0])
    now[0] += 1.0
    for receiver in receivers:
        receiver.stop()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    seconds = len(stream.slots) * 0.02
    frames = sum(s.frames for s in sinks)
    return {
        "receivers": count,
        "streams": count * len(stream.ssrc_users),
        "audio_seconds": seconds,
        "cpu_per_audio_second": cpu / seconds,
        "realtime_factor": seconds / wall,
        "frames": frames,
        "expected": count * stream.packets,
        "rss_growth": peak_rss_mb() - before,
    }


def scale_threaded(stream: Stream, count: int) -> dict[str, Any]:
    """``count`` threaded Receivers fed at real time by one socket-like thread: can they keep up?"""
    receivers, sinks = _receivers(stream, count, time.monotonic)
    for receiver in receivers:
        receiver.start(threaded=True)
    reset_peak_rss()
    before = rss_mb()
    c0, w0 = time.process_time(), time.perf_counter()
    t0 = time.monotonic()
    behind = 0.0
    for k, slot in enumerate(stream.slots):
        delay = t0 + 0.02 * k + 0.004 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            behind = max(behind, -delay)
        for receiver in receivers:
            feed = receiver.feed
            for datagram in slot:
                feed(datagram)
    time.sleep(0.2)
    for receiver in receivers:
        receiver.stop()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    seconds = len(stream.slots) * 0.02
    stats = [r.stats() for r in receivers]
    return {
        "receivers": count,
        "streams": count * len(stream.ssrc_users),
        "audio_seconds": seconds,
        "cpu_per_audio_second": cpu / seconds,
        "cores_busy": cpu / wall,
        "frames": sum(s.frames for s in sinks),
        "expected": count * stream.packets,
        "late": sum(s["late"] for s in stats),
        "sink_queue_full": sum(s["sink_queue_full"] for s in stats),
        "feeder_max_behind_ms": behind * 1000,
        "rss_growth": peak_rss_mb() - before,
    }
