"""Receive side of DAVE: remove the end-to-end layer from each Opus frame with discord.py's davey session."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import E2EEDecryptError
from .frames import OPUS_SILENCE

if TYPE_CHECKING:
    import davey

__all__ = ("DAVE_MAGIC", "DaveFrameDecryptor", "is_dave_frame")

_log = logging.getLogger(__name__)

DAVE_MAGIC = b"\xfa\xfa"
"""Every DAVE-encrypted frame ends with this marker."""


def is_dave_frame(frame: bytes) -> bool:
    return len(frame) > 11 and frame[-2:] == DAVE_MAGIC


class DaveFrameDecryptor:
    """Decrypts frames per sender with the session discord.py owns; tells "not yet" from "never".

    The session is looked up on every call because discord.py creates it at the first op4 and may reset or
    re-initialise it at any time. ``decrypt`` returns None when the sender has no decryptor yet (a join or an
    epoch change in flight): the reader holds the frame and retries. It raises :class:`E2EEDecryptError` for a
    frame that must be dropped.
    """

    __slots__ = ("_get_session", "_get_version", "_media_audio")

    def __init__(self, get_session: Callable[[], davey.DaveSession | None], get_version: Callable[[], int]) -> None:
        import davey

        self._get_session = get_session
        self._get_version = get_version
        self._media_audio = davey.MediaType.audio

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        if frame == OPUS_SILENCE:
            return frame
        session = self._get_session()
        encrypted = is_dave_frame(frame)
        if session is None or (self._get_version() == 0 and not encrypted):
            if encrypted:
                return None
            return frame
        try:
            return bytes(session.decrypt(user_id, self._media_audio, frame))
        except (ValueError, RuntimeError) as exc:
            return self._classify(session, user_id, frame, encrypted, exc)

    def _classify(
        self, session: davey.DaveSession, user_id: int, frame: bytes, encrypted: bool, exc: Exception
    ) -> bytes | None:
        if not encrypted:
            if self._get_version() == 0:
                return frame
            raise E2EEDecryptError("plaintext", str(exc)) from exc
        try:
            known = str(user_id) in session.get_user_ids()
        except Exception:
            known = False
        if not session.ready or not known:
            return None
        raise E2EEDecryptError("auth", str(exc)) from exc

    def privacy_code(self) -> str | None:
        session = self._get_session()
        return session.voice_privacy_code if session is not None else None
