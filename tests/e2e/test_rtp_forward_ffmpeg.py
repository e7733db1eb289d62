"""ffmpeg records what RTPForwardSink forwards from a real discord.py bot, with no re-encoding, on time."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
from pathlib import Path

import discord
import numpy as np
import pytest

from discord_voicerecv import ForwardedStream, MultiSink, RTPForwardSink, SinkUser, VoiceRecvClient, WaveSink
from discord_voicerecv.ffmpeg import find_ffmpeg
from discord_voicerecv.frames import FRAME_SAMPLES
from discord_voicerecv.sinks.rtp_forward import _MIX_LOOKAHEAD
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.analysis import normalized_xcorr, read_wav
from discord_voicerecv.testing.bots import new_client, running
from discord_voicerecv.testing.clips import load_clip
from discord_voicerecv.testing.decoding import decode_samples as _decode

RATE = 48_000
CLIPS = {"alice": "en_gb_female", "bob": "fr_female"}

pytestmark = pytest.mark.ffmpeg


def _free_ports(pairs: int) -> int:
    """An even port starting ``pairs`` consecutive free UDP port pairs on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000, 2)
        socks = []
        try:
            for port in range(base, base + 2 * pairs):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError("no free UDP ports")


async def _wait_for_receivers(streams: list[ForwardedStream], timeout: float = 10) -> None:
    """Until a program holds each stream's RTP port: what is sent before that, the BYE included, never reaches it."""
    deadline = time.monotonic() + timeout
    while not all(stream.has_receiver() for stream in streams):
        assert time.monotonic() < deadline, "ffmpeg did not open the SDP ports"
        await asyncio.sleep(0.02)


def _record(sdp: Path, outputs: list[Path]) -> subprocess.Popen[bytes]:
    """ffmpeg reading the SDP and copying the Opus packets, untouched, into every output file."""
    command = [find_ffmpeg(), "-hide_banner", "-nostats", "-loglevel", "warning"]
    command += ["-protocol_whitelist", "file,udp,rtp", "-i", str(sdp)]
    for out in outputs:
        command += ["-map", "0:a", "-c:a", "copy", "-y", str(out)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bool, int, str]:
    """Wait for ffmpeg to end on the RTCP BYE; if it does not, stop it cleanly with ``q``."""
    try:
        _, err = proc.communicate(timeout=timeout)
        return True, proc.returncode, err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        _, err = proc.communicate(b"q", timeout=10)
        return False, proc.returncode, err.decode(errors="replace")


async def test_ffmpeg_records_each_forwarded_speaker_and_the_mix_from_the_sdp(
    local: LocalDiscord, tmp_path: Path
) -> None:
    speakers = {name: local.add_speaker(name=name, clip=clip) for name, clip in CLIPS.items()}
    sink = RTPForwardSink(
        base_port=_free_ports(3),
        users=[speaker.user_id for speaker in speakers.values()],
        mix=True,
        sdp_dir=tmp_path / "sdp",
    )
    assert sink.mix_stream is not None
    heard = WaveSink(tmp_path / "heard")
    files = {name: [tmp_path / f"{name}.webm", tmp_path / f"{name}.ogg"] for name in speakers}
    files["mix"] = [tmp_path / "mix.webm"]
    sdps = {name: sink.streams[speaker.user_id].sdp_path for name, speaker in speakers.items()}
    sdps["mix"] = sink.mix_stream.sdp_path
    procs = {name: _record(sdps[name], files[name]) for name in files}
    try:
        await _wait_for_receivers([sink.mix_stream, *sink.streams.values()])

        recorder = new_client()
        async with running(recorder, "recorder-token"):
            channel = recorder.get_channel(local.voice_channel_id)
            assert isinstance(channel, discord.VoiceChannel)
            vc = await channel.connect(cls=VoiceRecvClient)
            await local.voice.wait_dave_settled(timeout=10)
            vc.listen(MultiSink(sink, heard))
            await asyncio.sleep(0.3)
            for speaker in speakers.values():
                speaker.speak()
                await speaker.wait_idle()
                await asyncio.sleep(0.3)
            vc.stop_listening()
            await vc.wait_listening_stopped()
            stats = vc.receive_stats()
        ended = {name: await asyncio.to_thread(_finish, proc, 10) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    for name, (by_itself, code, err) in ended.items():
        assert code == 0, f"ffmpeg for {name} failed: {err}"
        assert by_itself, f"ffmpeg for {name} did not end on the RTCP BYE"
    assert sink.send_errors == 0
    assert stats["decrypt_failed"] == 0

    # Where the speech sits in the files is judged against what the bot itself heard (the WaveSink of the same
    # session), sample for sample; where that sits against the speakers' clocks is a timing claim (the timing tier
    # of tests/e2e/test_record.py).
    mix = _decode(files["mix"][0])
    assert len(mix) == heard.slots * FRAME_SAMPLES, f"mix: {len(mix)} samples, the bot heard {heard.slots} slots"
    assert heard.mix_path is not None
    _same_as_heard(mix, heard.mix_path, "mix", min_score=0.95, delay=_MIX_LOOKAHEAD)
    for name, speaker in speakers.items():
        clip = load_clip(CLIPS[name])
        for path in files[name]:
            samples = _decode(path)
            assert len(samples) == len(mix), f"{path.name}: {len(samples)} samples, the mix has {len(mix)}"
            _same_as_heard(samples, heard.files[speaker.user_id], path.name, min_score=0.99)
            score, _ = normalized_xcorr(samples, clip)
            assert score >= 0.9, f"{path.name}: score {score:.3f}; {_heard_vs_clip(heard, speaker.user_id, clip)}"
        score, _ = normalized_xcorr(mix, clip)
        assert score >= 0.9, f"mix vs {name}: score {score:.3f}"


def _same_as_heard(recorded: np.ndarray, heard: Path, label: str, *, min_score: float, delay: int = 0) -> None:
    """``recorded`` holds what the bot heard (the WaveSink track of the same session), ``delay`` samples later."""
    _, _, reference = read_wav(heard)
    margin = RATE // 100
    score, lag = normalized_xcorr(recorded, reference[margin:-margin])
    assert score >= min_score, f"{label}: {score:.4f} against what the bot heard"
    off = lag - margin - delay
    assert abs(off) <= RATE // 1000, f"{label}: {off / RATE * 1000:.1f} ms off what the bot heard"


def _heard_vs_clip(heard: WaveSink, user_id: int, clip: bytes) -> str:
    _, _, samples = read_wav(heard.files[user_id])
    return f"the bot's own WaveSink track of this speaker scores {normalized_xcorr(samples, clip)[0]:.3f}"


@pytest.mark.parametrize("tier", ["state", pytest.param("timing", marks=pytest.mark.timing)])
async def test_on_stream_starts_ffmpeg_for_a_new_speaker_with_opus_only_forwarding(
    local: LocalDiscord, tmp_path: Path, tier: str
) -> None:
    """ffmpeg started at the speaker's first frame records the rest of the speech; how much of its start it misses
    is the time ffmpeg takes to open its port (bounded by the timing tier)."""
    speaker = local.add_speaker(clip="de_male")
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def on_stream(user: SinkUser, sdp: Path) -> None:
        assert user is not None
        procs[user.id] = _record(sdp, [tmp_path / f"{user.id}.webm"])

    sink = RTPForwardSink(base_port=_free_ports(1), sdp_dir=tmp_path, on_stream=on_stream)
    assert sink.wants_pcm is False, "without a mix the receiver need not decode"
    try:
        recorder = new_client()
        async with running(recorder, "recorder-token"):
            channel = recorder.get_channel(local.voice_channel_id)
            assert isinstance(channel, discord.VoiceChannel)
            vc = await channel.connect(cls=VoiceRecvClient)
            await local.voice.wait_dave_settled(timeout=10)
            vc.listen(sink)
            speaker.speak()
            await speaker.wait_idle()
            await asyncio.sleep(0.3)
            await _wait_for_receivers(list(sink.streams.values()))  # an ffmpeg still starting would miss the BYE
            vc.stop_listening()
            await vc.wait_listening_stopped()
            stats = vc.receive_stats()
        assert list(procs) == [speaker.user_id]
        by_itself, code, err = await asyncio.to_thread(_finish, procs[speaker.user_id], 10)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert code == 0 and by_itself, f"ffmpeg: exit {code}, ended by BYE: {by_itself}, {err}"
    assert stats["decoded"] == 0, "Opus-only forwarding decodes nothing"
    samples = _decode(tmp_path / f"{speaker.user_id}.webm")
    clip = load_clip("de_male")
    # ffmpeg starts at the speaker's first frame, so the first packets may go out before it opened its port: find
    # the clip from 1.5 s on, and from where it sits, how much of its start is missing (30-90 ms in idle runs).
    skip = 1.5
    score, lag = normalized_xcorr(samples, clip[round(skip * RATE) * 4 :])
    missing = skip - lag / RATE
    assert score >= 0.9, f"score {score:.3f}; ffmpeg said: {err}"
    assert missing < skip, "the recording starts after 1.5 s of the speech"
    if tier == "timing":
        assert missing <= 0.4, f"the first {missing:.3f}s of speech are missing"
