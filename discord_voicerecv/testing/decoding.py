"""Decode recorded files the way tests judge them: ffmpeg for the container, libopus for every Opus stream.

ffmpeg's native Opus decoder differs between builds (4.x and 5.x garble packets carrying in-band FEC, which
Discord clients send), so a test that judged audio through it would judge the ffmpeg, not the recording. Opus is
always decoded by libopus (``-c:a libopus``); other codecs by ffmpeg's decoder for them.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from typing import TYPE_CHECKING

from ..ffmpeg import find_ffmpeg
from ..frames import CHANNELS, SAMPLE_RATE
from .analysis import pcm_to_array

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ("audio_codec", "decode_file", "decode_samples", "has_libopus")

_AUDIO_CODEC = re.compile(r"Stream #\S+.*?: Audio: (\w+)")


@functools.cache
def has_libopus(ffmpeg: str) -> bool:
    """Whether this ffmpeg build has the libopus decoder."""
    listing = subprocess.run([ffmpeg, "-hide_banner", "-decoders"], capture_output=True, text=True, check=True)
    return any(line.split()[1:2] == ["libopus"] for line in listing.stdout.splitlines())


def audio_codec(path: str | os.PathLike[str], ffmpeg: str | None = None) -> str:
    """The codec name ffmpeg reports for the first audio stream of ``path``.

    Raises
    ------
    subprocess.CalledProcessError
        ffmpeg found no audio stream in the file.
    """
    command = [find_ffmpeg(ffmpeg), "-hide_banner", "-i", os.fspath(path)]
    probe = subprocess.run(command, capture_output=True, text=True)
    found = _AUDIO_CODEC.search(probe.stderr)
    if found is None:  # ffmpeg cannot read the file (yet), or it holds no audio
        raise subprocess.CalledProcessError(probe.returncode, command, probe.stdout, probe.stderr)
    return found.group(1)


def decode_file(path: str | os.PathLike[str], *, ffmpeg: str | None = None) -> bytes:
    """Decode ``path`` to s16le 48 kHz stereo PCM: ``-c:a libopus`` for Opus, ffmpeg's decoder otherwise.

    Raises
    ------
    RuntimeError
        The file holds Opus and this ffmpeg build has no libopus decoder.
    subprocess.CalledProcessError
        ffmpeg could not read the file or found no audio in it.
    """
    exe = find_ffmpeg(ffmpeg)
    decoder: list[str] = []
    if audio_codec(path, exe) == "opus":
        if not has_libopus(exe):
            raise RuntimeError(f"{exe} has no libopus decoder; its native Opus decoder is not a reliable judge")
        decoder = ["-c:a", "libopus"]
    command = [exe, "-v", "error", *decoder, "-i", os.fspath(path)]
    command += ["-f", "s16le", "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE), "pipe:1"]
    return subprocess.run(command, capture_output=True, check=True).stdout


def decode_samples(path: str | os.PathLike[str], *, ffmpeg: str | None = None) -> npt.NDArray[np.int16]:
    """:func:`decode_file` as an int16 array shaped ``(frames, 2)`` (needs numpy)."""
    return pcm_to_array(decode_file(path, ffmpeg=ffmpeg))
