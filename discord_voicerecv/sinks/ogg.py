"""Record every speaker's Opus packets into Ogg Opus files: as received, or re-encoded without in-band FEC."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from ..errors import OpusError, SinkError
from ..frames import FRAME_BYTES, FRAME_SAMPLES, FRAMES_PER_SECOND, OPUS_SILENCE, SILENT_PCM, VoiceFrame
from ..opus import OpusDecoder, OpusEncoder
from ..protocol.opus_toc import MAX_PACKET_SAMPLES, frame_samples, packet_samples
from ._common import SpeakerKey, speaker_key
from ._naming import FileNamer, Naming
from ._ogg import OggOpusWriter
from .base import AudioSink, SinkUser

__all__ = ("OggOpusSink",)

_VENDOR = "discord-voicerecv"
_CELT_FILLERS = ((480, b"\xf0"), (240, b"\xe8"), (120, b"\xe0"))
"""One-byte CELT packets (fullband, one zero-length frame) of 10, 5 and 2.5 ms: concealment, silence at a start."""
_REENCODE_PRE_SKIP = 312
"""libopus' encoder delay at 48 kHz (2.5 ms lookahead + 4 ms delay compensation): re-encoded audio comes out this
many samples late, and the Ogg pre-skip (RFC 7845 section 4.2) takes it back off, keeping files sample-aligned."""


def _concealment_packets(toc: int | None, samples: int) -> list[bytes]:
    """Packets of zero-length frames in the configuration of TOC byte ``toc``, which ask the decoder for packet-loss
    concealment (RFC 7845 section 4.1), covering as many whole frames of ``samples`` as fit (none without a TOC)."""
    if toc is None:
        return []
    size = frame_samples(toc)
    packets: list[bytes] = []
    frames = samples // size
    while frames:
        count = min(frames, MAX_PACKET_SAMPLES // size)
        packets.append(bytes((toc & 0xFC,)) if count == 1 else bytes((toc | 0x03, count)))
        frames -= count
    return packets


class _Track:
    __slots__ = ("decoder", "encoder", "last_tick", "tail", "toc", "writer")

    def __init__(self, writer: OggOpusWriter, encoder: OpusEncoder | None) -> None:
        self.writer = writer
        self.last_tick = -1
        self.toc: int | None = None
        self.encoder = encoder
        self.decoder: OpusDecoder | None = None
        self.tail = False
        """The encoder still holds the end of the last frame it was given (its lookahead)."""

    def reencode(self, frame: VoiceFrame) -> None:
        """Encode the frame's PCM (decoded here when the receiver did not) as 20 ms packets without FEC."""
        assert self.encoder is not None
        pcm = frame.pcm
        if len(pcm) != FRAME_BYTES:
            decoder = self.decoder
            if decoder is None:
                decoder = self.decoder = OpusDecoder()
            pcm = b"".join([_decode(decoder, packet) for packet in frame.opus_packets]) or decoder.decode(None)
            pcm += bytes(-len(pcm) % FRAME_BYTES)
        for start in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self.writer.add(self.encoder.encode(pcm[start : start + FRAME_BYTES]), FRAME_SAMPLES)
            self.tail = True

    def passthrough(self, frame: VoiceFrame, end: int) -> None:
        """Append the slot's packets as received, in order, each with its own duration; when the slot lost audio (or
        a packet is damaged) and its packets leave it short of ``end``, concealment packets fill it. A slot with no
        packet that lost nothing is the rest of a longer packet: what that packet does not cover is silence."""
        writer = self.writer
        lost = frame.concealed
        for packet in frame.opus_packets:
            samples = packet_samples(packet)
            if not samples:
                lost = True
                continue
            if packet != OPUS_SILENCE:
                self.toc = packet[0]
            writer.add(packet, samples)
        if lost and writer.samples < end:
            for packet in _concealment_packets(self.toc, end - writer.samples):
                writer.add(packet, packet_samples(packet) or 0)
            self.fill_to(end)

    def fill_to(self, samples: int) -> None:
        """Opus silence up to ``samples``: what Discord itself sends, and digital silence in every decoder."""
        writer = self.writer
        if self.tail and samples - writer.samples >= FRAME_SAMPLES:
            assert self.encoder is not None
            writer.add(self.encoder.encode(SILENT_PCM), FRAME_SAMPLES)  # the end of the talk spurt, in its place
            self.tail = False
        while samples - writer.samples >= FRAME_SAMPLES:
            writer.add(OPUS_SILENCE, FRAME_SAMPLES)
        for size, packet in _CELT_FILLERS:
            while samples - writer.samples >= size:
                writer.add(packet, size)


def _decode(decoder: OpusDecoder, packet: bytes) -> bytes:
    """The packet's PCM, or 20 ms of concealment when libopus rejects it."""
    try:
        return decoder.decode(packet)
    except OpusError:
        return decoder.decode(None)


class OggOpusSink(AudioSink):
    """Write each speaker's Opus packets, bit for bit as received, to an Ogg Opus file of their own (RFC 7845).

    By default nothing is decoded (``wants_pcm`` is False, so the receiver skips decoding when no other sink needs
    PCM) and nothing is re-encoded: the cheapest way to keep a lossless copy of what Discord delivered. Discord
    clients put in-band FEC in their packets, which ffmpeg's native Opus decoder before 6.0 (Debian 12's 5.1,
    Ubuntu 22.04's 4.4) turns into noise; players built on it (ffplay, mpv) then play such files garbled. With
    ``reencode=True`` the sink takes the receiver's decoded PCM and writes it re-encoded by libopus without FEC,
    which every decoder plays, at the cost of one encode per speaker frame and one generation of coding loss. Like
    :class:`WaveSink`, every file starts at the first slot of ``listen()`` and all end at the same slot: slots
    where the speaker sent nothing hold Opus silence frames (``F8 FF FE``, what Discord sends itself), and frames
    lost inside a talk spurt hold packets asking the player's decoder for concealment. The headers declare
    stereo, no pre-skip, and the granule positions count 48 kHz samples from the start of listening, so the
    files decode sample-aligned with each other and with the PCM sinks. Pages are flushed at least every
    ``flush_interval`` seconds, so a killed process leaves files playable up to the last flush. A mixed track
    cannot be made without re-encoding: use ``MixSink(FFmpegSink(..., "opus", mix=False))`` for that.

    Parameters
    ----------
    directory:
        Where the files go; created if missing when listening starts (:meth:`open`).
    naming:
        ``naming(user, user_id)`` returns a file name, as for :class:`WaveSink` (``.opus`` is added). By
        default ``<display_name>-<user_id>.opus``, ``<user_id>.opus`` or ``unknown-<ssrc>.opus``.
    flush_interval:
        Seconds of audio between page flushes.
    overwrite:
        Reuse the names of existing files. By default an existing file is never touched: the new track takes the
        first free ``-2``, ``-3``... name, as for :class:`WaveSink`.
    reencode:
        Re-encode every frame without in-band FEC (see above) instead of keeping the packets as received.
    bitrate:
        Bits per second of the re-encoded stereo stream (``reencode=True`` only).

    Raises
    ------
    SinkError
        When the directory or a file cannot be created or written (from :meth:`open` and every later sink call).
    """

    __slots__ = (
        "_bitrate",
        "_directory",
        "_interval",
        "_last_sync",
        "_names",
        "_open",
        "_opened",
        "_reencode",
        "_slots",
        "_tracks",
        "closed",
        "dropped",
    )

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        naming: Naming | None = None,
        flush_interval: float = 1.0,
        overwrite: bool = False,
        reencode: bool = False,
        bitrate: int = 96_000,
    ) -> None:
        if not flush_interval > 0:
            raise ValueError("flush_interval must be positive")
        if not 6_000 <= bitrate <= 510_000:
            raise ValueError("bitrate must be 6000-510000 bits per second")
        self._reencode = reencode
        self._bitrate = bitrate
        self._directory = Path(directory)
        self._names = FileNamer(self._directory, "opus", naming, overwrite=overwrite)
        self._interval = max(1, int(flush_interval * FRAMES_PER_SECOND))
        self._tracks: dict[SpeakerKey, _Track] = {}
        self._slots = 0
        self._open = False
        self._last_sync = 0
        self.closed = False
        self.dropped = 0
        """Frames ignored because their slot was already complete, or a second frame of a speaker for one slot."""
        self._opened = False

    def open(self) -> None:
        """Create the directory; each speaker's file is created at their first frame."""
        if self._opened:
            return
        self._opened = True
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(str(self._directory), exc.strerror or str(exc)) from exc

    @property
    def wants_pcm(self) -> bool:  # type: ignore[override]
        """True only when re-encoding: passthrough needs nothing decoded."""
        return self._reencode

    @property
    def files(self) -> Mapping[SpeakerKey, Path]:
        """File paths by speaker: the user id, or ``"ssrc:<n>"`` for a speaker not mapped to a user."""
        return MappingProxyType({key: track.writer.path for key, track in self._tracks.items()})

    @property
    def slots(self) -> int:
        """How many 20 ms slots are complete."""
        return self._slots

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if not self._opened:
            self.open()
        tick = frame.tick
        if tick < self._slots or self.closed:
            self.dropped += 1
            return
        if tick > self._slots:
            self._slots = tick
        key = speaker_key(frame)
        track = self._tracks.get(key)
        if track is None:
            track = self._open_track(key, user, frame)
        if track.last_tick >= tick:
            self.dropped += 1
            return
        track.last_tick = tick
        self._open = True
        track.fill_to(tick * FRAME_SAMPLES)
        if track.encoder is not None:
            track.reencode(frame)
            return
        track.passthrough(frame, (tick + 1) * FRAME_SAMPLES)

    def advance(self, tick: int) -> None:
        if tick < self._slots or self.closed:
            return
        self._slots = tick + 1
        self._open = False
        if self._slots - self._last_sync >= self._interval:
            self._sync()

    def cleanup(self) -> None:
        """Fill every file to the same length and write the last pages."""
        if self.closed:
            return
        self.closed = True
        skip = _REENCODE_PRE_SKIP if self._reencode else 0
        end = (self._slots + 1 if self._open else self._slots) * FRAME_SAMPLES + skip
        end = max([end, *(track.writer.flushed_samples for track in self._tracks.values())])
        error: SinkError | None = None
        step = _CELT_FILLERS[-1][0]
        padded = -(-end // step) * step  # whole packets past the end; the last page's granule trims them
        for track in self._tracks.values():
            try:
                track.fill_to(padded)
                track.writer.close(end)
            except SinkError as exc:
                error = error or exc
        if error is not None:
            raise error

    def _sync(self) -> None:
        end = self._slots * FRAME_SAMPLES
        for track in self._tracks.values():
            track.fill_to(end)
            track.writer.flush()
        self._last_sync = self._slots

    def _open_track(self, key: SpeakerKey, user: SinkUser, frame: VoiceFrame) -> _Track:
        comments = [f"DISCORD_SSRC={frame.ssrc}"]
        if frame.user_id is not None:
            comments.append(f"DISCORD_USER_ID={frame.user_id}")
        display = getattr(user, "display_name", None)
        if isinstance(display, str) and display:
            comments.append(f"TITLE={display}")
        path = self._names.path_for(user, frame)
        skip = _REENCODE_PRE_SKIP if self._reencode else 0
        writer = OggOpusWriter(path, serial=secrets.randbits(32), pre_skip=skip, vendor=_VENDOR, comments=comments)
        encoder = None
        if self._reencode:
            encoder = OpusEncoder(bitrate=self._bitrate, application="audio", fec=False, expected_loss_pct=0)
        track = self._tracks[key] = _Track(writer, encoder)
        return track
