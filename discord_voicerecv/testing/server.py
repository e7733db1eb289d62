"""``LocalDiscord``: a Discord on loopback that real, unmodified discord.py bots log in to.

One aiohttp server carries the REST API (``/api/v10``), the main gateway (``/gateway``) and the local CA
(``/local-discord/ca.pem``); a :class:`~discord_voicerecv.testing.voice.VoiceServer` carries the TLS voice websocket
and the UDP media relay. There is one guild with a text channel, a voice channel, a human ``tester`` (the guild and
application owner), every bot that connected and any simulated speakers.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from .clips import list_clips
from .gateway import Gateway
from .link import LinkConditions
from .patch import CA_PATH, _forget_ca, _remember_ca
from .rest import RestApi
from .speakers import SimulatedSpeaker
from .state import JSON, GuildState, LocalUser, stable_snowflake
from .tls import LocalCertificate, generate_certificate
from .voice import VoiceServer

__all__ = ("LocalDiscord",)

_MAX_UPLOAD = 32 * 1024 * 1024
_Self = TypeVar("_Self", bound="LocalDiscord")


def _connect_host(host: str) -> str:
    """The address clients dial for a bind address (wildcards become loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _VoiceLink:
    """The gateway's view of one guild's voice server: registers sessions and names the endpoint."""

    __slots__ = ("_discord", "_guild_id")

    def __init__(self, discord: LocalDiscord, guild_id: int | None = None) -> None:
        self._discord = discord
        self._guild_id = guild_id

    def _voice(self) -> VoiceServer:
        return self._discord.voice_of(self._guild_id)

    def join_voice(self, user_id: int, session_id: str, channel_id: int) -> tuple[str, str]:
        voice = self._voice()
        token = secrets.token_hex(16)
        voice.expect_session(user_id=user_id, session_id=session_id, token=token, channel_id=channel_id)
        return token, f"{_url_host(self._discord.connect_host)}:{voice.port}"

    def leave_voice(self, user_id: int) -> None:
        self._voice().end_session(user_id)


class LocalDiscord:
    """A local Discord: REST, gateway and voice server for one guild (or several), on loopback.

    Parameters
    ----------
    host:
        Address to bind; ``127.0.0.1`` by default.
    port:
        Port of the REST API and gateway; 0 picks a free one (see :attr:`url`).
    speakers:
        Simulated speakers ("Speaker 1", "Speaker 2"...) put into the voice channel at start; each gets the next
        shipped clip (``testing.clips.list_clips()``) as its default clip.
    dave:
        Run DAVE end-to-end encryption in the voice channel.
    modes:
        Transport encryption modes the voice server offers, in preference order; Discord's by default.
    link:
        Network conditions on every member's voice downlink.
    guilds:
        How many guilds to serve, each with its text and voice channel and its own voice server. Their ids fall
        on different shards, as ``(guild_id >> 22) % shard_count`` places them on Discord, so a sharded bot (one
        ``shard_count`` up to ``guilds``) sees each guild on one shard only. REST serves the first guild.

    Attributes
    ----------
    url:
        ``http://127.0.0.1:PORT`` once started: what :func:`~discord_voicerecv.testing.use_local_discord` takes.
    gateway_url:
        ``ws://127.0.0.1:PORT/gateway``.
    guild_id / text_channel_id / voice_channel_id / tester_id:
        Stable ids (the same in every run).
    certificate:
        The local CA and server certificate (the voice websocket's TLS).

    Examples
    --------
    ::

        async with LocalDiscord(speakers=2) as local:
            use_local_discord(local.url)
            await bot.start("any-token")  # in a task; every distinct token is its own bot
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speakers: int = 0,
        dave: bool = True,
        modes: Sequence[str] | None = None,
        link: LinkConditions | None = None,
        guilds: int = 1,
    ) -> None:
        if guilds < 1:
            raise ValueError("a local Discord serves at least one guild")
        self.host = host
        self.connect_host = _connect_host(host)
        self.port = port
        self._initial_speakers = speakers
        self._dave = dave
        self._modes = modes
        self._link = link
        self.guild = GuildState()
        self.gateway = Gateway(self.guild, _VoiceLink(self))
        self.guilds: dict[int, GuildState] = {self.guild.id: self.guild}
        """Every guild served, by id, the first one (:attr:`guild_id`) first."""
        for index in range(1, guilds):
            extra = GuildState(name=f"Local Discord {index + 1}", key=f":{index}", guild_id=_guild_id(index, guilds))
            self.guilds[extra.id] = extra
            self.gateway.add_guild(extra, _VoiceLink(self, extra.id))
        self._extra_voice: dict[int, VoiceServer] = {}
        self.gateway.on_change.append(self._notify)
        self._rest = RestApi(self.guild, self.gateway)
        self._voice: VoiceServer | None = None
        self._runner: web.AppRunner | None = None
        self._speaker_count = 0
        self._changed: asyncio.Event | None = None
        self.certificate: LocalCertificate | None = None
        self.url = ""
        self.gateway_url = ""

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the HTTP/gateway port and the voice server, then add the initial speakers."""
        if self._runner is not None:
            raise RuntimeError("LocalDiscord is already running")
        self._changed = asyncio.Event()
        hosts = dict.fromkeys(("127.0.0.1", "localhost", self.connect_host))
        certificate = await asyncio.to_thread(generate_certificate, tuple(hosts))
        self.certificate = certificate
        voice = self._create_voice_server(certificate.server_context())
        await voice.start()
        self._voice = voice
        for guild in list(self.guilds.values())[1:]:
            extra = self._create_voice_server(certificate.server_context(), guild)
            await extra.start()
            self._extra_voice[guild.id] = extra

        app = web.Application(client_max_size=_MAX_UPLOAD)
        self._rest.install(app)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get(CA_PATH, self._serve_ca)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except OSError:
            await runner.cleanup()
            for server in (voice, *self._extra_voice.values()):
                await server.stop()
            self._voice = None
            self._extra_voice.clear()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        base = f"{_url_host(self.connect_host)}:{self.port}"
        self.url = f"http://{base}"
        self.gateway_url = f"ws://{base}/gateway"
        for guild in self.guilds.values():
            guild.base_url = self.url
        self.gateway.url = self.gateway_url
        _remember_ca(self.url, certificate.ca_pem)
        clips = list_clips()
        for index in range(self._initial_speakers):
            self.add_speaker(clip=clips[index % len(clips)] if clips else None)

    def _create_voice_server(self, ssl_context: Any, guild: GuildState | None = None) -> VoiceServer:
        """Build a guild's voice server (tests substitute a stand-in here)."""
        guild = guild or self.guild
        return VoiceServer(
            host=self.connect_host,
            ssl_context=ssl_context,
            guild_id=guild.id,
            channel_id=guild.voice_channel_id,
            dave=self._dave,
            modes=self._modes,
            link=self._link,
        )

    async def stop(self) -> None:
        """Close every connection and release the ports. Close your bots first: they would try to reconnect."""
        if self._runner is None:
            return
        _forget_ca(self.url)
        await self.gateway.close()
        await self._runner.cleanup()
        self._runner = None
        if self._voice is not None:
            await self._voice.stop()
        for extra in self._extra_voice.values():
            await extra.stop()
        self._extra_voice.clear()

    async def __aenter__(self: _Self) -> _Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve_ca(self, request: web.Request) -> web.Response:
        assert self.certificate is not None
        return web.Response(body=self.certificate.ca_pem, content_type="application/x-pem-file")

    # -- who is here -------------------------------------------------------------------------------------

    @property
    def voice(self) -> VoiceServer:
        """The voice server (after :meth:`start`)."""
        if self._voice is None:
            raise RuntimeError("LocalDiscord is not started")
        return self._voice

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate clients must trust for the voice websocket (after :meth:`start`)."""
        if self.certificate is None:
            raise RuntimeError("LocalDiscord is not started")
        return self.certificate.ca_pem

    @property
    def guild_id(self) -> int:
        return self.guild.id

    @property
    def text_channel_id(self) -> int:
        return self.guild.text_channel_id

    @property
    def voice_channel_id(self) -> int:
        return self.guild.voice_channel_id

    @property
    def tester_id(self) -> int:
        """The human test user: guild owner, application owner, default author of :meth:`send_message`."""
        return self.guild.tester.id

    @property
    def members(self) -> dict[int, LocalUser]:
        """Guild members by user id: the tester, every bot that connected, simulated speakers."""
        return {uid: self.guild.users[uid] for uid in self.guild.member_ids}

    @property
    def voice_channel_members(self) -> list[int]:
        """User ids with a voice state in the voice channel."""
        channel = self.guild.voice_channel_id
        return [uid for uid, r in self.guild.voice_states.items() if r.channel_id == channel]

    def bot_user_id(self, token: str) -> int:
        """The user id the bot logging in with ``token`` gets (stable across runs)."""
        return self.guild.bot_for_token(token).id

    # -- speakers ----------------------------------------------------------------------------------------

    def voice_of(self, guild_id: int | None = None) -> VoiceServer:
        """The voice server of a guild (the first guild's when None), after :meth:`start`."""
        if guild_id is None or guild_id == self.guild.id:
            return self.voice
        server = self._extra_voice.get(guild_id)
        if server is None:
            raise RuntimeError(f"no voice server for guild {guild_id} (not served, or not started)")
        return server

    def add_speaker(
        self, *, name: str | None = None, user_id: int | None = None, guild_id: int | None = None, **options: Any
    ) -> SimulatedSpeaker:
        """Add a simulated speaker: a guild member in the voice channel that sends audio.

        Connected bots get GUILD_MEMBER_ADD (members intent) and VOICE_STATE_UPDATE before the voice server
        announces it, so they can resolve its user id to a Member. Raises ValueError when ``user_id`` is already in
        the voice channel. ``guild_id`` picks the guild's voice channel (the first guild's by default). ``options``
        go to
        :meth:`VoiceServer.add_speaker <discord_voicerecv.testing.voice.VoiceServer.add_speaker>` (``clip``,
        ``tone_hz``, ``uplink``...).
        """
        voice = self.voice_of(guild_id)
        guild = self.guilds[guild_id] if guild_id is not None else self.guild
        self._speaker_count += 1
        number = self._speaker_count
        name = name or f"Speaker {number}"
        if user_id is None:
            user_id = stable_snowflake(f"local-discord:speaker:{number}")
        record = guild.voice_states.get(user_id)
        if record is not None and record.channel_id == guild.voice_channel_id:
            raise ValueError(f"user {user_id} is already in the voice channel")
        user = LocalUser(user_id, name, global_name=name)
        if guild.add_member(user):
            self.gateway.member_added(user_id, guild)
        payload = guild.set_voice_state(user_id, guild.voice_channel_id, session_id=secrets.token_hex(16))
        self.gateway.dispatch_voice_state(payload, guild=guild)
        return voice.add_speaker(user_id=user_id, name=name, **options)

    def remove_speaker(self, user_id: int) -> None:
        """Take a simulated speaker out of the voice channel (it stays a guild member)."""
        self.voice.remove_speaker(user_id)
        record = self.guild.voice_states.get(user_id)
        if record is not None:
            payload = self.guild.set_voice_state(user_id, None, session_id=record.session_id)
            self.gateway.dispatch_voice_state(payload)

    # -- messages ----------------------------------------------------------------------------------------

    def send_message(self, channel_id: int, content: str, *, author: int | None = None) -> JSON:
        """Make a human-like user say ``content`` in a channel, so bots' prefix commands fire.

        Parameters
        ----------
        channel_id:
            :attr:`text_channel_id` or :attr:`voice_channel_id` (voice channels have a text chat).
        author:
            A member's user id; the tester by default. ``<@id>`` in ``content`` mentions a user.

        Returns
        -------
        dict
            The message payload (``payload["id"]`` is a string snowflake).
        """
        if not self.guild.is_channel(channel_id):
            raise ValueError(f"unknown channel {channel_id}")
        author_id = self.tester_id if author is None else author
        if not self.guild.is_member(author_id):
            raise ValueError(f"user {author_id} is not a member of the local guild")
        message = self.guild.create_message(channel_id, author_id, content)
        self.gateway.deliver_message(message)
        return message

    def messages(self, channel_id: int | None = None) -> list[JSON]:
        """Messages kept for a channel (the text channel by default), oldest first."""
        return self.guild.messages(self.text_channel_id if channel_id is None else channel_id)

    async def wait_for_message(
        self,
        *,
        channel_id: int | None = None,
        author: int | None = None,
        after: int | str | None = None,
        check: Callable[[JSON], bool] | None = None,
        timeout: float = 5.0,
    ) -> JSON:
        """Wait for a message, e.g. a bot's reply to :meth:`send_message`.

        Parameters
        ----------
        channel_id / author:
            Only messages in this channel / by this user id.
        after:
            Only messages newer than this message id; by default only messages created from now on. Pass the id
            of the command you sent to also catch a reply that came before this call.
        check:
            Extra condition on the payload.

        Raises
        ------
        asyncio.TimeoutError
            No such message within ``timeout`` seconds.
        """
        channels = [channel_id] if channel_id is not None else [self.text_channel_id, self.voice_channel_id]
        if after is None:
            after = max((int(m["id"]) for c in channels for m in self.guild.messages(c)), default=0)
        floor = int(after)

        def find() -> JSON | None:
            for channel in channels:
                for message in self.guild.messages(channel):
                    if int(message["id"]) <= floor:
                        continue
                    if author is not None and int(message["author"]["id"]) != author:
                        continue
                    if check is None or check(message):
                        return message
            return None

        found: list[JSON] = []

        def ready() -> bool:
            message = find()
            if message is not None:
                found.append(message)
            return message is not None

        await self._wait(ready, timeout)
        return found[0]

    def attachment(self, attachment: JSON | int) -> bytes:
        """The bytes of an uploaded attachment, from its payload (``message["attachments"][i]``) or id."""
        attachment_id = int(attachment["id"]) if isinstance(attachment, dict) else attachment
        return self.guild.attachment(attachment_id)[1]

    # -- gateway control ---------------------------------------------------------------------------------

    async def move_voice_server(self) -> str:
        """Move the call to a new voice endpoint, as Discord does mid-call: the voice server starts serving a new
        port and every bot in the channel gets VOICE_SERVER_UPDATE naming it (discord.py then closes its voice
        websocket with 4014 and identifies on the new endpoint). Returns the new endpoint."""
        endpoint = await self.voice.move()
        self.gateway.move_voice()
        return endpoint

    def drop_voice_connection(self, user_id: int) -> None:
        """Close a bot's voice websocket with 4015 (voice server crashed) and keep its session for a RESUME."""
        self.voice.drop_connection(user_id)

    def force_gateway_reconnect(self, user_id: int) -> int:
        """Send op7 RECONNECT to a bot: it reconnects and RESUMEs. Returns how many sessions were told."""
        return self.gateway.reconnect(user_id)

    def invalidate_gateway_session(self, user_id: int, *, resumable: bool = False) -> int:
        """Send op9 INVALID_SESSION to a bot; unless ``resumable`` its session ends (and its voice state)."""
        return self.gateway.invalidate(user_id, resumable=resumable)

    async def wait_for_voice(self, user_id: int, *, connected: bool = True, timeout: float = 5.0) -> None:
        """Wait until ``user_id`` has (``connected``) or has no voice state in the voice channel."""
        await self._wait(lambda: (user_id in self.voice_channel_members) == connected, timeout)

    async def wait_for_session(self, user_id: int, *, timeout: float = 5.0) -> None:
        """Wait until a bot has identified on the gateway."""
        await self._wait(lambda: bool(self.gateway.sessions_of(user_id)), timeout)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async def until() -> None:
            while not predicate():
                changed = self._changed
                if changed is None:
                    raise RuntimeError("LocalDiscord is not started")
                await changed.wait()

        await asyncio.wait_for(until(), timeout)


def _guild_id(index: int, count: int) -> int:
    """The id of extra guild ``index``: a stable snowflake moved so that ``(id >> 22) % count`` differs for each
    guild, the way Discord spreads guilds over shards."""
    first = (stable_snowflake("local-discord:guild") >> 22) % count
    seed = stable_snowflake(f"local-discord:guild:{index}")
    high = seed >> 22
    return ((high - high % count + (first + index) % count) << 22) | (seed & ((1 << 22) - 1))
