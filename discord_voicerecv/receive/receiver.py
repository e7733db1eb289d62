"""The receiver: wires ingress, the holds, the per-stream playouts and the sink feed, and owns the scheduling.

``feed()`` takes each datagram on the socket thread. Running threaded it only stamps the arrival time and queues
the datagram; the process's shared playout scheduler then processes the queue and plays out the slots due, every
40 ms while anyone speaks and about once a second while nobody does (the next datagram wakes it at once). Frames
reach the sink through a bounded queue on the receiver's sink thread. In manual mode (``start(threaded=False)``)
``feed()`` processes the datagram itself and :meth:`pump` plays out and delivers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .. import opus
from ..frames import FRAME_DURATION, VoiceFrame
from ..protocol.rtcp import Bye
from ..sinks.base import AudioSink, SinkUser
from .e2ee import E2EEHold, FrameDecryptor
from .ingress import Ingress, RtpPacket
from .playout import Event, Plan, StreamPlayout
from .scheduler import PlayoutScheduler, Worker, shared_scheduler
from .sinkfeed import SinkFeed, SlotQueue
from .stats import ReceiveStats, StatsSnapshot
from .unmapped import UnmappedHold

__all__ = ("Receiver",)

_log = logging.getLogger(__name__)

_IDLE_FORGET = 60.0
"""Seconds after which a silent stream's state is dropped (it is rebuilt when the SSRC speaks again)."""
_HOUSEKEEPING_SLOTS = 50
_SLOTS_PER_WAKE = 2
"""While anyone speaks the scheduler runs a receiver every 40 ms, playing the two slots then due."""
_IDLE_WAKE = 1.0
"""Seconds between runs while nothing is buffered or playing; a datagram wakes the receiver at once."""
_FIRST_PACKET_WAIT = 2 * FRAME_DURATION
"""The first datagram after a silence is processed with the ones that follow it this long later, as while anyone
speaks: the client's DAVE and key state then settles first after a (re)connect."""
_DRAIN_BATCH = 64
"""Queued datagrams processed per hold of the lock, so the gateway thread (``map_ssrc``) never waits long."""
_INBOX_MAX = 4096
"""Datagrams waiting for the scheduler at most; more are dropped as ``inbox_full``."""


class Receiver:
    """Receive one voice connection's audio into a sink.

    Parameters
    ----------
    sink:
        Gets every speaker's frame per 20 ms slot, then ``advance`` per slot, then ``cleanup``.
    user_resolver:
        Turns a user id into what the sink receives as ``user`` (Member, User or ``discord.Object``; the client
        gives one). Called on the sink thread and cached for about a second. Without it sinks get None and know
        the speaker by ``frame.user_id``.
    decryptor:
        The DAVE layer, or None when the call is not end-to-end encrypted.
    playout_delay:
        Seconds a frame waits before it is played out, to absorb network jitter and reordering.
    clock:
        Monotonic clock in seconds; injectable for tests (threaded mode needs :func:`time.monotonic`'s pace).
    sink_queue_slots:
        Slots with frames that may wait for a slow sink before new slots' frames are dropped.
    unknown_ssrc_hold:
        Seconds packets of an SSRC not yet mapped to a user are held waiting for :meth:`map_ssrc`.
    max_silence:
        A gap this long (seconds) ends a talk spurt; the next packet starts a new one anchored on arrival time.
    after:
        Called once when receiving ends: with None after :meth:`stop`, or with the exception of a failed sink.
    on_event:
        Called as ``on_event(name, payload)`` from the playout: ``"speaking_start"`` and ``"speaking_stop"`` with
        ``{"user_id", "ssrc", "tick"}``. It must not block: the playout scheduler is shared.
    scheduler:
        The playout scheduler for threaded mode (default: the process's shared one).
    """

    def __init__(
        self,
        sink: AudioSink,
        *,
        user_resolver: Callable[[int], SinkUser] | None = None,
        decryptor: FrameDecryptor | None = None,
        playout_delay: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sink_queue_slots: int = 500,
        unknown_ssrc_hold: float = 2.0,
        max_silence: float = 0.2,
        after: Callable[[BaseException | None], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        scheduler: PlayoutScheduler | None = None,
    ) -> None:
        opus.version()
        self.playout_delay = max(0.0, playout_delay)
        self._clock = clock
        self._max_silence = max_silence
        self._on_event = on_event
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._stats = ReceiveStats()
        self._ingress = Ingress(self._stats)
        self._unmapped = UnmappedHold(self._stats, unknown_ssrc_hold)
        self._e2ee = E2EEHold(decryptor, self._stats) if decryptor is not None else None
        self._ssrc_users: dict[int, int] = {}
        self._streams: dict[int, StreamPlayout] = {}
        self._departing = False
        """Some stream is marked leaving: each slot then checks for streams to drop."""
        self._out = SinkFeed(sink, SlotQueue(sink_queue_slots), self._stats, resolver=user_resolver, after=after)
        self._t0 = 0.0
        self._next_slot = 0
        self._started = False
        self._running = False
        self._threaded = False
        self._stopping = False
        self._idle = False
        self._inbox: deque[tuple[bytes, float]] = deque()
        self._inbox_open = False
        self._worker: Worker | None = None

    # configuration (gateway thread) ---------------------------------------------------------------------------------

    def set_transport(self, mode: str, secret_key: bytes | Sequence[int]) -> None:
        """Use a new transport mode and key (op4, also after a reconnect); every stream's state is kept.

        Raises
        ------
        UnsupportedMode
            When ``mode`` is not implemented.
        """
        self._ingress.set_transport(mode, secret_key)

    def map_ssrc(self, ssrc: int, user_id: int) -> None:
        """Record that ``ssrc`` is ``user_id``'s audio (op5/op11/op12) and deliver its held packets."""
        with self._lock:
            self._ssrc_users[ssrc] = user_id
            stream = self._streams.get(ssrc)
            if stream is not None:
                stream.set_user(user_id)
                stream.leaving = False
            if not len(self._unmapped):
                return
            if not self._running:
                dropped = self._unmapped.drop(ssrc)
                if dropped:
                    self._stats.incr("unknown_ssrc_expired", dropped, ssrc=ssrc)
                return
            for packet in self._unmapped.take(ssrc, self._clock()):
                self._route(user_id, packet)
        self._wake()

    def forget_user(self, user_id: int) -> None:
        """A user left (op13): their SSRCs are unmapped and their buffered audio plays out before the streams go."""
        with self._lock:
            for ssrc in [s for s, u in self._ssrc_users.items() if u == user_id]:
                del self._ssrc_users[ssrc]
                stream = self._streams.get(ssrc)
                if stream is not None:
                    stream.leaving = True
                    self._departing = True
            if self._e2ee is not None:
                forgotten = self._e2ee.forget(user_id)
                if forgotten:
                    self._stats.incr("forgotten", forgotten, user_id=user_id)
            if not any(stream.user_id == user_id for stream in self._streams.values()):
                self._stats.forget_user(user_id)

    def ignore_ssrc(self, ssrc: int) -> None:
        """Never process packets of ``ssrc`` (our own)."""
        with self._lock:
            self._ingress.ignored.add(ssrc)
            dropped = self._unmapped.drop(ssrc)
            stream = self._streams.pop(ssrc, None)
            if stream is not None:
                dropped += len(stream.jitter)
            if self._e2ee is not None:
                dropped += self._e2ee.drop_ssrc(ssrc)
            if dropped:
                self._stats.incr("ignored_ssrc", dropped)

    # socket thread ---------------------------------------------------------------------------------------------------

    def feed(self, datagram: bytes) -> None:
        """Take one UDP datagram. Called on the socket thread; never raises, every drop is counted.

        Threaded, the datagram is queued with its arrival time for the playout scheduler (which it wakes when the
        receiver was idle); in manual mode it is processed before this returns.
        """
        if self._inbox_open:
            inbox = self._inbox
            if len(inbox) < _INBOX_MAX:
                inbox.append((datagram, self._clock()))
                if self._idle:
                    self._idle = False
                    if self._worker is not None:
                        self._worker.wake(self, _FIRST_PACKET_WAIT)
                return
            self._stats.add_packet(len(datagram))
            self._stats.incr("inbox_full")
            return
        lock = self._lock
        lock.acquire()  # acquire/release: under half the cost of a with block, paid per datagram
        try:
            self._process(datagram, self._clock())
        finally:
            lock.release()

    # processing --------------------------------------------------------------------------------------------------

    def _process(self, data: bytes, arrival: float) -> None:
        """Open one datagram and file what it carries. Locked."""
        try:
            if not self._running:
                self._stats.add_packet(len(data))
                self._stats.incr("not_listening")
                return
            opened = self._ingress.open(data, arrival)
            if opened is None:
                return
            if isinstance(opened, RtpPacket):
                ssrc = opened.ssrc
                user_id = self._ssrc_users.get(ssrc)
                if user_id is None:
                    self._unmapped.add(opened)
                elif self._e2ee is None:
                    stream = self._streams.get(ssrc)
                    if stream is None:
                        stream = self._add_stream(ssrc, user_id)
                    stream.insert(
                        opened.sequence, opened.timestamp, opened.payload, arrival, self._next_slot, replayed=False
                    )
                else:
                    self._route(user_id, opened)
            else:
                self._rtcp(opened)
        except Exception:
            _log.exception("unexpected error handling a voice datagram")
            self._stats.incr("internal_error")

    def _route(self, user_id: int, packet: RtpPacket) -> None:
        """Remove the DAVE layer (held per frame while its key may still come) and file the frame. Locked."""
        frame = packet.payload if self._e2ee is None else self._e2ee.open(user_id, packet)
        if frame is not None:
            self._file(user_id, packet, frame, replayed=False)

    def _file(self, user_id: int, packet: RtpPacket, frame: bytes, *, replayed: bool) -> None:
        stream = self._streams.get(packet.ssrc)
        if stream is None:
            stream = self._add_stream(packet.ssrc, user_id)
        stream.insert(packet.sequence, packet.timestamp, frame, packet.arrival, self._next_slot, replayed=replayed)

    def _add_stream(self, ssrc: int, user_id: int) -> StreamPlayout:
        stream = self._streams[ssrc] = StreamPlayout(ssrc, user_id, self._t0, self._max_silence, self._stats)
        return stream

    def _rtcp(self, packets: list[Any]) -> None:
        for packet in packets:
            if isinstance(packet, Bye):
                self._stats.incr("rtcp_bye")
                for ssrc in packet.ssrcs:
                    stream = self._streams.get(ssrc)
                    if stream is not None:
                        stream.end_spurt()

    def _drain_inbox(self) -> None:
        """Process the queued datagrams, taking the lock once per batch."""
        inbox = self._inbox
        while inbox:
            with self._lock:
                for _ in range(min(len(inbox), _DRAIN_BATCH)):
                    data, arrival = inbox.popleft()
                    self._process(data, arrival)

    # lifecycle -------------------------------------------------------------------------------------------------------

    def start(self, *, threaded: bool = True) -> None:
        """Start the timeline now (slot 0 begins at this instant) and, when ``threaded``, the sink thread and the
        scheduling. With ``threaded=False`` nothing runs by itself: drive it with :meth:`pump` (tests, replays).
        """
        if self._started:
            raise RuntimeError("a Receiver can only be started once")
        self._started = True
        self._threaded = threaded
        with self._lock:
            self._t0 = self._clock()
            self._next_slot = 0
            self._running = True
        if threaded:
            self._inbox_open = True
            self._out.start_thread(self._sink_detached)
            self._worker = (self._scheduler or shared_scheduler()).add(self)

    def stop(self) -> None:
        """Stop receiving: play out what is buffered up to now, deliver it, ``cleanup`` the sink, call ``after``.

        Safe from any thread. Blocks until the sink has been cleaned up, except when called from the receiver's
        own sink thread or from the playout scheduler (a sink, ``after`` or ``on_event`` callback), where it
        returns at once and the rest happens after the callback. Calling it again does nothing.
        """
        if not self._started:
            self._started = True
            self._out.finish()
            return
        if not self._threaded:
            if self._running:
                self._running = False
                self._safe(self._flush)
                self._out.queue.close()
            self._out.deliver_all()
            self._out.finish()
            return
        self._stopping = True
        self._wake()
        thread = self._out.thread
        if thread is None or thread is threading.current_thread() or (self._worker and self._worker.is_current()):
            return
        thread.join()

    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until :meth:`stop` or a sink failure."""
        return self._running and self._out.attached

    @property
    def elapsed_slots(self) -> int:
        """Slots played out so far (the next slot's index)."""
        return self._next_slot

    @property
    def error(self) -> BaseException | None:
        """The exception that detached the sink, if one did."""
        return self._out.error

    def stats(self) -> StatsSnapshot:
        """A frozen copy of the receive counters."""
        return self._stats.snapshot()

    # scheduling ------------------------------------------------------------------------------------------------------

    def run_scheduled(self) -> float | None:
        """Playout scheduler entry: process queued datagrams, play the slots due; seconds until the next run."""
        if self._stopping or not self._out.attached:
            self._shutdown()
            return None
        self._drain_inbox()
        now = self._clock()
        self._run_due(now)
        if self._quiet():
            self._idle = True
            if not self._inbox:  # a datagram queued before the flag was set would otherwise wait a whole idle period
                return _IDLE_WAKE
            self._idle = False
        return max(0.0, self._deadline(self._next_slot + _SLOTS_PER_WAKE - 1) - now)

    def _wake(self) -> None:
        if self._worker is not None:
            self._worker.wake(self)

    def _shutdown(self) -> None:
        """Last scheduler run: flush what is buffered up to now and close the sink queue."""
        self._inbox_open = False
        self._drain_inbox()
        if self._running:
            self._running = False
            self._safe(self._flush)
        self._drain_inbox()
        self._out.queue.close()

    def _sink_detached(self) -> None:
        self._running = False
        self._wake()

    def pump(self, until: float | None = None, *, deliver: bool = True) -> int:
        """Manual mode: play out every slot due by clock time ``until`` (default: now) and, when ``deliver``,
        hand the queued slots to the sink on this thread. Returns the number of slots played out.

        Raises
        ------
        RuntimeError
            When the receiver runs threaded (the scheduler plays out; pumping too would race it).
        """
        if self._threaded:
            raise RuntimeError("pump() is for a Receiver started with threaded=False")
        ran = self._run_due(self._clock() if until is None else until) if self._running else 0
        if deliver:
            self.deliver()
        return ran

    def deliver(self) -> int:
        """Manual mode: hand every queued slot to the sink on this thread; returns the slots delivered."""
        if self._threaded:
            raise RuntimeError("deliver() is for a Receiver started with threaded=False")
        count = self._out.deliver_all()
        if not self._out.attached:
            self._running = False
            self._out.finish()
        return count

    def _deadline(self, slot: int) -> float:
        return self._t0 + FRAME_DURATION * (slot + 1) + self.playout_delay

    def _run_due(self, now: float) -> int:
        last = math.floor((now - self._t0 - self.playout_delay) / FRAME_DURATION + 1e-9) - 1
        first = self._next_slot
        if last < first:
            return 0
        if last > first and self._quiet():
            with self._lock:
                self._next_slot = last + 1
                self._housekeeping(now, first, last)
            if self._out.attached:
                self._out.queue.put(first, last, [])
            return last - first + 1
        ran = 0
        while self._running and self._next_slot <= last:
            self._safe(self._run_slot)
            ran += 1
        return ran

    def _quiet(self) -> bool:
        """Nothing buffered, held or playing: the slots due are empty."""
        if self._inbox:
            return False
        with self._lock:
            if len(self._unmapped) or (self._e2ee is not None and len(self._e2ee)):
                return False
            return all(stream.drained and not stream.leaving for stream in self._streams.values())

    def _flush(self) -> None:
        """Play out every slot up to the one containing now, without waiting for the playout delay."""
        last = math.ceil((self._clock() - self._t0) / FRAME_DURATION - 1e-9) - 1
        while self._next_slot <= max(last, 0) and self._out.attached:
            self._safe(self._run_slot)

    def _safe(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:
            _log.exception("unexpected error in voice playout")
            self._stats.incr("internal_error")

    def _run_slot(self) -> None:
        """Play out the next slot: release held frames, plan each stream under the lock, render outside it."""
        want_pcm = self._out.wants_pcm
        events: list[Event] = []
        plans: list[tuple[StreamPlayout, Plan]] = []
        frames: list[VoiceFrame] = []
        with self._lock:
            tick = self._next_slot
            try:
                if self._e2ee is not None and len(self._e2ee):
                    now = max(self._clock(), self._deadline(tick))
                    for user_id, packet, frame in self._e2ee.release(now, self._ssrc_users.get):
                        self._file(user_id, packet, frame, replayed=True)
                self._next_slot = tick + 1
                if want_pcm:
                    for stream in self._streams.values():
                        plan = stream.plan(tick, events)
                        if plan is not None:
                            plans.append((stream, plan))
                else:
                    # Nothing to decode: the frames are made here, under the lock, and no decoder is ever created.
                    for stream in self._streams.values():
                        played = stream.play_opus(tick, events)
                        if played is not None:
                            frames.append(played)
                if self._departing:
                    self._drop_departed()
                if tick % _HOUSEKEEPING_SLOTS == 0:
                    self._housekeeping(max(self._clock(), self._deadline(tick)), tick, tick)
            except Exception:
                self._next_slot = tick + 1
                _log.exception("unexpected error planning slot %d", tick)
                self._stats.incr("internal_error")
        for stream, plan in plans:
            try:
                rendered = stream.render(plan, tick, want_pcm)
            except Exception:
                _log.exception("unexpected error rendering a frame of SSRC %d", stream.ssrc)
                self._stats.incr("internal_error")
                continue
            if rendered is not None:
                frames.append(rendered)
        if events:
            self._emit(events)
        out = self._out
        if out.attached and not out.queue.put(tick, tick, frames):
            self._stats.incr("sink_queue_full", len(frames))

    def _drop_departed(self) -> None:
        """Drop the streams of users who left once their audio played out, and their per-SSRC counters. Locked."""
        departing = False
        for ssrc, stream in list(self._streams.items()):
            if not stream.leaving:
                continue
            if not stream.drained:
                departing = True
                continue
            del self._streams[ssrc]
            self._stats.forget_ssrc(ssrc)
            user_id = stream.user_id
            if not any(other.user_id == user_id for other in self._streams.values()):
                if user_id not in self._ssrc_users.values():
                    self._stats.forget_user(user_id)
                self._out.forget_user(user_id)
        self._departing = departing

    def _housekeeping(self, now: float, first: int, last: int) -> None:
        """Expire held packets and forget streams idle for a long time, so memory stays bounded. Locked."""
        if first // _HOUSEKEEPING_SLOTS == last // _HOUSEKEEPING_SLOTS and first % _HOUSEKEEPING_SLOTS:
            return
        self._unmapped.expire(now)
        for ssrc, stream in list(self._streams.items()):
            if stream.drained and now - stream.last_arrival > _IDLE_FORGET:
                del self._streams[ssrc]

    def _emit(self, events: list[Event]) -> None:
        callback = self._on_event
        if callback is None:
            return
        for name, payload in events:
            try:
                callback(name, payload)
            except Exception:
                _log.exception("on_event callback raised for %s", name)
