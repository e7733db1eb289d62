"""The end-to-end (DAVE) hold: remove the E2EE layer from each frame, holding a frame whose key may still come.

Each frame is held on its own, so one frame waiting for its key never delays the frames after it. Whether a key can
still come is the decryptor's call (:class:`~discord_voicerecv.receive.dave.DaveFrameDecryptor` says no when there
is no DAVE session); the hold only bounds how long and how many frames wait. davey refuses, for good, a frame older
than the first one a new key decrypted, so the first frame to meet new keys must be the oldest: a sender's held
frames are retried in RTP sequence order, together with their next frame once the keys changed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from ..errors import E2EEDecryptError
from ..frames import OPUS_SILENCE
from .ingress import RtpPacket
from .stats import ReceiveStats

__all__ = ("E2EEHold", "FrameDecryptor")

_log = logging.getLogger(__name__)

_WINDOW = 1.0
"""Seconds a frame may wait for its key, from its arrival."""
_PER_USER = 50


class FrameDecryptor(Protocol):
    """The end-to-end (DAVE) layer, supplied by the client glue.

    ``decrypt`` returns the plain Opus frame, ``None`` when the frame cannot be decrypted *yet* (it is held and
    retried for about a second), or raises :class:`~discord_voicerecv.errors.E2EEDecryptError` to drop it. A
    decryptor may also define ``forget_user(user_id)``, called when a user leaves; ``keys()``, a value that
    changes whenever its keys do (without it, held frames are retried with every new frame of their sender); and
    ``decrypt_at(user_id, frame, now)``, used instead of ``decrypt``, given the receive-clock time the hold acts at
    (the frame's arrival, or the release time for a held frame).
    """

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None: ...


class E2EEHold:
    """Decrypts frames per sender and holds, per frame, those that cannot be decrypted yet."""

    __slots__ = ("_decrypt_at", "_decryptor", "_held", "_keys", "_ready", "_stats", "_tried")

    def __init__(self, decryptor: FrameDecryptor, stats: ReceiveStats) -> None:
        self._decryptor = decryptor
        self._stats = stats
        self._keys: Callable[[], object] | None = getattr(decryptor, "keys", None)
        self._decrypt_at: Callable[[int, bytes, float], bytes | None] | None = getattr(decryptor, "decrypt_at", None)
        self._held: dict[int, deque[RtpPacket]] = {}
        self._tried: dict[int, object] = {}
        """Per user with held frames: the decryptor's keys when they were last retried."""
        self._ready: list[tuple[int, RtpPacket, bytes]] = []
        """Held frames that decrypted when a newer frame of their sender came; handed out by the next release."""

    def __len__(self) -> int:
        return len(self._ready) + sum(len(queue) for queue in self._held.values())

    def users(self) -> set[int]:
        """Users with frames held."""
        return set(self._held) | {user_id for user_id, _, _ in self._ready}

    def open(self, user_id: int, packet: RtpPacket) -> bytes | None:
        """The plain frame; None when the frame was held or dropped (counted)."""
        payload = packet.payload
        if payload == OPUS_SILENCE:
            return payload
        if user_id in self._held and (self._keys is None or self._tried.get(user_id) != self._keys()):
            return self._open_with_held(user_id, packet)
        plain = self._decrypt(user_id, packet, packet.arrival)
        if plain is None:
            self._hold(user_id, packet)
            return None
        return plain or None

    def _open_with_held(self, user_id: int, packet: RtpPacket) -> bytes | None:
        """Retry the user's held frames together with the new one, in sequence order (the new one may be older than
        some of them); the new frame's plain frame, the others' for the next release."""
        self._enqueue(user_id, packet)
        plain = None
        for item in self._retry(user_id, packet.arrival, None):
            if item[1] is packet:
                plain = item[2]
            else:
                self._ready.append(item)
        if plain is None and any(held is packet for held in self._held.get(user_id, ())):
            self._stats.incr("e2ee_held", ssrc=packet.ssrc, user_id=user_id)
        return plain

    def release(self, now: float, owner: Callable[[int], int | None]) -> list[tuple[int, RtpPacket, bytes]]:
        """Retry every held frame; returns ``(user_id, packet, plain)`` for those that decrypted, oldest first.

        Frames older than the window, or whose SSRC no longer belongs to the user (``owner(ssrc)``), expire.
        """
        out, self._ready = self._ready, []
        for user_id in list(self._held):
            out += self._retry(user_id, now, owner)
        return out

    def forget(self, user_id: int) -> int:
        """Drop a departed user's held frames (returned as a count) and the decryptor's state for them."""
        queue = self._held.pop(user_id, None)
        self._tried.pop(user_id, None)
        ready = len(self._ready)
        self._ready = [item for item in self._ready if item[0] != user_id]
        forget_user: Callable[[int], None] | None = getattr(self._decryptor, "forget_user", None)
        if forget_user is not None:
            forget_user(user_id)
        return (len(queue) if queue else 0) + ready - len(self._ready)

    def drop_ssrc(self, ssrc: int) -> int:
        """Drop the held frames of one SSRC; returns how many."""
        dropped = len(self._ready)
        self._ready = [item for item in self._ready if item[1].ssrc != ssrc]
        dropped -= len(self._ready)
        for user_id, queue in list(self._held.items()):
            keep = deque(packet for packet in queue if packet.ssrc != ssrc)
            dropped += len(queue) - len(keep)
            if keep:
                self._held[user_id] = keep
            else:
                del self._held[user_id]
                self._tried.pop(user_id, None)
        return dropped

    def _retry(
        self, user_id: int, now: float, owner: Callable[[int], int | None] | None
    ) -> list[tuple[int, RtpPacket, bytes]]:
        """Retry the user's held frames, oldest first by sequence; returns those that decrypted. Frames older than the
        window, or whose SSRC no longer belongs to the user (when ``owner`` is given), expire."""
        out: list[tuple[int, RtpPacket, bytes]] = []
        keep: deque[RtpPacket] = deque()
        if self._keys is not None:
            self._tried[user_id] = self._keys()
        for packet in _in_sequence(self._held.pop(user_id)):
            if now - packet.arrival > _WINDOW or (owner is not None and owner(packet.ssrc) != user_id):
                self._stats.incr("e2ee_expired", user_id=user_id)
                continue
            plain = self._decrypt(user_id, packet, now)
            if plain is None:
                keep.append(packet)
            elif plain:
                out.append((user_id, packet, plain))
        if keep:
            self._held[user_id] = keep
        else:
            self._tried.pop(user_id, None)
        return out

    def _hold(self, user_id: int, packet: RtpPacket) -> None:
        self._enqueue(user_id, packet)
        self._stats.incr("e2ee_held", ssrc=packet.ssrc, user_id=user_id)

    def _enqueue(self, user_id: int, packet: RtpPacket) -> None:
        """Add to the user's held frames; the oldest expires when they are full."""
        queue = self._held.get(user_id)
        if queue is None:
            queue = self._held[user_id] = deque()
        if len(queue) >= _PER_USER:
            queue.popleft()
            self._stats.incr("e2ee_expired", user_id=user_id)
        queue.append(packet)

    def _decrypt(self, user_id: int, packet: RtpPacket, now: float) -> bytes | None:
        """Plain frame, None for "not yet", or b"" when the frame was dropped (counted)."""
        try:
            if self._decrypt_at is not None:
                return self._decrypt_at(user_id, packet.payload, now)
            return self._decryptor.decrypt(user_id, packet.payload)
        except E2EEDecryptError as exc:
            self._stats.incr("e2ee_failed:" + exc.reason, ssrc=packet.ssrc, user_id=user_id)
        except Exception:
            _log.debug("DAVE decryptor raised", exc_info=True)
            self._stats.incr("e2ee_failed:error", ssrc=packet.ssrc, user_id=user_id)
        return b""


def _in_sequence(queue: deque[RtpPacket]) -> Iterable[RtpPacket]:
    """One sender's held frames by RTP sequence (a wrap counts as later); arrival order when they span SSRCs."""
    if len(queue) < 2:
        return queue
    ssrc, base = queue[0].ssrc, queue[0].sequence - 0x8000
    if any(packet.ssrc != ssrc for packet in queue):
        return queue
    return sorted(queue, key=lambda packet: (packet.sequence - base) & 0xFFFF)
