"""The voice websocket closed with 4015 (voice server crashed) mid-recording: the bot resumes and the recording
goes on in the same files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from discord_voicerecv.testing.chaos import RecordingSession, SpeakerSpec, alignment_error, placement_score

TWO = (SpeakerSpec("en_gb_female"), SpeakerSpec("de_male"))
FRAME = 0.020
RESUME_WINDOW = 1.0
"""Seconds the local voice server keeps a dropped session for a RESUME (Discord's is not documented)."""


@pytest.mark.parametrize("tier", ["state", pytest.param("timing", marks=pytest.mark.timing)])
async def test_recording_survives_a_voice_websocket_closed_with_4015(tmp_path: Path, tier: str) -> None:
    """Each track holds its speaker's audio in the slots the receiver played it; ``timing`` adds where the last
    spurt sits against the senders' clock (one slot)."""
    async with RecordingSession(tmp_path, speakers=TWO) as session:
        vc = session.vc
        assert vc is not None and session.sink is not None
        gateway = session.local.voice.gateway
        gateway.resume_window = RESUME_WINDOW
        for speaker in session.speakers:
            speaker.start()
        await asyncio.sleep(1.0)
        dropped_ws = vc.ws
        session.local.drop_voice_connection(session.bot_id)
        resumable = gateway.sessions[session.bot_id]
        assert resumable.connection is None
        await gateway.wait_for(lambda: resumable.connection is not None, timeout=5.0)
        await asyncio.sleep(RESUME_WINDOW + 1.0)
        assert vc.is_connected() and vc.is_listening(), "the resumed connection keeps recording"
        assert vc.ws is not dropped_ws and gateway.sessions.get(session.bot_id) is resumable, "resumed, not rejoined"
        files = dict(session.sink.files)
        for speaker in session.speakers:
            speaker.stop()
        await asyncio.gather(*(speaker.wait_idle() for speaker in session.speakers))
        await asyncio.sleep(0.3)
        await session.stop()
        assert dict(session.sink.files) == files and len(files) == 2, "the same files continue"
    lost = [session.account(speaker).missing * FRAME for speaker in session.speakers]
    print(f"\n4015: lost {[f'{s * 1000:.0f} ms' for s in lost]}")
    assert max(lost) <= 0.200, f"lost {lost} s"
    for speaker in session.speakers:
        track = session.sink.files[speaker.user_id]
        placed = placement_score(speaker, track, session.tap.of_user(speaker.user_id))
        assert placed >= 0.9, f"{speaker.name}: placement score {placed:.3f}"
        if tier == "timing":
            error, score = alignment_error(speaker, track, session.started)
            assert abs(error) <= FRAME and score >= 0.9, f"{speaker.name}: {error * 1000:+.1f} ms, score {score:.3f}"
