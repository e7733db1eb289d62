"""Filters and stop conditions: user filter, exact duration cut, size cut, alone detection."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import discord
import pytest

from discord_voicerecv import WaveSink
from discord_voicerecv.frames import FRAME_BYTES, VoiceFrame
from discord_voicerecv.sinks import AudioSink, SinkUser
from discord_voicerecv.sinks.limits import LimitSink, StopReason, UserFilterSink, others_present, user_ids
from discord_voicerecv.testing.analysis import read_wav


def _frame(user_id: int, tick: int, *, pcm: bool = True) -> VoiceFrame:
    return VoiceFrame(
        ssrc=user_id,
        user_id=user_id,
        tick=tick,
        pcm=b"\x01" * FRAME_BYTES if pcm else b"",
        opus=b"\xfc" * 40,
        sequence=tick,
        rtp_timestamp=tick * 960,
    )


class _Recorder(AudioSink):
    def __init__(self) -> None:
        self.frames: list[tuple[int | None, int]] = []
        self.ticks: list[int] = []
        self.cleaned = False

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.frames.append((frame.user_id, frame.tick))

    def advance(self, tick: int) -> None:
        self.ticks.append(tick)

    def cleanup(self) -> None:
        self.cleaned = True


def _run(sink: AudioSink, slots: int, users: tuple[int, ...] = (1, 2)) -> None:
    for tick in range(slots):
        for user in users:
            sink.write(None, _frame(user, tick))
        sink.advance(tick)
    sink.cleanup()


def test_user_ids_accepts_ids_and_objects_with_an_id() -> None:
    assert user_ids(None) is None
    assert user_ids([1, discord.Object(id=2), SimpleNamespace(id=3)]) == frozenset({1, 2, 3})  # type: ignore[list-item]


def test_user_filter_passes_only_chosen_users_but_every_slot() -> None:
    inner = _Recorder()
    _run(UserFilterSink(inner, [discord.Object(id=2)]), 3)
    assert inner.frames == [(2, 0), (2, 1), (2, 2)]
    assert inner.ticks == [0, 1, 2] and inner.cleaned


def test_duration_limit_is_exact_and_reported_once() -> None:
    inner = _Recorder()
    reasons: list[StopReason] = []
    limited = LimitSink(inner, max_duration=0.1, on_limit=reasons.append)
    _run(limited, 20)
    assert inner.ticks == [0, 1, 2, 3, 4]
    assert inner.frames == [(u, t) for t in range(5) for u in (1, 2)]
    assert reasons == [StopReason.MAX_DURATION] and limited.reached is StopReason.MAX_DURATION
    assert inner.cleaned


def test_duration_limit_gives_wave_files_exactly_that_long(tmp_path: Path) -> None:
    wave = WaveSink(tmp_path)
    _run(LimitSink(wave, max_duration=0.5), 60)
    assert wave.mix_path is not None
    for path in [*wave.files.values(), wave.mix_path]:
        _, _, samples = read_wav(path)
        assert len(samples) == 24_000, path.name


def test_byte_limit_counts_audio_handed_to_the_sink_and_cuts_at_the_slot_boundary() -> None:
    inner = _Recorder()
    reasons: list[StopReason] = []
    limited = LimitSink(inner, max_bytes=5 * FRAME_BYTES, on_limit=reasons.append)
    _run(limited, 10)
    assert inner.ticks == [0, 1, 2]
    assert limited.bytes_written == 6 * FRAME_BYTES
    assert reasons == [StopReason.MAX_BYTES]


def test_byte_limit_counts_opus_for_opus_only_sinks() -> None:
    inner = _Recorder()
    limited = LimitSink(inner, max_bytes=100)
    for tick in range(5):
        limited.write(None, _frame(1, tick, pcm=False))
        limited.advance(tick)
    assert inner.ticks == [0, 1, 2] and limited.reached is StopReason.MAX_BYTES


def test_byte_limit_counts_every_opus_packet_of_a_slot() -> None:
    inner = _Recorder()
    limited = LimitSink(inner, max_bytes=1000)
    frame = VoiceFrame(1, 1, 0, b"", b"\xf4" * 30, 0, 0, opus_packets=(b"\xf4" * 30, b"\xf4" * 50))
    limited.write(None, frame)
    assert limited.bytes_written == 80


def test_byte_limit_prefers_the_sinks_own_count() -> None:
    class Sized(_Recorder):
        bytes_written = 0

        def advance(self, tick: int) -> None:
            super().advance(tick)
            self.bytes_written += 1000

    inner = Sized()
    limited = LimitSink(inner, max_bytes=2500)
    _run(limited, 10)
    assert inner.ticks == [0, 1, 2] and limited.bytes_written == 3000


def test_first_limit_reached_wins() -> None:
    inner = _Recorder()
    limited = LimitSink(inner, max_duration=1.0, max_bytes=FRAME_BYTES)
    _run(limited, 60)
    assert limited.reached is StopReason.MAX_BYTES and inner.ticks == [0]


@pytest.mark.parametrize("kwargs", [{"max_duration": 0}, {"max_duration": -1.0}, {"max_bytes": 0}])
def test_limits_must_be_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LimitSink(_Recorder(), **kwargs)  # type: ignore[arg-type]


def test_others_present_ignores_me_and_bots() -> None:
    me = SimpleNamespace(id=1, bot=True)
    other_bot = SimpleNamespace(id=2, bot=True)
    human = SimpleNamespace(id=3, bot=False)
    assert not others_present(SimpleNamespace(members=[me, other_bot]), 1)
    assert others_present(SimpleNamespace(members=[me, human]), 1)
    assert not others_present(SimpleNamespace(members=[human]), 3)
    assert not others_present(object(), 1)
