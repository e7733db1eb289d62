"""Offline decode: replay a capture of voice datagrams through the receive pipeline into the files WaveSink writes."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import CaptureFormatError, DecryptionFailed, E2EEDecryptError, MalformedPacket, SinkError
from ..frames import FRAME_DURATION
from ..protocol.ipdiscovery import is_request, is_response
from ..protocol.rtp import is_rtcp, parse_rtp_header
from ..protocol.transport import SUPPORTED_MODES, make_cipher
from ..receive import Receiver
from ..receive.dave import is_dave_frame
from ..sinks._naming import directory_problem
from ..sinks.base import SinkUser
from ..sinks.wave import WaveSink
from .capture import iter_capture

__all__ = ("DecodeError", "check_arguments", "decode_capture", "parse_user_names")

_PROBE_PACKETS = 200
"""RTP packets at the start of a capture tried against the key before anything is written: one must open."""
_KEY_BYTES = 32


class DecodeError(Exception):
    """A bad argument or a capture that cannot be decoded, told in one line; nothing was written.

    ``status`` is the exit status the command line uses: 2 for a bad argument, 1 for a capture that nothing in
    it authenticates with the key and mode given.
    """

    def __init__(self, message: str, *, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def check_arguments(
    capture: Path, *, mode: str, key: str, users: Sequence[str], out: Path
) -> tuple[bytes, dict[int, str]]:
    """Check every ``decode`` argument before anything is touched; the key as bytes and the names by SSRC.

    Raises
    ------
    DecodeError
        Naming the first bad argument.
    """
    try:
        with open(capture, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise DecodeError(f"cannot read capture {str(capture)!r}: {exc.strerror or exc}") from None
    if mode not in SUPPORTED_MODES:
        raise DecodeError(f"unsupported --mode {mode!r}; supported: {', '.join(SUPPORTED_MODES)}")
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raise DecodeError(f"--key must be {_KEY_BYTES * 2} hexadecimal digits (the op4 secret key)") from None
    if len(raw) != _KEY_BYTES:
        raise DecodeError(f"--key must be {_KEY_BYTES} bytes ({_KEY_BYTES * 2} hex digits), got {len(raw)} bytes")
    try:
        names = parse_user_names(users)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    problem = directory_problem(out)
    if problem is not None:
        raise DecodeError(f"--out {str(out)!r}: {problem}")
    try:
        for _ in itertools.islice(iter_capture(capture), 1):
            pass
    except (CaptureFormatError, OSError) as exc:
        raise DecodeError(f"capture {str(capture)!r}: {exc}") from None
    return raw, names


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

    Raises
    ------
    DecodeError
        (status 1) When no RTP packet among the first ones authenticates with ``key`` and ``mode``, or the
        capture holds no RTP at all (checked before any file is created); when the files cannot be created or
        written (e.g. the disk is full); when the capture is damaged part way.
    """
    try:
        _check_key_fits((d.data for d in iter_capture(capture)), mode, key)
    except (CaptureFormatError, OSError) as exc:
        raise DecodeError(f"capture {str(capture)!r}: {exc}") from None

    def naming(user: SinkUser, user_id: int | None) -> str:
        return names.get(user_id, str(user_id)) if user_id is not None else "unknown"

    sink = WaveSink(out, naming=naming)
    now = [0.0]
    receiver = Receiver(sink, decryptor=_NoE2EEKeys(), clock=lambda: now[0])  # before any file: may lack libopus
    receiver.set_transport(mode, key)
    try:
        sink.open()
    except SinkError as exc:
        raise DecodeError(str(exc), status=1) from None
    ssrcs: set[int] = set()
    count = 0
    damaged: CaptureFormatError | None = None
    try:
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
    except CaptureFormatError as exc:
        damaged = exc  # what came before the damage is still finished into the files
    if count == 0:
        receiver.start(threaded=False)
    else:
        now[0] += FRAME_DURATION  # the last datagram's 20 ms
    receiver.stop()  # plays out what is buffered up to now, and no further
    if receiver.error is not None:
        raise DecodeError(f"writing the files failed: {receiver.error}", status=1)
    if damaged is not None:
        raise DecodeError(f"capture {str(capture)!r} is damaged after {count} datagrams: {damaged}", status=1)
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


def _check_key_fits(payloads: Iterable[bytes], mode: str, key: bytes) -> None:
    """Raise :class:`DecodeError` unless one of the first RTP packets opens with ``key`` in ``mode``."""
    cipher = make_cipher(mode, key)
    tried = 0
    for data in payloads:
        if tried >= _PROBE_PACKETS:
            break
        if len(data) < 12 or is_rtcp(data) or is_request(data) or is_response(data):
            continue
        try:
            header = parse_rtp_header(data)
        except MalformedPacket:
            continue
        tried += 1
        try:
            cipher.decrypt_rtp(data, header)
        except (DecryptionFailed, MalformedPacket):
            continue
        return
    if tried == 0:
        raise DecodeError("the capture holds no RTP packets; nothing to decode", status=1)
    raise DecodeError(
        f"none of the first {tried} RTP packets authenticates with this key in mode {mode} (wrong key or mode?); "
        "nothing written",
        status=1,
    )
