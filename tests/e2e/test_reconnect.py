"""The receiver's own voice connection drops and discord.py reconnects with a fresh session while it listens."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from pathlib import Path

import discord
import pytest

from discord_voicerecv import VoiceRecvClient, WaveSink
from discord_voicerecv import _discord_glue as glue
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.analysis import normalized_xcorr, read_wav
from discord_voicerecv.testing.bots import new_client, running
from discord_voicerecv.testing.clips import load_clip
from discord_voicerecv.testing.voice_gateway import CloseCode

from .test_dave import CHANGE_BUDGET, RATE, lost_frames, start_recording, voice_channel, wait_until


@dataclass
class Timeline:
    """When the local Discord saw the recorder's voice session go and come back."""

    dropped: float = 0.0
    left: float = 0.0
    identified: float = 0.0
    settled: float = 0.0


async def _follow(local: LocalDiscord, user_id: int, old_ssrc: int, timeline: Timeline) -> None:
    while not timeline.settled:
        session = local.voice.session(user_id)
        now = time.monotonic()
        if not timeline.left and (session is None or session.ssrc != old_ssrc):
            timeline.left = now
        if timeline.left and not timeline.identified and session is not None and session.ssrc != old_ssrc:
            timeline.identified = now
        if timeline.identified and session is not None and session.ready and local.voice.dave_settled():
            timeline.settled = now
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("resume_window", [10.0, 0.05], ids=["session-kept-during-backoff", "session-expired"])
async def test_a_fresh_voice_session_mid_recording_keeps_the_files_and_resumes_audio(
    local: LocalDiscord, tmp_path: Path, resume_window: float
) -> None:
    """discord.py waits a random backoff (0-2 s) before it leaves and re-joins with a new session. While it waits,
    the voice server either keeps forwarding to the old socket (it keeps a dropped session for a RESUME) or, with
    ``session-expired``, has already removed it: then nothing reaches the old socket, which is exactly when
    discord.py's own socket reader used to sleep through the new socket's IP discovery (30 s stall)."""
    local.voice.gateway.resume_window = resume_window
    recorder, listener = new_client(), new_client()
    clip = load_clip("fr_female")
    async with running(recorder, "reconnect-recorder"), running(listener, "reconnect-listener"):
        vc = await voice_channel(recorder, local).connect(cls=VoiceRecvClient)
        lvc = await voice_channel(listener, local).connect(cls=VoiceRecvClient)
        alice = local.add_speaker(clip="en_gb_female")
        await local.voice.wait_dave_settled()
        recorder_id = recorder.user.id if recorder.user else 0
        before = local.voice.session(recorder_id)
        assert before is not None and before.secret_key is not None
        old_ssrc, old_key = before.ssrc, before.secret_key
        recording = start_recording(vc, tmp_path / "recorder")
        heard = WaveSink(tmp_path / "listener")
        lvc.listen(heard)
        alice.start()
        await asyncio.sleep(0.8)

        timeline = Timeline(dropped=time.monotonic())
        follower = asyncio.get_running_loop().create_task(_follow(local, recorder_id, old_ssrc, timeline))
        local.voice.drop_connection(recorder_id, code=CloseCode.SESSION_INVALID)
        await asyncio.wait_for(follower, timeout=10)
        await wait_until(vc.is_connected)
        assert vc.is_listening(), "the reconnect must not end the listening session"
        await asyncio.sleep(0.8)

        done = asyncio.Event()
        vc.play(discord.PCMAudio(io.BytesIO(clip)), after=lambda _: recorder.loop.call_soon_threadsafe(done.set))
        await asyncio.wait_for(done.wait(), timeout=15)
        alice.stop()
        await alice.wait_idle()
        await asyncio.sleep(0.2)
        vc.stop_listening()
        await vc.wait_listening_stopped()
        stopped = time.monotonic()
        lvc.stop_listening()
        await lvc.wait_listening_stopped()
        after = local.voice.session(recorder_id)
        params = glue.transport_params(vc)
        stats, dave = vc.receive_stats(), vc.dave_stats

    assert after is not None and after.ssrc != old_ssrc and after.secret_key != old_key
    assert params is not None and params[1] == after.secret_key, "the receiver decrypts with the new key"
    assert stats["decrypt_failed"] == 0 and stats["decoded"] > 150
    assert list(recording.sink.files) == [alice.user_id], "one file per speaker across the reconnect"
    _, _, samples = read_wav(recording.sink.files[alice.user_id])
    track = recording.track(alice.user_id)
    outage = timeline.settled - timeline.left
    # The timeline kept running through the outage: a paused one would fall short by the whole outage; how closely
    # it follows the clock otherwise is a timing claim (the timing tier of tests/e2e/test_record.py).
    span = stopped - recording.started
    assert len(samples) == recording.sink.slots * 960
    assert span - outage / 2 <= len(samples) / RATE <= span + 0.02, (len(samples) / RATE, span, outage)
    around = lost_frames(track, alice.sent, recording.started, within=(timeline.dropped - 0.3, timeline.settled + 0.6))
    resumed = lost_frames(
        track, alice.sent, recording.started, within=(timeline.settled + CHANGE_BUDGET, timeline.settled + 0.8)
    )
    print(
        f"backoff before leaving {timeline.left - timeline.dropped:.3f} s; out of the call "
        f"{timeline.identified - timeline.left:.3f} s, DAVE group back {timeline.settled - timeline.identified:.3f} s "
        f"later; alice around the reconnect {around} ({around.lost * 20} ms lost); after it {resumed}; "
        f"DAVE {dave.get(alice.user_id)}"
    )
    assert around.lost * 0.02 <= outage + CHANGE_BUDGET, (around, outage)
    assert resumed.checked > 20 and resumed.lost == 0, resumed
    # A frame alice sent while our fresh DAVE session was joining can belong to an epoch we were never in and is
    # dropped as an auth failure (FEC of the next packet may still fill its slot): only frames of that window can,
    # and after the change budget nothing is lost (above).
    assert dave[alice.user_id].get("failed:auth", 0) <= (outage + CHANGE_BUDGET) / 0.02

    rate, _, played = read_wav(heard.files[recorder_id])
    score, _ = normalized_xcorr(played, clip)
    assert rate == RATE and score >= 0.9, f"playing after the reconnect: score {score:.3f}"
