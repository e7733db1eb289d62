"""Where received audio goes: files, callbacks, and sinks made of other sinks."""

from __future__ import annotations

from .base import AudioSink, SinkUser
from .callback import CallbackSink
from .multi import MultiSink
from .peruser import PerUserSink
from .wave import WaveSink

__all__ = ("AudioSink", "CallbackSink", "MultiSink", "PerUserSink", "SinkUser", "WaveSink")
