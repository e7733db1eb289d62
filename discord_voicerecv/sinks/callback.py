"""Hand every frame to a function."""

from __future__ import annotations

from collections.abc import Callable

from ..frames import VoiceFrame
from .base import AudioSink, SinkUser

__all__ = ("CallbackSink",)


class CallbackSink(AudioSink):
    """Call ``callback(user, frame)`` for every frame, on the sink thread.

    The callback must return quickly: it runs once per speaker every 20 ms. Pass ``wants_pcm=False`` when it only
    reads the Opus packets (``frame.opus_packets``), so that decoding can be skipped.
    """

    __slots__ = ("callback", "wants_pcm")

    def __init__(self, callback: Callable[[SinkUser, VoiceFrame], object], *, wants_pcm: bool = True) -> None:
        self.callback = callback
        self.wants_pcm = wants_pcm

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.callback(user, frame)
