"""The local Discord's REST API under ``/api/v10``: what discord.py calls to log in, send messages and sync commands.

Every request but ``GET /gateway`` needs ``Authorization: Bot <token>``; each distinct token is its own bot user.
Errors use Discord's JSON shape (``{"message": ..., "code": ...}``) so discord.py raises its usual exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web

from .gateway import Gateway
from .state import JSON, GuildState, LocalUser

__all__ = ("API_PREFIX", "RestApi")

API_PREFIX = "/api/v10"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_UNKNOWN_CHANNEL = (10003, "Unknown Channel")
_UNKNOWN_GUILD = (10004, "Unknown Guild")
_UNKNOWN_MEMBER = (10007, "Unknown Member")
_UNKNOWN_MESSAGE = (10008, "Unknown Message")
_UNKNOWN_USER = (10013, "Unknown User")


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """JSON with ``Content-Type: application/json`` exactly (no charset): discord.py compares the header verbatim."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def error_response(status: int, message: str, code: int = 0) -> web.Response:
    """A JSON error in Discord's shape."""
    return json_response({"message": message, "code": code}, status=status)


def _not_found(what: tuple[int, str]) -> web.Response:
    return error_response(404, what[1], what[0])


def _token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bot <token>``, or None when missing or malformed."""
    header = request.headers.get("Authorization", "")
    token = header[4:] if header.startswith("Bot ") else ""
    return token if token.strip() and token == token.strip() else None


def _id(request: web.Request, name: str) -> int | None:
    try:
        return int(request.match_info[name])
    except (KeyError, ValueError):
        return None


class RestApi:
    """REST handlers over a :class:`GuildState`; MESSAGE_CREATE goes out through the :class:`Gateway`.

    Parameters
    ----------
    guild:
        The local guild.
    gateway:
        Dispatches what REST calls create.
    """

    def __init__(self, guild: GuildState, gateway: Gateway) -> None:
        self.guild = guild
        self.gateway = gateway

    def install(self, app: web.Application) -> None:
        """Add the API routes, the auth middleware and a JSON 404 for every other ``/api`` path."""
        app.middlewares.append(self._authenticate)
        p = API_PREFIX
        app.router.add_get(p + "/gateway", self.get_gateway)
        app.router.add_get(p + "/gateway/bot", self.get_gateway_bot)
        app.router.add_get(p + "/users/@me", self.get_me)
        app.router.add_get(p + "/users/{user_id}", self.get_user)
        app.router.add_get(p + "/oauth2/applications/@me", self.get_application)
        app.router.add_get(p + "/applications/@me", self.get_application)
        app.router.add_get(p + "/applications/{app_id}/commands", self.get_commands)
        app.router.add_put(p + "/applications/{app_id}/commands", self.put_commands)
        app.router.add_get(p + "/applications/{app_id}/guilds/{guild_id}/commands", self.get_commands)
        app.router.add_put(p + "/applications/{app_id}/guilds/{guild_id}/commands", self.put_commands)
        app.router.add_get(p + "/guilds/{guild_id}", self.get_guild)
        app.router.add_get(p + "/guilds/{guild_id}/channels", self.get_guild_channels)
        app.router.add_get(p + "/guilds/{guild_id}/members", self.get_members)
        app.router.add_get(p + "/guilds/{guild_id}/members/{user_id}", self.get_member)
        app.router.add_get(p + "/channels/{channel_id}", self.get_channel)
        app.router.add_get(p + "/channels/{channel_id}/messages", self.get_messages)
        app.router.add_post(p + "/channels/{channel_id}/messages", self.post_message)
        app.router.add_get(p + "/channels/{channel_id}/messages/{message_id}", self.get_message)
        app.router.add_post(p + "/channels/{channel_id}/typing", self.post_typing)
        app.router.add_route("*", "/api/{tail:.*}", self.not_found)
        app.router.add_get("/local-discord/attachments/{attachment_id}/{filename}", self.get_attachment)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith(API_PREFIX + "/") or path == API_PREFIX + "/gateway":
            return await handler(request)
        if _token(request) is None:
            return error_response(401, "401: Unauthorized")
        return await handler(request)

    def _bot(self, request: web.Request) -> LocalUser:
        """The bot user of an authenticated request (the middleware let it through)."""
        return self.guild.bot_for_token(_token(request) or "")

    # -- gateway and identity ----------------------------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway.url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 86_400_000, "max_concurrency": 1}
        return json_response({"url": self.gateway.url, "shards": 1, "session_start_limit": limit})

    async def get_me(self, request: web.Request) -> web.Response:
        me = self._bot(request)
        return json_response({**me.payload(), "verified": True, "mfa_enabled": False, "email": None})

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.guild.users.get(_id(request, "user_id") or 0)
        return _not_found(_UNKNOWN_USER) if user is None else json_response(user.payload())

    async def get_application(self, request: web.Request) -> web.Response:
        return json_response(self.guild.application_payload(self._bot(request)))

    async def get_commands(self, request: web.Request) -> web.Response:
        key = (_id(request, "app_id") or 0, _id(request, "guild_id"))
        return json_response(self.guild.commands.get(key, []))

    async def put_commands(self, request: web.Request) -> web.Response:
        """Bulk overwrite: echo the commands back with ids, as Discord does for ``tree.sync()``."""
        app_id, guild_id = _id(request, "app_id") or 0, _id(request, "guild_id")
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "400: Bad Request", 50109)
        if not isinstance(body, list):
            return error_response(400, "Invalid Form Body", 50035)
        stored: list[JSON] = []
        for command in body:
            if not isinstance(command, dict):
                return error_response(400, "Invalid Form Body", 50035)
            entry: JSON = {
                "type": 1,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                **command,
                "id": str(self.guild.new_id()),
                "application_id": str(app_id),
                "version": str(self.guild.new_id()),
            }
            if guild_id is not None:
                entry["guild_id"] = str(guild_id)
            stored.append(entry)
        self.guild.commands[(app_id, guild_id)] = stored
        return json_response(stored)

    # -- guild -------------------------------------------------------------------------------------------

    async def get_guild(self, request: web.Request) -> web.Response:
        if _id(request, "guild_id") != self.guild.id:
            return _not_found(_UNKNOWN_GUILD)
        return json_response({**self.guild.guild_payload(), "approximate_member_count": len(self.guild.member_ids)})

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        if _id(request, "guild_id") != self.guild.id:
            return _not_found(_UNKNOWN_GUILD)
        ids = (self.guild.text_channel_id, self.guild.voice_channel_id)
        return json_response([self.guild.channel_payload(c) for c in ids])

    async def get_members(self, request: web.Request) -> web.Response:
        if _id(request, "guild_id") != self.guild.id:
            return _not_found(_UNKNOWN_GUILD)
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "1"))))
            after = int(request.query.get("after", "0"))
        except ValueError:
            return error_response(400, "Invalid Form Body", 50035)
        ids = sorted(uid for uid in self.guild.member_ids if uid > after)[:limit]
        return json_response([self.guild.member_payload(uid) for uid in ids])

    async def get_member(self, request: web.Request) -> web.Response:
        user_id = _id(request, "user_id")
        if _id(request, "guild_id") != self.guild.id:
            return _not_found(_UNKNOWN_GUILD)
        if user_id is None or not self.guild.is_member(user_id):
            return _not_found(_UNKNOWN_MEMBER)
        return json_response(self.guild.member_payload(user_id))

    # -- channels and messages ---------------------------------------------------------------------------

    def _channel(self, request: web.Request) -> int | None:
        channel_id = _id(request, "channel_id")
        return channel_id if channel_id is not None and self.guild.is_channel(channel_id) else None

    async def get_channel(self, request: web.Request) -> web.Response:
        channel_id = self._channel(request)
        if channel_id is None:
            return _not_found(_UNKNOWN_CHANNEL)
        return json_response(self.guild.channel_payload(channel_id))

    async def get_messages(self, request: web.Request) -> web.Response:
        channel_id = self._channel(request)
        if channel_id is None:
            return _not_found(_UNKNOWN_CHANNEL)
        try:
            limit = max(1, min(100, int(request.query.get("limit", "50"))))
            before = int(request.query["before"]) if "before" in request.query else None
            after = int(request.query["after"]) if "after" in request.query else None
        except ValueError:
            return error_response(400, "Invalid Form Body", 50035)
        found = self.guild.messages(channel_id)
        if before is not None:
            found = [m for m in found if int(m["id"]) < before]
        if after is not None:
            found = [m for m in found if int(m["id"]) > after][:limit]
        return json_response(list(reversed(found[-limit:])))

    async def get_message(self, request: web.Request) -> web.Response:
        channel_id = self._channel(request)
        if channel_id is None:
            return _not_found(_UNKNOWN_CHANNEL)
        message = self.guild.get_message(channel_id, _id(request, "message_id") or 0)
        return _not_found(_UNKNOWN_MESSAGE) if message is None else json_response(message)

    async def post_message(self, request: web.Request) -> web.Response:
        """Create a message (JSON body, or multipart with ``payload_json`` and ``files[n]``) and dispatch it."""
        channel_id = self._channel(request)
        if channel_id is None:
            return _not_found(_UNKNOWN_CHANNEL)
        try:
            body, files = await _read_message_body(request)
        except ValueError:
            return error_response(400, "400: Bad Request", 50109)
        content = body.get("content") or ""
        embeds = body.get("embeds") or []
        if not isinstance(content, str) or not isinstance(embeds, list):
            return error_response(400, "Invalid Form Body", 50035)
        if not content and not embeds and not files and not body.get("sticker_ids"):
            return error_response(400, "Cannot send an empty message", 50006)
        if len(content) > 2000:
            return error_response(400, "Invalid Form Body", 50035)
        reference = body.get("message_reference")
        reference_id = None
        if isinstance(reference, dict):
            try:
                reference_id = int(reference["message_id"])
            except (KeyError, TypeError, ValueError):
                return error_response(400, "Invalid Form Body", 50035)
        message = self.guild.create_message(
            channel_id,
            self._bot(request).id,
            content,
            nonce=body.get("nonce"),
            tts=bool(body.get("tts")),
            embeds=embeds,
            reference_id=reference_id,
            files=files,
        )
        self.gateway.deliver_message(message)
        return json_response(message)

    async def post_typing(self, request: web.Request) -> web.Response:
        if self._channel(request) is None:
            return _not_found(_UNKNOWN_CHANNEL)
        return web.Response(status=204)

    async def get_attachment(self, request: web.Request) -> web.Response:
        try:
            filename, data, content_type = self.guild.attachment(_id(request, "attachment_id") or 0)
        except KeyError:
            return web.Response(status=404, text="Not Found")
        if filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, content_type=content_type or "application/octet-stream")

    async def not_found(self, request: web.Request) -> web.Response:
        return error_response(404, "404: Not Found")


async def _read_message_body(request: web.Request) -> tuple[JSON, list[tuple[str, bytes, str | None]]]:
    """The JSON part of a message request and its uploaded files; ValueError when unreadable."""
    if not request.content_type.startswith("multipart/"):
        body: Any = await request.json()
        if not isinstance(body, dict):
            raise ValueError("message body is not an object")
        return body, []
    body = {}
    files: list[tuple[str, bytes, str | None]] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        data = await part.read()
        if part.name == "payload_json":
            body = json.loads(data)
            if not isinstance(body, dict):
                raise ValueError("payload_json is not an object")
        elif part.filename:
            files.append((part.filename, bytes(data), part.headers.get("Content-Type")))
    return body, files
