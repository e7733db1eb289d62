"""One stream's playout: its jitter buffer, timeline and decoder, and what it plays in each slot.

:meth:`StreamPlayout.plan` decides, under the receiver's lock, what the stream plays in a slot (packets, a
concealed frame, or the rest of a packet longer than a slot); :meth:`StreamPlayout.render` then decodes that plan
outside the lock. Concealment (FEC, then PLC) is for real loss only: a gap in sequence numbers. A gap in timestamps
with consecutive sequence numbers is the sender pausing (DTX) and stays silent.
"""

from __future__ import annotations

from typing import Any

from .. import opus
from ..errors import OpusError
from ..frames import FRAME_BYTES, FRAME_DURATION, FRAME_SAMPLES, VoiceFrame
from ..protocol.opus_toc import packet_samples
from .jitter import DEFAULT_CAPACITY, Drop, JitterBuffer, JitterPacket
from .stats import ReceiveStats
from .timeline import Timeline

__all__ = ("Plan", "StreamPlayout")

MAX_PLC_RUN = 5
"""Consecutive slots concealed by PLC at most; longer losses stay silent (FEC for the last one still applies)."""
_PLC_GRANULE = 120
"""libopus conceals whole multiples of 2.5 ms."""
_BYTES_PER_SAMPLE = FRAME_BYTES // FRAME_SAMPLES

DECODE, FEC, PLC, CARRY = range(4)
Event = tuple[str, dict[str, Any]]


class Plan:
    """What one stream plays in one slot.

    ``kind`` is ``DECODE`` (``packets`` are the slot's packets; ``lost_before``/``lost_after`` say whether the
    samples missing before the first or after the last were lost rather than not sent), ``FEC`` (``packets`` holds
    the next packet, whose redundancy carries this slot), ``PLC``, or ``CARRY`` (the rest of a longer packet).
    """

    __slots__ = ("kind", "lost_after", "lost_before", "packets", "sequence", "timestamp")

    def __init__(
        self,
        kind: int,
        packets: tuple[JitterPacket, ...],
        sequence: int,
        timestamp: int,
        lost_before: bool = False,
        lost_after: bool = False,
    ) -> None:
        self.kind = kind
        self.packets = packets
        self.sequence = sequence
        self.timestamp = timestamp
        self.lost_before = lost_before
        self.lost_after = lost_after


class StreamPlayout:
    """Everything kept for one SSRC once one of its packets authenticated.

    Parameters
    ----------
    t0:
        Clock time of slot 0's start.
    max_silence:
        A gap this long (seconds) ends a talk spurt.
    stats:
        Where this stream counts its drops and frames.
    """

    __slots__ = (
        "_carry",
        "_carry_slots",
        "_carry_ts",
        "_last_samples",
        "_last_seq",
        "_last_slot",
        "_last_wire_seq",
        "_plc_run",
        "_silence_slots",
        "_stats",
        "active",
        "bye",
        "decoder",
        "jitter",
        "last_arrival",
        "leaving",
        "spurt",
        "ssrc",
        "tally",
        "timeline",
        "user_id",
    )

    def __init__(self, ssrc: int, user_id: int, t0: float, max_silence: float, stats: ReceiveStats) -> None:
        self.ssrc = ssrc
        self.user_id = user_id
        self._stats = stats
        self.tally = stats.tally(ssrc, user_id)
        self.jitter = JitterBuffer(DEFAULT_CAPACITY)
        # Origin half a slot early: a frame lands in the slot nearest its arrival, so tracks align within 10 ms.
        self.timeline = Timeline(t0 - FRAME_DURATION / 2, max_silence=max_silence)
        self._silence_slots = max(1, round(max_silence / FRAME_DURATION))
        self.decoder: opus.OpusDecoder | None = None
        self.active = False
        self.bye = False
        self.leaving = False
        """The user left: play out what is buffered, then the receiver drops the stream."""
        self.spurt = 0
        self.last_arrival = -1e300
        self._last_seq: int | None = None
        self._last_wire_seq = 0
        self._last_samples = FRAME_SAMPLES
        self._last_slot = 0
        self._carry = b""
        self._carry_slots = 0
        self._carry_ts = 0
        self._plc_run = 0

    @property
    def drained(self) -> bool:
        """Nothing buffered and nothing playing: the stream may be dropped without losing audio."""
        return not self.active and not len(self.jitter) and not self._carry_slots

    def set_user(self, user_id: int) -> None:
        """The SSRC now belongs to ``user_id``."""
        if user_id != self.user_id:
            self.user_id = user_id
            self.tally = self._stats.tally(self.ssrc, user_id)

    def end_spurt(self) -> None:
        """RTCP BYE: the sender stopped; the spurt ends once its buffered frames played."""
        self.bye = True
        self.timeline.reset()

    def insert(
        self, sequence: int, timestamp: int, frame: bytes, arrival: float, first_free: int, *, replayed: bool
    ) -> None:
        """File a plain Opus frame into the jitter buffer at the slot the timeline gives it (drops counted).

        ``replayed`` frames come out of the E2EE hold: their arrival was earlier than frames already filed, so they
        never start a spurt or move it later; one whose slot has passed is late alone.
        """
        stats = self._stats
        if arrival > self.last_arrival:
            self.last_arrival = arrival
        jitter = self.jitter
        overflow = jitter.overflow
        packet = jitter.insert(sequence, timestamp, frame, arrival)
        if jitter.overflow != overflow:
            stats.incr("buffer_overflow", jitter.overflow - overflow, ssrc=self.ssrc, user_id=self.user_id)
        if isinstance(packet, Drop):
            if packet is not Drop.OVERFLOW:
                stats.incr(packet.value, ssrc=self.ssrc, user_id=self.user_id)
            return
        timeline = self.timeline
        shifts = timeline.shifts
        placement = timeline.place(
            packet.timestamp, arrival, first_free=first_free, newest=packet.sequence == jitter.highest and not replayed
        )
        if timeline.shifts != shifts:
            stats.incr("late_shift", ssrc=self.ssrc, user_id=self.user_id)
        if placement is None:
            jitter.remove(packet)
            stats.incr("late", ssrc=self.ssrc, user_id=self.user_id)
            return
        if placement.moved:
            for other in jitter:
                if other.spurt == placement.spurt:
                    other.slot -= placement.moved
        packet.slot = placement.slot
        packet.offset = placement.offset
        packet.spurt = placement.spurt
        if placement.started:
            self.bye = False
        samples = packet_samples(frame)
        packet.samples = samples if samples else FRAME_SAMPLES
        self.tally.rtp += 1

    def plan(self, tick: int, events: list[Event]) -> Plan | None:
        """Decide what the stream plays in slot ``tick``; appends ``speaking_start``/``speaking_stop`` events."""
        jitter = self.jitter
        head = jitter.peek()
        while head is not None and head.slot < tick:
            jitter.pop()
            self._stats.incr("late", ssrc=self.ssrc, user_id=self.user_id)
            head = jitter.peek()
        if self._carry_slots > 0:
            self._carry_slots -= 1
            self._last_slot = tick
            self._carry_ts += FRAME_SAMPLES
            return Plan(CARRY, (), self._last_wire_seq, self._carry_ts)
        if head is not None and head.slot == tick:
            first, last_seq = head, self._last_seq
            lost_before = (
                self.active and first.spurt == self.spurt and last_seq is not None and first.sequence - last_seq > 1
            )
            packets, head = self._take_packets(tick, first, events)
            lost_after = head is not None and head.spurt == first.spurt and head.sequence - packets[-1].sequence > 1
            return Plan(DECODE, packets, first.wire_sequence, first.timestamp, lost_before, lost_after)
        if not self.active:
            return None
        if head is not None and head.spurt == self.spurt and self._last_seq is not None:
            plan = self._plan_loss(tick, head)
            if plan is not None:
                return plan
        if (
            self.bye
            or (self.leaving and head is None)
            or tick - self._last_slot > self._silence_slots
            or (head is not None and head.spurt != self.spurt)
        ):
            self.active = False
            events.append(self._event("speaking_stop", tick))
        return None

    def _take_packets(
        self, tick: int, first: JitterPacket, events: list[Event]
    ) -> tuple[tuple[JitterPacket, ...], JitterPacket | None]:
        """Take slot ``tick``'s packets (``first`` is the head) out of the buffer and move the stream past them;
        returns them and the packet now at the head."""
        jitter = self.jitter
        jitter.pop()
        last = first
        head = jitter.peek()
        packets: tuple[JitterPacket, ...] = (first,)
        if head is not None and head.slot == tick:
            more = [first]
            while head is not None and head.slot == tick:
                more.append(head)
                jitter.pop()
                head = jitter.peek()
            packets, last = tuple(more), more[-1]
        if not self.active or first.spurt != self.spurt:
            if self.active:
                events.append(self._event("speaking_stop", tick))
            events.append(self._event("speaking_start", tick))
            self.active = True
            self.spurt = first.spurt
            if first.spurt == self.timeline.spurt:
                # The spurt starts playing: its anchor stays (a spurt's id never comes back, so once is enough).
                self.timeline.freeze()
        end = last.offset + last.samples
        if end > FRAME_SAMPLES:
            self._carry_slots = (end - 1) // FRAME_SAMPLES
            self._carry_ts = first.timestamp - first.offset
            self._last_wire_seq = last.wire_sequence
        else:
            self._carry_slots = 0
        self._last_seq = last.sequence
        self._last_samples = last.samples
        self._last_slot = tick
        self._plc_run = 0
        return packets, head

    def _plan_loss(self, tick: int, head: JitterPacket) -> Plan | None:
        """A concealed frame when this empty slot is where a lost packet belonged, else None (a DTX pause)."""
        assert self._last_seq is not None
        missing = head.sequence - self._last_seq - 1
        before_head = head.slot - tick
        slots_per_packet = max(1, -(-self._last_samples // FRAME_SAMPLES))
        if missing <= 0 or missing * slots_per_packet < before_head:
            return None
        sequence = (head.wire_sequence - before_head) & 0xFFFF
        timestamp = head.timestamp - head.offset - before_head * FRAME_SAMPLES
        if before_head == 1:
            kind = FEC
        elif self._plc_run < MAX_PLC_RUN:
            kind = PLC
        else:
            return None
        self._plc_run += 1
        self._last_slot = tick
        return Plan(kind, (head,) if kind == FEC else (), sequence, timestamp)

    def render(self, plan: Plan, tick: int, want_pcm: bool) -> VoiceFrame | None:
        """Turn a plan into the slot's frame, decoding when PCM is wanted. Never raises for bad audio."""
        kind = plan.kind
        if not want_pcm:
            return None if kind == CARRY else self.opus_frame(plan, tick)
        decoder = self.decoder
        if decoder is None:
            decoder = self.decoder = opus.OpusDecoder()
        if kind == CARRY:
            pcm, self._carry = self._carry[:FRAME_BYTES], self._carry[FRAME_BYTES:]
            concealed = False
        elif kind == DECODE:
            packet = plan.packets[0]
            if len(plan.packets) == 1 and not packet.offset and packet.samples == FRAME_SAMPLES:
                # The usual slot: one 20 ms packet that fills it.
                try:
                    pcm = decoder.decode(packet.payload)
                    self.tally.decoded += 1
                    concealed = False
                except OpusError:
                    pcm, concealed = self._undecodable(decoder, packet), True
                if len(pcm) == FRAME_BYTES:
                    self._carry = b""
                    return self._frame(tick, pcm, plan, concealed)
                pcm, concealed = self._finish_slot(decoder, plan, [pcm], len(pcm) // _BYTES_PER_SAMPLE, concealed)
            else:
                pcm, concealed = self._decode_slot(decoder, plan)
        else:
            use_fec = kind == FEC
            try:
                pcm = decoder.decode(plan.packets[0].payload if use_fec else None, fec=use_fec)
            except OpusError:
                use_fec = False
                pcm = decoder.decode(None)
            self._count("fec" if use_fec else "plc")
            concealed = True
        if len(pcm) != FRAME_BYTES:
            pcm = pcm[:FRAME_BYTES] + bytes(max(0, FRAME_BYTES - len(pcm)))
        return self._frame(tick, pcm, plan, concealed)

    def play_opus(self, tick: int, events: list[Event]) -> VoiceFrame | None:
        """:meth:`plan` then :meth:`opus_frame` for a session where no sink wants PCM: the same frames, and a slot
        that plays received packets is made without a plan. Cheap enough to run under the receiver's lock."""
        head = self.jitter.peek()
        if head is None or head.slot != tick or self._carry_slots:
            plan = self.plan(tick, events)
            return None if plan is None or plan.kind == CARRY else self.opus_frame(plan, tick)
        packets, _ = self._take_packets(tick, head, events)
        payloads = (head.payload,) if len(packets) == 1 else tuple(packet.payload for packet in packets)
        self.tally.frames += 1
        return VoiceFrame(
            self.ssrc,
            self.user_id,
            tick,
            b"",
            head.payload,
            head.wire_sequence,
            head.timestamp & 0xFFFFFFFF,
            False,
            payloads,
        )

    def opus_frame(self, plan: Plan, tick: int) -> VoiceFrame:
        """The slot's frame without PCM (a sink that wants Opus only), for any plan but ``CARRY``; cheap enough to
        make under the receiver's lock."""
        if plan.kind == DECODE:
            return self._frame(tick, b"", plan, False)
        self._count("lost")
        return self._frame(tick, b"", plan, True)

    def _decode_slot(self, decoder: opus.OpusDecoder, plan: Plan) -> tuple[bytes, bool]:
        """Decode the slot's packets in order; samples missing between them are concealed when lost, else silent."""
        parts: list[bytes] = []
        cursor = 0
        previous: int | None = None
        concealed = False
        for packet in plan.packets:
            if packet.offset > cursor:
                lost = plan.lost_before if previous is None else packet.sequence - previous > 1
                parts.append(self._fill(decoder, packet.offset - cursor, lost))
                concealed |= lost
            pcm, failed = self._decode_packet(decoder, packet)
            concealed |= failed
            parts.append(pcm)
            cursor = max(cursor, packet.offset) + len(pcm) // _BYTES_PER_SAMPLE
            previous = packet.sequence
        return self._finish_slot(decoder, plan, parts, cursor, concealed)

    def _decode_packet(self, decoder: opus.OpusDecoder, packet: JitterPacket) -> tuple[bytes, bool]:
        """The packet's PCM, or PLC of its length (and True) when libopus rejects it (counted)."""
        try:
            pcm = decoder.decode(packet.payload)
        except OpusError:
            return self._undecodable(decoder, packet), True
        self.tally.decoded += 1
        return pcm, False

    def _undecodable(self, decoder: opus.OpusDecoder, packet: JitterPacket) -> bytes:
        """PLC of the packet's length for a packet libopus rejects (counted)."""
        self._count("opus_error")
        return decoder.decode(None, frame_samples=_plc_size(packet.samples))

    def _finish_slot(
        self, decoder: opus.OpusDecoder, plan: Plan, parts: list[bytes], cursor: int, concealed: bool
    ) -> tuple[bytes, bool]:
        """Fill the slot after ``cursor`` samples, keep what runs past it for the next slots (carry)."""
        if cursor < FRAME_SAMPLES:
            parts.append(self._fill(decoder, FRAME_SAMPLES - cursor, plan.lost_after))
            concealed |= plan.lost_after
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._carry = out[FRAME_BYTES:]
        return out[:FRAME_BYTES], concealed

    def _fill(self, decoder: opus.OpusDecoder, samples: int, lost: bool) -> bytes:
        """``samples`` of PLC when they were lost, of silence when the sender sent nothing."""
        if not lost:
            return bytes(samples * _BYTES_PER_SAMPLE)
        self._count("plc")
        concealable = samples // _PLC_GRANULE * _PLC_GRANULE
        pcm = decoder.decode(None, frame_samples=concealable) if concealable else b""
        return pcm + bytes((samples - concealable) * _BYTES_PER_SAMPLE)

    def _frame(self, tick: int, pcm: bytes, plan: Plan, concealed: bool) -> VoiceFrame:
        self.tally.frames += 1
        if plan.kind != DECODE:
            packets: tuple[bytes, ...] = ()
        elif len(plan.packets) == 1:
            packets = (plan.packets[0].payload,)
        else:
            packets = tuple(packet.payload for packet in plan.packets)
        return VoiceFrame(
            self.ssrc,
            self.user_id,
            tick,
            pcm,
            packets[0] if packets else None,
            plan.sequence,
            plan.timestamp & 0xFFFFFFFF,
            concealed,
            packets,
        )

    def _count(self, reason: str) -> None:
        self._stats.incr(reason, ssrc=self.ssrc, user_id=self.user_id)

    def _event(self, name: str, tick: int) -> Event:
        return name, {"user_id": self.user_id, "ssrc": self.ssrc, "tick": tick}


def _plc_size(samples: int) -> int:
    return max(_PLC_GRANULE, min(samples, opus.MAX_FRAME_SAMPLES) // _PLC_GRANULE * _PLC_GRANULE)
