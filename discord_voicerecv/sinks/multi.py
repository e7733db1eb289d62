"""Send the same audio to several sinks."""

from __future__ import annotations

from ..frames import VoiceFrame
from ._common import drop_child, log
from .base import AudioSink, SinkUser

__all__ = ("MultiSink",)


class MultiSink(AudioSink):
    """Fan every call out to several sinks, in order.

    A child that raises is detached (it gets :meth:`cleanup` and no further calls), logged on the
    ``discord_voicerecv.sinks`` logger and kept in :attr:`failures`; the other children carry on.
    """

    __slots__ = ("_closed", "_sinks", "failures", "wants_pcm")

    def __init__(self, *sinks: AudioSink) -> None:
        self._sinks = sinks
        self._closed = False
        self.failures: list[tuple[AudioSink, Exception]] = []
        self.wants_pcm = any(sink.wants_pcm for sink in sinks)

    @property
    def sinks(self) -> tuple[AudioSink, ...]:
        """The children not detached by a failure."""
        return self._sinks

    def open(self) -> None:
        """Open every child; when one refuses, the ones already open are cleaned up and the error propagates."""
        for index, sink in enumerate(self._sinks):
            try:
                sink.open()
            except BaseException:
                for opened in self._sinks[:index]:
                    try:
                        opened.cleanup()
                    except Exception:
                        log.debug("cleanup of %r after a refused open failed", opened, exc_info=True)
                raise

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        for sink in self._sinks:
            try:
                sink.write(user, frame)
            except Exception as exc:
                self._drop(sink, exc)

    def advance(self, tick: int) -> None:
        for sink in self._sinks:
            try:
                sink.advance(tick)
            except Exception as exc:
                self._drop(sink, exc)

    def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sink in self._sinks:
            try:
                sink.cleanup()
            except Exception as exc:
                self.failures.append((sink, exc))
                drop_child(self, sink, exc, close=False)

    def _drop(self, sink: AudioSink, exc: Exception) -> None:
        self._sinks = tuple(s for s in self._sinks if s is not sink)
        self.failures.append((sink, exc))
        drop_child(self, sink, exc)
