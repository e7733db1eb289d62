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
    MalformedPacket,
    NotListening,
    OpusError,
    OpusNotAvailable,
    UnsupportedMode,
    VoiceRecvError,
)
from .frames import VoiceFrame
from .sinks import AudioSink, CallbackSink, MultiSink, PerUserSink, SinkUser, WaveSink

__version__ = "0.1.0"

__all__ = (
    "AlreadyListening",
    "AudioSink",
    "CallbackSink",
    "DecryptionFailed",
    "E2EEDecryptError",
    "MalformedPacket",
    "MultiSink",
    "NotListening",
    "OpusError",
    "OpusNotAvailable",
    "PerUserSink",
    "SinkUser",
    "UnsupportedMode",
    "VoiceFrame",
    "VoiceRecvClient",
    "VoiceRecvError",
    "WaveSink",
)
