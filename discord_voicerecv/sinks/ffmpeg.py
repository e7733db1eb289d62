"""Record every speaker, and a mix, in any format FFmpeg writes, streamed to one ffmpeg process per track."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from ..errors import SinkError
from ..ffmpeg import find_ffmpeg
from ..frames import CHANNELS, FRAME_BYTES, FRAMES_PER_SECOND, SAMPLE_RATE, SILENT_PCM, VoiceFrame
from ._common import SpeakerKey, fit_frame, log, speaker_key
from ._naming import FileNamer, Naming
from .base import AudioSink, SinkUser
from .mix import MixSink

__all__ = ("FFmpegSink",)

_BATCH_SLOTS = 5
"""Slots gathered before they are handed to a writer thread (100 ms): fewer wake-ups, same latency for files."""
_INLINE_SILENCE_SLOTS = 50
"""Gaps up to this many slots are padded with shared silent frames; longer ones are written as zeros by the
writer thread without being held in memory."""
_ZEROS = bytes(1 << 16)
_STDERR_TAIL = 1500
_SILENCE_SPEEDUP = 20
"""How much faster than real time an ffmpeg is assumed to encode silence at least (measured: 120-140x for mp3 and
Opus, 800x for FLAC on a loaded machine): audio queued behind a long silence may wait that long without
counting as overflow."""
_EXIT_WAIT = 5.0
"""Seconds an exiting interpreter (a crashed bot included) gives the writer threads to hand ffmpeg what is queued."""


class _Pipe:
    """One ffmpeg process fed through its stdin by a thread of its own, so a stalled ffmpeg never blocks the sink.

    At most ``limit`` bytes of audio wait for the thread; beyond that new audio is replaced by the same length of
    silence (counted in :attr:`overflow`), which keeps the track aligned and the memory bounded.
    """

    __slots__ = (
        "__weakref__",
        "_cond",
        "_items",
        "_limit",
        "_process",
        "_queued",
        "_silence",
        "_stderr",
        "_thread",
        "_writing",
        "broken",
        "closing",
        "overflow",
        "path",
    )

    def __init__(self, argv: Sequence[str], path: Path, limit: int) -> None:
        self.path = path
        self._limit = limit
        self._items: deque[bytes | int] = deque()
        self._queued = 0
        self._silence = 0
        self._cond = threading.Condition()
        self._writing = True
        self.closing = False
        self.broken: OSError | None = None
        self.overflow = 0
        """Bytes of audio replaced by silence because ffmpeg did not keep up."""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                start_new_session=True,
            )
        except OSError as exc:
            self._stderr.close()
            raise SinkError(str(path), f"cannot run ffmpeg: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._run, name=f"ffmpeg {path.name}", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def submit(self, data: bytes) -> None:
        with self._cond:
            if self._queued + len(data) > self._limit + self._silence // _SILENCE_SPEEDUP:
                self.overflow += len(data)
                self._queue_silence(len(data))
            else:
                self._items.append(data)
                self._queued += len(data)
            self._cond.notify()

    def submit_silence(self, nbytes: int) -> None:
        with self._cond:
            self._queue_silence(nbytes)
            self._cond.notify()

    def _queue_silence(self, nbytes: int) -> None:
        self._silence += nbytes
        items = self._items
        if items and isinstance(items[-1], int):
            items[-1] += nbytes
        else:
            items.append(nbytes)

    def failure(self) -> str | None:
        """Why this track is lost, when ffmpeg exited or stopped reading before the end; else None."""
        if self.broken is None and self._process.poll() is None:
            return None
        try:
            code = self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return f"ffmpeg stopped reading its input ({self.broken})"
        return f"ffmpeg exited with status {code} while recording: {self._stderr_tail()}"

    def close_input(self) -> None:
        """No more audio: the thread writes what is queued, then closes ffmpeg's stdin."""
        with self._cond:
            self.closing = True
            self._cond.notify()

    def finish(self, deadline: float) -> str | None:
        """Wait for ffmpeg to write the file (until ``deadline`` on the monotonic clock); the failure, or None."""
        _LIVE.discard(self)
        self.close_input()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        process = self._process
        try:
            code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            self._thread.join()
            self._stderr.close()
            return "ffmpeg did not finish in time and was killed"
        self._thread.join()
        detail = None if code == 0 else f"ffmpeg exited with status {code}: {self._stderr_tail()}"
        self._stderr.close()
        return detail

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the writer thread to hand ffmpeg everything queued."""
        self._thread.join(timeout)

    def kill(self) -> None:
        """Stop ffmpeg at once (the track is abandoned)."""
        _LIVE.discard(self)
        self.close_input()
        if self._process.poll() is None:
            self._process.kill()

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - _STDERR_TAIL))
            text = self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return "(stderr unavailable)"
        return text or "(no output on stderr)"

    def _run(self) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            while True:
                with self._cond:
                    while not self._items and not self.closing:
                        self._cond.wait()
                    if not self._items:
                        break
                    item = self._items.popleft()
                    if isinstance(item, bytes):
                        self._queued -= len(item)
                if isinstance(item, bytes):
                    stdin.write(item)
                else:
                    while item > 0:
                        chunk = min(item, len(_ZEROS))
                        stdin.write(_ZEROS if chunk == len(_ZEROS) else _ZEROS[:chunk])
                        item -= chunk
                        with self._cond:
                            self._silence -= chunk
            stdin.flush()
        except (OSError, ValueError) as exc:
            self.broken = exc if isinstance(exc, OSError) else OSError(str(exc))
        finally:
            with contextlib.suppress(OSError):
                stdin.close()
            with self._cond:
                self._items.clear()
                self._queued = self._silence = 0


_LIVE: weakref.WeakSet[_Pipe] = weakref.WeakSet()
"""Pipes not finished yet, for :func:`_drain_at_exit`."""


@atexit.register
def _drain_at_exit() -> None:
    """The interpreter exits with recordings still open (the bot's loop crashed, or nobody stopped listening):
    let each writer thread hand its ffmpeg the audio queued for it and end its input, so the orphaned ffmpeg
    processes (in sessions of their own) finish complete files and exit."""
    pipes = list(_LIVE)
    deadline = time.monotonic() + _EXIT_WAIT
    for pipe in pipes:
        pipe.close_input()
    for pipe in pipes:
        pipe.join(max(0.0, deadline - time.monotonic()))


class _Track:
    __slots__ = ("batch", "frames", "heard", "pipe")

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe
        self.frames = 0
        self.heard = 0
        """The slot after the speaker's last frame."""
        self.batch: list[bytes] = []

    def write(self, pcm: bytes) -> None:
        self.batch.append(pcm)
        self.frames += 1
        self.heard = self.frames

    def pad_to(self, slots: int) -> None:
        missing = slots - self.frames
        if missing <= 0:
            return
        if missing <= _INLINE_SILENCE_SLOTS:
            self.batch.extend([SILENT_PCM] * missing)
        else:
            self.flush()
            self.pipe.submit_silence(missing * FRAME_BYTES)
        self.frames = slots

    def flush(self) -> None:
        if self.batch:
            self.pipe.submit(b"".join(self.batch))
            self.batch.clear()


class _MixTrack(AudioSink):
    """Receives the frames of the internal :class:`MixSink`: one per slot, in order (none before :meth:`open`)."""

    __slots__ = ("track",)

    def __init__(self, track: _Track | None) -> None:
        self.track = track

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        track = self.track
        if track is not None and frame.tick >= track.frames:
            track.pad_to(frame.tick)
            track.write(frame.pcm)


class FFmpegSink(AudioSink):
    """Encode every speaker, and a mix, to any format FFmpeg writes (FLAC, MP3, Opus, Vorbis, AAC, WebM...).

    Each track is streamed while recording to an ffmpeg process of its own through its stdin; nothing waits
    until the end. A thread per process does the writing, so an ffmpeg that falls behind or stalls never blocks
    the receiver: up to ``buffer_seconds`` of audio wait for it, then audio is replaced by silence (counted in
    :attr:`overflow`) so the track stays aligned. Like :class:`WaveSink`, every track starts at the first slot of
    ``listen()``, gaps are silence and all tracks end at the same slot. At :meth:`cleanup` each ffmpeg gets the
    end of its input and the sink waits for it to finish the file.

    A speaker gone quiet for ``idle_timeout`` seconds (left the call, or muted) costs nothing from then on: their
    ffmpeg sits idle instead of encoding silence. When they speak again, the gap is handed to it at once (encoded
    far faster than real time, the new audio waiting behind it), so their track stays aligned; if they never do,
    their file ends less than ``idle_timeout`` after their last frame instead of at the end of the recording.
    The mix is one continuous track and is always encoded, and :class:`WaveSink` pads every file, since writing
    zeros costs nothing.

    Building the sink touches nothing: no file, folder or process. :meth:`open` (when ``listen()`` accepted the
    sink) creates the folder and claims the mix's file name, and starts in the background the check that this
    ffmpeg can write the format with these options (once per process for each ffmpeg, format and options: one
    silent frame encoded into a private temporary folder). A format already known to fail is refused at once;
    otherwise the receiver's thread waits for the answer before the first slot, so a bad format ends the session
    with a :class:`SinkError` (given to ``after``) and leaves no file, and ``listen()`` never waits on the bot's
    event loop. The ffmpeg processes start on the receiver's thread, the mix's at the first slot and each
    speaker's at their first frame.

    Parameters
    ----------
    directory:
        Where the files go; created if missing when listening starts (:meth:`open`).
    format:
        The file extension, which picks FFmpeg's muxer and its default codec: ``"flac"``, ``"mp3"``, ``"opus"``,
        ``"ogg"`` (Vorbis), ``"m4a"`` (AAC), ``"webm"``, ``"mka"``, ``"wav"``... The ffmpeg processes run in a
        session of their own: if the bot's process dies, each one reads the end of its input and still finishes
        its file. After a power loss, streamable formats (``flac``, ``mp3``, ``opus``, ``ogg``) keep what was
        encoded, while ``m4a``, which writes its index last, does not.
    per_user:
        Write one file per speaker, named like :class:`WaveSink` names them.
    mix:
        Write ``mix.<format>``, the sum of all speakers with a limiter against clipping (through a :class:`MixSink`).
    ffmpeg:
        The ffmpeg executable; by default found by :func:`discord_voicerecv.ffmpeg.find_ffmpeg`.
    extra_args:
        Output options placed before the file name, e.g. ``("-b:a", "64k")`` or ``("-c:a", "libopus")``.
    naming:
        ``naming(user, user_id)`` returns a file name, as for :class:`WaveSink`.
    buffer_seconds:
        Audio held per track for an ffmpeg that does not keep up.
    finish_timeout:
        Seconds :meth:`cleanup` waits for all ffmpeg processes to finish their files before killing them.
    overwrite:
        Reuse the names of existing files. By default an existing file is never touched: the new track takes the
        first free ``-2``, ``-3``... name (``mix-2.flac``), as for :class:`WaveSink`.
    idle_timeout:
        Seconds of silence after which a speaker's ffmpeg is no longer fed silence; ``None`` feeds it to the end,
        so every file ends at the same slot whatever happens.

    Raises
    ------
    FFmpegNotFound
        No ffmpeg executable (from the constructor).
    SinkError
        ffmpeg cannot write ``format`` with ``extra_args``, the directory cannot be created or an ffmpeg cannot
        start (from :meth:`open`, or the call that starts a speaker's track), or one exited early (from the sink
        call that notices it, then the sink is detached) or failed to finish its file (from :meth:`cleanup`); the
        message carries the end of ffmpeg's error output.
    """

    __slots__ = (
        "_argv",
        "_check",
        "_directory",
        "_dropped",
        "_finish_timeout",
        "_idle_slots",
        "_last_flush",
        "_limit",
        "_mix",
        "_mix_path",
        "_mix_track",
        "_names",
        "_open",
        "_opened",
        "_paths",
        "_per_user",
        "_running",
        "_slots",
        "_tracks",
        "closed",
        "format",
    )

    def __init__(
        self,
        directory: str | os.PathLike[str],
        format: str = "flac",
        *,
        per_user: bool = True,
        mix: bool = True,
        ffmpeg: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        naming: Naming | None = None,
        buffer_seconds: float = 10.0,
        finish_timeout: float = 30.0,
        overwrite: bool = False,
        idle_timeout: float | None = 60.0,
    ) -> None:
        if not (mix or per_user):
            raise ValueError("FFmpegSink needs mix=True or per_user=True")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError("idle_timeout must be positive or None")
        self._idle_slots = None if idle_timeout is None else max(1, round(idle_timeout * FRAMES_PER_SECOND))
        extension = format.lower().lstrip(".")
        if not extension.isalnum():
            raise ValueError(f"format must be a file extension such as 'flac' or 'mp3', not {format!r}")
        if not (buffer_seconds > 0 and finish_timeout > 0):
            raise ValueError("buffer_seconds and finish_timeout must be positive")
        self._finish_timeout = finish_timeout
        self.format = extension
        self._argv = [
            find_ffmpeg(ffmpeg),
            *("-hide_banner", "-loglevel", "error"),
            *("-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", str(CHANNELS), "-i", "pipe:0"),
            *extra_args,
            "-y",
        ]
        self._limit = max(FRAME_BYTES, int(buffer_seconds * FRAMES_PER_SECOND) * FRAME_BYTES)
        self._directory = Path(directory)
        self._names = FileNamer(self._directory, extension, naming, overwrite=overwrite)
        self._per_user = per_user
        self._tracks: dict[SpeakerKey, _Track] = {}
        self._paths: dict[SpeakerKey, Path] = {}
        self._slots = 0
        self._open = False
        self._last_flush = 0
        self._dropped = 0
        self.closed = False
        self._opened = self._running = False
        self._mix_path: Path | None = None
        self._mix_track: _Track | None = None
        self._mix: MixSink | None = MixSink(_MixTrack(None)) if mix else None
        self._check: concurrent.futures.Future[str | None] | None = None

    def open(self) -> None:
        """Refuse a format already known to fail, start the format check otherwise (without waiting for it),
        create the directory and claim the mix's file name; the ffmpeg processes start on the receiver's thread
        (the mix's at the first slot, each speaker's at their first frame), so ``listen()`` never waits for them."""
        if not self._opened:
            check = self._start_check()
            if check.done():
                self._raise_if_unwritable(check.result())
            self._claim()

    def _claim(self) -> None:
        """Create the directory and claim the mix's file name, once."""
        if self._opened:
            return
        self._opened = True
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(str(self._directory), exc.strerror or str(exc)) from exc
        if self._mix is not None:
            self._mix_path = self._names.reserve("mix")

    def _run(self) -> None:
        """The first sink call: claim the names when nobody opened the sink (used directly, without ``listen()``:
        a format ffmpeg cannot write then fails here), wait for the format check :meth:`open` started, and start
        the mix's ffmpeg."""
        if self._check is not None:
            self.check_writable()
        self._claim()
        self._running = True
        if self._mix is not None and self._mix_path is not None:
            try:
                track = self._mix_track = self._start(self._mix_path)
            except SinkError:
                self._mix_path = None
                raise
            assert isinstance(self._mix.target, _MixTrack)
            self._mix.target.track = track

    @property
    def files(self) -> Mapping[SpeakerKey, Path]:
        """Per-speaker file paths by speaker: the user id, or ``"ssrc:<n>"`` for a speaker not mapped to a user."""
        return MappingProxyType(self._paths)

    @property
    def mix_path(self) -> Path | None:
        """The mixed track's path; ``None`` with ``mix=False``, before :meth:`open`, or when nothing was recorded."""
        return self._mix_path

    @property
    def slots(self) -> int:
        """How many 20 ms slots are complete."""
        return self._slots

    @property
    def overflow(self) -> int:
        """Bytes of audio replaced by silence, over all tracks, because an ffmpeg did not keep up."""
        return sum(track.pipe.overflow for track in self._all_tracks())

    @property
    def dropped(self) -> int:
        """Frames ignored because their slot was already complete, or a second frame of a speaker for one slot."""
        return self._dropped + (self._mix.dropped if self._mix is not None else 0)

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if not self._running:
            self._run()
        tick = frame.tick
        if tick != self._slots or self.closed:
            if tick < self._slots or self.closed:
                self._dropped += 1
                return
            self._close_slots(tick)
        self._open = True
        if self._mix is not None:
            self._mix.write(user, frame)
        if not self._per_user:
            return
        key = speaker_key(frame)
        track = self._tracks.get(key)
        if track is None:
            path = self._names.path_for(user, frame)
            track = self._tracks[key] = self._start(path)
            self._paths[key] = path
        if track.frames > tick:
            self._dropped += 1
            return
        track.pad_to(tick)
        track.write(fit_frame(frame.pcm))

    def advance(self, tick: int) -> None:
        if not self._running:
            self._run()
        if tick >= self._slots and not self.closed:
            self._close_slots(tick + 1)

    def cleanup(self) -> None:
        """Pad every track to the same length (but those of speakers idle for ``idle_timeout``), end ffmpeg's input
        and wait for each file to be finished."""
        if self.closed:
            return
        self.closed = True
        if not self._running:
            self._release_claim()
            return
        end = self._slots + 1 if self._open else self._slots
        errors: list[SinkError] = []
        if self._mix is not None:
            try:
                self._mix.cleanup()
            except SinkError as exc:
                errors.append(exc)
        tracks = list(self._all_tracks())
        end = max([end, *(track.frames for track in tracks)])
        for track in tracks:
            if not self._idle(track):
                track.pad_to(end)
            track.flush()
            track.pipe.close_input()
        deadline = time.monotonic() + self._finish_timeout
        for track in tracks:
            detail = track.pipe.finish(deadline)
            if detail is not None:
                errors.append(SinkError(str(track.pipe.path), detail))
                self._give_back_if_empty(track.pipe.path)
        overflow = self.overflow
        if overflow:
            log.warning("FFmpegSink replaced %.2f s of audio with silence: ffmpeg did not keep up", overflow / 192_000)
        if errors:
            raise errors[0]

    def check_writable(self) -> None:
        """Raise :class:`SinkError` if this ffmpeg cannot write ``format`` with ``extra_args`` (an unknown muxer or
        encoder). It waits for the check (an ffmpeg run, tens of milliseconds, once per process for each ffmpeg,
        format and options): call it before recording, off the event loop, e.g. in a command-line tool.
        """
        try:
            failure = self._start_check().result(timeout=_PROBE_TIMEOUT + 5)
        except concurrent.futures.TimeoutError:
            failure = "ffmpeg did not answer in time"
        self._raise_if_unwritable(failure)

    def _start_check(self) -> concurrent.futures.Future[str | None]:
        if self._check is None:
            self._check = _check_output(tuple(self._argv), self.format)
        return self._check

    def _raise_if_unwritable(self, failure: str | None) -> None:
        if failure is not None:
            raise SinkError(f"*.{self.format}", f"ffmpeg cannot write this format: {failure}")

    def _release_claim(self) -> None:
        """Nothing was recorded (no slot ever came, or listen() was refused): remove the empty file claimed for
        the mix, so no unplayable file is left behind."""
        if self._mix_path is not None:
            self._names.release(self._mix_path)
        self._mix_path = None

    def _give_back_if_empty(self, path: Path) -> None:
        """A failed ffmpeg wrote nothing: the empty file claimed for it goes, so no unplayable file is left."""
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                self._names.release(path)

    def _all_tracks(self) -> list[_Track]:
        tracks = list(self._tracks.values())
        if self._mix_track is not None:
            tracks.append(self._mix_track)
        return tracks

    def _start(self, path: Path) -> _Track:
        """Start the ffmpeg writing ``path``; when it cannot start, the name claimed for it is given back."""
        try:
            return _Track(_Pipe([*self._argv, str(path)], path, self._limit))
        except SinkError:
            self._names.release(path)
            raise

    def _close_slots(self, end: int) -> None:
        if self._mix is not None:
            self._mix.advance(end - 1)
        self._slots = end
        self._open = False
        if end - self._last_flush >= _BATCH_SLOTS:
            self._flush()

    def _idle(self, track: _Track) -> bool:
        """Whether ``track``'s speaker has been quiet for ``idle_timeout``: its ffmpeg then gets no silence."""
        return self._idle_slots is not None and self._slots - track.heard >= self._idle_slots

    def _flush(self) -> None:
        for track in self._all_tracks():
            if not self._idle(track):
                track.pad_to(self._slots)
            track.flush()
            detail = track.pipe.failure()
            if detail is not None:
                raise SinkError(str(track.pipe.path), detail)
        self._last_flush = self._slots


_PROBE_TIMEOUT = 10.0
_probes: dict[tuple[str, ...], concurrent.futures.Future[str | None]] = {}
"""Format checks by ffmpeg command line and extension: running or answered (definite answers only)."""
_probe_lock = threading.Lock()


def _check_output(argv: tuple[str, ...], extension: str) -> concurrent.futures.Future[str | None]:
    """The answer of :func:`_probe_output` for ``argv`` and ``extension``, computed once per process on a thread
    of its own (started by the first sink that asks, when it is opened)."""
    key = (*argv, extension)
    with _probe_lock:
        future = _probes.get(key)
        if future is None:
            future = _probes[key] = concurrent.futures.Future()
            thread = threading.Thread(
                target=_answer_probe, args=(key, future), name="voice-recv format check", daemon=True
            )
            thread.start()
    return future


def _answer_probe(key: tuple[str, ...], future: concurrent.futures.Future[str | None]) -> None:
    try:
        failure, definite = _probe_output(key[:-1], key[-1])
    except Exception as exc:  # e.g. no room for the temporary folder: every waiter still gets an answer
        failure, definite = f"could not check the format: {exc}", False
    if not definite:
        with _probe_lock:
            _probes.pop(key, None)  # ffmpeg did not run: ask again next time
    future.set_result(failure)


def _probe_output(argv: tuple[str, ...], extension: str) -> tuple[str | None, bool]:
    """Why ``argv`` (an ffmpeg command line reading s16le from stdin, without the output) cannot write a
    ``.extension`` file, or None when it can; and whether that answer is definite (ffmpeg ran)."""
    with tempfile.TemporaryDirectory(prefix="voicerecv-probe-") as folder:
        try:
            done = subprocess.run(
                [*argv, os.path.join(folder, f"probe.{extension}")],
                input=SILENT_PCM,
                capture_output=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not run ffmpeg: {exc}", False
        lines = done.stderr.decode("utf-8", "replace").replace(folder + os.sep, "").strip().splitlines()
    return (None if done.returncode == 0 else "; ".join(lines[-2:]) or f"exit status {done.returncode}"), True
