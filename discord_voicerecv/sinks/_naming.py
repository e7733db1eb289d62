"""File names for tracks: safe on every file system, never an existing file's name unless asked, any extension."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from ..errors import SinkError
from ..frames import VoiceFrame
from .base import SinkUser
from .mix import MIX_SSRC

__all__ = ("FileNamer", "Naming", "directory_problem", "speaker_stem")

Naming: TypeAlias = Callable[[SinkUser, "int | None"], str]
"""``naming(user, user_id)`` -> a file name for a new speaker's track (``user_id`` None while unmapped)."""

_UNSAFE = re.compile(r"[^\w.-]+")
_MAX_STEM = 80


def directory_problem(path: Path) -> str | None:
    """Why files cannot be written into ``path`` (a folder, created when missing), or None; creates nothing."""
    if path.exists():
        if not path.is_dir():
            return "exists and is not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "folder is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{str(parent)!r} is not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot create it: {str(parent)!r} is not writable"


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

    The default name is :func:`speaker_stem`; ``naming(user, user_id)`` replaces it. Names are reduced to safe
    characters.

    The naming rule, the same for every sink: a name that this sink already gave out (case-insensitively) or
    that an existing file holds gets the first free ``-2``, ``-3``... suffix, so a second recording into the same
    folder writes ``mix-2.wav``, ``alice-1234-2.wav``... and never touches the first one. The name is claimed by
    creating the empty file exclusively (``O_EXCL``), so two recordings running at once cannot pick the same
    one. With ``overwrite=True`` existing files are reused (truncated) and nothing is claimed up front.
    """

    __slots__ = ("_directory", "_extension", "_naming", "_overwrite", "_used")

    def __init__(
        self, directory: Path, extension: str, naming: Naming | None = None, *, overwrite: bool = False
    ) -> None:
        self._directory = directory
        self._extension = "." + extension.lstrip(".")
        self._naming = naming
        self._overwrite = overwrite
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
        while candidate.casefold() in self._used or not self._claim(self._directory / candidate):
            n += 1
            candidate = f"{stem}-{n}{self._extension}"
        self._used.add(candidate.casefold())
        return self._directory / candidate

    def release(self, path: Path) -> None:
        """Give back the name of a track that recorded nothing: remove the file claimed for it (with ``overwrite``
        nothing was claimed and the file is left alone)."""
        if not self._overwrite:
            with contextlib.suppress(OSError):
                path.unlink()

    def _claim(self, path: Path) -> bool:
        """Create ``path`` empty unless it exists (then False); always True with ``overwrite``."""
        if self._overwrite:
            return True
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            return False
        except OSError as exc:
            raise SinkError(str(path), exc.strerror or str(exc)) from exc
        return True
