"""Sinks declare ``__slots__`` along their whole class chain, so their instances carry no ``__dict__``."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import discord_voicerecv.sinks
from discord_voicerecv.frames import FRAME_BYTES, VoiceFrame
from discord_voicerecv.sinks import (
    AudioSink,
    CallbackSink,
    MixSink,
    MultiSink,
    OggOpusSink,
    PerUserSink,
    UtteranceSink,
    WaveSink,
)
from discord_voicerecv.sinks.limits import LimitSink, UserFilterSink
from discord_voicerecv.sinks.stream import AudioStream, SinkHub

UNSLOTTED = {AudioStream, SinkHub}
"""Sinks that keep a ``__dict__`` on purpose: session objects handed to user code, not per-frame hot objects."""


def _package_sinks() -> set[type[AudioSink]]:
    for module in pkgutil.iter_modules(discord_voicerecv.sinks.__path__, "discord_voicerecv.sinks."):
        importlib.import_module(module.name)
    found: set[type[AudioSink]] = set()
    todo = [AudioSink]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("discord_voicerecv.") and ".testing" not in sub.__module__:
                found.add(sub)
            todo.append(sub)
    return found


def test_every_package_sink_is_slotted_all_the_way_up() -> None:
    sinks = _package_sinks()
    assert {WaveSink, LimitSink, OggOpusSink} <= sinks
    unslotted = {cls for cls in sinks if any("__slots__" not in k.__dict__ for k in cls.__mro__[:-1])}
    assert unslotted == UNSLOTTED


def _frame(tick: int, ssrc: int = 5) -> VoiceFrame:
    return VoiceFrame(ssrc, ssrc, tick, bytes(FRAME_BYTES), b"\xf8\xff\xfe", tick, tick * 960)


@pytest.mark.parametrize(
    "build",
    [
        lambda path: WaveSink(path),
        lambda path: OggOpusSink(path),
        lambda path: MixSink(WaveSink(path, per_user=False)),
        lambda path: MultiSink(CallbackSink(lambda user, frame: None), WaveSink(path)),
        lambda path: PerUserSink(lambda user, ssrc: CallbackSink(lambda u, f: None)),
        lambda path: LimitSink(UserFilterSink(WaveSink(path), [5]), max_duration=10),
        lambda path: UtteranceSink(lambda utterance: None),
    ],
    ids=["wave", "ogg", "mix", "multi", "peruser", "limit+filter", "utterance"],
)
def test_a_used_sink_has_no_instance_dict(tmp_path: Path, build: object) -> None:
    sink = build(tmp_path)  # type: ignore[operator]
    for tick in range(60):
        sink.write(None, _frame(tick))
        sink.advance(tick)
    sink.cleanup()
    assert not hasattr(sink, "__dict__")
