"""Record every speaker to its own WAV file, plus a mix, all aligned to the listening timeline."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from ..errors import SinkError
from ..frames import CHANNELS, FRAME_BYTES, FRAMES_PER_SECOND, SAMPLE_RATE, VoiceFrame
from ._common import SpeakerKey, fit_frame, speaker_key
from ._mix import Limiter
from ._naming import FileNamer, Naming
from ._wavfile import WavWriter
from .base import AudioSink, SinkUser

__all__ = ("WaveSink",)


class _Track:
    __slots__ = ("frames", "writer")

    def __init__(self, writer: WavWriter) -> None:
        self.writer = writer
        self.frames = 0

    def pad_to(self, slots: int) -> None:
        missing = slots - self.frames
        if missing > 0:
            self.writer.write_silence(missing * FRAME_BYTES)
            self.frames = slots


class WaveSink(AudioSink):
    """Write one WAV file per speaker and a ``mix.wav``, streaming to disk.

    Every file is 48 kHz, 16-bit, stereo, starts at the first slot of ``listen()`` and, after :meth:`cleanup`,
    ends at the last slot, so the files line up sample for sample: a speaker first heard 5 s in has 5 s of
    silence at the start of their file, and every file is padded with silence to the same length. Memory stays
    flat however long the recording runs.

    Parameters
    ----------
    directory:
        Where the files go; created if missing when listening starts (:meth:`open`). Nothing is created before.
    mix:
        Write ``mix.wav``, the sum of all speakers, turned down where it would clip (a peak limiter).
    per_user:
        Write one file per speaker.
    naming:
        ``naming(user, user_id)`` returns the file name for a new speaker (``user_id`` is ``None`` while the SSRC
        is not mapped to a user). It is made safe for file systems, ``.wav`` is added when missing, and clashes get
        a ``-2``, ``-3``... suffix. By default: ``<display_name>-<user_id>.wav`` when a member or user is known at
        the speaker's first frame, ``<user_id>.wav`` otherwise, and ``unknown-<ssrc>.wav`` for unmapped SSRCs.
    overwrite:
        Reuse the names of existing files, truncating them. By default an existing file is never touched: the new
        track takes the first free ``-2``, ``-3``... name (``mix-2.wav`` for a second recording in the folder).
    header_interval:
        Seconds of audio between header updates. The headers are rewritten in place and flushed at least this
        often, so a crash leaves playable files holding everything up to the last update.

    Raises
    ------
    SinkError
        When the directory or a file cannot be created or written (from :meth:`open` and every later sink call).
    """

    __slots__ = (
        "_directory",
        "_interval",
        "_last_sync",
        "_limiter",
        "_mix",
        "_namer",
        "_opened",
        "_paths",
        "_pending",
        "_pending_keys",
        "_per_user",
        "_slots",
        "_tracks",
        "_want_mix",
        "closed",
        "dropped",
    )

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        mix: bool = True,
        per_user: bool = True,
        naming: Naming | None = None,
        header_interval: float = 1.0,
        overwrite: bool = False,
    ) -> None:
        if not (mix or per_user):
            raise ValueError("WaveSink needs mix=True or per_user=True")
        if not header_interval > 0:
            raise ValueError("header_interval must be positive")
        self._directory = Path(directory)
        self._per_user = per_user
        self._interval = max(1, int(header_interval * FRAMES_PER_SECOND))
        self._tracks: dict[SpeakerKey, _Track] = {}
        self._paths: dict[SpeakerKey, Path] = {}
        self._namer = FileNamer(self._directory, "wav", naming, overwrite=overwrite)
        self._want_mix = mix
        self._pending: list[bytes] = []
        self._pending_keys: set[SpeakerKey] = set()
        self._slots = 0
        self._last_sync = 0
        self.dropped = 0
        """Frames ignored because their slot was already complete, or a second frame of a speaker for one slot."""
        self.closed = False
        self._opened = False
        self._mix: WavWriter | None = None
        self._limiter = Limiter()

    def open(self) -> None:
        """Create the directory and ``mix.wav`` (under the first free name); speakers' files follow as they speak."""
        if self._opened:
            return
        self._opened = True
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(str(self._directory), exc.strerror or str(exc)) from exc
        if self._want_mix:
            self._mix = self._writer(self._namer.reserve("mix"))

    @property
    def files(self) -> Mapping[SpeakerKey, Path]:
        """Per-speaker file paths by speaker: the user id, or ``"ssrc:<n>"`` for a speaker not mapped to a user."""
        return MappingProxyType(self._paths)

    @property
    def mix_path(self) -> Path | None:
        """The path of ``mix.wav`` (``mix-2.wav``... when taken); ``None`` with ``mix=False``, before :meth:`open`, or
        when nothing was recorded."""
        return self._mix.path if self._mix is not None else None

    @property
    def slots(self) -> int:
        """How many 20 ms slots are complete; each finished file holds ``slots * 3840`` bytes of audio."""
        return self._slots

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if not self._opened:
            self.open()
        tick = frame.tick
        if tick != self._slots or self.closed:
            if tick < self._slots or self.closed:
                self.dropped += 1
                return
            self._close_slots(tick)
        key = speaker_key(frame)
        pcm = fit_frame(frame.pcm)
        if self._per_user:
            track = self._tracks.get(key)
            if track is None:
                track = self._open_track(key, user, frame)
            if track.frames > tick:
                self.dropped += 1
                return
            track.pad_to(tick)
            track.writer.write(pcm)
            track.frames = tick + 1
        elif key in self._pending_keys:
            self.dropped += 1
            return
        else:
            self._pending_keys.add(key)
        if self._mix is not None:
            self._pending.append(pcm)

    def advance(self, tick: int) -> None:
        if not self._opened:
            self.open()
        if tick >= self._slots and not self.closed:
            self._close_slots(tick + 1)

    def cleanup(self) -> None:
        """Close the open slot if it has audio, pad every file to the same length and write the final headers."""
        if self.closed:
            return
        self.closed = True
        if not self._opened:
            return
        if self._mix is not None and not (self._slots or self._pending or self._pending_keys or self._tracks):
            self._release_mix()
            return
        end = self._slots + 1 if self._pending or self._pending_keys else self._slots
        end = max([end, *(track.frames for track in self._tracks.values())])
        error: SinkError | None = None
        try:
            self._close_slots(end, sync=False)
            for track in self._tracks.values():
                track.pad_to(end)
        except SinkError as exc:
            error = exc
        writers = [track.writer for track in self._tracks.values()]
        if self._mix is not None:
            writers.append(self._mix)
        for writer in writers:
            try:
                writer.close()
            except SinkError as exc:
                error = error or exc
        if error is not None:
            raise error

    def _close_slots(self, end: int, *, sync: bool = True) -> None:
        """Complete every slot before ``end``: the open one gets the mix of its frames, skipped ones silence."""
        count = end - self._slots
        if count <= 0:
            return
        if self._mix is not None:
            self._mix.write(self._limiter.mix(self._pending, FRAME_BYTES))
            if count > 1:
                self._mix.write_silence((count - 1) * FRAME_BYTES)
                self._limiter.skip(count - 1)
        self._pending.clear()
        self._pending_keys.clear()
        self._slots = end
        if sync and end - self._last_sync >= self._interval:
            self._sync()

    def _sync(self) -> None:
        for track in self._tracks.values():
            track.pad_to(self._slots)
            track.writer.sync()
        if self._mix is not None:
            self._mix.sync()
        self._last_sync = self._slots

    def _open_track(self, key: SpeakerKey, user: SinkUser, frame: VoiceFrame) -> _Track:
        path = self._namer.path_for(user, frame)
        track = _Track(self._writer(path))
        self._tracks[key] = track
        self._paths[key] = path
        return track

    def _writer(self, path: Path) -> WavWriter:
        """A WAV file at the claimed ``path``; when it cannot be written, the name is given back."""
        try:
            return WavWriter(path, rate=SAMPLE_RATE, channels=CHANNELS)
        except SinkError:
            self._namer.release(path)
            raise

    def _release_mix(self) -> None:
        """Nothing was recorded (no slot ever came: a ``listen()`` refused after this sink was opened): remove the
        empty ``mix.wav`` instead of leaving a file without audio."""
        mix, self._mix = self._mix, None
        if mix is not None:
            try:
                mix.close()
            finally:
                self._namer.release(mix.path)
