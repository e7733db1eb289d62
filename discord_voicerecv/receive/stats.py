"""Receive counters: every packet the receiver drops is counted under a reason, never lost silently."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ("REASONS", "PacketTally", "ReceiveStats", "StatsSnapshot", "StreamTally")

REASONS = (
    "packets",
    "bytes",
    "rtp",
    "rtcp",
    "rtcp_bye",
    "ip_discovery",
    "not_listening",
    "no_transport_key",
    "decrypt_failed",
    "ignored_ssrc",
    "ignored_payload_type",
    "unknown_ssrc_held",
    "unknown_ssrc_dropped",
    "unknown_ssrc_expired",
    "e2ee_held",
    "e2ee_expired",
    "duplicate",
    "late",
    "late_shift",
    "forgotten",
    "buffer_overflow",
    "decoded",
    "fec",
    "plc",
    "lost",
    "opus_error",
    "frames",
    "sink_queue_full",
    "inbox_full",
    "sink_error",
    "internal_error",
)
"""Counter names always present in a snapshot (at 0 when nothing happened). Prefixed families are added as seen:
``malformed:<reason>`` (header, padding, oversized...) and ``e2ee_failed:<reason>`` (from the DAVE layer)."""


class StatsSnapshot(Mapping[str, int]):
    """A frozen copy of the counters, with per-SSRC and per-user sub-counts.

    It is a read-only mapping of counter name to count; :attr:`by_ssrc` and :attr:`by_user` hold the counters the
    receiver attributes to one stream (``decoded``, ``fec``, ``plc``, ``late``...).
    """

    __slots__ = ("_totals", "by_ssrc", "by_user")

    def __init__(
        self, totals: dict[str, int], by_ssrc: dict[int, dict[str, int]], by_user: dict[int, dict[str, int]]
    ) -> None:
        self._totals = MappingProxyType(totals)
        self.by_ssrc: Mapping[int, Mapping[str, int]] = MappingProxyType(
            {k: MappingProxyType(v) for k, v in by_ssrc.items()}
        )
        self.by_user: Mapping[int, Mapping[str, int]] = MappingProxyType(
            {k: MappingProxyType(v) for k, v in by_user.items()}
        )

    def __getitem__(self, key: str) -> int:
        return self._totals[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._totals)

    def __len__(self) -> int:
        return len(self._totals)

    def dropped(self) -> int:
        """Packets and frames dropped for any reason (sum of every counter that is a drop)."""
        drops = (
            "decrypt_failed",
            "no_transport_key",
            "unknown_ssrc_dropped",
            "unknown_ssrc_expired",
            "e2ee_expired",
            "duplicate",
            "late",
            "buffer_overflow",
            "forgotten",
            "ignored_payload_type",
            "inbox_full",
        )
        total = sum(self._totals.get(name, 0) for name in drops)
        return total + sum(v for k, v in self._totals.items() if k.startswith(("malformed:", "e2ee_failed:")))

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dicts, for logging or JSON: the totals plus ``"by_ssrc"`` and ``"by_user"``."""
        out: dict[str, Any] = dict(self._totals)
        out["by_ssrc"] = {ssrc: dict(c) for ssrc, c in self.by_ssrc.items()}
        out["by_user"] = {user: dict(c) for user, c in self.by_user.items()}
        return out

    def __repr__(self) -> str:
        nonzero = {k: v for k, v in self._totals.items() if v}
        return f"<StatsSnapshot {nonzero}>"


_TALLIED = ("rtp", "decoded", "frames")
_RECEIVED = ("packets", "bytes")


class StreamTally:
    """The counters every packet of one stream bumps (``rtp``, ``decoded``, ``frames``), as plain attributes.

    Counting a packet this way costs an attribute increment instead of a locked update of three dicts. Each field
    has one writer at a time (the thread running the receiver's playout), so no increment is lost;
    :meth:`ReceiveStats.snapshot` adds the tallies in.
    """

    __slots__ = ("decoded", "frames", "rtp", "ssrc", "user_id")

    def __init__(self, ssrc: int, user_id: int) -> None:
        self.ssrc = ssrc
        self.user_id = user_id
        self.rtp = 0
        self.decoded = 0
        self.frames = 0


class PacketTally:
    """Datagrams and bytes opened by ingress, as plain attributes bumped without a lock (like :class:`StreamTally`:
    one thread at a time opens datagrams); :meth:`ReceiveStats.snapshot` adds them in."""

    __slots__ = ("bytes", "packets")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0


class ReceiveStats:
    """Counters updated by the receiver's threads and copied by :meth:`snapshot` from any thread.

    Increments take a lock: two threads (socket and playout) count into the same object, and ``+=`` on a dict
    item is not atomic across threads. The per-packet counters go through :meth:`tally` and :attr:`received`
    instead.
    """

    __slots__ = ("_by_ssrc", "_by_user", "_lock", "_tallies", "_totals", "received")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._by_ssrc: dict[int, dict[str, int]] = {}
        self._by_user: dict[int, dict[str, int]] = {}
        self._tallies: dict[tuple[int, int], StreamTally] = {}
        self.received = PacketTally()
        """Datagrams counted by the thread that opens them; the other threads use :meth:`add_packet`."""

    def tally(self, ssrc: int, user_id: int) -> StreamTally:
        """The lock-free hot counters of ``ssrc`` while it belongs to ``user_id`` (the same object every call)."""
        with self._lock:
            tally = self._tallies.get((ssrc, user_id))
            if tally is None:
                tally = self._tallies[(ssrc, user_id)] = StreamTally(ssrc, user_id)
            return tally

    def incr(self, reason: str, n: int = 1, *, ssrc: int | None = None, user_id: int | None = None) -> None:
        """Add ``n`` to ``reason``, and to the stream's sub-counts when ``ssrc``/``user_id`` are given."""
        with self._lock:
            totals = self._totals
            totals[reason] = totals.get(reason, 0) + n
            if ssrc is not None:
                sub = self._by_ssrc.get(ssrc)
                if sub is None:
                    sub = self._by_ssrc[ssrc] = {}
                sub[reason] = sub.get(reason, 0) + n
            if user_id is not None:
                sub = self._by_user.get(user_id)
                if sub is None:
                    sub = self._by_user[user_id] = {}
                sub[reason] = sub.get(reason, 0) + n

    def add_packet(self, size: int) -> None:
        """Count one received datagram of ``size`` bytes."""
        with self._lock:
            self._totals["packets"] += 1
            self._totals["bytes"] += size

    def forget_ssrc(self, ssrc: int) -> None:
        """Drop the sub-counts of a stream that went away, so they cannot grow without bound.

        Its tallies are folded into the totals and per-user counts; the stream must not bump them afterwards.
        """
        with self._lock:
            for key in [key for key in self._tallies if key[0] == ssrc]:
                tally = self._tallies.pop(key)
                _add_tally(tally, self._totals, None, self._by_user)
            self._by_ssrc.pop(ssrc, None)

    def forget_user(self, user_id: int) -> None:
        """Drop the per-user sub-counts of a user who left (their streams must be forgotten first); the totals
        keep everything they counted."""
        with self._lock:
            self._by_user.pop(user_id, None)

    def __getitem__(self, key: str) -> int:
        with self._lock:
            total = self._totals.get(key, 0)
            if key in _RECEIVED:
                total += getattr(self.received, key)
            elif key in _TALLIED:
                total += sum(getattr(tally, key) for tally in self._tallies.values())
            return total

    def snapshot(self) -> StatsSnapshot:
        """A consistent frozen copy of every counter."""
        with self._lock:
            totals = dict(self._totals)
            by_ssrc = {k: dict(v) for k, v in self._by_ssrc.items()}
            by_user = {k: dict(v) for k, v in self._by_user.items()}
            for tally in self._tallies.values():
                _add_tally(tally, totals, by_ssrc, by_user)
            totals["packets"] += self.received.packets
            totals["bytes"] += self.received.bytes
            return StatsSnapshot(totals, by_ssrc, by_user)

    def as_dict(self) -> dict[str, Any]:
        """Shortcut for ``snapshot().as_dict()``."""
        return self.snapshot().as_dict()


def _add_tally(
    tally: StreamTally,
    totals: dict[str, int],
    by_ssrc: dict[int, dict[str, int]] | None,
    by_user: dict[int, dict[str, int]],
) -> None:
    for name in _TALLIED:
        n: int = getattr(tally, name)
        if not n:
            continue
        totals[name] = totals.get(name, 0) + n
        if by_ssrc is not None:
            sub = by_ssrc.setdefault(tally.ssrc, {})
            sub[name] = sub.get(name, 0) + n
        sub = by_user.setdefault(tally.user_id, {})
        sub[name] = sub.get(name, 0) + n
