"""Offline decode: replay a capture of voice datagrams through the receive pipeline into the files WaveSink writes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .capture import iter_capture
from .dave import is_dave_frame
from .errors import E2EEDecryptError, MalformedPacket
from .frames import FRAME_DURATION
from .protocol.ipdiscovery import is_request, is_response
from .protocol.rtp import is_rtcp, parse_rtp_header
from .reader import Receiver
from .sinks.base import SinkUser
from .sinks.wave import WaveSink

__all__ = ("decode_capture", "parse_user_names")


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

    The capture is read one datagram at a time, so memory does not grow with its length; every track ends with the
    slot of the last datagram. Returns a summary: datagrams, per-stream files, and the receive counters (decoded,
    concealed, drops by reason).
    """

    def naming(user: SinkUser, user_id: int | None) -> str:
        return names.get(user_id, str(user_id)) if user_id is not None else "unknown"

    sink = WaveSink(out, naming=naming)
    now = [0.0]
    receiver = Receiver(sink, decryptor=_NoE2EEKeys(), clock=lambda: now[0])
    receiver.set_transport(mode, key)
    ssrcs: set[int] = set()
    count = 0
    for datagram in iter_capture(capture):
        now[0] = datagram.time
        if count == 0:
            receiver.start(threaded=False)
        else:
            receiver.pump(until=datagram.time)
        count += 1
        ssrc = _rtp_ssrc(datagram.data)
        if ssrc is not None and ssrc not in ssrcs:
            ssrcs.add(ssrc)
            receiver.map_ssrc(ssrc, ssrc)  # a capture carries no op5 speaking events
        receiver.feed(datagram.data)
    if count == 0:
        receiver.start(threaded=False)
    else:
        now[0] += FRAME_DURATION  # the last datagram's 20 ms
    receiver.stop()  # plays out what is buffered up to now, and no further
    stats = receiver.stats().as_dict()
    return {
        "capture": str(capture),
        "datagrams": count,
        "streams": {str(s): names.get(s, str(s)) for s in sorted(ssrcs)},
        "files": {str(k): str(v) for k, v in sink.files.items()},
        "mix": str(sink.mix_path) if sink.mix_path else None,
        "seconds": round(receiver.elapsed_slots * FRAME_DURATION, 3),
        "stats": stats,
    }


def _rtp_ssrc(data: bytes) -> int | None:
    """The SSRC of an RTP packet; None for RTCP, IP discovery and anything that does not parse as RTP."""
    if len(data) < 12 or is_rtcp(data) or is_request(data) or is_response(data):
        return None
    try:
        return parse_rtp_header(data).ssrc
    except MalformedPacket:
        return None
