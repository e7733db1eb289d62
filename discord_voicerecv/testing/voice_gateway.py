"""The local Discord's voice websocket (gateway v8): sessions, sequencing, resume, and the opcodes a client speaks.

:class:`VoiceGateway` is the state of one voice server: the sessions it expects (from the main gateway), the
members connected (websocket clients and simulated speakers alike, see :class:`Participant`), the relay peers and
the DAVE group. Each websocket gets a :class:`_Connection` whose writer task keeps outgoing frames in order, so
everything else can send synchronously. A :class:`VoiceSession` outlives its websocket: a client that lost its
connection resumes with op7 and gets the messages it missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from ..protocol.transport import make_cipher
from ._outbox import Outbox, decode_op
from .relay import MediaRelay, RelayPeer

__all__ = (
    "DEFAULT_MODES",
    "LEGACY_MODES",
    "CloseCode",
    "Op",
    "Participant",
    "VoiceGateway",
    "VoiceSession",
)

_log = logging.getLogger(__name__)

DEFAULT_MODES: tuple[str, ...] = ("aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize")
"""The modes Discord lists in READY today, in its order."""
LEGACY_MODES: tuple[str, ...] = ("xsalsa20_poly1305_lite", "xsalsa20_poly1305_suffix", "xsalsa20_poly1305")
"""The retired modes Discord no longer offers; ``modes=(*DEFAULT_MODES, *LEGACY_MODES)`` brings them back."""


class Op:
    """Voice gateway opcodes."""

    IDENTIFY = 0
    SELECT_PROTOCOL = 1
    READY = 2
    HEARTBEAT = 3
    SESSION_DESCRIPTION = 4
    SPEAKING = 5
    HEARTBEAT_ACK = 6
    RESUME = 7
    HELLO = 8
    RESUMED = 9
    CLIENTS_CONNECT = 11
    CLIENT_CONNECT = 12
    CLIENT_DISCONNECT = 13
    DAVE_PREPARE_TRANSITION = 21
    DAVE_EXECUTE_TRANSITION = 22
    DAVE_TRANSITION_READY = 23
    DAVE_PREPARE_EPOCH = 24
    MLS_EXTERNAL_SENDER = 25
    MLS_KEY_PACKAGE = 26
    MLS_PROPOSALS = 27
    MLS_COMMIT_WELCOME = 28
    MLS_ANNOUNCE_COMMIT_TRANSITION = 29
    MLS_WELCOME = 30
    MLS_INVALID_COMMIT_WELCOME = 31


class CloseCode:
    """Voice websocket close codes Discord uses."""

    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    SESSION_INVALID = 4006
    SESSION_TIMEOUT = 4009
    SERVER_NOT_FOUND = 4011
    UNKNOWN_PROTOCOL = 4012
    DISCONNECTED = 4014
    SERVER_CRASHED = 4015
    UNKNOWN_ENCRYPTION_MODE = 4016
    BAD_REQUEST = 4020


_UNSEQUENCED = frozenset({Op.HELLO, Op.HEARTBEAT_ACK, Op.RESUMED})
_REPLAY_LIMIT = 512


class Participant(Protocol):
    """A member of the call as the gateway sees it: a websocket session or a simulated speaker."""

    @property
    def user_id(self) -> int: ...

    @property
    def ssrc(self) -> int: ...

    @property
    def speaking(self) -> int: ...

    @property
    def peer(self) -> RelayPeer: ...

    def deliver_json(self, op: int, data: Any) -> None:
        """Take a server JSON message addressed to this member."""

    def deliver_binary(self, op: int, payload: bytes) -> None:
        """Take a server binary message (DAVE ops 25, 27, 29, 30) addressed to this member."""


@dataclass(frozen=True, slots=True)
class _Expected:
    session_id: str
    token: str
    channel_id: int


class _Connection(Outbox):
    """A voice websocket; ``last_seq`` is the sequence number of the last message put on it."""

    __slots__ = ("last_seq",)

    def __init__(self, ws: web.WebSocketResponse) -> None:
        super().__init__(ws, name="voice-gateway-writer")
        self.last_seq = -1


class VoiceSession:
    """One websocket member: credentials, SSRC, transport, and the sequenced messages kept for resume.

    Attributes
    ----------
    mode / secret_key:
        Set by SELECT_PROTOCOL (``None`` before).
    dave_protocol_version:
        Negotiated in SESSION_DESCRIPTION: 1 when the server runs DAVE and the client supports it.
    seq:
        The sequence number of the last sequenced message sent.
    """

    __slots__ = (
        "_buffer",
        "_expiry",
        "channel_id",
        "connection",
        "dave_protocol_version",
        "heartbeats",
        "max_dave_protocol_version",
        "mode",
        "peer",
        "secret_key",
        "seq",
        "session_id",
        "speaking",
        "token",
        "user_id",
    )

    def __init__(self, *, user_id: int, session_id: str, token: str, channel_id: int, ssrc: int, max_dave: int) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.token = token
        self.channel_id = channel_id
        self.peer = RelayPeer(user_id, ssrc)
        self.max_dave_protocol_version = max_dave
        self.dave_protocol_version = 0
        self.mode: str | None = None
        self.secret_key: bytes | None = None
        self.speaking = 0
        self.seq = 0
        self.heartbeats = 0
        self.connection: _Connection | None = None
        self._buffer: deque[tuple[int, str | bytes]] = deque(maxlen=_REPLAY_LIMIT)
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def ssrc(self) -> int:
        return self.peer.ssrc

    @property
    def ready(self) -> bool:
        """True once the session has a transport key (after SESSION_DESCRIPTION)."""
        return self.secret_key is not None

    def deliver_json(self, op: int, data: Any) -> None:
        if op in _UNSEQUENCED:
            last = self.connection.last_seq if self.connection is not None else self.seq
            self._put(json.dumps({"op": op, "d": data, "seq": last}, separators=(",", ":")))
            return
        self.seq += 1
        frame = json.dumps({"op": op, "d": data, "seq": self.seq}, separators=(",", ":"))
        self._buffer.append((self.seq, frame))
        self._put(frame, self.seq)

    def deliver_binary(self, op: int, payload: bytes) -> None:
        self.seq += 1
        frame = struct.pack(">HB", self.seq & 0xFFFF, op) + payload
        self._buffer.append((self.seq, frame))
        self._put(frame, self.seq)

    def replay_after(self, seq_ack: int) -> int:
        """Send again every kept message numbered above ``seq_ack``; returns how many."""
        count = 0
        for seq, frame in self._buffer:
            if seq > seq_ack:
                self._put(frame, seq)
                count += 1
        return count

    def _put(self, frame: str | bytes, seq: int | None = None) -> None:
        conn = self.connection
        if conn is not None:
            conn.put(frame)
            if seq is not None:
                conn.last_seq = seq


class VoiceGateway:
    """The websocket side of a local voice server, and the membership every other part follows.

    Parameters
    ----------
    guild_id / channel_id:
        What IDENTIFY's ``server_id`` must name, and the DAVE group (channel) id.
    relay:
        The media relay that learns each member's SSRC and key.
    port:
        The UDP port reported in READY.
    modes:
        Encryption modes offered in READY.
    dave:
        Whether sessions whose clients support DAVE get protocol version 1.
    heartbeat_interval:
        Milliseconds, sent in HELLO and READY.
    resume_window:
        Seconds a session whose websocket dropped abnormally stays in the call waiting for a RESUME.
    """

    def __init__(
        self,
        *,
        guild_id: int,
        channel_id: int,
        relay: MediaRelay,
        port: int,
        host: str = "127.0.0.1",
        modes: Sequence[str] = DEFAULT_MODES,
        dave: bool = True,
        heartbeat_interval: float = 13750.0,
        resume_window: float = 10.0,
    ) -> None:
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.relay = relay
        self.port = port
        self.host = host
        self.modes = tuple(modes)
        self.dave = dave
        self.heartbeat_interval = heartbeat_interval
        self.resume_window = resume_window
        self.members: dict[int, Participant] = {}
        self.sessions: dict[int, VoiceSession] = {}
        self._expected: dict[int, _Expected] = {}
        self._ssrcs: set[int] = set()
        self._rng = random.SystemRandom()
        self._changed = asyncio.Event()
        self.on_join: list[Callable[[Participant], None]] = []
        """Called after a member joined (websocket members: after SESSION_DESCRIPTION)."""
        self.on_leave: list[Callable[[Participant], None]] = []
        self.on_binary: Callable[[Participant, int, bytes], None] | None = None
        """Receives client binary frames (DAVE op26/op28); set by the DAVE bridge."""
        self.on_dave_json: Callable[[Participant, int, Any], None] | None = None
        """Receives client DAVE JSON ops (23, 31); set by the DAVE bridge."""
        self.dave_version_for: Callable[[VoiceSession], int] = self._dave_version
        """The DAVE protocol version SESSION_DESCRIPTION gives a session."""

    # -- expected sessions (from the main gateway) ----------------------------------------------------------

    def expect_session(self, *, user_id: int, session_id: str, token: str, channel_id: int) -> None:
        """Allow ``user_id`` to IDENTIFY with these credentials."""
        self._expected[user_id] = _Expected(session_id, token, channel_id)

    def end_session(self, user_id: int, *, code: int = CloseCode.DISCONNECTED) -> None:
        """The user left the channel: forget the credentials, close its websocket and remove it from the call."""
        self._expected.pop(user_id, None)
        session = self.sessions.get(user_id)
        if session is not None:
            if session.connection is not None:
                session.connection.close(code)
                session.connection = None
            self._leave(session)

    def drop_connection(self, user_id: int, *, code: int = CloseCode.SERVER_CRASHED) -> None:
        """Close the user's websocket but keep its session for a RESUME (like a voice server hiccup)."""
        session = self.sessions.get(user_id)
        if session is not None and session.connection is not None:
            session.connection.close(code)
            session.connection = None
            self._schedule_expiry(session)

    # -- membership -----------------------------------------------------------------------------------------

    def allocate_ssrc(self) -> int:
        """A fresh SSRC, unique in this call."""
        while True:
            ssrc = self._rng.randrange(1, 1 << 32)
            if ssrc not in self._ssrcs:
                self._ssrcs.add(ssrc)
                return ssrc

    def release_ssrc(self, ssrc: int) -> None:
        """Make ``ssrc`` available again (its member moved to another one)."""
        self._ssrcs.discard(ssrc)

    def add_member(self, member: Participant) -> None:
        """Put a member into the call and tell the others (op11)."""
        self.members[member.user_id] = member
        self.broadcast(Op.CLIENTS_CONNECT, {"user_ids": [str(member.user_id)]}, exclude=member.user_id)
        self.notify()

    def remove_member(self, user_id: int) -> None:
        """Take a member out of the call and tell the others (op13)."""
        member = self.members.pop(user_id, None)
        if member is None:
            return
        self._ssrcs.discard(member.ssrc)
        self.relay.remove_peer(user_id)
        for callback in self.on_leave:
            callback(member)
        self.broadcast(Op.CLIENT_DISCONNECT, {"user_id": str(user_id)}, exclude=user_id)
        self.notify()

    def broadcast(self, op: int, data: Any, *, exclude: int | None = None) -> None:
        """Send a JSON message to every member but ``exclude``."""
        for member in list(self.members.values()):
            if member.user_id != exclude:
                member.deliver_json(op, data)

    def announce_speaking(self, member: Participant) -> None:
        """Tell the others that ``member`` (its SSRC) changed its speaking flags."""
        if self.members.get(member.user_id) is not member:
            return
        member.peer.announced = True  # the relay forwards its media from now on
        data = {"user_id": str(member.user_id), "ssrc": member.ssrc, "speaking": member.speaking}
        self.broadcast(Op.SPEAKING, data, exclude=member.user_id)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, checking after every membership or session change.

        Raises
        ------
        asyncio.TimeoutError
            When it still does not hold after ``timeout`` seconds.
        """

        async def until() -> None:
            while not predicate():
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)

    def notify(self) -> None:
        """Wake :meth:`wait_for` callers: something about the call changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _dave_version(self, session: VoiceSession) -> int:
        return 1 if self.dave and session.max_dave_protocol_version >= 1 else 0

    # -- websocket ------------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """aiohttp handler for ``GET /?v=8``."""
        ws = web.WebSocketResponse(compress=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = _Connection(ws)
        conn.put(json.dumps({"op": Op.HELLO, "d": {"v": 8, "heartbeat_interval": self.heartbeat_interval}}))
        session: VoiceSession | None = None
        try:
            async for msg in ws:
                if conn.closed:
                    break
                if msg.type is WSMsgType.TEXT:
                    try:
                        op, data = decode_op(msg.data)
                    except (ValueError, KeyError, TypeError):
                        conn.close(CloseCode.DECODE_ERROR)
                        break
                    session = self._on_json(conn, session, op, data)
                elif msg.type is WSMsgType.BINARY:
                    if session is None:
                        conn.close(CloseCode.NOT_AUTHENTICATED)
                        break
                    if msg.data and self.on_binary is not None:
                        self.on_binary(session, msg.data[0], bytes(msg.data[1:]))
        finally:
            await conn.drain(ws.close_code or 1000)
            if session is not None and session.connection is conn:
                session.connection = None
                if ws.close_code in (1000, 1001) and self.sessions.get(session.user_id) is session:
                    self._leave(session)
                else:
                    self._schedule_expiry(session)
        return ws

    def _on_json(self, conn: _Connection, session: VoiceSession | None, op: int, data: Any) -> VoiceSession | None:
        if op == Op.HEARTBEAT:
            if session is not None:
                session.heartbeats += 1
            nonce = data.get("t") if isinstance(data, dict) else data
            ack = {"t": nonce} if isinstance(data, dict) else nonce
            if session is not None:
                session.deliver_json(Op.HEARTBEAT_ACK, ack)
            else:
                conn.put(json.dumps({"op": Op.HEARTBEAT_ACK, "d": ack}))
            return session
        if session is None:
            if op == Op.IDENTIFY:
                return self._identify(conn, data)
            if op == Op.RESUME:
                return self._resume(conn, data)
            conn.close(CloseCode.NOT_AUTHENTICATED)
            return None
        if op == Op.IDENTIFY or op == Op.RESUME:
            conn.close(CloseCode.ALREADY_AUTHENTICATED)
        elif op == Op.SELECT_PROTOCOL:
            self._select_protocol(session, data)
        elif op == Op.SPEAKING:
            self._speaking(session, data)
        elif op in (Op.DAVE_TRANSITION_READY, Op.MLS_INVALID_COMMIT_WELCOME):
            if self.on_dave_json is not None:
                self.on_dave_json(session, op, data)
        elif op == Op.CLIENT_CONNECT:
            pass
        else:
            conn.close(CloseCode.UNKNOWN_OPCODE)
        return session

    def _identify(self, conn: _Connection, data: Any) -> VoiceSession | None:
        try:
            server_id = int(data["server_id"])
            user_id = int(data["user_id"])
            session_id = str(data["session_id"])
            token = str(data["token"])
            max_dave = int(data.get("max_dave_protocol_version") or 0)
        except (KeyError, TypeError, ValueError):
            conn.close(CloseCode.DECODE_ERROR)
            return None
        if server_id != self.guild_id:
            conn.close(CloseCode.SERVER_NOT_FOUND)
            return None
        expected = self._expected.get(user_id)
        if expected is None or expected.session_id != session_id or expected.token != token:
            conn.close(CloseCode.AUTHENTICATION_FAILED)
            return None
        old = self.sessions.get(user_id)
        if old is not None:
            if old.connection is not None:
                old.connection.close(CloseCode.SESSION_INVALID)
                old.connection = None
            self._leave(old)
        session = VoiceSession(
            user_id=user_id,
            session_id=session_id,
            token=token,
            channel_id=expected.channel_id,
            ssrc=self.allocate_ssrc(),
            max_dave=max_dave,
        )
        session.connection = conn
        self.sessions[user_id] = session
        self.relay.add_peer(session.peer)
        ready = {
            "ssrc": session.ssrc,
            "ip": self.host,
            "port": self.port,
            "modes": list(self.modes),
            "heartbeat_interval": self.heartbeat_interval,
            "experiments": [],
        }
        session.deliver_json(Op.READY, ready)
        present = [str(uid) for uid in self.members]
        if present:
            session.deliver_json(Op.CLIENTS_CONNECT, {"user_ids": present})
        self.add_member(session)
        return session

    def _resume(self, conn: _Connection, data: Any) -> VoiceSession | None:
        try:
            session_id = str(data["session_id"])
            token = str(data["token"])
            server_id = int(data["server_id"])
            seq_ack = int(data.get("seq_ack", -1))
        except (KeyError, TypeError, ValueError):
            conn.close(CloseCode.DECODE_ERROR)
            return None
        session = next((s for s in self.sessions.values() if s.session_id == session_id), None)
        if session is None or session.token != token or server_id != self.guild_id:
            conn.close(CloseCode.SESSION_INVALID)
            return None
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        if session.connection is not None:
            session.connection.close(CloseCode.SESSION_INVALID)
        session.connection = conn
        conn.last_seq = seq_ack
        session.deliver_json(Op.RESUMED, None)
        session.replay_after(seq_ack)
        self.notify()
        return session

    def _select_protocol(self, session: VoiceSession, data: Any) -> None:
        conn = session.connection
        try:
            protocol = data["protocol"]
            info = data["data"]
            mode = str(info["mode"])
            address = (str(info["address"]), int(info["port"]))
        except (KeyError, TypeError, ValueError):
            if conn is not None:
                conn.close(CloseCode.DECODE_ERROR)
            return
        if protocol != "udp":
            if conn is not None:
                conn.close(CloseCode.UNKNOWN_PROTOCOL)
            return
        if mode not in self.modes:
            if conn is not None:
                conn.close(CloseCode.UNKNOWN_ENCRYPTION_MODE)
            return
        first = session.secret_key is None
        key = os.urandom(32)
        session.mode = mode
        session.secret_key = key
        session.peer.declared_address = address
        session.peer.cipher = make_cipher(mode, key)
        session.dave_protocol_version = self.dave_version_for(session)
        session.deliver_json(
            Op.SESSION_DESCRIPTION,
            {
                "mode": mode,
                "secret_key": list(key),
                "dave_protocol_version": session.dave_protocol_version,
                "audio_codec": "opus",
                "video_codec": None,
                "media_session_id": os.urandom(16).hex(),
            },
        )
        for member in self.members.values():
            if member is not session and member.speaking:
                session.deliver_json(
                    Op.SPEAKING, {"user_id": str(member.user_id), "ssrc": member.ssrc, "speaking": member.speaking}
                )
        if first:
            for callback in self.on_join:
                callback(session)
        self.notify()

    def _speaking(self, session: VoiceSession, data: Any) -> None:
        try:
            speaking = int(data["speaking"])
        except (KeyError, TypeError, ValueError):
            return
        session.speaking = speaking
        self.announce_speaking(session)

    # -- leaving --------------------------------------------------------------------------------------------

    def _leave(self, session: VoiceSession) -> None:
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        if self.sessions.get(session.user_id) is session:
            del self.sessions[session.user_id]
            self.remove_member(session.user_id)

    def _schedule_expiry(self, session: VoiceSession) -> None:
        if session._expiry is not None:
            session._expiry.cancel()
        loop = asyncio.get_running_loop()
        session._expiry = loop.call_later(self.resume_window, self._leave, session)
        self.notify()

    def close_all(self, code: int = 1001) -> None:
        """Close every websocket and empty the call (server shutdown)."""
        for session in list(self.sessions.values()):
            if session.connection is not None:
                session.connection.close(code)
            self._leave(session)
        for user_id in list(self.members):
            self.remove_member(user_id)
