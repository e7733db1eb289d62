"""File names for per-speaker tracks: safe on every file system, unique in their directory, any extension."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from ..frames import VoiceFrame
from .base import SinkUser
from .mix import MIX_SSRC

__all__ = ("FileNamer", "Naming", "speaker_stem")

Naming: TypeAlias = Callable[[SinkUser, "int | None"], str]
"""``naming(user, user_id)`` -> a file name for a new speaker's track (``user_id`` None while unmapped)."""

_UNSAFE = re.compile(r"[^\w.-]+")
_MAX_STEM = 80


def _safe_stem(text: str) -> str:
    """``text`` reduced to characters every common file system accepts, without leading dots."""
    return _UNSAFE.sub("_", text).strip("._")[:_MAX_STEM]


def speaker_stem(user: SinkUser, user_id: int | None, ssrc: int) -> str:
    """The default name of a speaker's track, without extension: ``<display_name>-<user_id>``, ``<user_id>``,
    ``unknown-<ssrc>`` for an unmapped SSRC, or ``mix`` for a :class:`~discord_voicerecv.sinks.MixSink`'s frames."""
    if user_id is None:
        return "mix" if ssrc == MIX_SSRC else f"unknown-{ssrc}"
    display = getattr(user, "display_name", None)
    stem = _safe_stem(display) if isinstance(display, str) else ""
    return f"{stem}-{user_id}" if stem else str(user_id)


class FileNamer:
    """Hand out the paths of new tracks in ``directory``, all ending in ``.<extension>``.

    The default name is :func:`speaker_stem`; ``naming(user, user_id)`` replaces it. Names are
    reduced to safe characters and clashes (case-insensitive) get a ``-2``, ``-3``... suffix.
    """

    __slots__ = ("_directory", "_extension", "_naming", "_used")

    def __init__(self, directory: Path, extension: str, naming: Naming | None = None) -> None:
        self._directory = directory
        self._extension = "." + extension.lstrip(".")
        self._naming = naming
        self._used: set[str] = set()

    def reserve(self, stem: str) -> Path:
        """The path for a track named ``stem`` (such as ``"mix"``), made unique."""
        return self._unique(_safe_stem(stem) or "track")

    def path_for(self, user: SinkUser, frame: VoiceFrame) -> Path:
        """The path for the track of the speaker of ``frame``, heard for the first time."""
        if self._naming is not None:
            name = self._naming(user, frame.user_id)
            if name.lower().endswith(self._extension.lower()):
                name = name[: -len(self._extension)]
            return self._unique(_safe_stem(name) or "speaker")
        return self.speaker_path(user, frame.user_id, frame.ssrc)

    def speaker_path(self, user: SinkUser, user_id: int | None, ssrc: int) -> Path:
        """The path for a new speaker's track by the default rule, :func:`speaker_stem`."""
        return self._unique(speaker_stem(user, user_id, ssrc))

    def _unique(self, stem: str) -> Path:
        candidate, n = stem + self._extension, 1
        while candidate.casefold() in self._used:
            n += 1
            candidate = f"{stem}-{n}{self._extension}"
        self._used.add(candidate.casefold())
        return self._directory / candidate
