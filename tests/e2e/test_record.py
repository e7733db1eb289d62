"""A real discord.py recorder against the local Discord: what it writes must match what was said."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from pathlib import Path

import discord
import pytest

from discord_voicerecv import VoiceRecvClient, WaveSink
from discord_voicerecv.frames import FRAME_SAMPLES
from discord_voicerecv.testing import LinkConditions, LocalDiscord
from discord_voicerecv.testing.analysis import normalized_xcorr, read_wav
from discord_voicerecv.testing.bots import new_client, running
from discord_voicerecv.testing.clips import load_clip
from discord_voicerecv.testing.speakers import SimulatedSpeaker

SAMPLE_RATE = 48_000
SLOT = 0.02


def _voice_channel(client: discord.Client, local: LocalDiscord) -> discord.VoiceChannel:
    channel = client.get_channel(local.voice_channel_id)
    assert isinstance(channel, discord.VoiceChannel)
    return channel


def _track_seconds(path: Path) -> float:
    return _track_samples(path) / SAMPLE_RATE


def _track_samples(path: Path) -> int:
    rate, _, samples = read_wav(path)
    assert rate == SAMPLE_RATE
    return len(samples)


async def _stop(vc: VoiceRecvClient) -> float:
    vc.stop_listening()
    await vc.wait_listening_stopped()
    return time.monotonic()


async def test_plain_discord_py_bot_playing_a_clip_is_recorded_faithfully(local: LocalDiscord, tmp_path: Path) -> None:
    recorder = new_client()
    player = new_client()
    clip = load_clip("en_us_male")
    async with running(recorder, "recorder-token"), running(player, "player-token"):
        rvc = await _voice_channel(recorder, local).connect(cls=VoiceRecvClient)
        pvc = await _voice_channel(player, local).connect()
        assert type(pvc) is discord.VoiceClient
        assert rvc.mode == "aead_aes256_gcm_rtpsize"
        assert pvc.mode == "aead_xchacha20_poly1305_rtpsize"
        await local.voice.wait_dave_settled(timeout=10)
        sink = WaveSink(tmp_path)
        started = time.monotonic()
        rvc.listen(sink)
        done = asyncio.Event()
        pvc.play(discord.PCMAudio(io.BytesIO(clip)), after=lambda _: recorder.loop.call_soon_threadsafe(done.set))
        await asyncio.wait_for(done.wait(), timeout=15)
        await asyncio.sleep(0.3)
        stopped = await _stop(rvc)
        stats = rvc.receive_stats()
        dave = rvc.dave_stats
        assert rvc.voice_privacy_code and rvc.voice_privacy_code == pvc.voice_privacy_code
        player_id = player.user.id if player.user else 0

    listened = stopped - started
    track = sink.files[player_id]
    _, _, samples = read_wav(track)
    score, _ = normalized_xcorr(samples, clip)
    assert score >= 0.9, f"recording does not match the clip (score {score:.3f})"
    for path in (track, sink.mix_path):
        assert path is not None
        assert _track_samples(path) == sink.slots * FRAME_SAMPLES, "every slot of the session, in every file"
        assert _track_seconds(path) <= listened + SLOT, "the timeline never runs ahead of the clock"
    assert stats["decoded"] >= len(clip) // 3840 - 5
    assert stats["decrypt_failed"] == 0
    assert dave[player_id]["successes"] > 100 and dave[player_id]["failures"] == 0


@dataclass
class _Session:
    sink: WaveSink
    stats: dict[str, int]
    alice: SimulatedSpeaker
    bob: SimulatedSpeaker
    started: float
    stopped: float


async def _two_speakers_under_loss(tmp_path: Path) -> _Session:
    """Alice, then Bob 0.45 s later, over a link losing and reordering 5 % of packets, recorded by a WaveSink."""
    from discord_voicerecv.opus import ensure_discord_opus
    from discord_voicerecv.testing import restore_discord, use_local_discord

    ensure_discord_opus()
    link = LinkConditions(loss=0.05, reorder=0.05, seed=7)
    async with LocalDiscord(link=link) as local:
        use_local_discord(local.url)
        try:
            recorder = new_client()
            async with running(recorder, "recorder-token"):
                vc = await _voice_channel(recorder, local).connect(cls=VoiceRecvClient)
                alice = local.add_speaker(clip="en_gb_female")
                bob = local.add_speaker(clip="de_male")
                await local.voice.wait_dave_settled(timeout=10)
                sink = WaveSink(tmp_path)
                started = time.monotonic()
                vc.listen(sink)
                await asyncio.sleep(0.3)
                alice.speak()
                await asyncio.sleep(0.45)
                bob.speak()
                await asyncio.gather(alice.wait_idle(), bob.wait_idle())
                await asyncio.sleep(0.3)
                stopped = await _stop(vc)
                stats = vc.receive_stats()
        finally:
            restore_discord()
    return _Session(sink, dict(stats), alice, bob, started, stopped)


async def test_two_simulated_speakers_under_loss_and_reorder_stay_aligned(tmp_path: Path) -> None:
    session = await _two_speakers_under_loss(tmp_path)
    sink = session.sink
    assert session.stats["fec"] + session.stats["plc"] > 0, "5% loss must show up as concealed frames"
    lengths = {_track_samples(p) for p in [*sink.files.values(), sink.mix_path] if p is not None}
    assert lengths == {sink.slots * FRAME_SAMPLES}
    lags: dict[str, int] = {}
    for speaker, clip in ((session.alice, "en_gb_female"), (session.bob, "de_male")):
        _, _, samples = read_wav(sink.files[speaker.user_id])
        score, lags[speaker.name] = normalized_xcorr(samples, load_clip(clip))
        assert score >= 0.9, f"{speaker.name}: score {score:.3f}"
    assert lags[session.alice.name] < lags[session.bob.name], "Bob spoke after Alice"


@pytest.mark.timing
async def test_speech_sits_where_it_was_sent_and_files_last_as_long_as_listening(tmp_path: Path) -> None:
    """Against the senders' clock: within one slot (20 ms) of when each speaker's first audio frame was sent, and
    files as long as the listening span to within two slots; a loaded machine delays arrivals and can miss it."""
    session = await _two_speakers_under_loss(tmp_path)
    sink = session.sink
    listened = session.stopped - session.started
    for path in [*sink.files.values(), sink.mix_path]:
        assert path is not None
        assert abs(_track_seconds(path) - listened) <= 2 * SLOT
    for speaker, clip in ((session.alice, "en_gb_female"), (session.bob, "de_male")):
        rate, _, samples = read_wav(sink.files[speaker.user_id])
        _, lag = normalized_xcorr(samples, load_clip(clip))
        first_audio = next(f for f in speaker.sent if not f.silence)
        expected = first_audio.sent_at - session.started
        assert abs(lag / rate - expected) <= SLOT, f"{speaker.name}: at {lag / rate:.3f}s, sent at {expected:.3f}s"


@pytest.mark.parametrize("dave", [True, False])
async def test_recv_client_plays_with_aes_gcm_while_listening(dave: bool, tmp_path: Path) -> None:
    from discord_voicerecv.opus import ensure_discord_opus
    from discord_voicerecv.testing import restore_discord, use_local_discord

    ensure_discord_opus()
    clip = load_clip("fr_female")
    async with LocalDiscord(dave=dave) as local:
        use_local_discord(local.url)
        try:
            a = new_client()
            b = new_client()
            async with running(a, "bot-a"), running(b, "bot-b"):
                avc = await _voice_channel(a, local).connect(cls=VoiceRecvClient)
                bvc = await _voice_channel(b, local).connect(cls=VoiceRecvClient)
                assert bvc.mode == "aead_aes256_gcm_rtpsize"
                if dave:
                    await local.voice.wait_dave_settled(timeout=10)
                sink_a, sink_b = WaveSink(tmp_path / "a"), WaveSink(tmp_path / "b")
                avc.listen(sink_a)
                bvc.listen(sink_b)
                done = asyncio.Event()
                bvc.play(discord.PCMAudio(io.BytesIO(clip)), after=lambda _: a.loop.call_soon_threadsafe(done.set))
                await asyncio.wait_for(done.wait(), timeout=15)
                await asyncio.sleep(0.3)
                await _stop(avc)
                await _stop(bvc)
                b_id = b.user.id if b.user else 0
        finally:
            restore_discord()
    _, _, samples = read_wav(sink_a.files[b_id])
    score, _ = normalized_xcorr(samples, clip)
    assert score >= 0.9
    assert b_id not in sink_b.files, "a bot must not record itself"
