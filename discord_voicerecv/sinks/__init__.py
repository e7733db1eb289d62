"""Where received audio goes: files, callbacks, and sinks made of other sinks."""

from __future__ import annotations

from .base import AudioSink, SinkUser
from .callback import CallbackSink
from .ffmpeg import FFmpegSink
from .mix import MixSink
from .multi import MultiSink
from .ogg import OggOpusSink
from .peruser import PerUserSink
from .rtp_forward import ForwardedStream, RTPForwardSink
from .utterance import Utterance, UtteranceSink, to_16k_mono
from .wave import WaveSink

__all__ = (
    "AudioSink",
    "CallbackSink",
    "FFmpegSink",
    "ForwardedStream",
    "MixSink",
    "MultiSink",
    "OggOpusSink",
    "PerUserSink",
    "RTPForwardSink",
    "SinkUser",
    "Utterance",
    "UtteranceSink",
    "WaveSink",
    "to_16k_mono",
)
