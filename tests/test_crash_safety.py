"""Recordings survive their process being killed, a full disk and a directory that cannot be written.

A bot in a subprocess records a local Discord into WAV and Ogg Opus files and is killed with SIGKILL mid-sentence:
every file must open with a standard reader and hold the audio up to one flush interval before the last slot the
process had handed its sinks. A sink on a
full (1 MB tmpfs) or read-only file system must fail with a clear :class:`SinkError`, be stopped alone, and leave
the voice connection and any other sink running.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import discord
import numpy as np
import pytest

from discord_voicerecv import MultiSink, OggOpusSink, VoiceRecvClient, WaveSink
from discord_voicerecv.errors import SinkError
from discord_voicerecv.opus import ensure_discord_opus
from discord_voicerecv.testing import LocalDiscord, restore_discord, use_local_discord
from discord_voicerecv.testing.analysis import normalized_xcorr
from discord_voicerecv.testing.bots import new_client, running
from discord_voicerecv.testing.decoding import decode_samples
from discord_voicerecv.testing.speakers import SimulatedSpeaker

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
RATE = 48_000
SLOTS_PER_SECOND = 50
FLUSH_SLOTS = SLOTS_PER_SECOND  # WaveSink's header_interval and OggOpusSink's flush_interval: 1 s
KILL_AT_SLOT = 165
PLAYOUT_DELAY = 0.3
"""The recording child's: what is checked is what the kill leaves, so a loaded machine stalling the child for
longer than the default 0.1 s must not make frames late (a loaded run lost half of the last second that way)."""

_CHILD = """
import asyncio, sys, time
from discord_voicerecv import AudioSink, MultiSink, OggOpusSink, VoiceRecvClient, WaveSink
from discord_voicerecv.opus import ensure_discord_opus
from discord_voicerecv.testing import use_local_discord
from discord_voicerecv.testing.bots import new_client, running

class Progress(AudioSink):
    wants_pcm = False
    def write(self, user, frame):
        pass
    def advance(self, tick):
        if tick % 5 == 0:
            print("SLOT", tick, flush=True)

async def main(url, channel_id, out, playout_delay):
    ensure_discord_opus()
    use_local_discord(url)
    async with running(new_client(), "crash-recorder") as client:
        vc = await client.get_channel(channel_id).connect(cls=VoiceRecvClient)
        sink = MultiSink(WaveSink(out + "/wav"), OggOpusSink(out + "/ogg"), Progress())
        vc.listen(sink, playout_delay=playout_delay)
        print("LISTENING", time.monotonic(), flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])))
"""


def _reference(speaker: SimulatedSpeaker, start: float, end: float, listened: float) -> tuple[bytes, float]:
    """The audio ``speaker`` sent between ``start`` and ``end`` seconds after ``listened``, and when it began."""
    frames = [f for f in speaker.sent if f.pcm is not None and start <= f.sent_at - listened < end]
    assert frames, "the speaker sent nothing in that window"
    return b"".join(f.pcm for f in frames if f.pcm is not None), frames[0].sent_at - listened


def _check_present(samples: Any, speaker: SimulatedSpeaker, listened: float, upto: float) -> None:
    """The second of speech sent before ``upto`` (seconds after listening started) is in ``samples``, near where
    it was sent. Where exactly is a timing claim (the child's clock against ours): tests/e2e/test_record.py checks
    alignment to the sender's clock in the timing tier."""
    reference, at = _reference(speaker, upto - 1.0, upto, listened)
    first = max(0, int((at - 0.5) * RATE))
    window = samples[first : first + len(reference) // 4 + int(1.0 * RATE)]
    score, lag = normalized_xcorr(window, reference)
    assert score >= 0.9, f"{speaker.name}: score {score:.2f} at {(first + lag) / RATE - at:+.3f} s"


async def _slot_reported(stdout: asyncio.StreamReader, slot: int) -> int:
    """Read the child's progress until it reports ``slot`` or later: every sink has then been advanced that far."""
    while True:
        line = (await asyncio.wait_for(stdout.readline(), 30)).decode()
        assert line.startswith("SLOT"), line
        if int(line.split()[1]) >= slot:
            return int(line.split()[1])


@pytest.mark.ffmpeg
async def test_sigkill_mid_recording_leaves_playable_files(tmp_path: Path) -> None:
    async with LocalDiscord() as local:
        speakers = [local.add_speaker(clip="en_gb_female"), local.add_speaker(clip="de_male")]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, local.url, str(local.voice_channel_id), str(tmp_path), str(PLAYOUT_DELAY),
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line.startswith("LISTENING"), line
            listened = float(line.split()[1])
            await local.voice.wait_dave_settled(timeout=10)
            for speaker in speakers:
                speaker.start()
            reported = await _slot_reported(proc.stdout, KILL_AT_SLOT)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            for speaker in speakers:
                speaker.stop_now()

    # The sinks had completed slot ``reported`` (the progress sink comes last); they flush every FLUSH_SLOTS slots.
    least = (reported + 1 - FLUSH_SLOTS) / SLOTS_PER_SECOND
    wavs = sorted((tmp_path / "wav").glob("*.wav"))
    assert {p.name for p in wavs} == {"mix.wav", *(f"Speaker_{n}-{s.user_id}.wav" for n, s in enumerate(speakers, 1))}
    report = []
    for path in wavs:
        with wave.open(str(path), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 2, 2)
            frames = wav.getnframes()
            samples = np.frombuffer(wav.readframes(frames), dtype="<i2").reshape(-1, 2)
        assert len(samples) == frames, f"{path.name}: the header promises more than the file holds"
        report.append(f"{path.name}: {frames / RATE:.2f} s, slot {reported} reported")
        assert frames / RATE >= least, report[-1]
        for speaker in speakers:
            if str(speaker.user_id) in path.name:
                _check_present(samples, speaker, listened, frames / RATE - 0.05)
    oggs = sorted((tmp_path / "ogg").glob("*.opus"))
    assert len(oggs) == len(speakers)
    for path, speaker in zip(oggs, sorted(speakers, key=lambda s: s.name), strict=True):
        samples = decode_samples(path)
        report.append(f"{path.name}: {len(samples) / RATE:.2f} s, slot {reported} reported")
        assert len(samples) / RATE >= least, report[-1]
        _check_present(samples, speaker, listened, len(samples) / RATE - 0.05)
    print("\n" + "\n".join(report))


# -- full and read-only file systems -----------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, *options: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only); skips the test when it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *options)), "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class _Bot:
    def __init__(self, local: LocalDiscord, vc: VoiceRecvClient, events: list[tuple[Any, ...]]) -> None:
        self.local = local
        self.vc = vc
        self.events = events


@contextlib.asynccontextmanager
async def _bot_with_speaker() -> AsyncIterator[_Bot]:
    ensure_discord_opus()
    async with LocalDiscord() as local:
        use_local_discord(local.url)
        try:
            client = new_client()
            events: list[tuple[Any, ...]] = []

            async def on_voice_listening_stopped(vc: VoiceRecvClient, error: BaseException | None) -> None:
                events.append((vc, error))

            client.event(on_voice_listening_stopped)
            async with running(client, "disk-recorder"):
                channel = client.get_channel(local.voice_channel_id)
                assert isinstance(channel, discord.VoiceChannel)
                vc = await channel.connect(cls=VoiceRecvClient)
                speaker = local.add_speaker(clip="fr_female")
                await local.voice.wait_dave_settled(timeout=10)
                speaker.start()
                try:
                    yield _Bot(local, vc, events)
                finally:
                    speaker.stop_now()
        finally:
            restore_discord()


async def _wait(predicate: Any, timeout: float = 10.0) -> None:
    async def until() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(until(), timeout)


async def test_full_disk_stops_that_sink_alone(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small") as small:
        async with _bot_with_speaker() as bot:
            doomed, healthy = WaveSink(small), WaveSink(tmp_path / "big")
            multi = MultiSink(doomed, healthy)
            bot.vc.listen(multi)
            await _wait(lambda: bool(multi.failures), timeout=20)
            failed_at = healthy.slots
            await _wait(lambda: healthy.slots > failed_at + 25)
            assert bot.vc.is_listening() and bot.vc.is_connected()
            bot.vc.stop_listening()
            await bot.vc.wait_listening_stopped()
            stats = bot.vc.receive_stats()
        sink, error = multi.failures[0]
        assert sink is doomed and isinstance(error, SinkError)
        assert isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC
        assert str(small) in str(error) and "No space left on device" in str(error)
        assert stats["sink_error"] == 0 and stats["internal_error"] == 0
        assert healthy.slots > 100
        for path in [*healthy.files.values(), healthy.mix_path]:
            assert path is not None
            with wave.open(str(path), "rb") as wav:
                assert wav.getnframes() == healthy.slots * 960


async def test_full_disk_ends_a_lone_sink_with_an_error_event_and_the_bot_records_again(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small") as small:
        async with _bot_with_speaker() as bot:
            errors: list[BaseException | None] = []
            bot.vc.listen(WaveSink(small), after=errors.append)
            await _wait(lambda: bool(bot.events), timeout=20)
            assert len(errors) == 1 and isinstance(errors[0], SinkError)
            assert "No space left on device" in str(errors[0])
            assert bot.events[0][1] is errors[0]
            assert not bot.vc.is_listening() and bot.vc.is_connected()
            again = WaveSink(tmp_path / "again")
            bot.vc.listen(again)
            await _wait(lambda: again.slots >= 40 and bool(again.files))
            bot.vc.stop_listening()
            await bot.vc.wait_listening_stopped()
            assert again.slots >= 40 and again.files


async def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "ro") as readonly:
        refused = WaveSink(readonly / "recordings")  # building it touches nothing; opening it fails
        with pytest.raises(SinkError) as info:
            refused.open()
        assert str(readonly / "recordings") in str(info.value)
        assert "Read-only file system" in str(info.value)
        assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EROFS

        async with _bot_with_speaker() as bot:
            healthy = WaveSink(tmp_path / "wav")
            late_wav = WaveSink(readonly, mix=False)
            late_ogg = OggOpusSink(readonly)
            multi = MultiSink(healthy, late_wav, late_ogg)
            bot.vc.listen(multi)
            await _wait(lambda: len(multi.failures) == 2, timeout=10)
            await _wait(lambda: healthy.slots > 25 and bool(healthy.files))
            assert bot.vc.is_listening()
            bot.vc.stop_listening()
            await bot.vc.wait_listening_stopped()
        assert [sink for sink, _ in multi.failures] == [late_wav, late_ogg]
        for _, error in multi.failures:
            assert isinstance(error, SinkError) and "Read-only file system" in str(error)
        assert healthy.slots > 25 and healthy.files
