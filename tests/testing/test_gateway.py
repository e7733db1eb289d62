"""The local Discord's main gateway, driven by real discord.py clients and by raw websockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import discord
import pytest
from discord.ext import commands

from discord_voicerecv.testing import LocalDiscord, restore_discord, use_local_discord
from discord_voicerecv.testing.voice import VoiceServer

pytestmark = pytest.mark.e2e

STUB_VOICE_PORT = 65001


class StubVoice:
    """Stands in for the voice server: records what the gateway asks of it (no sockets)."""

    def __init__(self) -> None:
        self.port = STUB_VOICE_PORT
        self.expected: dict[int, dict[str, Any]] = {}
        self.ended: list[int] = []
        self.speakers: dict[int, str] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def expect_session(self, *, user_id: int, session_id: str, token: str, channel_id: int) -> None:
        self.expected[user_id] = {"session_id": session_id, "token": token, "channel_id": channel_id}

    def end_session(self, user_id: int) -> None:
        self.expected.pop(user_id, None)
        self.ended.append(user_id)

    def add_speaker(self, *, user_id: int, name: str, **options: Any) -> str:
        self.speakers[user_id] = name
        return name

    def remove_speaker(self, user_id: int) -> None:
        self.speakers.pop(user_id, None)


class StubbedDiscord(LocalDiscord):
    """A LocalDiscord whose voice server is a :class:`StubVoice`."""

    def _create_voice_server(self, ssl_context: Any) -> VoiceServer:
        return cast(VoiceServer, StubVoice())

    @property
    def stub(self) -> StubVoice:
        return cast(StubVoice, self.voice)


def all_intents() -> discord.Intents:
    intents = discord.Intents.default()
    intents.members = True
    intents.voice_states = True
    intents.message_content = True
    return intents


@pytest.fixture
async def local() -> AsyncIterator[StubbedDiscord]:
    async with StubbedDiscord(speakers=2) as server:
        use_local_discord(server.url)
        try:
            yield server
        finally:
            restore_discord()


@contextlib.asynccontextmanager
async def running(client: discord.Client, token: str) -> AsyncIterator[discord.Client]:
    """Start ``client`` with ``token``, wait for on_ready, and close it cleanly afterwards."""
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    client.add_listener(on_ready) if isinstance(client, commands.Bot) else setattr(client, "on_ready", on_ready)
    task = asyncio.create_task(client.start(token))
    try:
        done, _ = await asyncio.wait(
            {task, asyncio.create_task(ready.wait())}, timeout=5, return_when="FIRST_COMPLETED"
        )
        if task in done:
            task.result()
        assert ready.is_set(), "client did not reach on_ready"
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


def new_client(intents: discord.Intents | None = None) -> discord.Client:
    return discord.Client(intents=intents or all_intents(), guild_ready_timeout=0.05)


async def eventually(predicate: Any, timeout: float = 3.0) -> None:
    async def until() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(until(), timeout)


# -- discord.py clients ----------------------------------------------------------------------------------


async def test_client_reaches_ready_and_sees_the_guild(local: StubbedDiscord) -> None:
    async with running(new_client(), "token-one") as client:
        assert client.user is not None and client.user.bot
        assert client.user.id == local.bot_user_id("token-one")
        guild = client.get_guild(local.guild_id)
        assert guild is not None and guild.chunked
        assert guild.owner_id == local.tester_id
        voice = guild.get_channel(local.voice_channel_id)
        text = guild.get_channel(local.text_channel_id)
        assert isinstance(voice, discord.VoiceChannel) and voice.bitrate == 64000
        assert isinstance(text, discord.TextChannel)
        names = {m.name for m in guild.members}
        assert names == {"tester", "Speaker 1", "Speaker 2", client.user.name}
        assert sorted(m.name for m in voice.members) == ["Speaker 1", "Speaker 2"]
        me = guild.me
        perms = voice.permissions_for(me)
        assert perms.connect and perms.speak and text.permissions_for(me).send_messages
        app = await client.application_info()
        assert app.id == client.user.id and app.owner.id == local.tester_id


async def test_speakers_are_in_voice_for_bots_without_the_members_intent(local: StubbedDiscord) -> None:
    intents = discord.Intents.default()
    assert not intents.members
    async with running(new_client(intents), "no-members") as client:
        guild = client.get_guild(local.guild_id)
        assert guild is not None
        speaker_ids = [uid for uid, name in local.stub.speakers.items()]
        assert len(speaker_ids) == 2
        for uid in speaker_ids:
            member = guild.get_member(uid)
            assert member is not None and member.voice is not None
            assert member.voice.channel is not None and member.voice.channel.id == local.voice_channel_id
        assert guild.get_member(local.tester_id) is None  # not in voice: only chunking would bring it


async def test_two_tokens_are_two_bots_that_see_each_other(local: StubbedDiscord) -> None:
    async with running(new_client(), "alpha") as first, running(new_client(), "beta") as second:
        assert first.user is not None and second.user is not None
        assert first.user.id != second.user.id
        assert first.user.id == local.bot_user_id("alpha")
        guild = first.get_guild(local.guild_id)
        assert guild is not None
        await eventually(lambda: guild.get_member(second.user.id) is not None)  # GUILD_MEMBER_ADD
        other = second.get_guild(local.guild_id)
        assert other is not None and other.get_member(first.user.id) is not None
    assert {local.bot_user_id("alpha"), local.bot_user_id("beta")} <= set(local.members)


async def test_late_speaker_reaches_connected_bots(local: StubbedDiscord) -> None:
    async with running(new_client(), "watcher") as client:
        guild = client.get_guild(local.guild_id)
        assert guild is not None
        local.add_speaker(name="Latecomer")
        latecomer = next(uid for uid, name in local.stub.speakers.items() if name == "Latecomer")
        await eventually(lambda: (m := guild.get_member(latecomer)) is not None and m.voice is not None)
        with pytest.raises(ValueError, match="already"):
            local.add_speaker(user_id=latecomer)
        local.remove_speaker(latecomer)
        await eventually(lambda: (m := guild.get_member(latecomer)) is not None and m.voice is None)
        assert latecomer not in local.voice_channel_members


async def test_prefix_command_sent_by_the_tester_reaches_a_bot_command(local: StubbedDiscord) -> None:
    bot = commands.Bot(command_prefix="!", intents=all_intents(), guild_ready_timeout=0.05)
    seen: list[tuple[int, str]] = []

    @bot.command()
    async def echo(ctx: commands.Context[commands.Bot], *, text: str) -> None:
        seen.append((ctx.author.id, text))
        await ctx.reply(f"echo: {text}")

    async with running(bot, "command-bot"):
        sent = local.send_message(local.text_channel_id, "!echo hello there")
        reply = await local.wait_for_message(author=local.bot_user_id("command-bot"), after=sent["id"])
    assert seen == [(local.tester_id, "hello there")]
    assert reply["content"] == "echo: hello there"
    assert reply["message_reference"]["message_id"] == sent["id"]


async def test_message_content_is_redacted_without_the_intent_unless_mentioned(local: StubbedDiscord) -> None:
    intents = discord.Intents.default()
    intents.message_content = False
    client = new_client(intents)
    contents: list[str] = []

    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)

    client.on_message = on_message  # type: ignore[attr-defined]
    async with running(client, "no-content"):
        assert client.user is not None
        local.send_message(local.text_channel_id, "secret")
        local.send_message(local.text_channel_id, f"<@{client.user.id}> hi")
        await eventually(lambda: len(contents) == 2)
    assert contents == ["", f"<@{local.bot_user_id('no-content')}> hi"]


class RecordingVoice(discord.VoiceProtocol):
    """A custom voice protocol (public discord.py API) that records the two voice updates."""

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        super().__init__(client, channel)
        self.states: list[dict[str, Any]] = []
        self.servers: list[dict[str, Any]] = []
        self.both = asyncio.Event()

    async def on_voice_state_update(self, data: Any) -> None:
        self.states.append(dict(data))
        self._check()

    async def on_voice_server_update(self, data: Any) -> None:
        self.servers.append(dict(data))
        self._check()

    def _check(self) -> None:
        if self.states and self.servers:
            self.both.set()

    async def connect(
        self, *, timeout: float, reconnect: bool, self_deaf: bool = False, self_mute: bool = False
    ) -> None:
        channel = cast(discord.VoiceChannel, self.channel)
        await channel.guild.change_voice_state(channel=channel, self_mute=self_mute, self_deaf=self_deaf)
        await asyncio.wait_for(self.both.wait(), timeout)

    async def disconnect(self, *, force: bool = False) -> None:
        channel = cast(discord.VoiceChannel, self.channel)
        await channel.guild.change_voice_state(channel=None)
        self.cleanup()


async def test_voice_state_update_gives_voice_server_update(local: StubbedDiscord) -> None:
    async with running(new_client(), "voice-bot") as client, running(new_client(), "observer") as observer:
        assert client.user is not None
        bot_id = client.user.id
        guild = client.get_guild(local.guild_id)
        assert guild is not None
        channel = guild.get_channel(local.voice_channel_id)
        assert isinstance(channel, discord.VoiceChannel)

        vc = await channel.connect(cls=RecordingVoice, timeout=3)
        assert isinstance(vc, RecordingVoice)
        (server,) = vc.servers
        assert server["endpoint"] == f"127.0.0.1:{STUB_VOICE_PORT}"
        assert int(server["guild_id"]) == local.guild_id
        expected = local.stub.expected[bot_id]
        assert server["token"] == expected["token"]
        assert vc.states[0]["session_id"] == expected["session_id"]
        assert client.ws is not None and expected["session_id"] == client.ws.session_id
        assert expected["channel_id"] == local.voice_channel_id
        assert bot_id in local.voice_channel_members

        seen = observer.get_guild(local.guild_id)
        assert seen is not None
        await eventually(lambda: (m := seen.get_member(bot_id)) is not None and m.voice is not None)

        await vc.disconnect()
        await local.wait_for_voice(bot_id, connected=False)
        assert local.stub.ended == [bot_id]
        await eventually(lambda: (m := seen.get_member(bot_id)) is not None and m.voice is None)


async def test_a_closed_client_leaves_voice_when_its_session_expires(local: StubbedDiscord) -> None:
    local.gateway.resume_window = 0.1  # discord.py closes with 4000, so the session waits for a resume first
    async with running(new_client(), "leaver") as client:
        assert client.user is not None
        guild = client.get_guild(local.guild_id)
        assert guild is not None
        channel = guild.get_channel(local.voice_channel_id)
        assert isinstance(channel, discord.VoiceChannel)
        await guild.change_voice_state(channel=channel)
        await local.wait_for_voice(client.user.id)
    await local.wait_for_voice(local.bot_user_id("leaver"), connected=False)
    assert local.stub.ended == [local.bot_user_id("leaver")]
    assert not local.gateway.sessions_of(local.bot_user_id("leaver"))


async def test_reconnect_resumes_and_delivers_each_message_once(local: StubbedDiscord) -> None:
    client = new_client()
    messages: list[str] = []
    resumed = asyncio.Event()

    async def on_message(message: discord.Message) -> None:
        messages.append(message.content)

    async def on_resumed() -> None:
        resumed.set()

    client.on_message = on_message  # type: ignore[attr-defined]
    client.on_resumed = on_resumed  # type: ignore[attr-defined]
    async with running(client, "resumer"):
        assert client.ws is not None
        session_id = client.ws.session_id
        assert local.force_gateway_reconnect(local.bot_user_id("resumer")) == 1
        local.send_message(local.text_channel_id, "while reconnecting")
        await asyncio.wait_for(resumed.wait(), 3)
        local.send_message(local.text_channel_id, "after resume")
        await eventually(lambda: len(messages) >= 2)
        await asyncio.sleep(0.05)
        assert client.ws.session_id == session_id
    assert messages == ["while reconnecting", "after resume"]


class EagerClient(discord.Client):
    """Re-identifies at once: discord.py's default hook sleeps 5 s before every non-initial IDENTIFY."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        pass


async def test_invalid_session_makes_the_client_identify_again(local: StubbedDiscord) -> None:
    client = EagerClient(intents=all_intents(), guild_ready_timeout=0.05)
    readies = asyncio.Queue[None]()

    async def on_ready() -> None:
        readies.put_nowait(None)

    async with running(client, "invalidated"):
        client.on_ready = on_ready  # type: ignore[attr-defined]
        assert client.ws is not None
        old = client.ws.session_id
        assert local.invalidate_gateway_session(local.bot_user_id("invalidated")) == 1
        await asyncio.wait_for(readies.get(), 3)
        assert client.ws.session_id not in (None, old)
        assert [s.session_id for s in local.gateway.sessions_of(local.bot_user_id("invalidated"))] == [
            client.ws.session_id
        ]


# -- raw websocket ---------------------------------------------------------------------------------------


async def _receive(ws: aiohttp.ClientWebSocketResponse[Any]) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def _close_code(ws: aiohttp.ClientWebSocketResponse[Any]) -> int | None:
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return ws.close_code


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def test_hello_heartbeat_identify_and_sequence_numbers(
    local: StubbedDiscord, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(local.gateway_url + "?v=10&encoding=json&compress=zlib-stream") as ws:
        hello = await _receive(ws)
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await ws.send_json({"op": 1, "d": None})
        assert (await _receive(ws))["op"] == 11
        await ws.send_json({"op": 2, "d": {"token": "raw", "intents": 1 << 0 | 1 << 7, "properties": {}}})
        ready = await _receive(ws)
        assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
        assert ready["d"]["resume_gateway_url"] == local.gateway_url
        assert ready["d"]["guilds"] == [{"id": str(local.guild_id), "unavailable": True}]
        create = await _receive(ws)
        assert (create["t"], create["s"]) == ("GUILD_CREATE", 2)
        assert create["d"]["member_count"] == len(local.members)
        assert len(create["d"]["voice_states"]) == 2


async def test_request_guild_members_answers_with_one_chunk(
    local: StubbedDiscord, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(local.gateway_url + "?v=10&encoding=json") as ws:
        await _receive(ws)
        await ws.send_json({"op": 2, "d": {"token": "chunky", "intents": 3, "properties": {}}})
        await _receive(ws)
        await _receive(ws)
        request = {"guild_id": str(local.guild_id), "user_ids": [str(local.tester_id), "42"], "nonce": "n1"}
        await ws.send_json({"op": 8, "d": request})
        chunk = await _receive(ws)
        assert chunk["t"] == "GUILD_MEMBERS_CHUNK"
        assert [m["user"]["username"] for m in chunk["d"]["members"]] == ["tester"]
        assert chunk["d"]["not_found"] == ["42"]
        assert (chunk["d"]["nonce"], chunk["d"]["chunk_index"], chunk["d"]["chunk_count"]) == ("n1", 0, 1)
        await ws.send_json({"op": 8, "d": {"guild_id": str(local.guild_id), "query": "speaker", "limit": 1}})
        chunk = await _receive(ws)
        assert [m["user"]["username"] for m in chunk["d"]["members"]] == ["Speaker 1"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"op": 2, "d": {"token": "", "intents": 0}}, 4004),
        ({"op": 2, "d": {"token": "x"}}, 4013),
        ({"op": 2, "d": {"token": "x", "intents": 0, "shard": [1, 1]}}, 4010),
        ({"op": 4, "d": {"guild_id": "1", "channel_id": None}}, 4003),
        ({"op": 99, "d": None}, 4003),
    ],
)
async def test_bad_first_payloads_close_with_discord_codes(
    local: StubbedDiscord, session: aiohttp.ClientSession, payload: dict[str, Any], code: int
) -> None:
    async with session.ws_connect(local.gateway_url + "?v=10&encoding=json") as ws:
        await _receive(ws)
        await ws.send_json(payload)
        assert await _close_code(ws) == code


async def test_unknown_opcode_after_identify_and_garbage_close(
    local: StubbedDiscord, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(local.gateway_url) as ws:
        await _receive(ws)
        await ws.send_json({"op": 2, "d": {"token": "x", "intents": 0}})
        await _receive(ws)
        await _receive(ws)
        await ws.send_json({"op": 2, "d": {"token": "x", "intents": 0}})
        assert await _close_code(ws) == 4005
    async with session.ws_connect(local.gateway_url) as ws:
        await _receive(ws)
        await ws.send_str("{not json")
        assert await _close_code(ws) == 4002
    async with session.ws_connect(local.gateway_url + "?v=6") as ws:
        assert await _close_code(ws) == 4012


async def test_resume_of_an_unknown_session_is_refused(local: StubbedDiscord, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(local.gateway_url) as ws:
        await _receive(ws)
        await ws.send_json({"op": 6, "d": {"token": "x", "session_id": "nope", "seq": 3}})
        invalid = await _receive(ws)
        assert (invalid["op"], invalid["d"]) == (9, False)


async def test_resume_replays_what_a_dropped_connection_missed(
    local: StubbedDiscord, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(local.gateway_url) as ws:
        await _receive(ws)
        await ws.send_json({"op": 2, "d": {"token": "replayer", "intents": 1 | 1 << 9 | 1 << 15}})
        ready = await _receive(ws)
        await _receive(ws)
        session_id = ready["d"]["session_id"]
        await ws.close(code=4000)  # abnormal for Discord: the session stays resumable
    local.send_message(local.text_channel_id, "missed")
    async with session.ws_connect(local.gateway_url) as ws:
        await _receive(ws)
        await ws.send_json({"op": 6, "d": {"token": "replayer", "session_id": session_id, "seq": 2}})
        missed = await _receive(ws)
        assert (missed["t"], missed["s"], missed["d"]["content"]) == ("MESSAGE_CREATE", 3, "missed")
        resumed = await _receive(ws)
        assert (resumed["t"], resumed["s"]) == ("RESUMED", 4)
