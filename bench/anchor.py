"""Drive discord-ext-voice-recv's own packet path on the benchmark's datagrams; runs in ``bench/.venv-anchor``.

This file is executed by that venv's interpreter and imports nothing from discord_voicerecv. It builds the
extension's ``AudioReader`` around a stand-in voice client (the attributes its packet path reads: mode, secret key,
SSRC map, guild member lookup) and hands every datagram to ``AudioReader.callback``, the function discord.py's
socket reader calls. Decoding happens where the extension does it, in ``PacketDecoder.pop_data`` into the sink:

- ``manual``: after each slot's datagrams, this thread pops every ready decoder once (the body of the extension's
  router loop, without the thread hand-off), so only CPU work is measured;
- ``paced``: datagrams arrive at real time and the extension's router, event and speaking-timer threads run (its
  UDP keepalive thread, which needs a socket, is left out).

The extension supports neither AES-GCM nor DAVE, so it is fed xchacha20 streams without DAVE only.
Prints one JSON object: per-run process CPU seconds, wall seconds, packets, frames and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import threading
import time
from typing import Any

import discord
import discord.opus
from discord.ext.voice_recv import BasicSink
from discord.ext.voice_recv.reader import AudioReader

_RECORD = struct.Struct("<IH")


def _read(path: str) -> tuple[str, bytes, dict[int, int], list[list[bytes]]]:
    with open(path, "rb") as f:
        mode, key, users = f.readline().decode().split()
        ssrc_users = {int(s): int(u) for s, u in (item.split(":") for item in users.split(","))}
        data = f.read()
    slots: list[list[bytes]] = []
    pos = 0
    while pos < len(data):
        slot, size = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        while len(slots) <= slot:
            slots.append([])
        slots[slot].append(data[pos : pos + size])
        pos += size
    return mode, bytes.fromhex(key), ssrc_users, slots


class _Guild:
    def __init__(self, users: dict[int, Any]) -> None:
        self._members = users

    def get_member(self, user_id: int) -> Any:
        return self._members.get(user_id)


class _Client:
    def get_user(self, user_id: int) -> Any:
        return None


class _Connection:
    def add_socket_listener(self, callback: Any) -> None:
        pass

    def remove_socket_listener(self, callback: Any) -> None:
        pass


class _VoiceClient:
    """The part of VoiceRecvClient that the extension's packet path touches."""

    def __init__(self, mode: str, key: bytes, ssrc_users: dict[int, int]) -> None:
        self.mode = mode
        self.secret_key = list(key)
        self._ssrc_to_id = dict(ssrc_users)
        self.guild = _Guild({u: discord.Object(id=u) for u in ssrc_users.values()})
        self.client = _Client()
        self._connection = _Connection()
        self._reader: Any = None

    def _get_id_from_ssrc(self, ssrc: int) -> int | None:
        return self._ssrc_to_id.get(ssrc)

    def dispatch_sink(self, event: str, *args: Any, **kwargs: Any) -> None:
        if self._reader:
            self._reader.event_router.dispatch(event, *args, **kwargs)

    def stop_listening(self) -> None:
        pass

    def wait_until_connected(self) -> None:
        pass


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return float(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM:")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _build(mode: str, key: bytes, ssrc_users: dict[int, int]) -> tuple[AudioReader, list[int]]:
    counter = [0, 0]

    def on_voice(user: Any, data: Any) -> None:
        counter[0] += 1
        counter[1] += len(data.pcm)

    vc = _VoiceClient(mode, key, ssrc_users)
    reader = AudioReader(BasicSink(on_voice), vc)  # type: ignore[arg-type]
    vc._reader = reader
    for ssrc, user in ssrc_users.items():
        reader.packet_router.set_user_id(ssrc, user)
    return reader, counter


def run_manual(mode: str, key: bytes, ssrc_users: dict[int, int], slots: list[list[bytes]]) -> dict[str, Any]:
    reader, counter = _build(mode, key, ssrc_users)
    router = reader.packet_router
    callback = reader.callback
    sink = router.sink
    _reset_peak()
    before = _status_mb("VmRSS:")
    c0, w0 = time.process_time(), time.perf_counter()
    for slot in slots:
        for datagram in slot:
            callback(datagram)
        for decoder in router.waiter.items:
            data = decoder.pop_data()
            if data is not None:
                sink.write(data.source, data)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {
        "cpu": cpu,
        "wall": wall,
        "packets": sum(map(len, slots)),
        "frames": counter[0],
        "rss": _peak_rss_mb(),
        "rss_before": before,
    }


def run_paced(mode: str, key: bytes, ssrc_users: dict[int, int], slots: list[list[bytes]]) -> dict[str, Any]:
    reader, counter = _build(mode, key, ssrc_users)
    _reset_peak()
    before = _status_mb("VmRSS:")
    c0, w0 = time.process_time(), time.perf_counter()
    reader.speaking_timer.start()
    reader.event_router.start()
    reader.packet_router.start()
    callback = reader.callback
    t0 = time.monotonic()
    for k, slot in enumerate(slots):
        for i, datagram in enumerate(slot):
            # the benchmark's arrival schedule (stream.arrival_offset): speaker i of n at 1 + 18 * i / n ms
            delay = t0 + 0.02 * k + 0.001 + 0.018 * i / len(slot) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            callback(datagram)
    time.sleep(0.14)
    reader.packet_router.stop()
    reader.event_router.stop()
    reader.speaking_timer.stop()
    reader.packet_router.join(1.0)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {
        "cpu": cpu,
        "wall": wall,
        "packets": sum(map(len, slots)),
        "frames": counter[0],
        "rss": _peak_rss_mb(),
        "rss_before": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("packets")
    parser.add_argument("--libopus", required=True)
    parser.add_argument("--how", choices=("manual", "paced"), default="manual")
    args = parser.parse_args()
    discord.opus.load_opus(args.libopus)
    mode, key, ssrc_users, slots = _read(args.packets)
    run = run_manual if args.how == "manual" else run_paced
    result = run(mode, key, ssrc_users, slots)
    result["threads_left"] = threading.active_count()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
