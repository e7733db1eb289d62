"""discord-voicerecv: receive voice in discord.py bots.

``vc = await channel.connect(cls=VoiceRecvClient)`` then ``vc.listen(WaveSink("out"))``: transport decryption,
DAVE end-to-end decryption, jitter buffering, Opus decoding and aligned per-speaker tracks, with a local Discord
(:mod:`discord_voicerecv.testing`) to test bots offline.
"""

from __future__ import annotations

from .client import VoiceRecvClient
from .errors import (
    AlreadyListening,
    DecryptionFailed,
    E2EEDecryptError,
    FFmpegNotFound,
    MalformedPacket,
    OpusError,
    OpusNotAvailable,
    SinkError,
    UnsupportedMode,
    VoiceRecvError,
)
from .frames import VoiceFrame
from .sinks import (
    AudioSink,
    CallbackSink,
    FFmpegSink,
    MixSink,
    MultiSink,
    OggOpusSink,
    PerUserSink,
    SinkUser,
    Utterance,
    UtteranceSink,
    WaveSink,
)
from .sinks.limits import StopReason
from .sinks.rtp_forward import ForwardedStream, RTPForwardSink
from .sinks.stream import AudioStream, StreamFrame

__version__ = "0.1.0"

__all__ = (
    "AlreadyListening",
    "AudioSink",
    "AudioStream",
    "CallbackSink",
    "DecryptionFailed",
    "E2EEDecryptError",
    "FFmpegNotFound",
    "FFmpegSink",
    "ForwardedStream",
    "MalformedPacket",
    "MixSink",
    "MultiSink",
    "OggOpusSink",
    "OpusError",
    "OpusNotAvailable",
    "PerUserSink",
    "RTPForwardSink",
    "SinkError",
    "SinkUser",
    "StopReason",
    "StreamFrame",
    "UnsupportedMode",
    "Utterance",
    "UtteranceSink",
    "VoiceFrame",
    "VoiceRecvClient",
    "VoiceRecvError",
    "WaveSink",
)
