"""Small helpers shared by the sinks."""

from __future__ import annotations

import logging
from typing import TypeAlias

from ..frames import FRAME_BYTES, SILENT_PCM, VoiceFrame
from .base import AudioSink

__all__ = ("SpeakerKey", "drop_child", "fit_frame", "log", "speaker_key")

log = logging.getLogger("discord_voicerecv.sinks")

SpeakerKey: TypeAlias = int | str
"""How sinks tell speakers apart: the user id, or ``"ssrc:<n>"`` while the SSRC is not mapped to a user."""


def speaker_key(frame: VoiceFrame) -> SpeakerKey:
    """The key of the speaker of ``frame``: its user id, else its SSRC (the member may not be cached yet)."""
    return frame.user_id if frame.user_id is not None else f"ssrc:{frame.ssrc}"


def fit_frame(pcm: bytes) -> bytes:
    """``pcm`` cut or zero-padded to exactly one 20 ms frame, so that tracks stay aligned whatever arrives."""
    size = len(pcm)
    if size == FRAME_BYTES:
        return pcm
    if size == 0:
        return SILENT_PCM
    return pcm[:FRAME_BYTES] if size > FRAME_BYTES else pcm + bytes(FRAME_BYTES - size)


def drop_child(owner: AudioSink, child: AudioSink, exc: Exception, *, close: bool = True) -> None:
    """Log a child sink's failure and, with ``close``, let it close what it holds; it gets no more calls."""
    log.error("%s detached %r after it raised", type(owner).__name__, child, exc_info=exc)
    if not close:
        return
    try:
        child.cleanup()
    except Exception:
        log.debug("cleanup of detached sink %r failed too", child, exc_info=True)
