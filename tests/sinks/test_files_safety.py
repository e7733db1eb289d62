"""Sinks touch nothing before open(), never overwrite an existing recording, and leave no process behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from discord_voicerecv.errors import SinkError
from discord_voicerecv.ffmpeg import find_ffmpeg
from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, VoiceFrame
from discord_voicerecv.sinks import AudioSink, FFmpegSink, MixSink, MultiSink, OggOpusSink, PerUserSink, WaveSink
from discord_voicerecv.sinks._wavfile import HEADER_SIZE
from discord_voicerecv.sinks.base import SinkUser

OPUS_SILENCE = b"\xf8\xff\xfe"


def processes_writing_into(folder: Path) -> list[int]:
    """Pids of the processes whose command line names ``folder`` (the ffmpegs writing there), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(folder).encode() in cmdline:
                found.append(int(entry.name))
    return found


def ffmpeg_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ffmpeg ")]


class Leftovers:
    """ffmpeg processes writing into the test's folder, and writer threads that appeared since the test started."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._threads = set(ffmpeg_threads())

    def processes(self) -> list[int]:
        return processes_writing_into(self._folder)

    def threads(self) -> list[threading.Thread]:
        return [t for t in ffmpeg_threads() if t not in self._threads]

    def none(self) -> bool:
        return self.processes() == [] and self.threads() == []


@pytest.fixture
def leftovers(tmp_path: Path) -> Leftovers:
    return Leftovers(tmp_path)


def frame(tick: int, user_id: int, value: int = 1000) -> VoiceFrame:
    pcm = value.to_bytes(2, "little", signed=True) * (FRAME_BYTES // 2)
    return VoiceFrame(user_id, user_id, tick, pcm, OPUS_SILENCE, tick, tick * FRAME_SAMPLES)


def play(sink: AudioSink, ticks: range, user_id: int = 11) -> None:
    for tick in ticks:
        sink.write(None, frame(tick, user_id))
        sink.advance(tick)


pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")


def test_building_sinks_creates_no_file_folder_or_process(tmp_path: Path, leftovers: Leftovers) -> None:
    out = tmp_path / "rec"
    sinks = [
        WaveSink(out),
        FFmpegSink(out, "flac"),
        OggOpusSink(out),
        MultiSink(WaveSink(out / "a"), FFmpegSink(out / "b", "mp3")),
        PerUserSink(lambda user, ident: WaveSink(out / str(ident))),
    ]
    assert not out.exists()
    assert leftovers.none()
    for sink in sinks:
        sink.cleanup()
    assert not out.exists(), "cleaning up a sink that was never opened creates nothing either"


def test_a_second_wavesink_does_not_truncate_the_live_recording(tmp_path: Path) -> None:
    live = WaveSink(tmp_path, header_interval=0.1)
    live.open()
    play(live, range(50))
    mix = tmp_path / "mix.wav"
    before = mix.read_bytes()
    assert len(before) == HEADER_SIZE + 50 * FRAME_BYTES

    refused = WaveSink(tmp_path)  # e.g. a listen() that then raises AlreadyListening
    del refused
    assert mix.read_bytes() == before

    play(live, range(50, 60))
    live.cleanup()
    assert mix.stat().st_size == HEADER_SIZE + 60 * FRAME_BYTES


@pytest.mark.parametrize(
    ("make", "ext"),
    [
        (lambda d, **kw: WaveSink(d, **kw), "wav"),
        (lambda d, **kw: FFmpegSink(d, "flac", **kw), "flac"),
    ],
    ids=["wav", "flac"],
)
def test_a_second_recording_in_the_same_folder_gets_numbered_names(
    tmp_path: Path, make: Callable[..., WaveSink | FFmpegSink], ext: str
) -> None:
    def record() -> WaveSink | FFmpegSink:
        sink = make(tmp_path)
        sink.open()
        play(sink, range(10))
        sink.cleanup()
        return sink

    first = record()
    originals = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(originals) == {f"mix.{ext}", f"11.{ext}"}
    second = record()
    assert second.mix_path == tmp_path / f"mix-2.{ext}"
    assert {k: p.name for k, p in second.files.items()} == {11: f"11-2.{ext}"}
    record()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"mix.{ext}", f"mix-2.{ext}", f"mix-3.{ext}", f"11.{ext}", f"11-2.{ext}", f"11-3.{ext}"]
    )
    assert {name: (tmp_path / name).read_bytes() for name in originals} == originals, "first recording untouched"
    assert first.mix_path == tmp_path / f"mix.{ext}"

    again = make(tmp_path, overwrite=True)
    again.open()
    play(again, range(3))
    again.cleanup()
    assert again.mix_path == tmp_path / f"mix.{ext}"
    assert (tmp_path / f"mix.{ext}").read_bytes() != originals[f"mix.{ext}"], "overwrite=True reuses the name"


def test_oggopus_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "11.opus").write_bytes(b"an earlier recording")
    sink = OggOpusSink(tmp_path)
    sink.open()
    play(sink, range(5))
    sink.cleanup()
    assert sink.files[11].name == "11-2.opus"
    assert (tmp_path / "11.opus").read_bytes() == b"an earlier recording"


def test_a_refused_open_cleans_up_what_already_started(tmp_path: Path, leftovers: Leftovers) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    sink = MultiSink(FFmpegSink(tmp_path / "ok", "flac"), WaveSink(tmp_path / "not-a-folder"))
    with pytest.raises(SinkError, match="not-a-folder"):
        sink.open()
    assert leftovers.none()
    assert list((tmp_path / "ok").iterdir()) == [], "the name claimed by the sink opened first is given back"


def test_ffmpeg_processes_and_threads_are_reaped_on_stop_and_on_failure(tmp_path: Path, leftovers: Leftovers) -> None:
    sink = FFmpegSink(tmp_path, "flac")
    sink.open()
    play(sink, range(10), 11)
    play(sink, range(10, 20), 22)
    running = [track.pipe._process for track in sink._all_tracks()]
    assert len(running) == 3 and all(process.poll() is None for process in running)
    assert len(leftovers.threads()) == 3
    sink.cleanup()
    assert leftovers.none() and all(process.returncode == 0 for process in running), "all reaped"

    failing = FFmpegSink(tmp_path / "bad", "flac")
    host = MultiSink(failing)
    host.open()
    shutil.rmtree(tmp_path / "bad")  # the folder deleted under the bot: ffmpeg cannot create its file
    play(host, range(20))
    host.cleanup()
    assert [sink for sink, _ in host.failures] == [failing], "ffmpeg's failure is reported, while or after recording"
    assert leftovers.none()


def test_per_user_children_are_opened_before_their_first_frame(tmp_path: Path) -> None:
    opened: list[int] = []

    class Probe(AudioSink):
        def __init__(self, ident: int) -> None:
            self.ident = ident
            self.is_open = False

        def open(self) -> None:
            self.is_open = True
            opened.append(self.ident)

        def write(self, user: SinkUser, frame: VoiceFrame) -> None:
            assert self.is_open

    sink = PerUserSink(lambda user, ident: Probe(ident))
    sink.open()
    play(sink, range(3), 11)
    play(sink, range(3, 5), 22)
    assert opened == [11, 22]


def _decode(path: Path) -> bytes:
    return subprocess.run(
        [find_ffmpeg(), "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "2", "-ar", "48000", "-"],
        check=True,
        capture_output=True,
    ).stdout


def _talk(sink: AudioSink, start: int, stop: int, talking: dict[int, range]) -> None:
    for tick in range(start, stop):
        for user_id, ticks in talking.items():
            if tick in ticks:
                sink.write(None, frame(tick, user_id, user_id * 100))
        sink.advance(tick)


def test_a_departed_speakers_ffmpeg_gets_no_silence_and_a_return_stays_aligned(tmp_path: Path) -> None:
    sink = FFmpegSink(tmp_path, "flac", idle_timeout=0.2)  # 10 slots
    sink.open()
    talking = {11: range(0, 10), 22: range(0, 400)}
    _talk(sink, 0, 300, talking)
    ann, bob = sink._tracks[11], sink._tracks[22]
    assert ann.frames < 25, "no silence handed to Ann's ffmpeg once she was idle"
    assert bob.frames >= 295
    _talk(sink, 300, 320, {11: range(300, 316), 22: range(300, 320)})
    sink.cleanup()
    ann_pcm, bob_pcm = _decode(sink.files[11]), _decode(sink.files[22])
    assert len(ann_pcm) == len(bob_pcm) == 320 * FRAME_BYTES, "her return padded the gap: files still line up"
    expected = frame(0, 11, 1100).pcm
    assert ann_pcm[:FRAME_BYTES] == expected and ann_pcm[300 * FRAME_BYTES : 301 * FRAME_BYTES] == expected
    assert not any(ann_pcm[10 * FRAME_BYTES : 300 * FRAME_BYTES])


def test_a_speaker_who_never_returns_has_a_shorter_file_and_the_mix_runs_to_the_end(tmp_path: Path) -> None:
    sink = FFmpegSink(tmp_path, "flac", idle_timeout=0.2)
    sink.open()
    _talk(sink, 0, 200, {11: range(0, 10), 22: range(0, 200)})
    sink.cleanup()
    assert 10 * FRAME_BYTES <= len(_decode(sink.files[11])) < 25 * FRAME_BYTES
    assert len(_decode(sink.files[22])) == len(_decode(sink.mix_path)) == 200 * FRAME_BYTES  # type: ignore[arg-type]

    steady = FFmpegSink(tmp_path / "steady", "flac", idle_timeout=None)
    steady.open()
    _talk(steady, 0, 200, {11: range(0, 10), 22: range(0, 200)})
    steady.cleanup()
    assert len(_decode(steady.files[11])) == 200 * FRAME_BYTES


def test_rtp_forward_creates_its_folder_and_socket_when_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from discord_voicerecv.sinks import RTPForwardSink

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # not the shared /tmp, where other tests make folders too

    def temp_dirs() -> set[str]:
        return {p.name for p in scratch.glob("voicerecv-sdp-*")}

    before = temp_dirs()
    sink = RTPForwardSink(base_port=40_000, sdp_dir=tmp_path / "sdp")
    temporary = RTPForwardSink(base_port=40_010)
    assert not (tmp_path / "sdp").exists() and temp_dirs() == before and temporary.sdp_dir is None
    sink.cleanup()
    temporary.cleanup()
    assert temp_dirs() == before

    opened = RTPForwardSink(base_port=40_020)
    opened.open()
    assert opened.sdp_dir is not None and opened.sdp_dir.is_dir() and opened.sdp_dir.parent == scratch
    opened.cleanup()
    assert not opened.sdp_dir.exists() and temp_dirs() == before


def test_when_the_bots_loop_crashes_every_ffmpeg_finishes_its_file_and_exits(tmp_path: Path) -> None:
    script = f"""
import asyncio, threading
from discord_voicerecv.frames import VoiceFrame
from discord_voicerecv.sinks import FFmpegSink

async def bot():
    sink = FFmpegSink({str(tmp_path)!r}, "flac")
    sink.open()
    for tick in range(100):
        sink.write(None, VoiceFrame(7, 7, tick, bytes(range(256)) * 15, None, tick, tick * 960))
        sink.advance(tick)
    raise RuntimeError("the bot's loop crashed")

asyncio.run(bot())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "the bot's loop crashed" in result.stderr
    deadline = time.monotonic() + 20
    while processes_writing_into(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)  # the orphaned ffmpegs read the end of their input and finish on their own
    assert processes_writing_into(tmp_path) == [], "no ffmpeg left behind"
    for name in ("mix.flac", "7.flac"):
        pcm = _decode(tmp_path / name)
        assert len(pcm) == 100 * FRAME_BYTES, f"{name}: all the audio handed over before the crash"


def test_a_wavesink_rolled_back_by_a_refused_open_leaves_no_mix(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    wave = WaveSink(tmp_path / "ok")
    with pytest.raises(SinkError, match="not-a-folder"):
        MultiSink(wave, WaveSink(tmp_path / "not-a-folder")).open()
    assert list((tmp_path / "ok").iterdir()) == [], "no empty mix.wav from a recording that never started"
    assert wave.mix_path is None


def test_an_ffmpeg_that_cannot_start_leaves_no_claimed_file(tmp_path: Path, leftovers: Leftovers) -> None:
    (tmp_path / "bin").mkdir()
    ffmpeg = tmp_path / "bin" / "ffmpeg"
    ffmpeg.symlink_to(find_ffmpeg())
    out = tmp_path / "out"

    sink = FFmpegSink(out, "flac", ffmpeg=ffmpeg)
    sink.open()
    play(sink, range(5), 11)
    ffmpeg.unlink()  # e.g. ffmpeg removed by an upgrade while the bot runs
    with pytest.raises(SinkError, match="cannot run ffmpeg"):
        sink.write(None, frame(5, 22))
    sink.cleanup()
    assert sorted(p.name for p in out.iterdir()) == ["11.flac", "mix.flac"], "no empty 22.flac"
    assert all(p.stat().st_size > 0 for p in out.iterdir())

    mix_first = FFmpegSink(tmp_path / "mix", "flac", ffmpeg=find_ffmpeg())
    mix_first._argv[0] = str(ffmpeg)
    mix_first.open()
    with pytest.raises(SinkError, match="cannot run ffmpeg"):
        mix_first.advance(0)
    mix_first.cleanup()
    assert list((tmp_path / "mix").iterdir()) == [], "no empty mix.flac"
    assert mix_first.mix_path is None
    assert leftovers.none()


def test_the_format_check_starts_at_open_on_a_thread_of_its_own_and_open_does_not_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import discord_voicerecv.sinks.ffmpeg as ffmpeg_module

    gate = threading.Event()
    ran_on: list[threading.Thread] = []

    def probe(argv: tuple[str, ...], extension: str) -> tuple[str | None, bool]:
        ran_on.append(threading.current_thread())
        gate.wait(10)
        return None, True

    monkeypatch.setattr(ffmpeg_module, "_probes", {})
    monkeypatch.setattr(ffmpeg_module, "_probe_output", probe)
    sink = FFmpegSink(tmp_path / "first", "flac")
    again = FFmpegSink(tmp_path / "again", "flac")
    assert ran_on == [], "building a sink starts no check"
    sink.open()  # listen() on the bot's loop: returns while the check is still waiting at the gate
    assert not gate.is_set()
    gate.set()
    sink.check_writable()
    again.check_writable()
    assert len(ran_on) == 1 and ran_on[0] is not threading.current_thread(), "one check, on a thread of its own"
    assert not tmp_path.joinpath("again").exists()
    sink.cleanup()


def test_a_nested_ffmpegsink_whose_format_is_known_to_fail_is_refused_at_open(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    with pytest.raises(SinkError, match="cannot write this format"):
        FFmpegSink(tmp_path / "probe", "wat").check_writable()  # the answer is known from now on
    wave = WaveSink(tmp_path / "wav")
    unknown = FFmpegSink(tmp_path / "wat", "wat")
    for sink in (MultiSink(wave, unknown), MixSink(FFmpegSink(tmp_path / "mix", "wat", mix=False))):
        with pytest.raises(SinkError, match="cannot write this format"):
            sink.open()
    assert list((tmp_path / "wav").iterdir()) == [], "the WaveSink opened first is rolled back"
    assert not (tmp_path / "wat").exists() and not (tmp_path / "mix").exists()
    assert leftovers.none()


def test_an_ffmpeg_that_fails_before_writing_leaves_no_empty_file(tmp_path: Path, leftovers: Leftovers) -> None:
    broken = tmp_path / "ffmpeg"  # checks formats fine, then fails on every real recording
    broken.write_text(
        f'#!/bin/sh\ncase "$*" in *voicerecv-probe-*) exec "{find_ffmpeg()}" "$@";; esac\n'
        "echo 'Segmentation fault' >&2\nexit 139\n"
    )
    broken.chmod(0o755)
    out = tmp_path / "out"
    sink = FFmpegSink(out, "flac", ffmpeg=broken)
    host = MultiSink(sink)
    host.open()
    play(host, range(20))
    host.cleanup()
    assert [s for s, _ in host.failures] == [sink] and "status 139" in str(host.failures[0][1])
    assert list(out.iterdir()) == [], "no empty mix.flac or 11.flac"
    assert leftovers.none()
