from __future__ import annotations

import logging
import wave
from pathlib import Path

import discord
import pytest

from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, VoiceFrame
from discord_voicerecv.sinks import AudioSink, PerUserSink, SinkUser, WaveSink


class Recorder(AudioSink):
    """Keeps every call it gets."""

    def __init__(self, fail_on_tick: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail_on_tick = fail_on_tick

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if frame.tick == self.fail_on_tick:
            raise RuntimeError("boom")
        self.calls.append(("write", frame.tick))

    def advance(self, tick: int) -> None:
        self.calls.append(("advance", tick))

    def cleanup(self) -> None:
        self.calls.append(("cleanup", -1))


def frame(tick: int, user_id: int | None, ssrc: int) -> VoiceFrame:
    return VoiceFrame(ssrc, user_id, tick, bytes(FRAME_BYTES), None, tick, tick * FRAME_SAMPLES)


def test_one_child_per_speaker_created_at_first_frame() -> None:
    built: list[tuple[SinkUser, int]] = []
    children: dict[int, Recorder] = {}

    def factory(user: SinkUser, ident: int) -> AudioSink:
        built.append((user, ident))
        children[ident] = Recorder()
        return children[ident]

    sink = PerUserSink(factory)
    ann = discord.Object(id=1)
    sink.write(ann, frame(0, 1, 100))
    sink.advance(0)
    sink.write(ann, frame(1, 1, 100))
    sink.write(None, frame(1, None, 200))
    sink.advance(1)
    sink.cleanup()
    sink.cleanup()

    assert built == [(ann, 1), (None, 200)]
    assert set(sink.sinks) == {1, "ssrc:200"}
    assert children[1].calls == [("write", 0), ("advance", 0), ("write", 1), ("advance", 1), ("cleanup", -1)]
    assert children[200].calls == [("write", 1), ("advance", 1), ("cleanup", -1)]


def test_a_failing_child_or_factory_is_detached_and_others_carry_on(caplog: pytest.LogCaptureFixture) -> None:
    good = Recorder()
    bad = Recorder(fail_on_tick=1)

    def factory(user: SinkUser, ident: int) -> AudioSink:
        if ident == 3:
            raise OSError("no room")
        return good if ident == 1 else bad

    sink = PerUserSink(factory)
    with caplog.at_level(logging.ERROR, logger="discord_voicerecv.sinks"):
        for tick in range(3):
            for uid in (1, 2, 3):
                sink.write(None, frame(tick, uid, uid))
            sink.advance(tick)
        sink.cleanup()

    assert [k for k, _ in sink.failures] == [3, 2]
    assert isinstance(sink.failures[0][1], OSError)
    assert good.calls[-1] == ("cleanup", -1) and good.calls.count(("advance", 2)) == 1
    assert bad.calls == [("write", 0), ("advance", 0), ("cleanup", -1)]
    assert set(sink.sinks) == {1, 2}
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


def test_per_user_wave_files_stay_aligned_to_the_listening_start(tmp_path: Path) -> None:
    sink = PerUserSink(lambda user, ident: WaveSink(tmp_path / str(ident), per_user=False))
    for tick in range(20):
        if tick >= 12:
            sink.write(None, frame(tick, 7, 7))
        sink.advance(tick)
    sink.cleanup()
    with wave.open(str(tmp_path / "7" / "mix.wav"), "rb") as w:
        assert w.getnframes() == 20 * FRAME_SAMPLES
    assert not PerUserSink(lambda u, i: Recorder(), wants_pcm=False).wants_pcm
