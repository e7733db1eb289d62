"""Find the ffmpeg executable that sinks encoding through FFmpeg run."""

from __future__ import annotations

import os
import shutil

from .errors import FFmpegNotFound

__all__ = ("FFMPEG_ENV", "find_ffmpeg")

FFMPEG_ENV = "FFMPEG_BINARY"
"""Environment variable naming the ffmpeg executable to use when none is passed explicitly."""

_HINT = (
    "install it with `pip install discord-voicerecv[ffmpeg]` (a bundled ffmpeg build) or from your system's "
    f"packages, or pass its path (ffmpeg=...) or set {FFMPEG_ENV}"
)


def find_ffmpeg(path: str | os.PathLike[str] | None = None) -> str:
    """The path of the ffmpeg executable to run.

    Looked up in order: ``path`` (a file path, or a command name searched on ``PATH``), the ``FFMPEG_BINARY``
    environment variable, ``ffmpeg`` on ``PATH``, then the build bundled with ``imageio-ffmpeg`` (the ``ffmpeg``
    extra). An explicit ``path`` or ``FFMPEG_BINARY`` that does not resolve is an error rather than skipped, so a
    typo never silently runs another ffmpeg.

    Raises
    ------
    FFmpegNotFound
        Nothing usable was found.
    """
    for source, given in (("ffmpeg=", path), (FFMPEG_ENV, os.environ.get(FFMPEG_ENV) or None)):
        if given is not None:
            found = _resolve(os.fspath(given))
            if found is None:
                raise FFmpegNotFound(f"{source} names {os.fspath(given)!r}, which is not an executable; {_HINT}")
            return found
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    bundled = _bundled()
    if bundled is not None:
        return bundled
    raise FFmpegNotFound(f"ffmpeg was not found; {_HINT}")


def _resolve(name: str) -> str | None:
    if os.path.dirname(name):
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


def _bundled() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None
    return exe if os.path.isfile(exe) else None
