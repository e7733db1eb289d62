"""The local Discord's main gateway (v10, JSON text frames): identify, resume, dispatches, voice state updates.

discord.py asks for ``compress=zlib-stream`` (or ``zstd-stream``) but only decompresses *binary* frames; text
frames are parsed as they are, so the gateway sends plain JSON text and ignores the parameter. Each websocket gets a
:class:`_Connection` whose writer task keeps frames in order, so everything else dispatches synchronously. A
:class:`GatewaySession` outlives its websocket: a client that lost it resumes (op6) and gets what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from ._outbox import Outbox, decode_op
from .state import JSON, GuildState, LocalUser

__all__ = ("CloseCode", "Gateway", "GatewaySession", "Intent", "Op", "VoiceLink")

_log = logging.getLogger(__name__)

_REPLAY_LIMIT = 2048
_APPLICATION_FLAGS = (1 << 13) | (1 << 15) | (1 << 19)  # presence, members and message content "limited" intents


class Op(enum.IntEnum):
    """Main gateway opcodes."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class CloseCode(enum.IntEnum):
    """Close codes the gateway uses (Discord's numbers)."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SHARD = 4010
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013


class Intent(enum.IntFlag):
    """The gateway intents that decide what a session receives here."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_VOICE_STATES = 1 << 7
    GUILD_MESSAGES = 1 << 9
    MESSAGE_CONTENT = 1 << 15


class VoiceLink(Protocol):
    """What the gateway asks of the voice side when a user joins or leaves the voice channel."""

    def join_voice(self, user_id: int, session_id: str, channel_id: int) -> tuple[str, str]:
        """Expect ``user_id`` on the voice server; returns ``(token, endpoint)`` for VOICE_SERVER_UPDATE."""
        ...

    def leave_voice(self, user_id: int) -> None:
        """``user_id`` left the voice channel."""
        ...


def _frame(op: int, data: Any, seq: int | None = None, event: str | None = None) -> str:
    return json.dumps({"op": op, "d": data, "s": seq, "t": event}, separators=(",", ":"))


def _snowflake(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class _Connection(Outbox):
    """A gateway websocket."""

    __slots__ = ()

    def __init__(self, ws: web.WebSocketResponse) -> None:
        super().__init__(ws, name="local-discord-gateway-writer")


class GatewaySession:
    """An identified bot: its intents, shard, sequence numbers and the dispatches kept for RESUME."""

    __slots__ = ("_buffer", "connection", "expiry", "intents", "seq", "session_id", "shard", "token", "user")

    def __init__(self, *, user: LocalUser, token: str, intents: int, shard: tuple[int, int] | None) -> None:
        self.session_id = secrets.token_hex(16)
        self.user = user
        self.token = token
        self.intents = intents
        self.shard = shard
        self.seq = 0
        self.connection: _Connection | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self._buffer: deque[tuple[int, str]] = deque(maxlen=_REPLAY_LIMIT)

    def wants(self, intent: Intent) -> bool:
        return bool(self.intents & intent)

    def owns_guild(self, guild_id: int) -> bool:
        """True when the guild belongs to this session's shard."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return (guild_id >> 22) % count == shard_id

    def dispatch(self, event: str, data: Any) -> None:
        """Send a sequenced event, kept for replay; sessions without a websocket only keep it."""
        self.seq += 1
        frame = _frame(Op.DISPATCH, data, self.seq, event)
        self._buffer.append((self.seq, frame))
        if self.connection is not None:
            self.connection.put(frame)

    def send_op(self, op: Op, data: Any = None) -> None:
        if self.connection is not None:
            self.connection.put(_frame(op, data))

    def replay_after(self, seq: int) -> bool:
        """Send again every dispatch numbered above ``seq``; False when some of them are no longer kept."""
        if seq < self.seq and (not self._buffer or self._buffer[0][0] > seq + 1):
            return False
        if self.connection is not None:
            for number, frame in self._buffer:
                if number > seq:
                    self.connection.put(frame)
        return True


class Gateway:
    """The main gateway of a local Discord with one guild.

    Parameters
    ----------
    guild:
        The guild state every session sees.
    voice:
        Told when a bot joins or leaves the voice channel.
    heartbeat_interval:
        Milliseconds, sent in HELLO.
    resume_window:
        Seconds a session whose websocket closed abnormally stays resumable; then it ends and its user leaves voice.
        discord.py's ``Client.close()`` usually closes with 4000, not 1000, so this is also how a closed bot that
        did not leave voice itself drops out of the channel.

    Attributes
    ----------
    url:
        ``ws://host:port/gateway``: sent as ``resume_gateway_url``; set once the server is bound.
    sessions:
        Live sessions by session id.
    """

    def __init__(
        self,
        guild: GuildState,
        voice: VoiceLink,
        *,
        heartbeat_interval: float = 41250.0,
        resume_window: float = 10.0,
    ) -> None:
        self.guild = guild
        self.voice = voice
        self.guilds: dict[int, tuple[GuildState, VoiceLink]] = {guild.id: (guild, voice)}
        """Every guild served, the first one included, with its voice server; bots see those of their shards."""
        self.heartbeat_interval = heartbeat_interval
        self.resume_window = resume_window
        self.url = ""
        self.sessions: dict[str, GatewaySession] = {}
        self._connections: set[_Connection] = set()
        self.on_change: list[Callable[[], None]] = []
        """Called after sessions, voice states or messages changed (the LocalDiscord's waits listen here)."""

    def add_guild(self, guild: GuildState, voice: VoiceLink) -> None:
        """Serve another guild (before bots connect): every bot is a member, shards decide who sees it."""
        self.guilds[guild.id] = (guild, voice)

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    # -- who gets what -----------------------------------------------------------------------------------

    def sessions_of(self, user_id: int) -> list[GatewaySession]:
        """The live sessions of one bot user."""
        return [s for s in self.sessions.values() if s.user.id == user_id]

    def _guild_sessions(self, intent: Intent | None = None, guild: GuildState | None = None) -> list[GatewaySession]:
        guild_id = (guild or self.guild).id
        return [s for s in self.sessions.values() if s.owns_guild(guild_id) and (intent is None or s.wants(intent))]

    def dispatch_voice_state(
        self, payload: JSON, *, actor: GatewaySession | None = None, guild: GuildState | None = None
    ) -> None:
        """VOICE_STATE_UPDATE to every session with the voice-states intent, and always to the acting session."""
        for session in self._guild_sessions(guild=guild):
            if session is actor or session.wants(Intent.GUILD_VOICE_STATES):
                session.dispatch("VOICE_STATE_UPDATE", payload)
        self._changed()

    def member_added(self, user_id: int, guild: GuildState | None = None) -> None:
        """GUILD_MEMBER_ADD to the sessions with the members intent."""
        guild = guild or self.guild
        data = {**guild.member_payload(user_id), "guild_id": str(guild.id)}
        for session in self._guild_sessions(Intent.GUILD_MEMBERS, guild):
            if session.user.id != user_id:
                session.dispatch("GUILD_MEMBER_ADD", data)

    def member_removed(self, user: LocalUser) -> None:
        """GUILD_MEMBER_REMOVE to the sessions with the members intent."""
        data = {"guild_id": str(self.guild.id), "user": user.payload()}
        for session in self._guild_sessions(Intent.GUILD_MEMBERS):
            session.dispatch("GUILD_MEMBER_REMOVE", data)

    def deliver_message(self, message: JSON) -> None:
        """MESSAGE_CREATE to the sessions with the guild-messages intent.

        Without the message-content intent a bot gets empty content, embeds and attachments, unless it wrote the
        message or is mentioned in it, as on Discord.
        """
        author_id = int(message["author"]["id"])
        mentioned = {int(m["id"]) for m in message.get("mentions", ())}
        redacted = {**message, "content": "", "embeds": [], "attachments": [], "components": []}
        for session in self._guild_sessions(Intent.GUILD_MESSAGES):
            full = session.wants(Intent.MESSAGE_CONTENT) or session.user.id in (author_id, *mentioned)
            session.dispatch("MESSAGE_CREATE", message if full else redacted)
        self._changed()

    def move_voice(self) -> int:
        """VOICE_SERVER_UPDATE with a fresh token and the current endpoint to every bot in the voice channel, as
        Discord sends when it moves a call to another voice server; returns how many sessions were told."""
        told = 0
        channel_id = self.guild.voice_channel_id
        for session in list(self.sessions.values()):
            record = self.guild.voice_states.get(session.user.id)
            if record is None or record.channel_id != channel_id or record.session_id != session.session_id:
                continue
            token, endpoint = self.voice.join_voice(session.user.id, session.session_id, channel_id)
            update = {"token": token, "guild_id": str(self.guild.id), "endpoint": endpoint}
            session.dispatch("VOICE_SERVER_UPDATE", update)
            told += 1
        return told

    def reconnect(self, user_id: int) -> int:
        """Send op7 RECONNECT to the bot's connected sessions; returns how many were told."""
        told = 0
        for session in self.sessions_of(user_id):
            if session.connection is not None:
                session.send_op(Op.RECONNECT)
                told += 1
        return told

    def invalidate(self, user_id: int, *, resumable: bool = False) -> int:
        """Send op9 INVALID_SESSION to the bot's connected sessions; unresumable ones end here."""
        told = 0
        for session in self.sessions_of(user_id):
            if session.connection is not None:
                session.send_op(Op.INVALID_SESSION, resumable)
                told += 1
            if not resumable:
                self._end_session(session)
        return told

    async def close(self) -> None:
        """Close every websocket (1001: going away) and stop the session timers."""
        for session in self.sessions.values():
            if session.expiry is not None:
                session.expiry.cancel()
        for conn in list(self._connections):
            conn.close(1001)
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.writer, 1.0)

    # -- websocket ---------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """aiohttp handler for ``GET /gateway?v=10&encoding=json``."""
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = _Connection(ws)
        self._connections.add(conn)
        session: GatewaySession | None = None
        try:
            if request.query.get("v", "10") not in ("9", "10"):
                conn.close(CloseCode.INVALID_API_VERSION)
            elif request.query.get("encoding", "json") != "json":
                conn.close(CloseCode.DECODE_ERROR)
            else:
                conn.put(_frame(Op.HELLO, {"heartbeat_interval": self.heartbeat_interval, "_trace": ["local"]}))
            async for msg in ws:
                if conn.closed:
                    break
                if msg.type is not WSMsgType.TEXT:
                    conn.close(CloseCode.DECODE_ERROR)
                    break
                try:
                    op, data = decode_op(msg.data)
                except (ValueError, KeyError, TypeError):
                    conn.close(CloseCode.DECODE_ERROR)
                    break
                session = self._on_message(conn, session, op, data)
        finally:
            await conn.drain(ws.close_code or 1000)
            self._connections.discard(conn)
            if session is not None and session.connection is conn:
                session.connection = None
                if ws.close_code in (1000, 1001):
                    self._end_session(session)
                else:
                    self._schedule_expiry(session)
        return ws

    def _on_message(
        self, conn: _Connection, session: GatewaySession | None, op: int, data: Any
    ) -> GatewaySession | None:
        if op == Op.HEARTBEAT:
            conn.put(_frame(Op.HEARTBEAT_ACK, None))
            return session
        if session is None:
            if op == Op.IDENTIFY:
                return self._identify(conn, data)
            if op == Op.RESUME:
                return self._resume(conn, data)
            conn.close(CloseCode.NOT_AUTHENTICATED)
            return None
        if op in (Op.IDENTIFY, Op.RESUME):
            conn.close(CloseCode.ALREADY_AUTHENTICATED)
        elif op == Op.VOICE_STATE_UPDATE:
            self._voice_state_update(session, data)
        elif op == Op.REQUEST_GUILD_MEMBERS:
            self._request_members(session, data)
        elif op != Op.PRESENCE_UPDATE:
            conn.close(CloseCode.UNKNOWN_OPCODE)
        return session

    def _identify(self, conn: _Connection, data: Any) -> GatewaySession | None:
        if not isinstance(data, dict):
            conn.close(CloseCode.DECODE_ERROR)
            return None
        token = data.get("token")
        if isinstance(token, str) and token.startswith("Bot "):
            token = token[4:]
        if not isinstance(token, str) or not token.strip() or token != token.strip():
            conn.close(CloseCode.AUTHENTICATION_FAILED)
            return None
        intents = data.get("intents")
        if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0:
            conn.close(CloseCode.INVALID_INTENTS)
            return None
        shard = data.get("shard")
        if shard is not None:
            if not (isinstance(shard, list) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
                conn.close(CloseCode.INVALID_SHARD)
                return None
            shard = (int(shard[0]), int(shard[1]))

        user = self.guild.bot_for_token(token)
        for guild, _ in self.guilds.values():
            if guild.add_member(user):
                self.member_added(user.id, guild)
        session = GatewaySession(user=user, token=token, intents=intents, shard=shard)
        session.connection = conn
        self.sessions[session.session_id] = session

        owned = [guild for guild, _ in self.guilds.values() if session.owns_guild(guild.id)]
        ready: JSON = {
            "v": 10,
            "user": {**user.payload(), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(guild.id), "unavailable": True} for guild in owned],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.url,
            "application": {"id": str(user.id), "flags": _APPLICATION_FLAGS},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "user_settings": {},
            "_trace": ["local"],
        }
        if shard is not None:
            ready["shard"] = list(shard)
        session.dispatch("READY", ready)
        for guild in owned:
            session.dispatch("GUILD_CREATE", self._guild_create(session, guild))
        _log.debug("gateway: %s identified as session %s", user.username, session.session_id)
        self._changed()
        return session

    def _guild_create(self, session: GatewaySession, guild: GuildState) -> JSON:
        # Like Discord: the member list holds the bot and whoever is in voice; the rest comes from chunking.
        with_voice = session.wants(Intent.GUILD_VOICE_STATES)
        members = [session.user.id, *(guild.voice_states if with_voice else ())]
        return guild.guild_payload(member_ids=members, voice_states=with_voice)

    def _resume(self, conn: _Connection, data: Any) -> GatewaySession | None:
        session = self.sessions.get(data.get("session_id", "")) if isinstance(data, dict) else None
        token = data.get("token") if isinstance(data, dict) else None
        if session is None or token not in (session.token, "Bot " + session.token):
            conn.put(_frame(Op.INVALID_SESSION, False))
            return None
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        previous = session.connection
        if previous is not None and previous is not conn:
            previous.close(CloseCode.UNKNOWN_ERROR)
        session.connection = conn
        seq = data.get("seq")
        if not session.replay_after(seq if isinstance(seq, int) else 0):
            session.connection = None
            self._end_session(session)
            conn.put(_frame(Op.INVALID_SESSION, False))
            return None
        session.dispatch("RESUMED", {"_trace": ["local"]})
        return session

    def _schedule_expiry(self, session: GatewaySession) -> None:
        def expire() -> None:
            session.expiry = None
            if session.connection is None:
                _log.debug("gateway: session %s was not resumed in time", session.session_id)
                self._end_session(session)

        if session.expiry is not None:
            session.expiry.cancel()
        session.expiry = asyncio.get_running_loop().call_later(self.resume_window, expire)

    def _end_session(self, session: GatewaySession) -> None:
        """The session is over: forget it and take its user out of voice if this session put it there."""
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        if self.sessions.pop(session.session_id, None) is None:
            return
        self._changed()
        for guild, voice in self.guilds.values():
            record = guild.voice_states.get(session.user.id)
            if record is not None and record.session_id == session.session_id:
                payload = guild.set_voice_state(session.user.id, None, session_id=session.session_id)
                self.dispatch_voice_state(payload, guild=guild)
                voice.leave_voice(session.user.id)

    def _voice_state_update(self, session: GatewaySession, data: Any) -> None:
        served = self.guilds.get(_snowflake(data.get("guild_id")) or 0) if isinstance(data, dict) else None
        if served is None or not session.owns_guild(served[0].id):
            _log.debug("gateway: voice state update for an unknown guild ignored: %r", data)
            return
        guild, voice = served
        user_id = session.user.id
        self_mute, self_deaf = bool(data.get("self_mute")), bool(data.get("self_deaf"))
        previous = guild.voice_states.get(user_id)
        channel_id = _snowflake(data.get("channel_id"))
        if channel_id is None:
            payload = guild.set_voice_state(user_id, None, session_id=session.session_id)
            if previous is None:
                session.dispatch("VOICE_STATE_UPDATE", payload)
                self._changed()
                return
            self.dispatch_voice_state(payload, actor=session, guild=guild)
            voice.leave_voice(user_id)
            return
        if channel_id != guild.voice_channel_id:
            _log.debug("gateway: voice state update for channel %s (not the voice channel) ignored", channel_id)
            return
        payload = guild.set_voice_state(
            user_id, channel_id, session_id=session.session_id, self_mute=self_mute, self_deaf=self_deaf
        )
        self.dispatch_voice_state(payload, actor=session, guild=guild)
        only_flags_changed = (
            previous is not None
            and previous.session_id == session.session_id
            and (previous.self_mute, previous.self_deaf) != (self_mute, self_deaf)
        )
        if not only_flags_changed:
            token, endpoint = voice.join_voice(user_id, session.session_id, channel_id)
            session.dispatch("VOICE_SERVER_UPDATE", {"token": token, "guild_id": str(guild.id), "endpoint": endpoint})

    def _request_members(self, session: GatewaySession, data: Any) -> None:
        if not isinstance(data, dict):
            return
        guild_ids = data.get("guild_id")
        wanted = guild_ids if isinstance(guild_ids, list) else [guild_ids]
        for guild_id in dict.fromkeys(_snowflake(g) for g in wanted):
            served = self.guilds.get(guild_id or 0)
            if served is not None:
                self._members_chunk(session, served[0], data)

    def _members_chunk(self, session: GatewaySession, guild: GuildState, data: dict[str, Any]) -> None:
        raw_ids = data.get("user_ids")
        user_ids: list[int] | None = None
        if raw_ids is not None:
            user_ids = [i for i in map(_snowflake, raw_ids if isinstance(raw_ids, list) else [raw_ids]) if i]
        limit = data.get("limit")
        members = guild.find_members(
            query=str(data.get("query") or ""),
            limit=limit if isinstance(limit, int) else 0,
            user_ids=user_ids,
        )
        chunk: JSON = {
            "guild_id": str(guild.id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if user_ids is not None:
            found = {int(m["user"]["id"]) for m in members}
            chunk["not_found"] = [str(i) for i in user_ids if i not in found]
        if data.get("presences"):
            chunk["presences"] = []
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
