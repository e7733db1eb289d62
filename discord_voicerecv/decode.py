"""Offline decode: replay a capture of voice datagrams through the receive pipeline into the files WaveSink writes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .capture import iter_capture
from .errors import E2EEDecryptError, MalformedPacket
from .protocol.rtp import is_rtcp, parse_rtp_header
from .receive import Receiver
from .receive.dave import is_dave_frame
from .sinks.base import SinkUser
from .sinks.wave import WaveSink

__all__ = ("decode_capture", "parse_user_names")

_TAIL = 0.5
"""Seconds of capture time played out after the last datagram so buffered frames reach the files."""


class _NoE2EEKeys:
    """A capture holds no MLS secrets: DAVE frames cannot be opened, so they are dropped, never decoded as noise."""

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        if is_dave_frame(frame):
            raise E2EEDecryptError("no_keys", "the capture carries DAVE frames; their keys are not in the capture")
        return frame


def parse_user_names(pairs: Iterable[str]) -> dict[int, str]:
    """``["1234=alice", ...]`` -> ``{1234: "alice"}``; raises ValueError naming the bad item."""
    names: dict[int, str] = {}
    for item in pairs:
        ssrc, sep, name = item.partition("=")
        if not sep or not name or not ssrc.strip().isdigit():
            raise ValueError(f"--user takes SSRC=NAME, got {item!r}")
        names[int(ssrc)] = name
    return names


def decode_capture(capture: Path, *, mode: str, key: bytes, names: dict[int, str], out: Path) -> dict[str, Any]:
    """Decode every RTP stream in ``capture`` to ``out`` (one WAV per SSRC plus ``mix.wav``), timed by capture time.

    Returns a summary: datagrams, per-stream files, and the receive counters (decoded, concealed, drops by reason).
    """
    datagrams = list(iter_capture(capture))
    ssrcs = _rtp_ssrcs(d.data for d in datagrams)

    def naming(user: SinkUser, user_id: int | None) -> str:
        return names.get(user_id, str(user_id)) if user_id is not None else "unknown"

    sink = WaveSink(out, naming=naming)
    now = [datagrams[0].time if datagrams else 0.0]
    receiver = Receiver(sink, decryptor=_NoE2EEKeys(), clock=lambda: now[0])
    receiver.set_transport(mode, key)
    for ssrc in ssrcs:
        receiver.map_ssrc(ssrc, ssrc)
    receiver.start(threaded=False)
    for datagram in datagrams:
        now[0] = datagram.time
        receiver.pump(until=datagram.time)
        receiver.feed(datagram.data)
    now[0] += _TAIL
    receiver.pump(until=now[0])
    receiver.stop()
    stats = receiver.stats().as_dict()
    return {
        "capture": str(capture),
        "datagrams": len(datagrams),
        "streams": {str(s): names.get(s, str(s)) for s in sorted(ssrcs)},
        "files": {str(k): str(v) for k, v in sink.files.items()},
        "mix": str(sink.mix_path) if sink.mix_path else None,
        "seconds": round(receiver.elapsed_slots * 0.02, 3),
        "stats": stats,
    }


def _rtp_ssrcs(payloads: Iterable[bytes]) -> set[int]:
    """SSRCs seen in RTP packets; they are mapped up front because a capture carries no op5 speaking events."""
    found: set[int] = set()
    for data in payloads:
        if len(data) < 12 or is_rtcp(data) or len(data) == 74:
            continue
        try:
            found.add(parse_rtp_header(data).ssrc)
        except MalformedPacket:
            continue
    return found
