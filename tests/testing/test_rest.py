"""The local Discord's REST API: raw HTTP checks and discord.py's own calls against it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import discord
import pytest

from discord_voicerecv.testing import LocalDiscord, restore_discord, use_local_discord
from discord_voicerecv.testing.voice import VoiceServer

pytestmark = pytest.mark.e2e


class _NoVoice:
    """The REST API never touches voice: a stand-in without sockets."""

    port = 65002

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class RestOnlyDiscord(LocalDiscord):
    def _create_voice_server(self, ssl_context: Any) -> VoiceServer:
        return cast(VoiceServer, _NoVoice())


@pytest.fixture
async def local() -> AsyncIterator[RestOnlyDiscord]:
    async with RestOnlyDiscord() as server:
        use_local_discord(server.url)
        try:
            yield server
        finally:
            restore_discord()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bot(token: str) -> dict[str, str]:
    return {"Authorization": f"Bot {token}"}


async def test_users_me_is_a_stable_bot_user_per_token(local: RestOnlyDiscord, http: aiohttp.ClientSession) -> None:
    ids = []
    for token in ("one", "two", "one"):
        async with http.get(local.url + "/api/v10/users/@me", headers=bot(token)) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"  # discord.py compares it verbatim
            me = await response.json()
            assert me["bot"] is True
            ids.append(int(me["id"]))
    assert ids[0] == ids[2] == local.bot_user_id("one") and ids[1] != ids[0]
    assert local.bot_user_id("one") == RestOnlyDiscord().bot_user_id("one")  # stable across instances


@pytest.mark.parametrize("header", [None, "Bot ", "Bearer abc", "Bot  padded", "abc"])
async def test_missing_or_malformed_token_is_401(
    local: RestOnlyDiscord, http: aiohttp.ClientSession, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    async with http.get(local.url + "/api/v10/users/@me", headers=headers) as response:
        assert response.status == 401
        assert await response.json() == {"message": "401: Unauthorized", "code": 0}


async def test_gateway_endpoints(local: RestOnlyDiscord, http: aiohttp.ClientSession) -> None:
    async with http.get(local.url + "/api/v10/gateway") as response:
        assert await response.json() == {"url": local.gateway_url}
    async with http.get(local.url + "/api/v10/gateway/bot", headers=bot("g")) as response:
        data = await response.json()
    assert data["url"] == local.gateway_url and data["shards"] == 1
    assert data["session_start_limit"]["max_concurrency"] == 1


async def test_unknown_routes_and_ids_use_discord_error_shapes(
    local: RestOnlyDiscord, http: aiohttp.ClientSession
) -> None:
    cases = [
        ("GET", "/api/v10/nothing/here", 404, 0),
        ("DELETE", f"/api/v10/channels/{local.text_channel_id}", 404, 0),
        ("GET", "/api/v10/channels/123", 404, 10003),
        ("GET", f"/api/v10/channels/{local.text_channel_id}/messages/5", 404, 10008),
        ("GET", "/api/v10/guilds/1", 404, 10004),
        ("GET", f"/api/v10/guilds/{local.guild_id}/members/5", 404, 10007),
        ("GET", "/api/v10/users/5", 404, 10013),
    ]
    for method, path, status, code in cases:
        async with http.request(method, local.url + path, headers=bot("e")) as response:
            assert response.status == status, path
            body = await response.json()
            assert body["code"] == code and isinstance(body["message"], str), path


async def test_empty_message_is_rejected(local: RestOnlyDiscord, http: aiohttp.ClientSession) -> None:
    url = f"{local.url}/api/v10/channels/{local.text_channel_id}/messages"
    async with http.post(url, json={"content": ""}, headers=bot("e")) as response:
        assert response.status == 400
        assert (await response.json())["code"] == 50006
    assert local.messages() == []


async def test_discord_http_client_logs_in_and_reads_the_guild(local: RestOnlyDiscord) -> None:
    client = discord.Client(intents=discord.Intents.default())
    try:
        await client.login("rest-token")
        assert client.user is not None and client.user.id == local.bot_user_id("rest-token")
        assert client.application_id == client.user.id
        guild = await client.fetch_guild(local.guild_id)
        assert guild.name == "Local Discord" and guild.owner_id == local.tester_id
        channel = await client.fetch_channel(local.voice_channel_id)
        assert isinstance(channel, discord.VoiceChannel)
        tester = await client.fetch_user(local.tester_id)
        assert tester.name == "tester" and not tester.bot
        member = await guild.fetch_member(local.tester_id)
        assert member.id == local.tester_id
    finally:
        await client.close()


async def test_empty_token_fails_login_like_discord(local: RestOnlyDiscord) -> None:
    client = discord.Client(intents=discord.Intents.default())
    try:
        with pytest.raises(discord.LoginFailure):
            await client.login("   ")
    finally:
        await client.close()


async def test_messages_attachments_and_history_through_discord_py(local: RestOnlyDiscord) -> None:
    client = discord.Client(intents=discord.Intents.default())
    try:
        await client.login("uploader")
        channel = await client.fetch_channel(local.text_channel_id)
        assert isinstance(channel, discord.TextChannel)
        first = await channel.send("hello")
        assert first.content == "hello" and first.author.id == client.user.id  # type: ignore[union-attr]
        wav = b"RIFF" + bytes(range(256)) * 4
        second = await channel.send("recording", file=discord.File(io.BytesIO(wav), filename="take.wav"))
        (attachment,) = second.attachments
        assert attachment.filename == "take.wav" and attachment.size == len(wav)
        assert await attachment.read() == wav  # served by the local Discord
        assert local.attachment(local.messages()[-1]["attachments"][0]) == wav
        reply = await first.reply("a reply")
        assert reply.reference is not None and reply.reference.message_id == first.id
        fetched = await channel.fetch_message(second.id)
        assert fetched.content == "recording"
        history = [m.content async for m in channel.history(limit=10)]
        assert history == ["a reply", "recording", "hello"]
        older = [m.content async for m in channel.history(limit=10, before=second)]
        assert older == ["hello"]
        async with channel.typing():
            pass
    finally:
        await client.close()


async def test_wait_for_message_sees_a_rest_message(local: RestOnlyDiscord, http: aiohttp.ClientSession) -> None:
    url = f"{local.url}/api/v10/channels/{local.voice_channel_id}/messages"
    waiter = asyncio.create_task(local.wait_for_message(author=local.bot_user_id("w"), timeout=2))
    await asyncio.sleep(0)
    async with http.post(url, json={"content": "in the voice chat"}, headers=bot("w")) as response:
        assert response.status == 200
    message = await waiter
    assert message["content"] == "in the voice chat"
    assert int(message["channel_id"]) == local.voice_channel_id
    with pytest.raises(asyncio.TimeoutError):
        await local.wait_for_message(timeout=0.05)


async def test_send_message_validates_channel_and_author(local: RestOnlyDiscord) -> None:
    with pytest.raises(ValueError, match="channel"):
        local.send_message(1, "x")
    with pytest.raises(ValueError, match="member"):
        local.send_message(local.text_channel_id, "x", author=1)
    sent = local.send_message(local.text_channel_id, f"hi <@{local.tester_id}>")
    assert [int(m["id"]) for m in sent["mentions"]] == [local.tester_id]


async def test_application_command_sync_echoes_commands(local: RestOnlyDiscord) -> None:
    client = discord.Client(intents=discord.Intents.default())
    tree = discord.app_commands.CommandTree(client)

    @tree.command(name="record", description="start recording")
    async def record(interaction: discord.Interaction) -> None:
        pass

    try:
        await client.login("slash")
        synced = await tree.sync()
        assert [c.name for c in synced] == ["record"]
        assert synced[0].application_id == client.application_id
        again = await tree.fetch_commands()
        assert [c.id for c in again] == [c.id for c in synced]
    finally:
        await client.close()
