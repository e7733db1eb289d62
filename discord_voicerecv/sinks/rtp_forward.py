"""Forward received voice as plain RTP with an SDP file per stream, for ffmpeg, GStreamer or OBS to take live."""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, TypeAlias

from ..errors import SinkError
from ..frames import FRAME_BYTES, FRAME_DURATION, FRAME_SAMPLES, FRAMES_PER_SECOND, OPUS_SILENCE, VoiceFrame
from ..protocol.opus_toc import packet_samples
from ..protocol.rtcp import SDES_CNAME, SdesChunk, SourceDescription, build_bye, build_sender_report
from ..protocol.rtp import build_rtp_header
from ._common import SpeakerKey, fit_frame, log
from ._mix import Limiter
from ._naming import FileNamer
from ._sdp import opus_sdp
from .base import AudioSink, SinkUser

if TYPE_CHECKING:
    from discord.abc import Snowflake

    from ..opus import OpusEncoder

__all__ = ("ForwardedStream", "RTPForwardSink", "SilencePolicy")

SilencePolicy: TypeAlias = Literal["skip", "opus_silence"]
"""What a stream carries in slots without audio: nothing, or an Opus silence frame every 20 ms."""

_REPORT_SLOTS = FRAMES_PER_SECOND
"""Slots between two RTCP sender reports of a stream (1 s)."""
_NTP_EPOCH_OFFSET = 2_208_988_800
_MIX_LOOKAHEAD = 312
"""Samples by which libopus delays its output at 48 kHz (2.5 ms + 4 ms): slot ``n`` of the mix starts that far
into packet ``n``."""


@dataclass(frozen=True, slots=True)
class ForwardedStream:
    """One RTP stream the sink sends: where to, and the SDP text that lets a player receive it.

    ``user`` is who it carries (``None`` for the mix or a speaker not mapped to a user), ``port`` the RTP port
    (RTCP goes to ``port + 1``), ``sdp_path`` the file holding ``sdp``, ``ssrc`` the stream's RTP source.
    """

    user: SinkUser
    host: str
    port: int
    ssrc: int
    sdp: str
    sdp_path: Path

    @property
    def rtcp_port(self) -> int:
        """Where the stream's RTCP sender reports go."""
        return self.port + 1

    def has_receiver(self) -> bool:
        """Whether a program on this machine has bound the stream's RTP port, e.g. the ffmpeg started for it.

        Packets sent before that are lost, so wait for it before ``listen()``. Always ``False`` for a stream sent
        to another machine."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                return exc.errno == errno.EADDRINUSE
        return False


class _Output:
    """Sending state of one stream: sequence, timestamp base, counters and where the next slot starts."""

    __slots__ = (
        "cname",
        "info",
        "marker",
        "next_tick",
        "octets",
        "packets",
        "report_offset",
        "report_tick",
        "rtcp_addr",
        "rtp_addr",
        "sequence",
        "ssrc",
        "ts_base",
    )

    def __init__(self, info: ForwardedStream, rtp_addr: tuple[str, int], rtcp_addr: tuple[str, int]) -> None:
        self.info = info
        self.rtp_addr = rtp_addr
        self.rtcp_addr = rtcp_addr
        self.ssrc = info.ssrc
        self.sequence = random.getrandbits(16)
        self.ts_base = random.getrandbits(32)
        self.cname = f"voicerecv-{info.ssrc:08x}".encode()
        self.next_tick: int | None = None
        """The first slot not covered by a packet sent yet (``None`` before the stream starts)."""
        self.marker = True
        """Set the RTP marker on the next audio packet: it opens a talk spurt (RFC 3551 section 4.1)."""
        self.packets = 0
        self.octets = 0
        self.report_tick = 0
        self.report_offset = 0
        """Samples from the start of a slot's packet to where that slot's audio starts (the encoder delay)."""


class RTPForwardSink(AudioSink):
    """Re-send each speaker's Opus frames as plain, unencrypted RTP on a local port, with an SDP file per stream.

    Every stream is Opus at 48 kHz, 2 channels, with a random SSRC, sequence and timestamp base, and no header
    extension. The RTP timestamp of slot ``n`` of the listening timeline is ``base + 960 n``, so a pause keeps its
    length: filled with Opus silence frames by default, or as a timestamp jump (``silence="skip"``).
    RTCP sender reports (NTP wall clock against RTP timestamp, packet and octet counts) go to ``port + 1`` every
    second, all streams sharing one clock so that players can line them up, and :meth:`cleanup` sends a BYE, which
    makes ``ffmpeg`` reading the SDP finish its output files and exit on its own.

    Parameters
    ----------
    host:
        IP address (or name) to send to; it goes into the SDP ``c=`` line.
    base_port:
        First RTP port (even). Streams take port pairs ``base_port``, ``base_port + 2``... in the order they open:
        the mix first when ``mix=True``, then the ``users`` given, then speakers as they are first heard.
    users:
        Forward only these users (ids or objects with ``.id``). Their streams open, and their SDP files are
        written, in the constructor, so a player can be started before ``listen()``; with
        ``silence="opus_silence"`` they send from the first slot of ``listen()`` on, so every recording starts
        at the same moment. ``None`` forwards everybody, each from their first frame.
    port_for:
        ``port_for(user, ident)`` picks the (even) RTP port of a new stream instead of the next free pair;
        ``ident`` is the user id, or the SSRC for a speaker not mapped to a user.
    payload_type:
        RTP payload type of the streams (dynamic, 96-127), written in the SDP.
    sdp_dir:
        Where the ``.sdp`` files go; by default a temporary directory removed by :meth:`cleanup`. It is created
        when listening starts (:meth:`open`, which also opens the sending socket), or in the constructor when
        ``users`` or ``mix`` give streams up front, whose SDP files players may need before ``listen()``.
    mix:
        Also send the forwarded speakers mixed into one stream (decoded, mixed per slot and encoded once with
        libopus): ``True`` for the next port pair, or the RTP port to use. Its SDP is ``mix.sdp``. The encoder's
        look-ahead delays the mix by 6.5 ms against the speaker streams; its sender reports account for it.
    per_user:
        Send one stream per speaker. ``False`` with ``mix`` sends only the mix.
    silence:
        ``"opus_silence"`` (default) fills every slot without audio with an Opus silence frame (``F8 FF FE``,
        15 bytes of RTP): ``ffmpeg -c:a copy`` recordings in WebM or Ogg then hold every pause at its true length
        and, for ``users`` streams, start at ``listen()``, whatever later decodes them. ``"skip"`` sends nothing
        while a speaker is quiet, as Discord does: a pause survives only as a timestamp jump in the container,
        which a plain decode (``ffmpeg -i rec.webm rec.wav``) closes up unless told to fill it
        (``-af aresample=async=1``), and the recording starts at the first word. See
        ``docs/recipes/rtp-forward.md`` for the measurements.
    on_stream:
        ``on_stream(user, sdp_path)`` runs once per speaker stream when it opens (in the constructor for
        ``users``, else on the sink thread at the speaker's first frame), e.g. to start ``ffmpeg`` for it. It
        must return quickly; what it raises is logged and ignored.
    bye_delay:
        Seconds between :meth:`cleanup` and the RTCP BYE, sent from a timer thread. Receivers may read RTCP
        before queued RTP (ffmpeg does), so a BYE right behind the last packets would cut them off.

    Raises
    ------
    ValueError
        For an odd or taken port, a payload type outside 96-127, an unknown ``silence``, or nothing to send.
    SinkError
        When an SDP file cannot be written.
    """

    __slots__ = (
        "_anchor",
        "_bye_delay",
        "_closed",
        "_encoder",
        "_family",
        "_host",
        "_limiter",
        "_mix",
        "_mix_pcm",
        "_namer",
        "_next_port",
        "_on_stream",
        "_outputs",
        "_pending",
        "_port_for",
        "_ports",
        "_sdp_dir",
        "_sdp_ready",
        "_selected",
        "_silence_fill",
        "_sock",
        "_streams",
        "_temp_dir",
        "payload_type",
        "per_user",
        "send_errors",
        "wants_pcm",
    )

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        base_port: int = 5004,
        users: Iterable[int | Snowflake] | None = None,
        port_for: Callable[[SinkUser, int], int] | None = None,
        payload_type: int = 111,
        sdp_dir: str | os.PathLike[str] | None = None,
        mix: bool | int = False,
        per_user: bool = True,
        silence: SilencePolicy = "opus_silence",
        on_stream: Callable[[SinkUser, Path], object] | None = None,
        bye_delay: float = 0.25,
    ) -> None:
        if silence not in ("skip", "opus_silence"):
            raise ValueError(f"silence must be 'skip' or 'opus_silence', not {silence!r}")
        if not 96 <= payload_type <= 127:
            raise ValueError(f"payload_type must be a dynamic RTP payload type (96-127), not {payload_type}")
        if not bye_delay >= 0:
            raise ValueError(f"bye_delay must be zero or more seconds, not {bye_delay}")
        if not per_user and mix is False:
            raise ValueError("RTPForwardSink needs per_user=True or a mix")
        _check_port(base_port)
        family, _, _, _, sockaddr = socket.getaddrinfo(host, base_port, type=socket.SOCK_DGRAM)[0]
        self._host = str(sockaddr[0])
        self.payload_type = payload_type
        self.per_user = per_user
        self._silence_fill = silence == "opus_silence"
        self._port_for = port_for
        self._on_stream = on_stream
        self._bye_delay = bye_delay
        self._next_port = base_port
        self._ports: set[int] = set()
        self._outputs: dict[SpeakerKey, _Output | None] = {}
        self._streams: dict[SpeakerKey, ForwardedStream] = {}
        self._pending: list[_Output] = []
        self._anchor: tuple[float, int] | None = None
        self._closed = False
        self.send_errors = 0
        """Datagrams the kernel refused (full socket buffer, unreachable address); they are dropped."""
        self._temp_dir = sdp_dir is None
        self._sdp_dir: Path | None = None if sdp_dir is None else Path(sdp_dir)
        self._sdp_ready = False
        self._family = family
        self._sock: socket.socket | None = None
        self._namer: FileNamer | None = None
        if mix is not False or (users is not None and per_user):
            self._make_sdp_dir()  # streams known now get their SDP files now, so players can start before listen()
        try:
            self._mix: _Output | None = None
            self._encoder: OpusEncoder | None = None
            self._mix_pcm: list[bytes] = []
            self._limiter = Limiter()
            if mix is not False:
                from ..opus import OpusEncoder

                port = self._allocate(None if mix is True else int(mix))
                self._mix = self._open_output(None, port, self._names().reserve("mix").name, "mix")
                self._mix.report_offset = _MIX_LOOKAHEAD
                self._encoder = OpusEncoder(bitrate=96_000, fec=False, expected_loss_pct=0)
            self.wants_pcm = self._mix is not None
            self._selected: set[int] | None = None
            if users is not None:
                chosen = [_as_user(user) for user in users]
                self._selected = {ident for ident, _ in chosen}
                if per_user:
                    for ident, user in chosen:
                        if ident not in self._outputs:
                            self._pending.append(self._open_user(ident, user, ident))
        except BaseException:
            self._remove_temp_dir()
            raise

    def open(self) -> None:
        """Create the SDP folder (unless streams given up front did already) and the sending socket."""
        if self._sock is not None:
            return
        self._make_sdp_dir()
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self._sock = sock

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise OSError("RTPForwardSink is not open")
        return sock

    def _make_sdp_dir(self) -> None:
        if self._sdp_ready:
            return
        if self._sdp_dir is None:
            self._sdp_dir = Path(tempfile.mkdtemp(prefix="voicerecv-sdp-"))
        else:
            try:
                self._sdp_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkError(str(self._sdp_dir), exc.strerror or str(exc)) from exc
        self._sdp_ready = True

    def _names(self) -> FileNamer:
        """The namer of SDP files, in the SDP folder (created now if it was not)."""
        self._make_sdp_dir()
        if self._namer is None:
            assert self._sdp_dir is not None
            self._namer = FileNamer(self._sdp_dir, "sdp")
        return self._namer

    def _remove_temp_dir(self) -> None:
        if self._temp_dir and self._sdp_dir is not None:
            shutil.rmtree(self._sdp_dir, ignore_errors=True)

    @property
    def streams(self) -> Mapping[SpeakerKey, ForwardedStream]:
        """Speaker streams by speaker: the user id, or ``"ssrc:<n>"`` for a speaker not mapped to a user."""
        return MappingProxyType(self._streams)

    @property
    def mix_stream(self) -> ForwardedStream | None:
        """The mixed stream, or ``None`` without ``mix``."""
        return self._mix.info if self._mix is not None else None

    @property
    def sdp_dir(self) -> Path | None:
        """The directory holding the ``.sdp`` files; ``None`` while a temporary one is not created yet (it is when
        listening starts, or in the constructor for streams given up front)."""
        return self._sdp_dir

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if self._closed:
            return
        if self._sock is None:
            self.open()
        tick = frame.tick
        if self._anchor is None:
            self._anchor = (time.time(), tick)
        user_id = frame.user_id
        if self._mix is not None and (self._selected is None or user_id in self._selected):
            self._mix_pcm.append(fit_frame(frame.pcm))
        key = user_id if user_id is not None else f"ssrc:{frame.ssrc}"
        out: _Output | None
        try:
            out = self._outputs[key]
        except KeyError:
            out = self._open_speaker(key, user, frame)
        if out is None:
            return
        next_tick = out.next_tick
        if next_tick is not None and tick < next_tick:
            return
        packets = frame.opus_packets
        if not packets:
            out.marker = True
            return
        start = position = tick * FRAME_SAMPLES
        marker = out.marker
        for packet in packets:
            self._send(out, position, packet, marker)
            marker = False
            position += packet_samples(packet) or 0
        out.marker = False
        out.next_tick = tick + max(1, -(-(position - start) // FRAME_SAMPLES))

    def advance(self, tick: int) -> None:
        if self._closed:
            return
        if self._sock is None:
            self.open()
        if self._anchor is None:
            self._anchor = (time.time(), tick)
        if self._pending:
            for waiting in self._pending:
                if waiting.next_tick is None:
                    waiting.next_tick = tick
            self._pending.clear()
        mix = self._mix
        if mix is not None:
            self._send_mix(mix, tick)
        for out in self._outputs.values():
            if out is None:
                continue
            next_tick = out.next_tick
            if next_tick is None:
                continue
            if next_tick <= tick:
                if self._silence_fill:
                    self._send(out, tick * FRAME_SAMPLES, OPUS_SILENCE, False)
                out.marker = True
                out.next_tick = tick + 1
            if tick >= out.report_tick and out.packets:
                self._report(out, tick)
        if mix is not None and tick >= mix.report_tick and mix.packets:
            self._report(mix, tick)

    def cleanup(self) -> None:
        """Stop sending; after ``bye_delay`` send a last sender report and a BYE on every stream and close the socket.

        A temporary SDP folder is removed at once (players read the SDP when they start).
        """
        if self._closed:
            return
        self._closed = True
        outputs = [out for out in self._outputs.values() if out is not None]
        if self._mix is not None:
            outputs.append(self._mix)
        self._remove_temp_dir()
        if self._sock is None:
            if not outputs:
                return
            self.open()  # players may already read the streams given up front: tell them they ended
        if self._bye_delay > 0:
            timer = threading.Timer(self._bye_delay, self._say_goodbye, args=(outputs,))
            timer.name = "voicerecv-rtp-bye"
            timer.start()
        else:
            self._say_goodbye(outputs)

    # sending ---------------------------------------------------------------------------------------------------------

    def _send(self, out: _Output, position: int, payload: bytes, marker: bool) -> None:
        """Send one packet whose audio starts ``position`` samples into the listening timeline."""
        header = build_rtp_header(
            sequence=out.sequence,
            timestamp=out.ts_base + position,
            ssrc=out.ssrc,
            payload_type=self.payload_type,
            marker=marker,
        )
        out.sequence += 1
        try:
            self._socket().sendto(header + payload, out.rtp_addr)
        except OSError:
            self.send_errors += 1
            return
        out.packets += 1
        out.octets += len(payload)

    def _send_mix(self, mix: _Output, tick: int) -> None:
        frames = self._mix_pcm
        if mix.next_tick is None:
            mix.next_tick = mix.report_tick = tick
        if frames:
            assert self._encoder is not None
            packet = self._encoder.encode(self._limiter.mix(frames, FRAME_BYTES))
            frames.clear()
            self._send(mix, tick * FRAME_SAMPLES, packet, mix.marker)
            mix.marker = False
        else:
            self._limiter.skip(1)
            if self._silence_fill:
                self._send(mix, tick * FRAME_SAMPLES, OPUS_SILENCE, False)
            mix.marker = True
        mix.next_tick = tick + 1

    def _report(self, out: _Output, tick: int) -> None:
        out.report_tick = tick + _REPORT_SLOTS
        self._send_rtcp(out, self._sender_report(out, tick))

    def _sender_report(self, out: _Output, tick: int) -> bytes:
        """SR + SDES CNAME: the wall-clock time of slot ``tick`` and its RTP timestamp, on the shared timeline."""
        anchor_wall, anchor_tick = self._anchor or (time.time(), tick)
        wall = anchor_wall + (tick - anchor_tick) * FRAME_DURATION + _NTP_EPOCH_OFFSET
        report = build_sender_report(
            out.ssrc,
            ntp_timestamp=int(wall * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF,
            rtp_timestamp=(out.ts_base + tick * FRAME_SAMPLES + out.report_offset) & 0xFFFF_FFFF,
            packet_count=out.packets & 0xFFFF_FFFF,
            octet_count=out.octets & 0xFFFF_FFFF,
        )
        return report + SourceDescription((SdesChunk(out.ssrc, ((SDES_CNAME, out.cname),)),)).serialize()

    def _say_goodbye(self, outputs: list[_Output]) -> None:
        try:
            for out in outputs:
                tick = out.next_tick if out.next_tick is not None else (self._anchor[1] if self._anchor else 0)
                self._send_rtcp(out, self._sender_report(out, tick) + build_bye((out.ssrc,)))
        finally:
            if self._sock is not None:
                self._sock.close()

    def _send_rtcp(self, out: _Output, packet: bytes) -> None:
        try:
            self._socket().sendto(packet, out.rtcp_addr)
        except OSError:
            self.send_errors += 1

    # opening streams -------------------------------------------------------------------------------------------------

    def _open_speaker(self, key: SpeakerKey, user: SinkUser, frame: VoiceFrame) -> _Output | None:
        """A speaker's first frame: open their stream, or remember that they are not forwarded."""
        if not self.per_user or (self._selected is not None and frame.user_id not in self._selected):
            self._outputs[key] = None
            return None
        ident = frame.user_id if frame.user_id is not None else frame.ssrc
        return self._open_user(key, user, ident)

    def _open_user(self, key: SpeakerKey, user: SinkUser, ident: int) -> _Output:
        port = self._allocate(self._port_for(user, ident) if self._port_for is not None else None)
        name = self._names().speaker_path(user, None if isinstance(key, str) else ident, ident).name
        out = self._open_output(user, port, name, name[:-4])
        self._outputs[key] = out
        self._streams[key] = out.info
        if self._on_stream is not None:
            try:
                self._on_stream(user, out.info.sdp_path)
            except Exception:
                log.exception("RTPForwardSink on_stream callback raised for %s", key)
        return out

    def _open_output(self, user: SinkUser, port: int, file_name: str, name: str) -> _Output:
        ssrc = random.getrandbits(32)
        text = opus_sdp(
            self._host,
            port,
            payload_type=self.payload_type,
            session_name=f"discord-voicerecv {name}",
            session_id=ssrc,
        )
        self._make_sdp_dir()
        assert self._sdp_dir is not None
        path = self._sdp_dir / file_name
        try:
            path.write_text(text, encoding="utf-8", newline="")
        except OSError as exc:
            raise SinkError(str(path), exc.strerror or str(exc)) from exc
        info = ForwardedStream(user, self._host, port, ssrc, text, path)
        return _Output(info, self._sockaddr(port), self._sockaddr(port + 1))

    def _sockaddr(self, port: int) -> tuple[str, int]:
        return (self._host, port)

    def _allocate(self, port: int | None) -> int:
        """The RTP port of a new stream: ``port`` when given and free, else the next free even pair."""
        if port is not None:
            _check_port(port)
            if port in self._ports:
                raise ValueError(f"RTP port {port} is already used by another stream")
        else:
            while self._next_port in self._ports:
                self._next_port += 2
            port = self._next_port
            _check_port(port)
        self._ports.add(port)
        return port


def _check_port(port: int) -> None:
    if not 0 < port < 65_535 or port % 2:
        raise ValueError(f"RTP ports must be even (RTCP takes the odd port above), not {port}")


def _as_user(user: int | Snowflake) -> tuple[int, SinkUser]:
    """The id of a user given to ``users=``, and the object handed to ``on_stream`` and ``port_for``."""
    import discord

    if isinstance(user, (discord.Member, discord.User, discord.Object)):
        return user.id, user
    ident = user if isinstance(user, int) else user.id
    return ident, discord.Object(id=ident)
