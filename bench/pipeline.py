"""Our pipeline, datagram in to frame out: ``Receiver`` driven by hand with a fake clock, or threaded at real time."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import davey
from stream import Stream

from discord_voicerecv.frames import FRAME_DURATION, VoiceFrame
from discord_voicerecv.receive import Receiver
from discord_voicerecv.receive.dave import DaveFrameDecryptor
from discord_voicerecv.sinks.base import AudioSink, SinkUser
from discord_voicerecv.sinks.wave import WaveSink

__all__ = ("CountingSink", "OpusOnlySink", "Pipeline", "make_sink")

_SLOT = FRAME_DURATION
_ARRIVAL = 0.004
"""Where in its slot a packet arrives, in the fake-clock runs."""


class CountingSink(AudioSink):
    """Does nothing with the audio but count it (the cheapest sink that still takes PCM)."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.frames += 1


class OpusOnlySink(CountingSink):
    """Passthrough: wants the Opus packets only, so nothing is decoded."""

    __slots__ = ()
    wants_pcm = False


class _WaveTemp(WaveSink):
    """WaveSink (per-user files and mix) into a temporary directory removed at cleanup."""

    __slots__ = ("frames", "tmp")

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="voicerecv-bench-")
        self.frames = 0
        super().__init__(Path(self.tmp))

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.frames += 1
        super().write(user, frame)

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def make_sink(kind: str) -> AudioSink:
    """``"noop"``, ``"opus"`` (wants_pcm=False) or ``"wave"`` (per-user files + mix)."""
    if kind == "noop":
        return CountingSink()
    if kind == "opus":
        return OpusOnlySink()
    if kind == "wave":
        return _WaveTemp()
    raise ValueError(kind)


class Pipeline:
    """One pass of ``stream`` through a fresh Receiver into a fresh sink of kind ``sink``."""

    def __init__(self, stream: Stream, sink: str, dave_session: davey.DaveSession | None) -> None:
        self.stream = stream
        self.sink = make_sink(sink)
        self.now = 0.0
        decryptor = None
        if dave_session is not None:
            session = dave_session
            decryptor = DaveFrameDecryptor(lambda: session, lambda: 1)
        self._decryptor = decryptor

    def _receiver(self, clock: Callable[[], float]) -> Receiver:
        receiver = Receiver(self.sink, decryptor=self._decryptor, clock=clock)
        receiver.set_transport(self.stream.mode, self.stream.key)
        for ssrc, user in self.stream.ssrc_users.items():
            receiver.map_ssrc(ssrc, user)
        return receiver

    def frames(self) -> int:
        return int(getattr(self.sink, "frames", 0))

    def run(self) -> int:
        """Manual mode: feed a slot's packets, pump, next slot; the clock is fake, nothing waits."""
        receiver = self._receiver(lambda: self.now)
        receiver.start(threaded=False)
        feed = receiver.feed
        pump = receiver.pump
        for k, slot in enumerate(self.stream.slots):
            self.now = k * _SLOT + _ARRIVAL
            for datagram in slot:
                feed(datagram)
            pump(self.now)
        self.now += 1.0
        receiver.pump(self.now)
        receiver.stop()
        self._check(receiver)
        return self.stream.packets

    def run_paced(self) -> int:
        """Threaded: this thread feeds each datagram at its arrival time (:meth:`Stream.schedule`), as discord.py's
        socket thread would; the receiver's playout and sink threads do the rest."""
        receiver = self._receiver(time.monotonic)
        receiver.start(threaded=True)
        feed = receiver.feed
        t0 = time.monotonic()
        for at, datagram in self.stream.schedule():
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            feed(datagram)
        time.sleep(receiver.playout_delay + 2 * _SLOT)
        receiver.stop()
        self._check(receiver, paced=True)
        return self.stream.packets

    def _check(self, receiver: Receiver, *, paced: bool = False) -> None:
        stats = receiver.stats()
        frames = self.frames()
        expected = self.stream.packets
        # A paced run on a loaded machine may lose a few frames to scheduling; a manual run loses none.
        if frames < expected * (0.98 if paced else 1.0) or stats.dropped():
            raise AssertionError(f"pipeline lost audio: {frames}/{expected} frames, {stats!r}")
