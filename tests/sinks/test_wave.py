from __future__ import annotations

import tracemalloc
import wave
from array import array
from pathlib import Path
from typing import NamedTuple

import discord
import numpy as np
import numpy.typing as npt
import pytest

from discord_voicerecv.errors import SinkError, VoiceRecvError
from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, VoiceFrame
from discord_voicerecv.sinks import SinkUser, WaveSink
from discord_voicerecv.sinks._mix import LIMIT
from discord_voicerecv.sinks._wavfile import HEADER_SIZE

ANN = discord.User(
    state=None,  # type: ignore[arg-type]
    data={"id": "11", "username": "ann", "discriminator": "0", "avatar": None, "global_name": "Ann / ../Ä b"},
)
BOB = discord.Object(id=22)
UNKNOWN_SSRC = 999


def const_pcm(value: int) -> bytes:
    return array("h", [value]).tobytes() * (FRAME_SAMPLES * 2)


def frame(tick: int, user_id: int | None, value: int, ssrc: int = 0) -> VoiceFrame:
    return VoiceFrame(
        ssrc=ssrc or (user_id or UNKNOWN_SSRC), user_id=user_id, tick=tick, pcm=const_pcm(value), opus=None,
        sequence=tick, rtp_timestamp=tick * FRAME_SAMPLES,
    )  # fmt: skip


# Who speaks when: (user, user_id, value, ticks). Ann talks, pauses and talks again; Bob starts at slot 5;
# an SSRC that is never mapped to a user speaks at 12..14.
SCRIPT: list[tuple[SinkUser, int | None, int, range]] = [
    (ANN, 11, 1000, range(0, 10)),
    (ANN, 11, 1000, range(20, 30)),
    (BOB, 22, -3000, range(5, 15)),
    (None, None, 500, range(12, 15)),
]
TOTAL_SLOTS = 40


def expected_value(user_id: int | None, tick: int) -> int:
    return sum(v for _, uid, v, ticks in SCRIPT if uid == user_id and tick in ticks)


def play(sink: WaveSink, until: int, start: int = 0) -> None:
    for tick in range(start, until):
        for user, user_id, value, ticks in SCRIPT:
            if tick in ticks:
                sink.write(user, frame(tick, user_id, value))
        sink.advance(tick)


class Wav(NamedTuple):
    nchannels: int
    sampwidth: int
    framerate: int
    nframes: int


def read(path: Path) -> tuple[Wav, npt.NDArray[np.int16]]:
    """The header's format and sizes, and the samples it announces, as ``(frames, 2)``."""
    with wave.open(str(path), "rb") as w:
        params = Wav(w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes())
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16).reshape(-1, 2)
    return params, samples


def all_paths(sink: WaveSink) -> list[Path]:
    assert sink.mix_path is not None
    return [*sink.files.values(), sink.mix_path]


def test_files_are_aligned_padded_and_equal_length(tmp_path: Path) -> None:
    sink = WaveSink(tmp_path, header_interval=0.2)
    play(sink, TOTAL_SLOTS)
    sink.cleanup()

    assert sorted(p.name for p in all_paths(sink)) == ["22.wav", "Ann_.._Ä_b-11.wav", "mix.wav", "unknown-999.wav"]
    assert set(sink.files) == {11, 22, f"ssrc:{UNKNOWN_SSRC}"}
    for path in all_paths(sink):
        assert path.stat().st_size == HEADER_SIZE + TOTAL_SLOTS * FRAME_BYTES
        params, samples = read(path)
        assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 48_000)
        assert params.nframes == TOTAL_SLOTS * FRAME_SAMPLES

    for key, user_id in ((11, 11), (22, 22), (f"ssrc:{UNKNOWN_SSRC}", None)):
        _, samples = read(sink.files[key])
        per_slot = samples.reshape(TOTAL_SLOTS, FRAME_SAMPLES * 2)
        for tick in range(TOTAL_SLOTS):
            assert (per_slot[tick] == expected_value(user_id, tick)).all(), (key, tick)

    _, bob = read(sink.files[22])
    assert not bob[: 5 * FRAME_SAMPLES].any(), "Bob, first heard at slot 5, starts with 5 silent frames"


def test_mix_is_the_sum_of_the_slot(tmp_path: Path) -> None:
    sink = WaveSink(tmp_path)
    play(sink, TOTAL_SLOTS)
    sink.cleanup()
    assert sink.mix_path is not None
    _, mix = read(sink.mix_path)
    per_slot = mix.reshape(TOTAL_SLOTS, FRAME_SAMPLES * 2)
    for tick in range(TOTAL_SLOTS):
        want = sum(v for _, _, v, ticks in SCRIPT if tick in ticks)
        assert (per_slot[tick] == want).all(), tick


def test_mix_is_limited_instead_of_clipping(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    loud = [rng.integers(-32768, 32768, FRAME_SAMPLES * 2, dtype=np.int16) for _ in range(3)]
    sink = WaveSink(tmp_path, per_user=False)
    sink.write(None, frame(0, 1, 30000))
    sink.write(None, frame(0, 2, 10000))
    sink.advance(0)
    sink.write(None, frame(1, 1, -30000))
    sink.write(None, frame(1, 2, -10000))
    sink.advance(1)
    for uid, pcm in enumerate(loud):
        sink.write(None, VoiceFrame(uid, uid, 2, pcm.astype("<i2").tobytes(), None, 0, 0))
    sink.advance(2)
    sink.cleanup()
    assert sink.mix_path is not None
    _, mix = read(sink.mix_path)
    slots = mix.reshape(3, -1)
    assert (slots[0] == slots[0][0]).all() and LIMIT * 0.98 < slots[0][0] <= LIMIT  # turned down, not clipped
    assert (slots[1] == -slots[0][0]).all()
    exact = sum(x.astype(np.int64) for x in loud)
    assert np.abs(slots[2]).max() <= LIMIT + 2 and np.corrcoef(slots[2], exact)[0, 1] > 0.99
    assert sink.files == {}


def test_header_is_valid_after_every_interval_and_after_a_crash(tmp_path: Path) -> None:
    interval_slots = 10
    sink = WaveSink(tmp_path, header_interval=interval_slots / 50)
    for done in range(interval_slots, 31, interval_slots):
        play(sink, done, start=done - interval_slots)
        for path in all_paths(sink):
            params, _ = read(path)
            assert params.nframes == done * FRAME_SAMPLES, (path.name, done)

    # Crash: seven more slots, never cleaned up. The files still open and hold exactly the audio up to slot 30.
    play(sink, 37, start=30)
    for path in all_paths(sink):
        params, samples = read(path)
        assert params.nframes == 30 * FRAME_SAMPLES
        assert len(samples) == 30 * FRAME_SAMPLES
    _, ann = read(sink.files[11])
    assert (ann.reshape(30, -1)[20:30] == 1000).all()


def test_cleanup_closes_an_open_slot_and_pads_to_the_longest_track(tmp_path: Path) -> None:
    sink = WaveSink(tmp_path)
    sink.write(ANN, frame(0, 11, 7))
    sink.advance(0)
    sink.write(BOB, frame(3, 22, 9))  # no advance for slot 3 before cleanup
    sink.cleanup()
    sink.cleanup()
    assert sink.slots == 4
    for path in all_paths(sink):
        params, _ = read(path)
        assert params.nframes == 4 * FRAME_SAMPLES
    _, mix = read(all_paths(sink)[-1])
    assert (mix.reshape(4, -1)[:, 0] == [7, 0, 0, 9]).all()


def test_late_and_duplicate_frames_are_dropped_and_counted(tmp_path: Path) -> None:
    sink = WaveSink(tmp_path)
    sink.write(ANN, frame(0, 11, 1))
    sink.write(ANN, frame(0, 11, 2))  # same speaker twice in one slot
    sink.advance(0)
    sink.write(ANN, frame(0, 11, 3))  # slot already complete
    sink.advance(1)
    sink.cleanup()
    sink.write(ANN, frame(2, 11, 4))  # after cleanup
    assert sink.dropped == 3
    _, ann = read(sink.files[11])
    assert (ann.reshape(2, -1)[:, 0] == [1, 0]).all()


def test_short_and_empty_pcm_keep_tracks_aligned(tmp_path: Path) -> None:
    sink = WaveSink(tmp_path, mix=False)
    sink.write(ANN, VoiceFrame(1, 11, 0, const_pcm(5)[:100], None, 0, 0))
    sink.write(BOB, VoiceFrame(2, 22, 0, b"", None, 0, 0))
    sink.advance(0)
    sink.write(ANN, VoiceFrame(1, 11, 1, const_pcm(6) * 2, None, 0, 0))
    sink.advance(1)
    sink.cleanup()
    assert sink.mix_path is None
    _, ann = read(sink.files[11])
    assert len(ann) == 2 * FRAME_SAMPLES
    assert (ann[:25] == 5).all() and not ann[25:FRAME_SAMPLES].any() and (ann[FRAME_SAMPLES:] == 6).all()
    assert read(sink.files[22])[0].nframes == 2 * FRAME_SAMPLES


def test_per_user_only_without_mix_and_mix_only(tmp_path: Path) -> None:
    users_only = WaveSink(tmp_path / "users", mix=False)
    mix_only = WaveSink(tmp_path / "mix", per_user=False)
    for sink in (users_only, mix_only):
        play(sink, TOTAL_SLOTS)
        sink.cleanup()
    assert not (tmp_path / "users" / "mix.wav").exists()
    assert len(users_only.files) == 3
    assert [p.name for p in (tmp_path / "mix").iterdir()] == ["mix.wav"]
    with pytest.raises(ValueError):
        WaveSink(tmp_path, mix=False, per_user=False)
    with pytest.raises(ValueError):
        WaveSink(tmp_path, header_interval=0)


def test_custom_naming_is_sanitised_and_unique(tmp_path: Path) -> None:
    seen: list[tuple[SinkUser, int | None]] = []

    def naming(user: SinkUser, user_id: int | None) -> str:
        seen.append((user, user_id))
        return "../mix" if user_id == 22 else "same name.WAV"

    sink = WaveSink(tmp_path, naming=naming)
    sink.write(ANN, frame(0, 11, 1))
    sink.write(BOB, frame(0, 22, 1))
    sink.write(None, frame(0, None, 1))
    sink.advance(0)
    sink.cleanup()
    assert seen == [(ANN, 11), (BOB, 22), (None, None)]
    assert {k: p.name for k, p in sink.files.items()} == {
        11: "same_name.wav",
        22: "mix-2.wav",
        f"ssrc:{UNKNOWN_SSRC}": "same_name-2.wav",
    }
    assert all(p.parent == tmp_path for p in sink.files.values())


def test_speakers_are_told_apart_by_user_id_before_the_member_is_cached(tmp_path: Path) -> None:
    sink = WaveSink(tmp_path)
    sink.write(discord.Object(id=11), frame(0, 11, 1))
    sink.advance(0)
    sink.write(ANN, frame(1, 11, 2))
    sink.advance(1)
    sink.cleanup()
    assert [p.name for p in sink.files.values()] == ["11.wav"]


def test_disk_errors_raise_sink_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    refused = WaveSink(tmp_path / "taken")
    with pytest.raises(SinkError, match="taken") as caught:
        refused.open()
    assert isinstance(caught.value, VoiceRecvError)
    assert isinstance(caught.value.__cause__, OSError)

    sink = WaveSink(tmp_path / "rec")
    sink.open()
    (tmp_path / "rec" / "mix.wav").unlink()
    (tmp_path / "rec").rmdir()
    with pytest.raises(SinkError, match=r"22\.wav") as caught:
        sink.write(BOB, frame(0, 22, 1))
    assert caught.value.path == str(tmp_path / "rec" / "22.wav")
    sink.cleanup()


def test_memory_stays_flat_over_a_long_recording(tmp_path: Path) -> None:
    sink = WaveSink(tmp_path, header_interval=1.0)
    speech = const_pcm(100)

    def run(start: int, stop: int) -> None:
        for tick in range(start, stop):
            if tick % 500 < 150:
                sink.write(ANN, VoiceFrame(11, 11, tick, speech, None, tick, 0))
            if tick % 3000 < 40:
                sink.write(BOB, VoiceFrame(22, 22, tick, speech, None, tick, 0))
            sink.advance(tick)

    run(0, 1000)
    tracemalloc.start()
    try:
        run(1000, 2000)
        after_short, _ = tracemalloc.get_traced_memory()
        run(2000, 12_000)
        after_long, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sink.cleanup()
    # Ten times more audio (38 MB per file) does not grow what the sink holds.
    assert after_long - after_short < 16 * 1024
    assert peak < 256 * 1024
    for path in all_paths(sink):
        assert path.stat().st_size == HEADER_SIZE + 12_000 * FRAME_BYTES
