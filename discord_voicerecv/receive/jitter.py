"""Per-SSRC jitter buffer: reorder, deduplicate and bound the packets of one RTP stream.

Pure: no clocks, no threads. Sequence numbers (16 bits) and timestamps (32 bits) wrap; the buffer extends them to
unbounded counters so ordering and arithmetic work across the wrap.
"""

from __future__ import annotations

import enum
from bisect import insort
from collections.abc import Iterator

from ..frames import FRAME_SAMPLES

__all__ = ("DEFAULT_CAPACITY", "Drop", "JitterBuffer", "JitterPacket")

DEFAULT_CAPACITY = 250
"""Packets kept per stream: 5 s of 20 ms frames, enough for a mapping delay plus the playout delay."""

_SEQ_MOD = 1 << 16
_SEQ_HALF = 1 << 15
_TS_MOD = 1 << 32
_TS_HALF = 1 << 31
_HISTORY_BITS = 64
_HISTORY_MASK = (1 << _HISTORY_BITS) - 1


class Drop(enum.Enum):
    """Why :meth:`JitterBuffer.insert` refused a packet."""

    DUPLICATE = "duplicate"
    """The same sequence number is buffered or was played recently."""
    LATE = "late"
    """The sequence number is older than the last packet played out."""
    OVERFLOW = "buffer_overflow"
    """The buffer was full and this packet was the oldest, so it was the one dropped."""


class JitterPacket:
    """One buffered packet with its unwrapped ``sequence`` and ``timestamp`` and its ``wire_sequence``.

    ``slot``, ``offset``, ``spurt`` and ``samples`` are filled in by the stream's playout (timeline slot, samples
    into that slot, talk-spurt id, samples per channel the payload decodes to).
    """

    __slots__ = ("arrival", "offset", "payload", "samples", "sequence", "slot", "spurt", "timestamp", "wire_sequence")

    def __init__(self, sequence: int, timestamp: int, payload: bytes, arrival: float, wire_sequence: int) -> None:
        self.sequence = sequence
        self.timestamp = timestamp
        self.payload = payload
        self.arrival = arrival
        self.wire_sequence = wire_sequence
        self.slot = 0
        self.offset = 0
        self.spurt = 0
        self.samples = FRAME_SAMPLES

    def __repr__(self) -> str:
        return f"<JitterPacket seq={self.sequence} ts={self.timestamp} slot={self.slot} len={len(self.payload)}>"


class JitterBuffer:
    """Reorders one stream's packets by sequence number and hands them out oldest first.

    Parameters
    ----------
    capacity:
        Packets held at most; when a flood exceeds it the oldest is dropped and counted in :attr:`overflow`.
    resync_after:
        A stream whose sequence numbers jump far backwards (a sender restart) is re-synchronised after this many
        consecutive such packets; fewer are dropped as late, so a replayed old packet cannot reset the stream.
    resync_distance:
        How far behind the newest packet a sequence number must be to count as such a jump.
    """

    __slots__ = (
        "_history",
        "_keys",
        "_last_played",
        "_packets",
        "_resync_count",
        "_resync_raw",
        "_seq_shift",
        "_ts_ref",
        "capacity",
        "duplicates",
        "highest",
        "late",
        "overflow",
        "resync_after",
        "resync_distance",
        "resyncs",
    )

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, resync_after: int = 3, resync_distance: int = 1000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.resync_after = resync_after
        self.resync_distance = resync_distance
        self._keys: list[int] = []
        self._packets: dict[int, JitterPacket] = {}
        self.highest: int | None = None
        """Unwrapped sequence number of the newest packet accepted."""
        self._last_played: int | None = None
        self._history = 0
        self._ts_ref: int | None = None
        self._seq_shift = 0
        self._resync_raw = -1
        self._resync_count = 0
        self.duplicates = 0
        self.late = 0
        self.overflow = 0
        self.resyncs = 0

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[JitterPacket]:
        return (self._packets[key] for key in self._keys)

    def insert(self, sequence: int, timestamp: int, payload: bytes, arrival: float) -> JitterPacket | Drop:
        """Buffer a packet given its wire ``sequence`` (16 bits) and ``timestamp`` (32 bits).

        Returns the buffered :class:`JitterPacket`, or the :class:`Drop` reason when the packet is a duplicate,
        arrived after its turn, or was evicted at once by a full buffer. Every eviction, of this packet or an
        older one, adds to :attr:`overflow`. Sequence numbers are unwrapped nearest the newest packet, timestamps
        nearest the last packet inserted.
        """
        highest = self.highest
        raw = (sequence + self._seq_shift) & 0xFFFF
        ext = raw if highest is None else highest + ((raw - highest + _SEQ_HALF) % _SEQ_MOD) - _SEQ_HALF
        keys = self._keys
        if highest is None or ext > highest:
            # Newer than every packet so far (the usual case): neither a duplicate, nor late, nor a restart.
            self._resync_count = 0
            self.highest = ext
            keys.append(ext)
        else:
            if ext in self._packets:
                self.duplicates += 1
                return Drop.DUPLICATE
            if highest - ext > self.resync_distance:
                if not self._resync_candidate(sequence):
                    self.late += 1
                    return Drop.LATE
                self._seq_shift = (highest + 1 - sequence) & 0xFFFF
                self.resyncs += 1
                ext = self.highest = highest + 1
                keys.append(ext)
            else:
                self._resync_count = 0
                last = self._last_played
                if last is not None and ext <= last:
                    if last - ext < _HISTORY_BITS and self._history >> (last - ext) & 1:
                        self.duplicates += 1
                        return Drop.DUPLICATE
                    self.late += 1
                    return Drop.LATE
                insort(keys, ext)
        ts_ref = self._ts_ref
        if ts_ref is not None:
            timestamp = ts_ref + ((timestamp - ts_ref + _TS_HALF) % _TS_MOD) - _TS_HALF
        packet = JitterPacket(ext, timestamp, payload, arrival, sequence)
        self._ts_ref = timestamp
        self._packets[ext] = packet
        if len(keys) > self.capacity:
            oldest = self.pop()
            self.overflow += 1
            if oldest is packet:
                return Drop.OVERFLOW
        return packet

    def _resync_candidate(self, sequence: int) -> bool:
        """Track consecutive far-behind sequence numbers; True once enough say the sender restarted."""
        if self._resync_count and sequence == (self._resync_raw + 1) & 0xFFFF:
            self._resync_count += 1
        else:
            self._resync_count = 1
        self._resync_raw = sequence
        if self._resync_count >= self.resync_after:
            self._resync_count = 0
            return True
        return False

    def pop(self) -> JitterPacket | None:
        """Remove and return the oldest buffered packet; older packets arriving later are refused as late."""
        keys = self._keys
        if not keys:
            return None
        ext = keys.pop(0)
        last = self._last_played
        if last is None or ext - last >= _HISTORY_BITS:
            self._history = 1
        else:
            self._history = ((self._history << (ext - last)) | 1) & _HISTORY_MASK
        self._last_played = ext
        return self._packets.pop(ext)

    def peek(self) -> JitterPacket | None:
        """The oldest buffered packet, left in place."""
        return self._packets[self._keys[0]] if self._keys else None

    def remove(self, packet: JitterPacket) -> bool:
        """Take ``packet`` out without marking it played (the receiver refused it after insertion)."""
        if self._packets.get(packet.sequence) is not packet:
            return False
        del self._packets[packet.sequence]
        self._keys.remove(packet.sequence)
        return True
