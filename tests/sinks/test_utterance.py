from __future__ import annotations

import asyncio
import time

import discord
import numpy as np
import pytest

from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, OPUS_SILENCE, SILENT_PCM, VoiceFrame
from discord_voicerecv.sinks import Utterance, UtteranceSink, to_16k_mono
from discord_voicerecv.sinks.utterance import _filter

ANN = discord.Object(id=11)
BOB = discord.Object(id=22)
LOUD = 6000  # about -15 dBFS
QUIET = 50  # about -56 dBFS: background noise


def pcm(tick: int, level: int) -> bytes:
    rng = np.random.default_rng(tick * 7 + level)
    return rng.integers(-level, level + 1, FRAME_SAMPLES * 2).astype("<i2").tobytes()


def frame(tick: int, user_id: int, level: int) -> VoiceFrame:
    data = pcm(tick, level) if level else SILENT_PCM
    return VoiceFrame(user_id, user_id, tick, data, OPUS_SILENCE if not level else b"\xfc", tick, tick * 960)


def run(sink: UtteranceSink, script: dict[int, list[tuple[int, int]]], total: int) -> None:
    """``script[tick]`` lists ``(user_id, level)`` of the frames in that slot; other slots have none."""
    for tick in range(total):
        for user_id, level in script.get(tick, []):
            sink.write(ANN if user_id == 11 else BOB, frame(tick, user_id, level))
        sink.advance(tick)


def speech(ticks: range, user_id: int = 11, level: int = LOUD) -> dict[int, list[tuple[int, int]]]:
    return {t: [(user_id, level)] for t in ticks}


def merge(*scripts: dict[int, list[tuple[int, int]]]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for script in scripts:
        for tick, frames in script.items():
            out.setdefault(tick, []).extend(frames)
    return out


def test_speech_separated_by_silence_makes_two_utterances_with_exact_audio() -> None:
    got: list[Utterance] = []
    sink = UtteranceSink(got.append, silence_ms=400)
    # Frames keep flowing (quiet) between the two stretches of speech, as with a client that never stops sending.
    script = merge(speech(range(5, 55)), speech(range(55, 80), level=QUIET), speech(range(80, 105)),
                   speech(range(105, 130), level=QUIET))  # fmt: skip
    run(sink, script, 140)
    assert [(u.start_tick, u.end_tick) for u in got] == [(5, 55), (80, 105)]
    first = got[0]
    assert first.user is ANN and first.user_id == 11 and first.ssrc == 11
    assert first.pcm == b"".join(pcm(t, LOUD) for t in range(5, 55))
    assert first.started_at == pytest.approx(0.1) and first.duration == pytest.approx(1.0)
    assert sink.emitted == 2 and sink.discarded == 0


def test_a_short_pause_stays_inside_one_utterance() -> None:
    got: list[Utterance] = []
    sink = UtteranceSink(got.append, silence_ms=400)
    script = merge(speech(range(0, 20)), speech(range(20, 35), level=QUIET), speech(range(35, 50)))
    run(sink, script, 80)
    assert [(u.start_tick, u.end_tick) for u in got] == [(0, 50)]
    assert got[0].pcm[20 * FRAME_BYTES : 35 * FRAME_BYTES] == b"".join(pcm(t, QUIET) for t in range(20, 35))


def test_frames_stopping_end_the_utterance_at_once_with_speaking_events() -> None:
    ended: list[tuple[int, Utterance]] = []
    sink = UtteranceSink(lambda u: ended.append((current, u)), silence_ms=1000)
    current = 0
    script = speech(range(0, 30))
    for current in range(60):
        for user_id, level in script.get(current, []):
            sink.write(ANN, frame(current, user_id, level))
        sink.advance(current)
    assert [(u.start_tick, u.end_tick) for _, u in ended] == [(0, 30)]
    assert ended[0][0] == 29 + 5, "100 ms after the last frame, not after silence_ms"


def test_without_speaking_events_missing_frames_count_as_silence() -> None:
    got: list[Utterance] = []
    sink = UtteranceSink(got.append, silence_ms=400, speaking_events=False)
    run(sink, merge(speech(range(0, 10)), speech(range(25, 40))), 80)  # a 300 ms hole without frames
    assert [(u.start_tick, u.end_tick) for u in got] == [(0, 40)]
    assert got[0].pcm[10 * FRAME_BYTES : 25 * FRAME_BYTES] == bytes(15 * FRAME_BYTES)


def test_short_bursts_are_discarded_and_long_speech_is_cut() -> None:
    got: list[Utterance] = []
    sink = UtteranceSink(got.append, min_ms=200, max_seconds=1.0)
    run(sink, merge(speech(range(0, 5)), speech(range(40, 170))), 200)
    assert sink.discarded == 1
    assert [(u.start_tick, u.end_tick) for u in got] == [(40, 90), (90, 140), (140, 170)]


def test_speakers_are_cut_independently_and_cleanup_flushes() -> None:
    got: list[Utterance] = []
    sink = UtteranceSink(got.append)
    run(sink, merge(speech(range(0, 50)), speech(range(10, 40), user_id=22)), 50)
    assert [(u.user_id, u.start_tick, u.end_tick) for u in got] == [(22, 10, 40)]
    sink.cleanup()
    assert [(u.user_id, u.start_tick, u.end_tick) for u in got] == [(22, 10, 40), (11, 0, 50)]
    sink.write(ANN, frame(60, 11, LOUD))
    assert sink.dropped == 1


def test_silence_frames_and_quiet_audio_never_start_an_utterance() -> None:
    got: list[Utterance] = []
    sink = UtteranceSink(got.append)
    run(sink, merge(speech(range(0, 50), level=0), speech(range(50, 100), level=QUIET)), 120)
    sink.cleanup()
    assert got == []


async def test_utterances_can_go_to_an_asyncio_queue() -> None:
    queue: asyncio.Queue[Utterance] = asyncio.Queue()
    sink = UtteranceSink(queue)
    await asyncio.to_thread(run, sink, speech(range(3, 30)), 50)
    utterance = await asyncio.wait_for(queue.get(), timeout=2)
    assert (utterance.user_id, utterance.start_tick, utterance.end_tick) == (11, 3, 30)


def test_a_queue_outside_the_event_loop_needs_the_loop() -> None:
    with pytest.raises(ValueError, match="loop="):
        UtteranceSink(asyncio.Queue())
    loop = asyncio.new_event_loop()
    try:
        UtteranceSink(asyncio.Queue(), loop=loop)
    finally:
        loop.close()


def reference_16k(stereo: bytes) -> np.ndarray:
    """The same filter in floating point with numpy: mean of the channels, centred FIR, every third sample."""
    taps = np.array(_filter(), dtype=np.float64) / 2**15
    mono = np.frombuffer(stereo, dtype="<i2").astype(np.float64).reshape(-1, 2).mean(axis=1)
    half = (taps.size - 1) // 2
    filtered = np.convolve(mono, taps)[half : half + mono.size]
    return np.clip(np.floor(filtered + 0.5), -32768, 32767)[: mono.size // 3 * 3 : 3]


def tone(freq: float, seconds: float, amplitude: float = 10_000) -> bytes:
    t = np.arange(int(48_000 * seconds)) / 48_000
    return np.repeat((amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2"), 2).tobytes()


def amplitude_at(mono16k: bytes, freq: float) -> float:
    y = np.frombuffer(mono16k, dtype="<i2").astype(np.float64)[1600:-1600]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size))) / (y.size / 4)
    return float(spectrum[round(freq * y.size / 16_000)])


def test_16k_mono_keeps_speech_band_and_removes_what_would_alias() -> None:
    out = to_16k_mono(tone(440, 1.0))
    assert len(out) == 16_000 * 2
    assert amplitude_at(out, 440) == pytest.approx(10_000, rel=0.01)
    aliased = to_16k_mono(tone(12_000, 1.0))  # would fold to 4 kHz
    assert amplitude_at(aliased, 4_000) < 10_000 * 10 ** (-50 / 20)


def test_16k_mono_matches_a_floating_point_reference_and_saturates() -> None:
    rng = np.random.default_rng(4)
    left = (3000 * np.sin(np.arange(4800) / 9)).astype("<i2")
    right = rng.integers(-2000, 2000, 4800).astype("<i2")
    square = np.where(np.arange(4800) // 60 % 2, 32767, -32768).astype("<i2")
    for l_ch, r_ch in ((left, right), (square, square), (np.full(4800, 32767, "<i2"), np.full(4800, 32767, "<i2"))):
        stereo = np.stack([l_ch, r_ch], axis=1).astype("<i2").tobytes()
        out = np.frombuffer(to_16k_mono(stereo), dtype="<i2").astype(np.float64)
        expected = reference_16k(stereo)
        assert out.size == expected.size == 1600
        assert np.abs(out - expected).max() <= 1
    assert to_16k_mono(b"") == b"" and to_16k_mono(b"\x01\x00") == b""


@pytest.mark.timing
def test_16k_mono_is_fast_enough_for_long_utterances() -> None:
    audio = tone(300, 10.0)
    started = time.process_time()
    out = to_16k_mono(audio)
    assert len(out) == 160_000 * 2
    assert time.process_time() - started < 1.0, "10 s of audio in well under a second of CPU"
