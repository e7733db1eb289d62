"""The receive pipeline between the UDP socket and the sinks, without any discord.py glue.

``feed()`` takes each datagram on the socket thread. Processing it classifies, authenticates and decrypts it,
removes the DAVE layer and files the Opus frame into its stream's jitter buffer at the timeline slot it belongs to.
A playout thread plays out 20 ms slots on absolute deadlines, takes each stream's frame for every slot due,
decodes it (with FEC or concealment for losses inside a talk spurt) and hands the slot to a sink thread through a
bounded queue, so a slow sink costs counted drops, never a blocked socket.

While running threaded, ``feed()`` only stamps the datagram's arrival time and puts it in an inbox that the playout
thread processes each time it wakes (every 40 ms, playing out the two slots then due): the socket thread returns at
once, and one thread does all the work of a wake-up while its caches are warm. On a busy machine a thread wake-up
costs more CPU than processing a packet; this cut the receiver's CPU at real time by a third (``bench/``). In manual
mode ``feed()`` processes the datagram itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from . import opus
from .errors import DecryptionFailed, E2EEDecryptError, MalformedPacket, OpusError
from .frames import FRAME_BYTES, FRAME_SAMPLES, OPUS_SILENCE, VoiceFrame
from .jitter import DEFAULT_CAPACITY, Drop, JitterBuffer, JitterPacket
from .protocol.ipdiscovery import PACKET_SIZE as _IP_DISCOVERY_SIZE
from .protocol.ipdiscovery import is_response as _is_ip_discovery
from .protocol.rtcp import Bye, parse_rtcp
from .protocol.rtp import OPUS_PAYLOAD_TYPE, parse_rtp_header
from .protocol.transport import TransportCipher, make_cipher
from .sinks.base import AudioSink, SinkUser
from .stats import ReceiveStats, StatsSnapshot, StreamTally
from .timeline import FRAME_DURATION, Timeline

__all__ = ("FrameDecryptor", "Receiver")

_log = logging.getLogger(__name__)

MAX_DATAGRAM = 1500
"""Datagrams above this size are not voice and are dropped unparsed."""
_HOLD_PER_SSRC = 100
_HOLD_TOTAL = 1000
_HOLD_MAX_SSRCS = 64
_E2EE_PER_USER = 50
_E2EE_RETRY_WINDOW = 1.0
_IDLE_FORGET = 60.0
_HOUSEKEEPING_SLOTS = 50
_SLOTS_PER_WAKE = 2
"""The playout thread wakes every 40 ms and plays the two slots then due: a wake-up costs about as much CPU as
decoding a packet, and the extra 20 ms of latency is small next to the playout delay."""
_INBOX_MAX = 4096
"""Datagrams waiting for the playout thread at most (seconds of audio); more are dropped as ``inbox_full``."""
_MAX_CONCEAL = 5
_PLC_GRANULE = 120

_DECODE, _FEC, _PLC, _CARRY = range(4)


class FrameDecryptor(Protocol):
    """The end-to-end (DAVE) layer, supplied by the client glue.

    ``decrypt`` returns the plain Opus frame, ``None`` when the sender cannot be decrypted *yet* (the frame is held
    and retried for about a second), or raises :class:`~discord_voicerecv.errors.E2EEDecryptError` to drop it.
    """

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None: ...


class _Held(NamedTuple):
    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes
    arrival: float


class _Plan(NamedTuple):
    stream: _Stream
    kind: int
    packets: tuple[JitterPacket, ...]
    sequence: int
    timestamp: int
    samples: int


class _Stream:
    """Everything kept per SSRC once one of its packets authenticated."""

    __slots__ = (
        "active",
        "bye",
        "carry",
        "carry_slots",
        "carry_ts",
        "conceal_run",
        "decoder",
        "jitter",
        "last_arrival",
        "last_frame_slot",
        "next_seq",
        "next_ts",
        "spurt",
        "ssrc",
        "tally",
        "timeline",
        "user_id",
    )

    def __init__(
        self, ssrc: int, user_id: int, t0: float, max_silence: float, arrival: float, tally: StreamTally
    ) -> None:
        self.ssrc = ssrc
        self.user_id = user_id
        self.tally = tally
        self.jitter = JitterBuffer(DEFAULT_CAPACITY)
        # Origin half a slot early: a frame lands in the slot nearest its arrival, so tracks align within 10 ms.
        self.timeline = Timeline(t0 - FRAME_DURATION / 2, max_silence=max_silence)
        self.decoder: opus.OpusDecoder | None = None
        self.active = False
        self.bye = False
        self.spurt = 0
        self.next_ts = 0
        self.next_seq = 0
        self.last_frame_slot = 0
        self.carry = b""
        self.carry_slots = 0
        self.carry_ts = 0
        self.conceal_run = 0
        self.last_arrival = arrival


class _SlotQueue:
    """Bounded hand-off from the playout thread to the sink thread.

    Items are ``(first_tick, last_tick, frames)``. At most ``max_slots`` items carry frames; when full, a slot's
    frames are dropped but its tick is still queued, merged into a run of empty ticks, so every ``advance``
    reaches the sink and tracks stay aligned.

    One consumer at a time. It sleeps on a plain lock that a producer releases only when it is asleep: a
    ``threading.Condition`` costs about three times as much CPU per 20 ms wake-up (it allocates a waiter lock and
    reacquires its own lock on every wait), which showed up as a tenth of the receiver's CPU at real time.
    """

    __slots__ = ("_closed", "_framed", "_items", "_mutex", "_sleeping", "_wake", "max_slots")

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max(1, max_slots)
        self._items: deque[list[Any]] = deque()
        self._framed = 0
        self._mutex = threading.Lock()
        self._wake = threading.Lock()
        self._wake.acquire()
        self._sleeping = False
        self._closed = False

    def put(self, tick: int, frames: list[VoiceFrame]) -> bool:
        """Queue a slot; False when its frames were dropped because the queue is full (ignored once closed)."""
        with self._mutex:
            if self._closed:
                return True
            kept = True
            if frames and self._framed >= self.max_slots:
                frames, kept = [], False
            tail = self._items[-1] if self._items else None
            if not frames and tail is not None and not tail[2] and tail[1] == tick - 1:
                tail[1] = tick
            else:
                self._items.append([tick, tick, frames])
                self._framed += bool(frames)
            self._wake_consumer()
            return kept

    def get(self, timeout: float | None = None) -> tuple[int, int, list[VoiceFrame]] | None:
        """Next item, waiting while empty; None once closed and drained (or on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._mutex:
                if self._items:
                    first, last, frames = self._items.popleft()
                    self._framed -= bool(frames)
                    return first, last, frames
                if self._closed:
                    return None
                wait = -1.0 if deadline is None else deadline - time.monotonic()
                if deadline is not None and wait <= 0:
                    return None
                self._sleeping = True
            if not self._wake.acquire(timeout=wait):
                with self._mutex:
                    if self._sleeping:
                        self._sleeping = False
                    else:
                        self._wake.acquire()

    def _wake_consumer(self) -> None:
        """Release the sleeping consumer, if any. Called holding the mutex."""
        if self._sleeping:
            self._sleeping = False
            self._wake.release()

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            self._wake_consumer()

    def __len__(self) -> int:
        with self._mutex:
            return len(self._items)


class _StopSignal:
    """A one-shot flag a thread can sleep on, like ``threading.Event`` but on a plain lock: a timed wait costs
    about half the CPU of ``Event.wait`` (which goes through a ``Condition``), and the playout thread waits once
    per 20 ms slot."""

    __slots__ = ("_flag", "_guard", "_lock")

    def __init__(self) -> None:
        self._flag = False
        self._guard = threading.Lock()
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        with self._guard:
            if not self._flag:
                self._flag = True
                self._lock.release()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until set or ``timeout`` seconds passed; True when set."""
        if self._flag:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._lock.release()
            return True
        return self._flag


class Receiver:
    """Receive one voice connection's audio into a sink.

    Parameters
    ----------
    sink:
        Gets every speaker's frame per 20 ms slot, then ``advance`` per slot, then ``cleanup``.
    user_resolver:
        Turns a user id into what the sink receives as ``user`` (Member, User or ``discord.Object``). Called on
        the sink thread and cached for about a second.
    decryptor:
        The DAVE layer, or None when the call is not end-to-end encrypted.
    playout_delay:
        Seconds a frame waits before it is played out, to absorb network jitter and reordering.
    clock:
        Monotonic clock in seconds; injectable for tests.
    sink_queue_slots:
        Slots with frames that may wait for a slow sink before new slots' frames are dropped.
    unknown_ssrc_hold:
        Seconds packets of an SSRC not yet mapped to a user are held waiting for :meth:`map_ssrc`.
    max_silence:
        A gap this long (seconds) ends a talk spurt; the next packet starts a new one anchored on arrival time.
    after:
        Called once when receiving ends: with None after :meth:`stop`, or with the exception of a failed sink.
    on_event:
        Called as ``on_event(name, payload)`` from the playout thread: ``"speaking_start"`` and
        ``"speaking_stop"`` with ``{"user_id", "ssrc", "tick"}``.
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
    ) -> None:
        opus.version()
        self._sink = sink
        self._resolver = user_resolver
        self._decryptor = decryptor
        self.playout_delay = max(0.0, playout_delay)
        self._clock = clock
        self._hold_window = unknown_ssrc_hold
        self._max_silence = max_silence
        self._silence_slots = max(1, round(max_silence / FRAME_DURATION))
        self._after = after
        self._on_event = on_event

        self._lock = threading.Lock()
        self._cipher: TransportCipher | None = None
        self._ssrc_users: dict[int, int] = {}
        self._ignored: set[int] = set()
        self._streams: dict[int, _Stream] = {}
        self._held: dict[int, deque[_Held]] = {}
        self._held_total = 0
        self._pending: dict[int, deque[_Held]] = {}
        self._stats = ReceiveStats()
        self._queue = _SlotQueue(sink_queue_slots)
        self._user_cache: dict[int, SinkUser] = {}
        self._user_cache_tick = 0

        self._t0 = 0.0
        self._next_slot = 0
        self._started = False
        self._running = False
        self._threaded = False
        self._sink_attached = True
        self._error: BaseException | None = None
        self._finished = False
        self._stop_event = _StopSignal()
        self._inbox: deque[tuple[bytes, float]] = deque()
        self._inbox_open = False
        self._playout_thread: threading.Thread | None = None
        self._sink_thread: threading.Thread | None = None

    # configuration (gateway thread) ---------------------------------------------------------------------------------

    def set_transport(self, mode: str, secret_key: bytes | Sequence[int]) -> None:
        """Use a new transport mode and key (op4, also after a reconnect); every stream's state is kept.

        Raises
        ------
        UnsupportedMode
            When ``mode`` is not implemented.
        """
        self._cipher = make_cipher(mode, bytes(secret_key))

    def map_ssrc(self, ssrc: int, user_id: int) -> None:
        """Record that ``ssrc`` is ``user_id``'s audio (op5/op11/op12) and deliver its held packets."""
        with self._lock:
            self._ssrc_users[ssrc] = user_id
            stream = self._streams.get(ssrc)
            if stream is not None and stream.user_id != user_id:
                stream.user_id = user_id
                stream.tally = self._stats.tally(ssrc, user_id)
            held = self._held.pop(ssrc, None)
            if not held:
                return
            self._held_total -= len(held)
            if not self._running:
                self._stats.incr("unknown_ssrc_expired", len(held), ssrc=ssrc)
                return
            now = self._clock()
            base = held[0].sequence
            for item in sorted(held, key=lambda h: (h.sequence - base + 0x8000) & 0xFFFF):
                if now - item.arrival > self._hold_window:
                    self._stats.incr("unknown_ssrc_expired", ssrc=ssrc)
                    continue
                self._deliver(ssrc, user_id, item.sequence, item.timestamp, item.payload, item.arrival, now)

    def forget_user(self, user_id: int) -> None:
        """Drop every SSRC of a user who left (op13), with its buffered audio (counted as ``forgotten``)."""
        events: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            for ssrc in [s for s, u in self._ssrc_users.items() if u == user_id]:
                del self._ssrc_users[ssrc]
                stream = self._streams.pop(ssrc, None)
                if stream is None:
                    continue
                if len(stream.jitter):
                    self._stats.incr("forgotten", len(stream.jitter), ssrc=ssrc, user_id=user_id)
                if stream.active:
                    events.append(("speaking_stop", {"user_id": user_id, "ssrc": ssrc, "tick": self._next_slot}))
            pending = self._pending.pop(user_id, None)
            if pending:
                self._stats.incr("forgotten", len(pending), user_id=user_id)
            self._user_cache.pop(user_id, None)
        self._emit(events)

    def ignore_ssrc(self, ssrc: int) -> None:
        """Never process packets of ``ssrc`` (our own)."""
        with self._lock:
            self._ignored.add(ssrc)
            stream = self._streams.pop(ssrc, None)
            if stream is not None and len(stream.jitter):
                self._stats.incr("ignored_ssrc", len(stream.jitter))
            held = self._held.pop(ssrc, None)
            if held:
                self._held_total -= len(held)
                self._stats.incr("ignored_ssrc", len(held))
            for user_id, pending in self._pending.items():
                mine = [item for item in pending if item.ssrc == ssrc]
                if mine:
                    self._pending[user_id] = deque(item for item in pending if item.ssrc != ssrc)
                    self._stats.incr("ignored_ssrc", len(mine))

    # socket thread ---------------------------------------------------------------------------------------------------

    def feed(self, datagram: bytes) -> None:
        """Take one UDP datagram. Called on the socket thread; never raises, every drop is counted.

        Threaded, the datagram is processed on the playout thread when it next wakes (within 40 ms, with the arrival
        time stamped here); in manual mode it is processed before this returns.
        """
        if self._inbox_open:
            inbox = self._inbox
            if len(inbox) < _INBOX_MAX:
                inbox.append((datagram, self._clock()))
                return
            self._stats.add_packet(len(datagram))
            self._stats.incr("inbox_full")
            return
        self._feed_safe(datagram, None)

    def _feed_safe(self, data: bytes, arrival: float | None) -> None:
        try:
            self._feed(data, arrival)
        except Exception:
            _log.exception("unexpected error handling a voice datagram")
            self._stats.incr("internal_error")

    def _drain_inbox(self) -> None:
        """Process every datagram ``feed`` queued, oldest first."""
        inbox = self._inbox
        while inbox:
            data, arrival = inbox.popleft()
            self._feed_safe(data, arrival)

    def _feed(self, data: bytes, arrival: float | None = None) -> None:
        stats = self._stats
        size = len(data)
        stats.add_packet(size)
        if not self._running:
            stats.incr("not_listening")
            return
        if size == _IP_DISCOVERY_SIZE and _is_ip_discovery(data):
            stats.incr("ip_discovery")
            return
        if size > MAX_DATAGRAM:
            stats.incr("malformed:oversized")
            return
        if size >= 2 and 200 <= data[1] <= 204:  # is_rtcp, inlined
            self._feed_rtcp(data)
            return
        try:
            header = parse_rtp_header(data)
        except MalformedPacket as exc:
            stats.incr("malformed:" + exc.reason)
            return
        if header.payload_type != OPUS_PAYLOAD_TYPE:
            stats.incr("ignored_payload_type")
            return
        cipher = self._cipher
        if cipher is None:
            stats.incr("no_transport_key")
            return
        try:
            payload = cipher.open_payload(data, header)
        except DecryptionFailed:
            stats.incr("decrypt_failed")
            return
        except MalformedPacket as exc:
            stats.incr("malformed:" + exc.reason)
            return
        ssrc = header.ssrc
        if ssrc in self._ignored:
            stats.incr("ignored_ssrc")
            return
        if not payload:
            stats.incr("malformed:empty")
            return
        now = self._clock() if arrival is None else arrival
        with self._lock:
            user_id = self._ssrc_users.get(ssrc)
            if user_id is None:
                self._hold(_Held(ssrc, header.sequence, header.timestamp, payload, now))
                return
            self._deliver(ssrc, user_id, header.sequence, header.timestamp, payload, now, now)

    def _feed_rtcp(self, data: bytes) -> None:
        cipher = self._cipher
        if cipher is None:
            self._stats.incr("no_transport_key")
            return
        try:
            packets = parse_rtcp(cipher.decrypt_rtcp(data))
        except DecryptionFailed:
            self._stats.incr("decrypt_failed")
            return
        except MalformedPacket as exc:
            self._stats.incr("malformed:rtcp_" + exc.reason)
            return
        self._stats.incr("rtcp")
        for packet in packets:
            if isinstance(packet, Bye):
                self._stats.incr("rtcp_bye")
                with self._lock:
                    for ssrc in packet.ssrcs:
                        stream = self._streams.get(ssrc)
                        if stream is not None:
                            stream.bye = True
                            stream.timeline.reset()

    def _hold(self, item: _Held) -> None:
        """Keep an authenticated packet of an unmapped SSRC, within per-SSRC and global bounds."""
        queue = self._held.get(item.ssrc)
        if queue is None:
            if len(self._held) >= _HOLD_MAX_SSRCS:
                self._stats.incr("unknown_ssrc_dropped")
                return
            queue = self._held[item.ssrc] = deque()
        if len(queue) >= _HOLD_PER_SSRC:
            queue.popleft()
            self._held_total -= 1
            self._stats.incr("unknown_ssrc_dropped")
        elif self._held_total >= _HOLD_TOTAL:
            self._stats.incr("unknown_ssrc_dropped")
            return
        queue.append(item)
        self._held_total += 1
        self._stats.incr("unknown_ssrc_held")

    def _deliver(
        self, ssrc: int, user_id: int, sequence: int, timestamp: int, payload: bytes, arrival: float, now: float
    ) -> None:
        """Remove the DAVE layer (holding frames that cannot be decrypted yet) and buffer the frame. Locked."""
        if self._decryptor is not None and payload != OPUS_SILENCE:
            pending = self._pending.get(user_id)
            if pending:
                self._retry_pending(user_id, now)
                pending = self._pending.get(user_id)
            item = tuple.__new__(_Held, (ssrc, sequence, timestamp, payload, arrival))
            if pending:
                self._queue_pending(user_id, item)
                return
            frame = self._dave_decrypt(user_id, item)
            if frame is None:
                self._queue_pending(user_id, item)
                return
            if not frame:
                return
            payload = frame
        self._buffer(ssrc, user_id, sequence, timestamp, payload, arrival)

    def _dave_decrypt(self, user_id: int, item: _Held) -> bytes | None:
        """Plain frame, None for "not yet", or b"" when the frame was dropped (counted)."""
        assert self._decryptor is not None
        try:
            return self._decryptor.decrypt(user_id, item.payload)
        except E2EEDecryptError as exc:
            self._stats.incr("e2ee_failed:" + exc.reason, ssrc=item.ssrc, user_id=user_id)
        except Exception:
            _log.debug("DAVE decryptor raised", exc_info=True)
            self._stats.incr("e2ee_failed:error", ssrc=item.ssrc, user_id=user_id)
        return b""

    def _queue_pending(self, user_id: int, item: _Held) -> None:
        pending = self._pending.get(user_id)
        if pending is None:
            pending = self._pending[user_id] = deque()
        if len(pending) >= _E2EE_PER_USER:
            pending.popleft()
            self._stats.incr("e2ee_expired", user_id=user_id)
        pending.append(item)
        self._stats.incr("e2ee_held", ssrc=item.ssrc, user_id=user_id)

    def _retry_pending(self, user_id: int, now: float) -> None:
        pending = self._pending.get(user_id)
        while pending:
            item = pending[0]
            if now - item.arrival > _E2EE_RETRY_WINDOW or self._ssrc_users.get(item.ssrc) != user_id:
                pending.popleft()
                self._stats.incr("e2ee_expired", user_id=user_id)
                continue
            frame = self._dave_decrypt(user_id, item)
            if frame is None:
                return
            pending.popleft()
            if frame:
                self._buffer(item.ssrc, user_id, item.sequence, item.timestamp, frame, item.arrival, replayed=True)
        self._pending.pop(user_id, None)

    def _buffer(
        self,
        ssrc: int,
        user_id: int,
        sequence: int,
        timestamp: int,
        frame: bytes,
        arrival: float,
        *,
        replayed: bool = False,
    ) -> None:
        """File a plain Opus frame into its stream's jitter buffer at its timeline slot. Locked.

        ``replayed`` frames come out of the DAVE hold: one that is late by then is lost alone, never pushing the
        rest of its spurt later (it arrived in time; only its key came late).
        """
        stream = self._streams.get(ssrc)
        if stream is None:
            tally = self._stats.tally(ssrc, user_id)
            stream = self._streams[ssrc] = _Stream(ssrc, user_id, self._t0, self._max_silence, arrival, tally)
        if arrival > stream.last_arrival:
            stream.last_arrival = arrival
        stats = self._stats
        jitter = stream.jitter
        overflow = jitter.overflow
        packet = jitter.insert(sequence, timestamp, frame, arrival)
        if jitter.overflow != overflow:
            stats.incr("buffer_overflow", jitter.overflow - overflow, ssrc=ssrc, user_id=user_id)
        if isinstance(packet, Drop):
            if packet is not Drop.OVERFLOW:
                stats.incr(packet.value, ssrc=ssrc, user_id=user_id)
            return
        timeline = stream.timeline
        shifts = timeline.shifts
        placement = timeline.place(
            packet.timestamp,
            arrival,
            first_free=self._next_slot,
            newest=packet.sequence == jitter.highest and not replayed,
        )
        if timeline.shifts != shifts:
            stats.incr("late_shift", ssrc=ssrc, user_id=user_id)
        if placement is None:
            jitter.remove(packet)
            stats.incr("late", ssrc=ssrc, user_id=user_id)
            return
        if placement.moved:
            for other in jitter:
                if other.spurt == placement.spurt:
                    other.slot -= placement.moved
        packet.slot = placement.slot
        packet.spurt = placement.spurt
        if placement.started:
            stream.bye = False
        try:
            samples = opus.packet_samples(frame)
        except OpusError:
            samples = FRAME_SAMPLES
        packet.samples = samples if samples > 0 else FRAME_SAMPLES
        stream.tally.rtp += 1

    # lifecycle -------------------------------------------------------------------------------------------------------

    def start(self, *, threaded: bool = True) -> None:
        """Start the timeline now (slot 0 begins at this instant) and, when ``threaded``, the playout and sink
        threads. With ``threaded=False`` nothing runs by itself: drive it with :meth:`pump` (tests, offline
        replays).
        """
        if self._started:
            raise RuntimeError("a Receiver can only be started once")
        self._started = True
        self._threaded = threaded
        with self._lock:
            self._t0 = self._clock()
            self._next_slot = 0
            self._running = True
        self._inbox_open = threaded
        if threaded:
            self._playout_thread = threading.Thread(target=self._playout_loop, name="voice-recv playout", daemon=True)
            self._sink_thread = threading.Thread(target=self._sink_loop, name="voice-recv sink", daemon=True)
            self._sink_thread.start()
            self._playout_thread.start()

    def stop(self) -> None:
        """Stop receiving: play out what is buffered up to now, deliver it, ``cleanup`` the sink, call ``after``.

        Blocks until the sink has been cleaned up, unless called from the receiver's own threads (a sink or
        ``after`` callback). Calling it again does nothing.
        """
        if not self._started:
            self._started = True
            self._finish(None)
            return
        self._stop_event.set()
        if not self._threaded:
            if self._running:
                self._running = False
                self._safe(self._flush)
                self._queue.close()
            self.deliver()
            if not self._finished:
                self._finish(self._error)
            return
        threads = (self._playout_thread, self._sink_thread)
        if threading.current_thread() in threads:
            return
        for thread in threads:
            if thread is not None:
                thread.join()

    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until :meth:`stop` or a sink failure."""
        return self._running and self._sink_attached

    @property
    def elapsed_slots(self) -> int:
        """Slots played out so far (the next slot's index)."""
        return self._next_slot

    @property
    def error(self) -> BaseException | None:
        """The exception that detached the sink, if one did."""
        return self._error

    def stats(self) -> StatsSnapshot:
        """A frozen copy of the receive counters."""
        return self._stats.snapshot()

    # playout thread --------------------------------------------------------------------------------------------------

    def _deadline(self, slot: int) -> float:
        return self._t0 + FRAME_DURATION * (slot + 1) + self.playout_delay

    def _playout_loop(self) -> None:
        stop = self._stop_event
        try:
            while not stop.is_set():
                wait = self._deadline(self._next_slot + _SLOTS_PER_WAKE - 1) - self._clock()
                if wait > 0:
                    stop.wait(wait)
                    continue
                self._drain_inbox()
                self._run_due(self._clock())
        finally:
            self._inbox_open = False
            self._drain_inbox()
            if self._running:
                self._running = False
                self._safe(self._flush)
            self._drain_inbox()
            self._queue.close()

    def pump(self, until: float | None = None, *, deliver: bool = True) -> int:
        """Manual mode: play out every slot due by clock time ``until`` (default: now) and, when ``deliver``,
        hand the queued slots to the sink on this thread. Returns the number of slots played out."""
        ran = self._run_due(self._clock() if until is None else until) if self._running else 0
        if deliver and not self._threaded:
            self.deliver()
        return ran

    def deliver(self) -> int:
        """Manual mode: hand every queued slot to the sink on this thread; returns the slots delivered."""
        count = 0
        while (item := self._queue.get(0)) is not None:
            self._deliver_item(*item)
            count += item[1] - item[0] + 1
        if not self._sink_attached and not self._finished:
            self._finish(self._error)
        return count

    def _run_due(self, now: float) -> int:
        ran = 0
        while self._running and self._deadline(self._next_slot) <= now:
            self._safe(self._run_slot)
            ran += 1
        return ran

    def _flush(self) -> None:
        """Play out every slot up to the one containing now, without waiting for the playout delay."""
        last = math.ceil((self._clock() - self._t0) / FRAME_DURATION - 1e-9) - 1
        while self._next_slot <= max(last, 0) and self._sink_attached:
            self._safe(self._run_slot)

    def _safe(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:
            _log.exception("unexpected error in voice playout")
            self._stats.incr("internal_error")

    def _run_slot(self) -> None:
        """Play out the next slot: pick each stream's frame, decode outside the lock, queue the slot."""
        sink_alive = self._sink_attached
        want_pcm = sink_alive and bool(getattr(self._sink, "wants_pcm", True))
        events: list[tuple[str, dict[str, Any]]] = []
        plans: list[_Plan] = []
        with self._lock:
            tick = self._next_slot
            self._next_slot = tick + 1
            now = max(self._clock(), self._deadline(tick))
            try:
                if self._pending:
                    for user_id in list(self._pending):
                        self._retry_pending(user_id, now)
                for stream in self._streams.values():
                    plan = self._plan(stream, tick, events)
                    if plan is not None:
                        plans.append(plan)
                if tick % _HOUSEKEEPING_SLOTS == 0:
                    self._housekeeping(now)
            except Exception:
                _log.exception("unexpected error planning slot %d", tick)
                self._stats.incr("internal_error")
        frames: list[VoiceFrame] = []
        for plan in plans:
            try:
                frame = self._render(plan, tick, want_pcm)
            except Exception:
                _log.exception("unexpected error rendering a frame of SSRC %d", plan.stream.ssrc)
                self._stats.incr("internal_error")
                continue
            if frame is not None:
                frames.append(frame)
        self._emit(events)
        if sink_alive and not self._queue.put(tick, frames):
            self._stats.incr("sink_queue_full", len(frames))

    def _plan(self, stream: _Stream, tick: int, events: list[tuple[str, dict[str, Any]]]) -> _Plan | None:
        """Decide what ``stream`` plays in slot ``tick``. Locked."""
        jitter = stream.jitter
        head = jitter.peek()
        while head is not None and head.slot < tick:
            jitter.pop()
            self._stats.incr("late", ssrc=stream.ssrc, user_id=stream.user_id)
            head = jitter.peek()
        if stream.carry_slots > 0:
            stream.carry_slots -= 1
            stream.last_frame_slot = tick
            stream.carry_ts += FRAME_SAMPLES
            return _Plan(stream, _CARRY, (), stream.next_seq - 1, stream.carry_ts, 0)
        if head is not None and head.slot == tick:
            packets: list[JitterPacket] = []
            while head is not None and head.slot == tick:
                packets.append(head)
                jitter.pop()
                head = jitter.peek()
            first, last = packets[0], packets[-1]
            if not stream.active or first.spurt != stream.spurt:
                if stream.active:
                    events.append(self._event("speaking_stop", stream, tick))
                events.append(self._event("speaking_start", stream, tick))
                stream.active = True
                stream.spurt = first.spurt
            total = first.samples if first is last else sum(p.samples for p in packets)
            stream.carry_slots = (total - 1) // FRAME_SAMPLES if total > FRAME_SAMPLES else 0
            stream.carry_ts = first.timestamp
            stream.next_ts = last.timestamp + last.samples
            stream.next_seq = last.sequence + 1
            stream.last_frame_slot = tick
            stream.conceal_run = 0
            return tuple.__new__(_Plan, (stream, _DECODE, tuple(packets), first.sequence, first.timestamp, total))
        if not stream.active:
            return None
        if (
            head is not None
            and head.spurt == stream.spurt
            and head.timestamp > stream.next_ts
            and stream.conceal_run < _MAX_CONCEAL
        ):
            gap = head.timestamp - stream.next_ts
            samples = min(FRAME_SAMPLES, gap) // _PLC_GRANULE * _PLC_GRANULE
            if samples:
                stream.conceal_run += 1
                plan = _Plan(
                    stream,
                    _FEC if gap == samples == FRAME_SAMPLES else _PLC,
                    (head,),
                    stream.next_seq,
                    stream.next_ts,
                    samples,
                )
                stream.next_ts += samples
                stream.next_seq += 1
                return plan
        if (
            stream.bye
            or tick - stream.last_frame_slot > self._silence_slots
            or (head is not None and head.spurt != stream.spurt)
        ):
            stream.active = False
            events.append(self._event("speaking_stop", stream, tick))
        return None

    def _render(self, plan: _Plan, tick: int, want_pcm: bool) -> VoiceFrame | None:
        """Turn a plan into the slot's frame, decoding when PCM is wanted. Never raises for bad audio."""
        stream = plan.stream
        kind = plan.kind
        opus_payload: bytes | None = plan.packets[0].payload if kind == _DECODE else None
        if not want_pcm:
            if kind == _CARRY:
                return None
            if kind != _DECODE:
                self._count_frame(stream, "lost")
            return self._frame(stream, tick, b"", opus_payload, plan, kind != _DECODE)
        decoder = stream.decoder
        if decoder is None:
            decoder = stream.decoder = opus.OpusDecoder()
        concealed = kind != _DECODE
        if kind == _CARRY:
            pcm, stream.carry = stream.carry[:FRAME_BYTES], stream.carry[FRAME_BYTES:]
            concealed = False
        elif kind == _DECODE:
            parts = []
            for packet in plan.packets:
                try:
                    parts.append(decoder.decode(packet.payload))
                    stream.tally.decoded += 1
                except OpusError:
                    self._count_frame(stream, "opus_error")
                    parts.append(decoder.decode(None, frame_samples=_plc_size(packet.samples)))
                    concealed = True
            pcm = parts[0] if len(parts) == 1 else b"".join(parts)
            stream.carry = pcm[FRAME_BYTES:]
        else:
            use_fec = kind == _FEC
            try:
                pcm = decoder.decode(plan.packets[0].payload if use_fec else None, fec=use_fec)
            except OpusError:
                use_fec = False
                pcm = decoder.decode(None, frame_samples=plan.samples)
            self._count_frame(stream, "fec" if use_fec else "plc")
        if len(pcm) != FRAME_BYTES:
            pcm = pcm[:FRAME_BYTES] + bytes(max(0, FRAME_BYTES - len(pcm)))
        return self._frame(stream, tick, pcm, opus_payload, plan, concealed)

    def _frame(
        self, stream: _Stream, tick: int, pcm: bytes, payload: bytes | None, plan: _Plan, concealed: bool
    ) -> VoiceFrame:
        stream.tally.frames += 1
        return VoiceFrame(
            stream.ssrc,
            stream.user_id,
            tick,
            pcm,
            payload,
            plan.sequence & 0xFFFF,
            plan.timestamp & 0xFFFFFFFF,
            concealed,
        )

    def _count_frame(self, stream: _Stream, reason: str) -> None:
        self._stats.incr(reason, ssrc=stream.ssrc, user_id=stream.user_id)

    def _event(self, name: str, stream: _Stream, tick: int) -> tuple[str, dict[str, Any]]:
        return name, {"user_id": stream.user_id, "ssrc": stream.ssrc, "tick": tick}

    def _emit(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        callback = self._on_event
        if callback is None:
            return
        for name, payload in events:
            try:
                callback(name, payload)
            except Exception:
                _log.exception("on_event callback raised for %s", name)

    def _housekeeping(self, now: float) -> None:
        """Expire held packets and forget streams idle for a long time, so memory stays bounded. Locked."""
        for ssrc, queue in list(self._held.items()):
            while queue and now - queue[0].arrival > self._hold_window:
                queue.popleft()
                self._held_total -= 1
                self._stats.incr("unknown_ssrc_expired")
            if not queue:
                del self._held[ssrc]
        for ssrc, stream in list(self._streams.items()):
            if not stream.active and not len(stream.jitter) and now - stream.last_arrival > _IDLE_FORGET:
                del self._streams[ssrc]

    # sink thread -----------------------------------------------------------------------------------------------------

    def _sink_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            self._deliver_item(*item)
        if not self._finished:
            self._finish(self._error)

    def _deliver_item(self, first: int, last: int, frames: list[VoiceFrame]) -> None:
        if not self._sink_attached:
            return
        sink = self._sink
        try:
            for frame in frames:
                sink.write(self._resolve(frame.user_id, first), frame)
            for tick in range(first, last + 1):
                sink.advance(tick)
        except Exception as exc:
            self._detach(exc)

    def _resolve(self, user_id: int | None, tick: int) -> SinkUser:
        if user_id is None:
            return None
        if tick - self._user_cache_tick >= _HOUSEKEEPING_SLOTS:
            self._user_cache.clear()
            self._user_cache_tick = tick
        user = self._user_cache.get(user_id)
        if user is None:
            user = self._user_cache[user_id] = self._lookup_user(user_id)
        return user

    def _lookup_user(self, user_id: int) -> SinkUser:
        if self._resolver is not None:
            try:
                return self._resolver(user_id)
            except Exception:
                _log.exception("user_resolver raised for %s", user_id)
        import discord

        return discord.Object(id=user_id)

    def _detach(self, exc: BaseException) -> None:
        """A sink raised: stop feeding it, end the session, report the error through ``after``."""
        _log.error("sink %r raised; detaching it", self._sink, exc_info=exc)
        self._stats.incr("sink_error")
        self._error = exc
        self._sink_attached = False
        self._running = False
        self._stop_event.set()
        self._queue.close()

    def _finish(self, error: BaseException | None) -> None:
        """Clean the sink up and call ``after`` exactly once."""
        self._finished = True
        try:
            self._sink.cleanup()
        except Exception as exc:
            _log.exception("sink cleanup raised")
            self._stats.incr("sink_error")
            error = error or exc
        if self._after is not None:
            try:
                self._after(error)
            except Exception:
                _log.exception("after callback raised")


def _plc_size(samples: int) -> int:
    return max(_PLC_GRANULE, min(samples, opus.MAX_FRAME_SAMPLES) // _PLC_GRANULE * _PLC_GRANULE)
