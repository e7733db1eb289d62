"""The local Discord's voice server: TLS voice websocket and UDP relay on one port, DAVE group, simulated speakers.

:class:`VoiceServer` ties together the gateway (:mod:`.voice_gateway`), the media relay (:mod:`.relay`), the
DAVE external sender (:mod:`.dave_group`), simulated speakers (:mod:`.speakers`) and link conditions
(:mod:`.link`). Real, unmodified discord.py voice clients connect to it on loopback; the main local gateway
announces its :attr:`VoiceServer.endpoint` in VOICE_SERVER_UPDATE and registers sessions with
:meth:`VoiceServer.expect_session`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from ..errors import MalformedMlsMessage
from .dave_group import DaveGroupCoordinator, Outbound
from .link import Link, LinkConditions, LinkStats
from .relay import MediaRelay, RelayStats
from .speakers import SimulatedSpeaker
from .voice_gateway import DEFAULT_MODES, LEGACY_MODES, CloseCode, Op, Participant, VoiceGateway, VoiceSession

__all__ = ("DEFAULT_MODES", "LEGACY_MODES", "LinkConditions", "SimulatedSpeaker", "VoiceServer")

_log = logging.getLogger(__name__)

_BIND_ATTEMPTS = 50


class VoiceServer:
    """A local Discord voice server for one voice channel.

    Parameters
    ----------
    host:
        Address to bind (and to report in READY and IP discovery), normally ``127.0.0.1``.
    ssl_context:
        Server-side TLS context for the voice websocket (discord.py always uses ``wss://``).
    guild_id / channel_id:
        The guild IDENTIFY must name and the channel whose DAVE group this is.
    dave:
        Run DAVE end-to-end encryption for members that support it (a member without it downgrades the call).
    modes:
        Transport encryption modes offered in READY, in preference order; Discord's list by default.
    link:
        Network conditions applied to every member's downlink (see :meth:`set_link` for one member).
    heartbeat_interval:
        Milliseconds announced in HELLO.
    resume_window:
        Seconds a member whose websocket dropped stays in the call, waiting for RESUME.
    transition_timeout:
        Seconds a DAVE transition waits for members' op23 before executing without them.
    """

    def __init__(
        self,
        *,
        host: str,
        ssl_context: ssl.SSLContext,
        guild_id: int,
        channel_id: int,
        dave: bool = True,
        modes: Sequence[str] | None = None,
        link: LinkConditions | None = None,
        heartbeat_interval: float = 13750.0,
        resume_window: float = 10.0,
        transition_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.dave = dave
        self.relay = MediaRelay(link=link)
        self.gateway = VoiceGateway(
            guild_id=guild_id,
            channel_id=channel_id,
            relay=self.relay,
            port=0,
            host=host,
            modes=tuple(modes) if modes is not None else DEFAULT_MODES,
            dave=dave,
            heartbeat_interval=heartbeat_interval,
            resume_window=resume_window,
        )
        self.dave_group: DaveGroupCoordinator | None = DaveGroupCoordinator(channel_id) if dave else None
        self._bridge = _DaveBridge(self.gateway, self.dave_group, transition_timeout) if self.dave_group else None
        self.speakers: dict[int, SimulatedSpeaker] = {}
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._retired: list[asyncio.DatagramTransport] = []
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port`` as VOICE_SERVER_UPDATE carries it."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind UDP and the TLS websocket on one port number and start serving."""
        app = web.Application()
        app.router.add_get("/", self.gateway.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await self._bind(runner)
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def move(self) -> str:
        """Serve from a new port as well, like a voice server Discord moved the call to; returns the new endpoint.

        Members identifying from now on get the new UDP port in READY; the old port keeps answering (a draining
        server) until :meth:`stop`. The main gateway announces the move with VOICE_SERVER_UPDATE (see
        ``LocalDiscord.move_voice_server``).
        """
        if self._runner is None or self._transport is None:
            raise RuntimeError("the voice server is not started")
        self._retired.append(self._transport)
        await self._bind(self._runner)
        return self.endpoint

    async def _bind(self, runner: web.AppRunner) -> None:
        """Open a UDP socket and a TLS site on the same free port number and make them current."""
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for _ in range(_BIND_ATTEMPTS):
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.host, 0))
                port = int(sock.getsockname()[1])
                site = web.TCPSite(runner, self.host, port, ssl_context=self._ssl_context)
                await site.start()
            except OSError as exc:
                last_error = exc
                sock.close()
                continue
            transport, _protocol = await loop.create_datagram_endpoint(lambda: self.relay, sock=sock)
            self._transport = transport
            self.port = port
            self.gateway.port = port
            return
        raise OSError(f"no port free for both UDP and TCP on {self.host}") from last_error

    async def stop(self) -> None:
        """Close every connection, silence the speakers and release the port."""
        for speaker in self.speakers.values():
            speaker.close()
        self.gateway.close_all(1001)
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for transport in self._retired:
            transport.close()
        self._retired.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._bridge is not None:
            self._bridge.close()

    async def __aenter__(self) -> VoiceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- sessions (the main gateway's side) -------------------------------------------------------------------

    def expect_session(self, *, user_id: int, session_id: str, token: str, channel_id: int) -> None:
        """Let ``user_id`` IDENTIFY with ``session_id`` and ``token`` (sent in VOICE_STATE/SERVER_UPDATE)."""
        self.gateway.expect_session(user_id=user_id, session_id=session_id, token=token, channel_id=channel_id)

    def end_session(self, user_id: int) -> None:
        """``user_id`` left the channel: close its voice websocket (4014) and remove it from the call."""
        self.gateway.end_session(user_id)

    def drop_connection(self, user_id: int, *, code: int = CloseCode.SERVER_CRASHED) -> None:
        """Close ``user_id``'s websocket but keep its session, so the client can RESUME."""
        self.gateway.drop_connection(user_id, code=code)

    def session(self, user_id: int) -> VoiceSession | None:
        """The websocket session of ``user_id`` (its SSRC, mode, key, sequence...), if connected."""
        return self.gateway.sessions.get(user_id)

    @property
    def members(self) -> dict[int, Participant]:
        """Everyone in the call by user id: websocket sessions and simulated speakers."""
        return self.gateway.members

    async def wait_for_member(self, user_id: int, *, ready: bool = True, timeout: float = 5.0) -> VoiceSession:
        """Wait until ``user_id`` identified (and, with ``ready``, got its SESSION_DESCRIPTION)."""

        def present() -> bool:
            session = self.gateway.sessions.get(user_id)
            return session is not None and (session.ready or not ready)

        await self.gateway.wait_for(present, timeout)
        return self.gateway.sessions[user_id]

    # -- speakers ---------------------------------------------------------------------------------------------

    def add_speaker(
        self,
        *,
        user_id: int,
        name: str,
        clip: str | None = None,
        tone_hz: float = 440.0,
        tone_seconds: float = 1.0,
        bitrate: int = 64000,
        padding_every: int = 0,
        plaintext_every: int = 0,
        uplink: LinkConditions | None = None,
        history: int = 6000,
    ) -> SimulatedSpeaker:
        """Put a simulated speaker into the call (see :class:`SimulatedSpeaker` for the parameters).

        It joins like a client: others get op11, and with DAVE on it joins the MLS group.
        """
        if user_id in self.gateway.members:
            raise ValueError(f"user {user_id} is already in the call")
        speaker = SimulatedSpeaker(
            user_id=user_id,
            name=name,
            ssrc=self.gateway.allocate_ssrc(),
            channel_id=self.channel_id,
            inject=self.relay.inject,
            announce=self.gateway.announce_speaking,
            clip=clip,
            tone_hz=tone_hz,
            tone_seconds=tone_seconds,
            bitrate=bitrate,
            padding_every=padding_every,
            plaintext_every=plaintext_every,
            uplink=uplink,
            history=history,
        )
        self.speakers[user_id] = speaker
        self.relay.add_peer(speaker.peer)
        self.gateway.add_member(speaker)
        if self._bridge is not None:
            self._bridge.speaker_joined(speaker)
        return speaker

    def remove_speaker(self, user_id: int) -> None:
        """Take a simulated speaker out of the call (others get op13)."""
        speaker = self.speakers.pop(user_id, None)
        if speaker is not None:
            speaker.close()
            self.gateway.remove_member(user_id)

    def change_ssrc(self, user_id: int) -> int:
        """Give a simulated speaker a fresh SSRC mid-stream, as a client restarting its stream does; returns it.

        Its next packets carry the new SSRC and the others get op5 SPEAKING naming it; sequence numbers and
        timestamps carry on.
        """
        speaker = self.speakers[user_id]
        ssrc = self.gateway.allocate_ssrc()
        self.gateway.release_ssrc(speaker.ssrc)
        self.relay.change_ssrc(user_id, ssrc)
        self.gateway.announce_speaking(speaker)
        return ssrc

    def blackout(self, user_id: int, seconds: float) -> None:
        """Silence the media path of ``user_id`` for ``seconds``: a speaker's uplink, or a member's downlink."""
        speaker = self.speakers.get(user_id)
        if speaker is not None:
            speaker.uplink.blackout(seconds)
            return
        peer = self.relay.peer(user_id)
        if peer is None or peer.link is None:
            raise KeyError(user_id)
        peer.link.blackout(seconds)

    # -- media and network ------------------------------------------------------------------------------------

    @property
    def relay_stats(self) -> RelayStats:
        """What the relay received, dropped and forwarded."""
        return self.relay.stats

    def set_link(self, user_id: int, conditions: LinkConditions) -> Link:
        """Apply ``conditions`` to the downlink of ``user_id`` from now on (fresh stats)."""
        return self.relay.set_link(user_id, conditions)

    def link_stats(self, user_id: int) -> LinkStats:
        """What the downlink of ``user_id`` did to its packets.

        Raises
        ------
        KeyError
            ``user_id`` has no downlink (not connected, or a simulated speaker).
        """
        peer = self.relay.peer(user_id)
        if peer is None or peer.link is None:
            raise KeyError(user_id)
        return peer.link.stats

    # -- DAVE -------------------------------------------------------------------------------------------------

    def dave_settled(self) -> bool:
        """True when every DAVE member is in the established group and no transition is pending."""
        group = self.dave_group
        if group is None or self._bridge is None:
            return False
        if group.protocol_version == 0:
            return group.pending_transition is None
        leaves = group.leaves()
        return (
            group.epoch > 0
            and group.pending_transition is None
            and all(uid in leaves for uid in self._bridge.registered)
        )

    async def wait_dave_settled(self, timeout: float = 5.0) -> None:
        """Wait until :meth:`dave_settled` holds."""
        await self.gateway.wait_for(self.dave_settled, timeout)

    def downgrade_dave(self) -> None:
        """Move the call to transport-only encryption, as Discord does when a member without DAVE joins: op21
        (protocol version 0) to every member, op22 once all answered op23. Members then send plaintext frames."""
        if self._bridge is None or self.dave_group is None:
            raise RuntimeError("DAVE is off on this voice server")
        self._bridge.route(self.dave_group.downgrade())

    def upgrade_dave(self) -> None:
        """Return to DAVE after :meth:`downgrade_dave`: op24 (epoch 1) to every member, a new group, and its
        op29/op30 transition executed with op22."""
        if self._bridge is None or self.dave_group is None:
            raise RuntimeError("DAVE is off on this voice server")
        self._bridge.route(self.dave_group.upgrade())

    @property
    def dave_invalid_reports(self) -> list[tuple[int, int]]:
        """Every op31 (invalid commit/welcome) a member sent, as ``(user_id, transition_id)``, oldest first."""
        return list(self._bridge.invalid_reports) if self._bridge is not None else []


class _DaveBridge:
    """Connects the gateway's members to the DAVE coordinator and delivers its messages in order.

    Deliveries go through one FIFO: a simulated speaker answers synchronously, and its answer's messages must
    queue behind the rest of the batch that prompted it, as they would on a real network.
    """

    def __init__(self, gateway: VoiceGateway, group: DaveGroupCoordinator, transition_timeout: float) -> None:
        self.gateway = gateway
        self.group = group
        self.transition_timeout = transition_timeout
        self.registered: set[int] = set()
        """Members in the coordinator (their op4 had DAVE)."""
        self.legacy: set[int] = set()
        """Members without DAVE support; while any is present the call stays downgraded."""
        self.rejected = 0
        self.invalid_reports: list[tuple[int, int]] = []
        self._queue: deque[Outbound] = deque()
        self._draining = False
        self._timer: asyncio.TimerHandle | None = None
        self._timed: int | None = None
        gateway.on_join.append(self._joined)
        gateway.on_leave.append(self._left)
        gateway.on_binary = self._binary
        gateway.on_dave_json = self._json
        gateway.dave_version_for = self._version_for

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _version_for(self, session: VoiceSession) -> int:
        version = self.group.protocol_version
        return version if version > 0 and session.max_dave_protocol_version >= version else 0

    def speaker_joined(self, speaker: SimulatedSpeaker) -> None:
        speaker.dave.send_json = lambda op, data: self._json(speaker, op, data)
        speaker.dave.send_binary = lambda op, payload: self._binary(speaker, op, payload)
        version = self.group.protocol_version
        speaker.dave.start(version, send_key_package=False)
        if version > 0:
            self.registered.add(speaker.user_id)
            self.route(self.group.member_joined(speaker.user_id))
            speaker.dave.send_key_package()

    def _joined(self, member: Participant) -> None:
        if not isinstance(member, VoiceSession):
            return
        if member.dave_protocol_version > 0:
            self.registered.add(member.user_id)
            self.route(self.group.member_joined(member.user_id))
        elif member.max_dave_protocol_version == 0:
            self.legacy.add(member.user_id)
            self.route(self.group.downgrade())

    def _left(self, member: Participant) -> None:
        user_id = member.user_id
        if user_id in self.registered:
            self.registered.discard(user_id)
            self.route(self.group.member_left(user_id))
        if user_id in self.legacy:
            self.legacy.discard(user_id)
            if not self.legacy:
                self.route(self.group.upgrade())

    def _binary(self, member: Participant, op: int, payload: bytes) -> None:
        user_id = member.user_id
        if user_id not in self.registered:
            return
        if op == Op.MLS_KEY_PACKAGE:
            try:
                out = self.group.key_package(user_id, payload)
            except MalformedMlsMessage as exc:
                self.rejected += 1
                _log.warning("rejecting key package of %d: %s", user_id, exc)
                return
            self.route(out)
        elif op == Op.MLS_COMMIT_WELCOME:
            self.route(self.group.commit_welcome(user_id, payload))

    def _json(self, member: Participant, op: int, data: Any) -> None:
        user_id = member.user_id
        if user_id not in self.registered or not isinstance(data, dict):
            return
        try:
            transition_id = int(data["transition_id"])
        except (KeyError, TypeError, ValueError):
            return
        if op == Op.DAVE_TRANSITION_READY:
            self.route(self.group.transition_ready(user_id, transition_id))
        elif op == Op.MLS_INVALID_COMMIT_WELCOME:
            self.invalid_reports.append((user_id, transition_id))
            self.route(self.group.invalid_commit_welcome(user_id, transition_id))

    def route(self, messages: list[Outbound]) -> None:
        """Deliver the coordinator's messages, in order, after anything already queued."""
        self._queue.extend(messages)
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue:
                message = self._queue.popleft()
                member = self.gateway.members.get(message.user_id)
                if member is None:
                    continue
                if message.binary is not None:
                    member.deliver_binary(message.binary[0], message.binary[1:])
                else:
                    member.deliver_json(message.opcode, message.json)
        finally:
            self._draining = False
        self._arm_timer()
        self.gateway.notify()

    def _arm_timer(self) -> None:
        pending = self.group.pending_transition
        if pending == self._timed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timed = pending
        if pending is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self.transition_timeout, self._expire, pending)

    def _expire(self, transition_id: int) -> None:
        self._timer = None
        self._timed = None
        self.route(self.group.expire_transition(transition_id))
