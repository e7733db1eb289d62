"""Receive side of DAVE: remove the end-to-end layer from each Opus frame with discord.py's davey session.

The decryptor runs on the socket reader thread while discord.py drives the same ``davey.DaveSession`` on the event
loop (commits, welcomes, re-initialisation, passthrough changes). davey 0.1.x holds the GIL for the whole of every
call and never releases it, so calls from the two threads are serialised and cannot observe a half-applied
commit; ``tests/test_dave.py`` hammers one session from both sides to keep that true. A ``RuntimeError`` from
davey (PyO3's "already borrowed", possible only if a future build released the GIL) is still handled: the frame is
held and retried like a frame whose key has not arrived, never decoded and never dropped at once.

The frame format (after the transport layer): ``media | tag (8) | nonce (ULEB128) | unencrypted ranges (ULEB128
offset/size pairs) | supplemental size (1 byte, counting everything after the media) | magic 0xFAFA``.

A sender's nonces restart at 1 with each key ratchet (each epoch), and davey starts a ratchet's replay window at the
first nonce it decrypts, refusing older ones for good. So the first frames of a ratchet are decrypted in nonce
order: a frame with a small nonce whose predecessors have not come is put off (briefly: ``_ORDER_WAIT``) in case an
older one was merely overtaken on the network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import E2EEDecryptError
from ..frames import OPUS_SILENCE

if TYPE_CHECKING:
    import davey

__all__ = ("DAVE_MAGIC", "DaveFrameDecryptor", "is_dave_frame")

_log = logging.getLogger(__name__)

DAVE_MAGIC = b"\xfa\xfa"
"""Every DAVE-encrypted frame ends with this marker."""
_TAG_SIZE = 8
_MIN_SUPPLEMENTAL = _TAG_SIZE + 1 + 1 + len(DAVE_MAGIC)
"""Tag, a one-byte nonce, the size byte and the magic."""
_MAX_ULEB128 = 10

_NO_DECRYPTOR = "NoDecryptorForUser"
_PLAINTEXT = "UnencryptedWhenPassthroughDisabled"
_NO_CRYPTOR = "NoValidCryptorFound"
_MAX_RECOVERY_INTERVAL = 120.0
_RECENT_FRAMES = 64
_ORDER_NONCES = 16
"""Nonces from the start of a key ratchet that are decrypted in order (below 0x80: a one-byte ULEB128)."""
_ORDER_WAIT = 0.04
"""Seconds a frame from the start of a ratchet may wait for the older frames of that ratchet (two frames' time)."""
_ORDER_STALE = 0.25
"""Seconds after which a waiting frame that was not offered again is forgotten (the hold dropped it)."""
_NOT_STARTED = object()


def is_dave_frame(frame: bytes) -> bool:
    """True when ``frame`` ends with a well-formed DAVE trailer (not merely the two magic bytes, which end about
    one plaintext Opus frame in 65,536)."""
    n = len(frame)
    if n < _MIN_SUPPLEMENTAL or frame[-2:] != DAVE_MAGIC:
        return False
    size = frame[-3]
    if size < _MIN_SUPPLEMENTAL or size > n:
        return False
    media = n - size
    end = n - 3
    pos = _skip_uleb128(frame, media + _TAG_SIZE, end)
    covered = 0
    while 0 <= pos < end:
        offset, pos = _read_uleb128(frame, pos, end)
        length, pos = _read_uleb128(frame, pos, end)
        if pos < 0 or offset < covered or offset + length > media:
            return False
        covered = offset + length
    return pos == end


def _read_uleb128(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The value at ``pos`` and the position after it; position -1 when it runs past ``end`` or is too long."""
    value = shift = 0
    for i in range(pos, min(end, pos + _MAX_ULEB128)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return 0, -1


def _skip_uleb128(data: bytes, pos: int, end: int) -> int:
    return _read_uleb128(data, pos, end)[1] if pos < end else -1


class _UserCounters:
    """What happened to one sender's frames, its current run of authentication failures, and its latest frames.

    ``recent`` maps the last few decrypted frames to their plaintext: davey rejects a nonce it has seen (replay
    protection), so a duplicated packet would otherwise count as an authentication failure. ``waited`` holds the
    frames put off because we had no key for the sender at all (we were not in its group yet): one that then fails
    authentication was most likely sent in an epoch we never had, but it may also belong to an epoch our session is
    one commit short of, so it is held like any failing frame, on its own clock, and its failure does not count
    towards a recovery. ``failing`` holds when each frame now failing authentication first failed, and under which
    keys: each frame is held on its own, until it or the sender's unbroken run of failures (``streak_start``, ended
    by any success) is older than the hold; new keys (an epoch change) start both again, so a frame that beat our
    commit is retried with the keys it needs. ``early`` holds the frames from the start of a key ratchet put off
    until the older ones come (nonce, first and last offered), ``seen`` the small nonces offered (a bit each) under
    the keys ``seen_keys``, and ``started`` the keys under which the sender's current ratchet had a frame decrypted.
    """

    __slots__ = (
        "consecutive",
        "counts",
        "early",
        "failing",
        "next_recovery",
        "recent",
        "recovery_interval",
        "seen",
        "seen_keys",
        "started",
        "streak_keys",
        "streak_start",
        "waited",
    )

    def __init__(self, recovery_interval: float) -> None:
        self.counts: dict[str, int] = {}
        self.recent: dict[bytes, bytes] = {}
        self.waited: dict[bytes, None] = {}
        self.failing: dict[bytes, tuple[float, bytes | None]] = {}
        self.early: dict[bytes, tuple[int, float, float]] = {}
        self.started: object = _NOT_STARTED
        self.seen = 0
        self.seen_keys: object = _NOT_STARTED
        self.streak_start: float | None = None
        self.streak_keys: bytes | None = None
        self.consecutive = 0
        self.next_recovery = 0.0
        self.recovery_interval = recovery_interval

    def add(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


class DaveFrameDecryptor:
    """Decrypts frames per sender with the session discord.py owns; tells "not yet" from "never".

    ``decrypt`` returns the plain frame; None when the frame may decrypt shortly (the sender is not in our group
    yet, a commit is in flight, or this frame just started failing: the receiver holds it and retries); or raises
    :class:`E2EEDecryptError` for a frame that must be dropped (``"auth"``: tampered or a key we will not get;
    ``"plaintext"``: unencrypted outside a passthrough window). Frames are never passed on undecrypted except
    Opus silence and plaintext inside a passthrough window (protocol version 0, or a downgrade until the upgrade
    executes). Without a session there is no key to wait for: plaintext passes (protocol version 0) and a DAVE
    frame is dropped (``"no_session"``).

    When one sender's frames keep failing authentication while our session is ready and lists that sender, our
    MLS state has diverged from the group's: ``on_recover(user_id)`` is called so the client can send op31 and
    re-join, as the DAVE protocol prescribes for a commit or welcome that cannot be processed. Recoveries are at
    least ``recover_interval`` seconds apart, and the interval doubles (up to two minutes) for a sender that
    keeps failing after one, so a broken or hostile sender cannot make us re-join in a loop.

    Parameters
    ----------
    get_session / get_version / get_downgraded:
        Read discord.py's session, negotiated protocol version and downgrade flag on every call: discord.py
        creates, re-initialises and downgrades the session at any time.
    on_recover:
        Called on the decrypting thread with the failing sender's id; must not block.
    hold:
        Seconds a frame is held after its first authentication failure under the keys we hold before it counts
        as failed (covers a sender that switched to a new epoch's key a moment before our commit arrived); new
        keys give it another hold. The receiver's hold bounds the total (a second from arrival).
    commit_hold:
        The same while our session waits for a commit it proposed (status ``awaiting_response``).
    recover_after:
        Consecutive dropped authentication failures of one sender that trigger a recovery.
    recover_interval:
        Minimum seconds between recoveries.
    clock:
        Monotonic clock in seconds.
    """

    __slots__ = (
        "_clock",
        "_commit_hold",
        "_get_downgraded",
        "_get_session",
        "_get_version",
        "_hold",
        "_last_recovery",
        "_lock",
        "_media_audio",
        "_on_recover",
        "_recover_after",
        "_recover_interval",
        "_status_awaiting",
        "_users",
        "recoveries",
    )

    def __init__(
        self,
        get_session: Callable[[], davey.DaveSession | None],
        get_version: Callable[[], int],
        *,
        get_downgraded: Callable[[], bool] | None = None,
        on_recover: Callable[[int], None] | None = None,
        hold: float = 0.06,
        commit_hold: float = 0.3,
        recover_after: int = 10,
        recover_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import davey

        self._get_session = get_session
        self._get_version = get_version
        self._get_downgraded = get_downgraded
        self._on_recover = on_recover
        self._hold = hold
        self._commit_hold = max(hold, commit_hold)
        self._recover_after = max(1, recover_after)
        self._recover_interval = recover_interval
        self._clock = clock
        self._media_audio = davey.MediaType.audio
        self._status_awaiting = davey.SessionStatus.awaiting_response
        self._users: dict[int, _UserCounters] = {}
        self._lock = threading.Lock()
        self._last_recovery: float | None = None
        self.recoveries = 0
        """Recoveries requested through ``on_recover`` so far."""

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        return self.decrypt_at(user_id, frame, None)

    def decrypt_at(self, user_id: int, frame: bytes, now: float | None) -> bytes | None:
        """:meth:`decrypt` at receive-clock time ``now`` (default: our clock): the E2EE hold gives the time it acts
        at, so that a frame's wait for older ones is measured between arrivals, not between batches of work."""
        if frame == OPUS_SILENCE:
            return frame
        known = self._users.get(user_id)
        if known is not None and frame in known.recent:
            self._count(user_id, "duplicate")
            return known.recent[frame]
        session = self._get_session()
        encrypted = is_dave_frame(frame)
        if session is None:
            if encrypted and self._get_version() != 0:
                self._count(user_id, "failed:no_session")
                raise E2EEDecryptError("no_session", "a DAVE frame while we have no DAVE session")
            return frame
        if not encrypted and (self._get_version() == 0 or self._downgraded()):
            self._count(user_id, "passthrough")
            return frame
        ordered = False
        if encrypted:
            nonce = frame[len(frame) - frame[-3] + _TAG_SIZE]  # the nonce's first byte: the nonce itself when small
            if nonce <= _ORDER_NONCES or (known is not None and known.early):
                if self._put_off(session, user_id, frame, nonce, self._clock() if now is None else now):
                    return None
                ordered = nonce <= _ORDER_NONCES
        try:
            plain = bytes(session.decrypt(user_id, self._media_audio, frame))
        except ValueError as exc:
            return self._failed(session, user_id, frame, encrypted, exc)
        except RuntimeError as exc:
            _log.debug("davey raised %r for user %s; holding the frame", exc, user_id)
            return self._auth_failed(session, user_id, frame, exc, transient=True)
        state = self._succeeded(user_id, "decrypted" if encrypted else "passthrough")
        if ordered:
            with self._lock:
                state.started = _epoch_keys(session)
                state.early.clear()
        if encrypted:
            recent = state.recent
            recent[frame] = plain
            if len(recent) > _RECENT_FRAMES:
                del recent[next(iter(recent))]
        return plain

    def keys(self) -> bytes | None:
        """What identifies the keys our session holds now: it changes with every epoch and re-initialisation."""
        session = self._get_session()
        return _epoch_keys(session) if session is not None else None

    def privacy_code(self) -> str | None:
        session = self._get_session()
        return session.voice_privacy_code if session is not None else None

    def forget_user(self, user_id: int) -> None:
        """Drop what is kept about a sender who left (counters and cached frames)."""
        with self._lock:
            self._users.pop(user_id, None)

    def user_stats(self) -> dict[int, dict[str, int]]:
        """Per sender: ``decrypted``, ``passthrough``, ``duplicate`` (a repeat of a frame already decrypted),
        ``held`` (times a frame was put off) and ``failed:<reason>``."""
        with self._lock:
            return {user_id: dict(state.counts) for user_id, state in self._users.items()}

    # internals ---------------------------------------------------------------------------------------------------

    def _downgraded(self) -> bool:
        return self._get_downgraded is not None and self._get_downgraded()

    def _state(self, user_id: int) -> _UserCounters:
        state = self._users.get(user_id)
        if state is None:
            state = self._users[user_id] = _UserCounters(self._recover_interval)
        return state

    def _count(self, user_id: int, name: str) -> _UserCounters:
        with self._lock:
            state = self._state(user_id)
            state.add(name)
            return state

    def _succeeded(self, user_id: int, name: str) -> _UserCounters:
        state = self._count(user_id, name)
        state.streak_start = None
        state.consecutive = 0
        state.recovery_interval = self._recover_interval
        return state

    def _put_off(self, session: davey.DaveSession, user_id: int, frame: bytes, nonce: int, now: float) -> bool:
        """True when the frame must wait for older frames of its sender's new key ratchet (counted as held).

        ``nonce`` is the frame's nonce when at most ``_ORDER_NONCES``, else larger. Until a frame of the ratchet
        decrypted, a frame with nonce n waits while a nonce below n has not been offered (at most ``_ORDER_WAIT``
        from its first offer) or is waiting (at most twice that); a later frame waits while any such frame does.
        """
        keys = _epoch_keys(session) if nonce <= _ORDER_NONCES else None
        with self._lock:
            state = self._state(user_id)
            early = state.early
            for key in [key for key, (_, _, last) in early.items() if now - last > _ORDER_STALE]:
                del early[key]
            if nonce > _ORDER_NONCES:
                wait = any(now - first < 2 * _ORDER_WAIT for _, first, _ in early.values())
            elif state.started == keys:
                wait = False
            else:
                if state.seen_keys != keys:
                    state.seen_keys, state.seen = keys, 0
                state.seen |= 1 << nonce
                older = (1 << nonce) - 2 if nonce else 0  # the bits of nonces 1 .. nonce - 1
                entry = early.pop(frame, None)
                first = now if entry is None else entry[1]
                age = now - first
                wait = (age < _ORDER_WAIT and state.seen & older != older) or (
                    age < 2 * _ORDER_WAIT
                    and any(other < nonce and now - since < 2 * _ORDER_WAIT for other, since, _ in early.values())
                )
                if wait:
                    if len(early) >= _RECENT_FRAMES:
                        del early[next(iter(early))]
                    early[frame] = (nonce, first, now)
            if wait:
                state.add("held")
            return wait

    def _failed(
        self, session: davey.DaveSession, user_id: int, frame: bytes, encrypted: bool, exc: ValueError
    ) -> bytes | None:
        message = str(exc)
        if _PLAINTEXT in message or not encrypted:
            self._count(user_id, "failed:plaintext")
            raise E2EEDecryptError("plaintext", message) from exc
        if _NO_DECRYPTOR in message or (_NO_CRYPTOR not in message and not _in_group(session, user_id)):
            state = self._count(user_id, "held")
            state.waited[frame] = None
            if len(state.waited) > _RECENT_FRAMES:
                del state.waited[next(iter(state.waited))]
            return None
        return self._auth_failed(session, user_id, frame, exc, transient=False)

    def _auth_failed(
        self, session: davey.DaveSession, user_id: int, frame: bytes, exc: Exception, *, transient: bool
    ) -> bytes | None:
        now = self._clock()
        keys = _epoch_keys(session)
        with self._lock:
            state = self._state(user_id)
            waited = not transient and frame in state.waited
            failing = state.failing
            entry = failing.get(frame)
            if entry is None or entry[1] != keys:
                if entry is None and len(failing) >= _RECENT_FRAMES:
                    del failing[next(iter(failing))]
                entry = failing[frame] = (now, keys)
            if state.streak_start is None or state.streak_keys != keys:
                state.streak_start, state.streak_keys = now, keys
            hold = self._commit_hold if transient or _awaiting_commit(session, self._status_awaiting) else self._hold
            since = entry[0] if waited else min(entry[0], state.streak_start)
            if now - since < hold:
                state.add("held")
                return None
            del failing[frame]
            state.add("failed:auth")
            if waited:
                del state.waited[frame]
                raise E2EEDecryptError("auth", "from an epoch we were not in: " + str(exc)) from exc
            state.consecutive += 1
            due = state.consecutive >= self._recover_after and now >= state.next_recovery
            if due and self._last_recovery is not None:
                due = now - self._last_recovery >= self._recover_interval
        if due and session.ready and _in_group(session, user_id):
            self._recover(user_id, now)
        raise E2EEDecryptError("auth", str(exc)) from exc

    def _recover(self, user_id: int, now: float) -> None:
        with self._lock:
            state = self._state(user_id)
            state.next_recovery = now + state.recovery_interval
            state.recovery_interval = min(state.recovery_interval * 2, _MAX_RECOVERY_INTERVAL)
            self._last_recovery = now
            self.recoveries += 1
            for other in self._users.values():
                other.consecutive = 0
        _log.warning("DAVE: frames of user %s keep failing authentication; re-joining the group (op31)", user_id)
        if self._on_recover is not None:
            try:
                self._on_recover(user_id)
            except Exception:
                _log.exception("DAVE recovery callback raised")


def _in_group(session: davey.DaveSession, user_id: int) -> bool:
    try:
        return str(user_id) in session.get_user_ids()
    except Exception:
        return False


def _epoch_keys(session: davey.DaveSession) -> bytes | None:
    """What identifies the keys our session holds now (the epoch authenticator): it changes with every epoch."""
    try:
        return session.get_epoch_authenticator()
    except Exception:
        return None


def _awaiting_commit(session: davey.DaveSession, awaiting: object) -> bool:
    try:
        return bool(session.status == awaiting)
    except Exception:
        return False
