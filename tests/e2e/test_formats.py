"""Several simulated speakers recorded at once to FLAC, MP3, Ogg/Opus passthrough and utterances.

Every file is opened with a real decoder (ffmpeg, with libopus for Opus) and compared with what was said.
"""

from __future__ import annotations

import asyncio
import time
from itertools import accumulate
from pathlib import Path

import discord
import numpy as np
import pytest

from discord_voicerecv import (
    CallbackSink,
    FFmpegSink,
    MultiSink,
    OggOpusSink,
    SinkUser,
    Utterance,
    UtteranceSink,
    VoiceFrame,
    VoiceRecvClient,
)
from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, OPUS_SILENCE
from discord_voicerecv.opus import packet_samples
from discord_voicerecv.sinks._mix import Limiter
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.analysis import normalized_xcorr
from discord_voicerecv.testing.bots import new_client, running
from discord_voicerecv.testing.clips import load_clip
from discord_voicerecv.testing.decoding import decode_samples as decoded
from discord_voicerecv.testing.ogg import read_packets

RATE = 48_000
CLIPS = ("en_gb_female", "de_male", "fr_female")
SLOT = 1 / 50

pytestmark = pytest.mark.ffmpeg


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))


async def test_flac_mp3_ogg_opus_and_utterances_from_three_speakers(local: LocalDiscord, tmp_path: Path) -> None:
    recorder = new_client()
    frames: list[tuple[int | None, int, bytes | None]] = []
    utterances: list[Utterance] = []

    def keep(_: SinkUser, frame: VoiceFrame) -> None:
        frames.append((frame.user_id, frame.tick, frame.opus))

    async with running(recorder, "recorder-token"):
        channel = recorder.get_channel(local.voice_channel_id)
        assert isinstance(channel, discord.VoiceChannel)
        vc = await channel.connect(cls=VoiceRecvClient)
        speakers = [local.add_speaker(clip=clip) for clip in CLIPS]
        await local.voice.wait_dave_settled(timeout=10)
        flac = FFmpegSink(tmp_path / "flac", "flac")
        mp3 = FFmpegSink(tmp_path / "mp3", "mp3")
        ogg = OggOpusSink(tmp_path / "ogg")
        sink = MultiSink(flac, mp3, ogg, UtteranceSink(utterances.append), CallbackSink(keep))
        started = time.monotonic()
        vc.listen(sink)
        await asyncio.sleep(0.3)
        for speaker in speakers:
            speaker.speak()
            await asyncio.sleep(0.5)
        await asyncio.gather(*(speaker.wait_idle() for speaker in speakers))
        await asyncio.sleep(0.3)
        vc.stop_listening()
        await vc.wait_listening_stopped()
        listened = time.monotonic() - started
        stats = vc.receive_stats()

    assert sink.failures == []
    assert stats["decoded"] > 0 and flac.overflow == 0 and mp3.overflow == 0
    ids = [speaker.user_id for speaker in speakers]
    assert sorted(flac.files) == sorted(mp3.files) == sorted(ogg.files) == sorted(ids)

    # Lossless FLAC: every track as long as the listening time, matching its clip; the mix is their limited sum.
    tracks = {uid: decoded(flac.files[uid]) for uid in ids}
    lengths = {len(track) for track in tracks.values()}
    assert len(lengths) == 1
    length = lengths.pop()
    # Every file covers every slot of the session; the timeline never runs ahead of the clock. (That it keeps up
    # with the clock is a timing claim: tests/e2e/test_record.py checks it in the timing tier.)
    assert length == ogg.slots * FRAME_SAMPLES
    assert length / RATE <= listened + SLOT
    lags: dict[int, int] = {}
    for uid, clip in zip(ids, CLIPS, strict=True):
        score, lags[uid] = normalized_xcorr(tracks[uid], load_clip(clip))
        assert score >= 0.9, f"flac {clip}: {score:.3f}"
    assert flac.mix_path is not None
    mix = decoded(flac.mix_path)
    limiter, step = Limiter(), FRAME_SAMPLES
    expected = b"".join(
        limiter.mix([track[i : i + step].tobytes() for track in tracks.values()], FRAME_BYTES)
        for i in range(0, length, step)
    )
    assert np.array_equal(mix, np.frombuffer(expected, dtype=np.int16).reshape(-1, 2))

    # MP3: ffmpeg stores LAME's encoder delay and padding in the Xing/LAME header and its decoder removes both,
    # so the decoded length equals the encoded length exactly and nothing has to be discounted.
    for uid, clip in zip(ids, CLIPS, strict=True):
        track = decoded(mp3.files[uid])
        assert len(track) == length
        score, lag = normalized_xcorr(track, load_clip(clip))
        assert score >= 0.9, f"mp3 {clip}: {score:.3f}"
        assert abs(lag - lags[uid]) <= RATE // 1000, "no offset from encoder priming"
    assert mp3.mix_path is not None
    mp3_mix = decoded(mp3.mix_path)
    assert len(mp3_mix) == length
    assert similarity(mp3_mix, mix) >= 0.9

    # Ogg/Opus passthrough: same length, the received packets bit for bit where they were heard, and those are the
    # packets each speaker's encoder produced, in order (a packet arriving too late on a loaded machine may be
    # missing).
    for uid, clip, speaker in zip(ids, CLIPS, speakers, strict=True):
        path = ogg.files[uid]
        track = decoded(path)
        assert len(track) == length
        score, _ = normalized_xcorr(track, load_clip(clip))
        assert score >= 0.9, f"ogg {clip}: {score:.3f}"
        packets = [packet for packet, _ in read_packets(path.read_bytes())[2:]]
        starts = [0, *accumulate(packet_samples(p) for p in packets)][:-1]
        at = dict(zip(starts, packets, strict=True))
        received = [(tick, opus) for user_id, tick, opus in frames if user_id == uid and opus is not None]
        assert received and all(at[tick * FRAME_SAMPLES] == opus for tick, opus in received)
        heard = [opus for _, opus in received if opus != OPUS_SILENCE]
        sent = iter(f.opus for f in speaker.audio_frames())
        assert all(packet in sent for packet in heard), "what the encoder made, in order"
        assert len(heard) >= len(speaker.audio_frames()) - 5

    # Utterances: the exact samples of the speaker's track, starting where the clip starts.
    for uid, clip in zip(ids, CLIPS, strict=True):
        mine = [u for u in utterances if u.user_id == uid]
        assert mine, f"no utterance from {clip}"
        pcm = tracks[uid].astype("<i2").tobytes()
        for utterance in mine:
            assert utterance.pcm == pcm[utterance.start_tick * FRAME_BYTES : utterance.end_tick * FRAME_BYTES]
        clip_start = lags[uid] / RATE
        clip_end = clip_start + len(load_clip(clip)) / 4 / RATE
        assert abs(mine[0].started_at - clip_start) <= 0.1
        assert all(clip_start - 0.02 <= u.started_at and u.started_at + u.duration <= clip_end + 0.1 for u in mine)
        assert sum(u.duration for u in mine) >= 0.6 * (clip_end - clip_start)
