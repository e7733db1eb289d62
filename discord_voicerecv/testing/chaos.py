"""Faults for a running local Discord, and the tools to check a recording made under them.

:class:`ChaosMonkey` schedules connection-level faults (voice server moves, dropped voice websockets, SSRC changes,
media outages) at random times around a mean interval. :class:`RecordingSession` runs a real recording bot against
a local Discord with simulated speakers, and :func:`account_frames` reconciles what each speaker sent, what the
network dropped and what the recording holds.

Packet-level faults (loss, reordering, spikes, damage) live in :class:`~discord_voicerecv.testing.link.LinkConditions`;
this module adds the events that happen to a whole connection. Tests drive the same operations directly on
:class:`~discord_voicerecv.testing.LocalDiscord` (``move_voice_server``, ``drop_voice_connection``) and on its
voice server (``change_ssrc``, ``blackout``); ``discord-voicerecv local-discord`` exposes them as flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import discord

from ..frames import FRAME_BYTES, FRAME_SAMPLES, VoiceFrame
from ..sinks.base import AudioSink, SinkUser
from .link import LinkConditions

if TYPE_CHECKING:
    from ..client import VoiceRecvClient
    from ..receive.stats import StatsSnapshot
    from ..sinks import WaveSink
    from .server import LocalDiscord
    from .speakers import SentFrame, SimulatedSpeaker

__all__ = (
    "ChaosEvent",
    "ChaosMonkey",
    "ChaosPlan",
    "DatagramTap",
    "FrameAccount",
    "FrameRecord",
    "FrameTap",
    "RecordingSession",
    "SentMeta",
    "SpeakerSpec",
    "account_frames",
    "alignment_error",
    "placement_score",
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """How often each connection-level fault happens, as a mean interval in seconds (0: never).

    Parameters
    ----------
    move_every:
        Move the call to a new voice endpoint (VOICE_SERVER_UPDATE to every bot in the channel).
    drop_ws_every:
        Close one bot's voice websocket with 4015 (the client should RESUME).
    ssrc_change_every:
        Give one simulated speaker a new SSRC mid-stream.
    blackout_every / blackout_seconds:
        Silence one member's media path (a speaker's uplink or a bot's downlink) for ``blackout_seconds``.
    seed:
        Seeds the choice of times and targets; ``None`` draws a random seed.
    """

    move_every: float = 0.0
    drop_ws_every: float = 0.0
    ssrc_change_every: float = 0.0
    blackout_every: float = 0.0
    blackout_seconds: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("move_every", "drop_ws_every", "ssrc_change_every", "blackout_every", "blackout_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def is_calm(self) -> bool:
        """True when no fault is scheduled."""
        return not (self.move_every or self.drop_ws_every or self.ssrc_change_every or self.blackout_every)


class ChaosEvent(NamedTuple):
    """One fault that happened: event-loop ``time``, ``kind`` (``"move"``, ``"drop_ws"``, ``"ssrc_change"``,
    ``"blackout"``) and the ``user_id`` it hit (``None`` for a move, which hits everyone)."""

    time: float
    kind: str
    user_id: int | None


class ChaosMonkey:
    """Runs a :class:`ChaosPlan` against a started :class:`~discord_voicerecv.testing.LocalDiscord`.

    Each kind of fault has its own task sleeping an exponentially distributed time (mean: the plan's interval)
    between occurrences. :attr:`events` records what was done, in order.
    """

    def __init__(self, local: LocalDiscord, plan: ChaosPlan) -> None:
        self.local = local
        self.plan = plan
        self.events: list[ChaosEvent] = []
        self._rng = random.Random(plan.seed)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the fault tasks on the running loop."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        for every, action in (
            (plan.move_every, self.move),
            (plan.drop_ws_every, self.drop_ws),
            (plan.ssrc_change_every, self.change_ssrc),
            (plan.blackout_every, self.blackout),
        ):
            if every > 0:
                self._tasks.append(loop.create_task(self._every(every, action), name=f"chaos {action.__name__}"))

    async def stop(self) -> None:
        """Cancel the fault tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def __aenter__(self) -> ChaosMonkey:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _every(self, mean: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self._rng.expovariate(1.0 / mean))
            try:
                await action()
            except Exception:
                _log.exception("chaos: %s failed", getattr(action, "__name__", action))

    def _record(self, kind: str, user_id: int | None) -> None:
        self.events.append(ChaosEvent(asyncio.get_running_loop().time(), kind, user_id))
        _log.info("chaos: %s %s", kind, "" if user_id is None else user_id)

    async def move(self) -> None:
        """Move the call to a new voice endpoint now."""
        await self.local.move_voice_server()
        self._record("move", None)

    async def drop_ws(self) -> None:
        """Drop one connected bot's voice websocket now (4015)."""
        sessions = [uid for uid, s in self.local.voice.gateway.sessions.items() if s.connection is not None]
        if sessions:
            user_id = self._rng.choice(sorted(sessions))
            self.local.drop_voice_connection(user_id)
            self._record("drop_ws", user_id)

    async def change_ssrc(self) -> None:
        """Give one simulated speaker a new SSRC now."""
        speakers = sorted(self.local.voice.speakers)
        if speakers:
            user_id = self._rng.choice(speakers)
            self.local.voice.change_ssrc(user_id)
            self._record("ssrc_change", user_id)

    async def blackout(self) -> None:
        """Silence one member's media path now for ``plan.blackout_seconds``."""
        voice = self.local.voice
        members = sorted({*voice.speakers, *(u for u, s in voice.gateway.sessions.items() if s.peer.link)})
        if members:
            user_id = self._rng.choice(members)
            voice.blackout(user_id, self.plan.blackout_seconds)
            self._record("blackout", user_id)


# -- recording under faults --------------------------------------------------------------------------------------


class FrameRecord(NamedTuple):
    """What a sink got for one speaker in one slot (no audio kept)."""

    ssrc: int
    user_id: int | None
    tick: int
    sequence: int
    concealed: bool


class FrameTap(AudioSink):
    """A sink that keeps a :class:`FrameRecord` of every frame, to compare a recording with what was sent."""

    wants_pcm = False

    def __init__(self) -> None:
        self.records: list[FrameRecord] = []

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.records.append(FrameRecord(frame.ssrc, frame.user_id, frame.tick, frame.sequence, frame.concealed))

    def of_user(self, user_id: int) -> list[FrameRecord]:
        """The records of one speaker, in slot order."""
        return [r for r in self.records if r.user_id == user_id]


class DatagramTap:
    """When the recording bot's socket reader got each RTP packet: its first copy, by SSRC and sequence number.

    Registered as a socket listener after the receiver's, it runs on the same thread right after the receiver queued
    the datagram, so its time is when the receiver had the packet, even when this process stalls while the
    network's clock runs on. Keys repeat once a sender's sequence numbers wrap (65,536 packets, 22 minutes).
    """

    __slots__ = ("_clock", "times")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.times: dict[tuple[int, int], float] = {}

    def __call__(self, datagram: bytes) -> None:
        if len(datagram) < 12 or datagram[0] >> 6 != 2 or 192 <= datagram[1] <= 223:
            return
        (sequence,) = struct.unpack_from(">H", datagram, 2)
        (ssrc,) = struct.unpack_from(">I", datagram, 8)
        self.times.setdefault((ssrc, sequence), self._clock())

    def arrivals(self, ssrc: int, sent: Iterable[SentFrame | SentMeta]) -> dict[int, float]:
        """When each of ``sent`` (by ``SentFrame.index``) reached the bot on ``ssrc``; frames that never did are left
        out."""
        times = self.times
        out: dict[int, float] = {}
        for frame in sent:
            got = times.get((ssrc, frame.sequence & 0xFFFF))
            if got is not None:
                out[frame.index] = got
        return out


class SpeakerSpec(NamedTuple):
    """A simulated speaker of a :class:`RecordingSession`: its clip and the conditions of its uplink."""

    clip: str | None = None
    uplink: LinkConditions | None = None


class RecordingSession:
    """A real discord.py bot recording a local Discord's voice channel, for tests that inject faults.

    ``async with RecordingSession(directory, speakers=[...]) as session`` starts a :class:`LocalDiscord`, a bot
    with :class:`~discord_voicerecv.VoiceRecvClient` in the voice channel and the simulated speakers, waits for the
    DAVE group, and starts listening into a :class:`~discord_voicerecv.WaveSink` in ``directory`` plus a
    :class:`FrameTap`. Make the speakers talk, inject faults through :attr:`local`, then :meth:`stop`.

    Parameters
    ----------
    directory:
        Where the WAV files go.
    speakers:
        The simulated speakers to add.
    downlink:
        Conditions on the bot's own downlink.
    playout_delay:
        Passed to ``listen()``.
    history:
        Frames (with their audio) each speaker keeps in ``sent``; :meth:`sent` keeps every frame's numbers.
    dave:
        Run DAVE end-to-end encryption in the call.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        speakers: Sequence[SpeakerSpec] = (),
        downlink: LinkConditions | None = None,
        playout_delay: float = 0.1,
        history: int = 6000,
        dave: bool = True,
    ) -> None:
        from .server import LocalDiscord

        self.directory = Path(directory)
        self.local = LocalDiscord(dave=dave)
        self.specs = tuple(speakers)
        self.downlink = downlink
        self.playout_delay = playout_delay
        self.history = history
        self.speakers: list[SimulatedSpeaker] = []
        self.tap = FrameTap()
        self.datagrams = DatagramTap()
        self.sink: WaveSink | None = None
        self.vc: VoiceRecvClient | None = None
        self.bot_id = 0
        self.started = 0.0
        """Event-loop time at ``listen()``: slot 0 of every track."""
        self.stopped = 0.0
        self.stats: StatsSnapshot | None = None
        self._stack = contextlib.AsyncExitStack()
        self._sent: dict[int, list[SentMeta]] = {}
        self._collector: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RecordingSession:
        from .. import _discord_glue as glue
        from ..client import VoiceRecvClient
        from ..opus import ensure_discord_opus
        from ..sinks import MultiSink, WaveSink
        from .bots import new_client, running
        from .patch import restore_discord, use_local_discord

        ensure_discord_opus()
        stack = self._stack
        try:
            await stack.enter_async_context(self.local)
            use_local_discord(self.local.url)
            stack.callback(restore_discord)
            client = await stack.enter_async_context(running(new_client(), "chaos-recorder"))
            channel = client.get_channel(self.local.voice_channel_id)
            assert isinstance(channel, discord.VoiceChannel)
            self.vc = await channel.connect(cls=VoiceRecvClient)
            self.bot_id = client.user.id if client.user else 0
            if self.downlink is not None:
                self.local.voice.set_link(self.bot_id, self.downlink)
            for spec in self.specs:
                speaker = self.local.add_speaker(clip=spec.clip, uplink=spec.uplink, history=self.history)
                self.speakers.append(speaker)
            await self.local.voice.wait_dave_settled(timeout=10.0)
            self.sink = WaveSink(self.directory)
            self.started = asyncio.get_running_loop().time()
            self.vc.listen(MultiSink(self.sink, self.tap), playout_delay=self.playout_delay)
            glue.add_socket_listener(self.vc, self.datagrams)
        except BaseException:
            await stack.aclose()
            raise
        self._collector = asyncio.get_running_loop().create_task(self._collect_forever(), name="sent collector")
        return self

    def slot_deadline(self, slot: int) -> float:
        """Event-loop time at which the receiver plays out ``slot`` (its end plus the playout delay)."""
        return self.started + 0.02 * (slot + 1) + self.playout_delay

    def account(self, speaker: SimulatedSpeaker) -> FrameAccount:
        """:func:`account_frames` for one speaker: its uplink's drops, and when the bot got each packet.

        The arrival times are the bot's (:class:`DatagramTap`), not the uplink's: on a loaded machine the bot may
        read a packet long after the network delivered it, and the receiver can only conceal towards what it read.
        Packets are looked up under the speaker's current SSRC: those sent under an earlier one count as never read.
        """
        stats = speaker.uplink.stats
        sent = self.sent(speaker)
        return account_frames(
            sent,
            self.tap.of_user(speaker.user_id),
            [*stats.dropped_indices, *stats.damaged_indices],
            held=stats.reordered_indices,
            arrivals=self.datagrams.arrivals(speaker.ssrc, sent),
            deadline=self.slot_deadline,
        )

    def sent(self, speaker: SimulatedSpeaker) -> list[SentMeta]:
        """Every frame ``speaker`` sent since it joined, even those its ``sent`` history dropped already."""
        self._collect()
        return list(self._sent.get(speaker.user_id, ()))

    def _collect(self) -> None:
        for speaker in self.speakers:
            kept = self._sent.setdefault(speaker.user_id, [])
            last = kept[-1].index if kept else -1
            kept.extend(SentMeta(f.index, f.sequence, f.spurt) for f in speaker.sent if f.index > last)

    async def _collect_forever(self) -> None:
        while True:
            self._collect()
            await asyncio.sleep(1.0)

    async def stop(self) -> StatsSnapshot:
        """Stop listening (files are complete afterwards) and return the receive counters."""
        from .. import _discord_glue as glue

        if self.stats is None:
            assert self.vc is not None
            receiver = self.vc._receiver
            self.vc.stop_listening()
            await self.vc.wait_listening_stopped()
            glue.remove_socket_listener(self.vc, self.datagrams)
            self.stopped = asyncio.get_running_loop().time()
            assert receiver is not None
            self.stats = receiver.stats()
        return self.stats

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.vc is not None and self.stats is None:
                await self.stop()
        finally:
            if self._collector is not None:
                self._collector.cancel()
            await self._stack.aclose()


@dataclass(frozen=True, slots=True)
class FrameAccount:
    """One speaker's frames, reconciled between what the network did and what the recording holds.

    Every frame the speaker sent is exactly one of: ``decoded`` (its packet was played), ``concealed`` (its slot
    was filled by FEC or PLC) or ``absent`` (its slot holds silence). ``dropped`` frames never reached the bot
    (the links dropped or damaged them); ``late`` frames did arrive but after their slot was played.
    An absent frame is explained when it ends its talk spurt (``tail_absent``: no later frame of the spurt was
    played, so there was nothing to conceal towards), starts it (``head_absent``: no earlier frame of the spurt
    was played, so the receiver did not know the spurt had begun), lies beyond the concealment limit in a run of
    losses, or
    when the next played frame of its spurt had not arrived yet when the slot was played (``late_successor``:
    held back by the network, or sent late by a stalled sender). ``unexplained_absent`` counts the rest: frames
    the receiver should have concealed.
    """

    sent: int
    dropped: int
    late: int
    decoded: int
    concealed: int
    absent: int
    decoded_but_dropped: int
    tail_absent: int
    head_absent: int
    late_successor: int
    unexplained_absent: int

    @property
    def missing(self) -> int:
        """Frames not played from their own packet."""
        return self.concealed + self.absent


@dataclass(frozen=True, slots=True)
class SentMeta:
    """What :func:`account_frames` needs of a ``SentFrame``, without its audio (for long sessions)."""

    index: int
    sequence: int
    spurt: int


def account_frames(
    sent: Iterable[SentFrame | SentMeta],
    records: Sequence[FrameRecord],
    dropped: Iterable[int],
    *,
    held: Iterable[int] = (),
    arrivals: Mapping[int, float] | None = None,
    deadline: Callable[[int], float] | None = None,
    tolerance: float = 0.01,
    max_conceal: int = 5,
) -> FrameAccount:
    """Reconcile one speaker's sent frames (``speaker.sent`` or :meth:`RecordingSession.sent`) with the
    :class:`FrameTap` records of its user.

    ``dropped`` are the indices (``SentFrame.index``) of frames the network lost or damaged on the way, ``held``
    those it held back (reordered); both come from the links' :class:`~discord_voicerecv.testing.LinkStats`.
    With ``arrivals`` (when each frame reached the receiver, :meth:`DatagramTap.arrivals`) and ``deadline`` (when
    a slot is played at the earliest, :meth:`RecordingSession.slot_deadline`), an absent frame's successor counts as
    late when it arrived less than ``tolerance`` seconds before the absent frame's slot was due (the receiver reads
    its clock just after taking the datagrams queued so far, so one queued in between waits for the next run);
    without them, when it was held back.
    """
    sent = list(sent)
    lost = set(dropped)
    by_seq: dict[int, list[FrameRecord]] = {}
    for record in records:
        by_seq.setdefault(record.sequence & 0xFFFF, []).append(record)
    status: list[str] = []
    for frame in sent:
        got = by_seq.get(frame.sequence & 0xFFFF, ())
        if any(not r.concealed for r in got):
            status.append("decoded")
        elif got:
            status.append("concealed")
        else:
            status.append("absent")
    pairs = list(zip(sent, status, strict=True))
    decoded_but_dropped = sum(1 for f, s in pairs if s == "decoded" and f.index in lost)
    late = sum(1 for f, s in pairs if s != "decoded" and f.index not in lost)
    last_decoded = {f.spurt: n for n, (f, s) in enumerate(pairs) if s == "decoded"}
    first_decoded: dict[int, int] = {}
    for n, (f, s) in enumerate(pairs):
        if s == "decoded":
            first_decoded.setdefault(f.spurt, n)
    held_back = set(held)
    decoded_tick = {r.sequence & 0xFFFF: r.tick for r in records if not r.concealed}
    tail = head = late_successor = unexplained = 0
    run = 0
    for n, (frame, state) in enumerate(pairs):
        if state == "decoded" or (n and sent[n - 1].spurt != frame.spurt):
            run = 0
        if state == "decoded":
            continue
        run += 1
        if state != "absent":
            continue
        if n > last_decoded.get(frame.spurt, -1):
            tail += 1
        elif n < first_decoded[frame.spurt]:
            head += 1
        elif run <= max_conceal:
            k = next(k for k in range(n + 1, len(sent)) if status[k] == "decoded")
            successor = sent[k]
            if arrivals is not None and deadline is not None:
                arrived = arrivals.get(successor.index, math.inf)
                slot = decoded_tick[successor.sequence & 0xFFFF] - (k - n)
                successor_late = arrived > deadline(slot) - tolerance
            else:
                successor_late = successor.index in held_back
            if successor_late:
                late_successor += 1
            else:
                unexplained += 1
    return FrameAccount(
        sent=len(sent),
        dropped=sum(1 for f in sent if f.index in lost),
        late=late,
        decoded=status.count("decoded"),
        concealed=status.count("concealed"),
        absent=status.count("absent"),
        decoded_but_dropped=decoded_but_dropped,
        tail_absent=tail,
        head_absent=head,
        late_successor=late_successor,
        unexplained_absent=unexplained,
    )


def alignment_error(
    speaker: SimulatedSpeaker, track: str | os.PathLike[str], started: float, *, seconds: float = 2.0
) -> tuple[float, float]:
    """How far the end of ``speaker``'s track is from where its audio was sent: ``(seconds off, match score)``.

    The reference is the last ``seconds`` of audio of the speaker's last talk spurt, expected at its sending time
    relative to ``started`` (the event-loop time of ``listen()``; the median over the frames, so one late wake-up
    of the sender does not move it); the track is searched half a second either side. Positive means the
    recording plays it late. Needs numpy.
    """
    import wave

    from .analysis import normalized_xcorr, pcm_to_array

    frames = [f for f in speaker.sent if f.pcm is not None]
    frames = [f for f in frames if f.spurt == frames[-1].spurt][-max(1, round(seconds * 50)) :]
    reference = b"".join(f.pcm for f in frames if f.pcm is not None)
    offsets = sorted(f.sent_at - n * 0.02 for n, f in enumerate(frames))
    expected = offsets[len(offsets) // 2] - started
    with wave.open(os.fspath(track), "rb") as wav:
        rate = wav.getframerate()
        margin = rate // 2
        first = min(max(0, round(expected * rate) - margin), wav.getnframes())
        wav.setpos(first)
        window = pcm_to_array(wav.readframes(len(reference) // 4 + 2 * margin), wav.getnchannels())
    score, lag = normalized_xcorr(window, reference)
    return (first + lag) / rate - expected, score


def placement_score(
    speaker: SimulatedSpeaker, track: str | os.PathLike[str], records: Sequence[FrameRecord], *, seconds: float = 2.0
) -> float:
    """How well ``speaker``'s track holds the audio the recording says it played where it says it played it.

    The reference is the sent audio of the last ``seconds`` of frames the recording played (decoded or concealed),
    each put in the slot its :class:`FrameRecord` names; the track is searched 25 ms either side (the decoder's
    delay). Unlike :func:`alignment_error`, this does not depend on when anything happened: a stall of
    this process that moves a spurt later moves the frames' slots with it. Needs numpy.
    """
    import wave

    from .analysis import normalized_xcorr, pcm_to_array

    audio = {f.sequence & 0xFFFF: f.pcm for f in speaker.sent if f.pcm is not None}
    played = [r for r in records if r.sequence & 0xFFFF in audio][-max(1, round(seconds * 50)) :]
    if not played:
        return 0.0
    first = played[0].tick
    reference = bytearray(FRAME_BYTES * (played[-1].tick - first + 1))
    for record in played:
        pcm = audio[record.sequence & 0xFFFF]
        at = (record.tick - first) * FRAME_BYTES
        reference[at : at + len(pcm)] = pcm
    with wave.open(os.fspath(track), "rb") as wav:
        margin = wav.getframerate() // 40
        start = min(max(0, first * FRAME_SAMPLES - margin), wav.getnframes())
        wav.setpos(start)
        window = pcm_to_array(wav.readframes(len(reference) // 4 + 2 * margin), wav.getnchannels())
    score, _ = normalized_xcorr(window, pcm_to_array(bytes(reference)))
    return score
