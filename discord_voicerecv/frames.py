"""The unit of received audio handed to sinks: one speaker's 20 ms slot."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = (
    "CHANNELS",
    "FRAMES_PER_SECOND",
    "FRAME_BYTES",
    "FRAME_DURATION",
    "FRAME_SAMPLES",
    "OPUS_SILENCE",
    "SAMPLE_RATE",
    "SILENT_PCM",
    "VoiceFrame",
)

SAMPLE_RATE = 48_000
CHANNELS = 2
FRAME_SAMPLES = 960
"""Samples per channel in one 20 ms frame."""
FRAME_BYTES = FRAME_SAMPLES * CHANNELS * 2
"""Bytes of s16le stereo PCM in one 20 ms frame (3840)."""
FRAME_DURATION = FRAME_SAMPLES / SAMPLE_RATE
"""Seconds in one frame: the 20 ms slot of the listening timeline."""
FRAMES_PER_SECOND = SAMPLE_RATE // FRAME_SAMPLES
"""Slots in one second (50)."""
SILENT_PCM = bytes(FRAME_BYTES)
OPUS_SILENCE = b"\xf8\xff\xfe"
"""The Opus frame Discord sends for silence; it is never DAVE-encrypted."""


@dataclass(frozen=True, slots=True, init=False)
class VoiceFrame:
    """One speaker's audio for one 20 ms slot of the listening timeline.

    ``tick`` is the slot index counted from ``listen()`` (slot ``n`` covers ``[20n, 20n + 20)`` ms), so frames of
    different speakers with the same ``tick`` play at the same moment. ``pcm`` is s16le 48 kHz stereo (3840 bytes)
    or empty when the sink asked for Opus only; ``opus_packets`` are the received Opus packets of the slot after
    every encryption layer came off, in order (usually one; empty for a frame concealed with nothing received) and
    ``opus`` is the first of them or ``None``. ``sequence`` and ``rtp_timestamp`` are the first packet's RTP
    values (for a concealed frame, those the lost packet would have had). Frames are immutable: several sinks may
    hold the same one.
    """

    ssrc: int
    user_id: int | None
    tick: int
    pcm: bytes
    opus: bytes | None
    sequence: int
    rtp_timestamp: int
    concealed: bool = False
    """True when ``pcm`` came, at least in part, from FEC or packet-loss concealment."""
    opus_packets: tuple[bytes, ...] = ()

    def __init__(
        self,
        ssrc: int,
        user_id: int | None,
        tick: int,
        pcm: bytes,
        opus: bytes | None,
        sequence: int,
        rtp_timestamp: int,
        concealed: bool = False,
        opus_packets: tuple[bytes, ...] = (),
    ) -> None:
        # The fields' slot setters directly: a frozen dataclass's own __init__ goes through object.__setattr__ per
        # field, which doubled the cost of making the frame every speaker gets every 20 ms.
        _set_ssrc(self, ssrc)
        _set_user_id(self, user_id)
        _set_tick(self, tick)
        _set_pcm(self, pcm)
        _set_opus(self, opus)
        _set_sequence(self, sequence)
        _set_rtp_timestamp(self, rtp_timestamp)
        _set_concealed(self, concealed)
        _set_opus_packets(self, (opus,) if opus is not None and not opus_packets else opus_packets)


(
    _set_ssrc,
    _set_user_id,
    _set_tick,
    _set_pcm,
    _set_opus,
    _set_sequence,
    _set_rtp_timestamp,
    _set_concealed,
    _set_opus_packets,
) = (VoiceFrame.__dict__[field.name].__set__ for field in fields(VoiceFrame))
