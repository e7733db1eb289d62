"""The local Discord's world: one guild, its users, channels, voice states and messages.

Pure bookkeeping with no sockets: the gateway and the REST API read and change it, and it renders the JSON payloads
discord.py parses (shapes follow discord.py's ``types/`` package).
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import itertools
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ("DISCORD_EPOCH_MS", "GuildState", "LocalUser", "VoiceStateRecord", "stable_snowflake")

JSON = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000
_STABLE_BASE_MS = 1_672_531_200_000 - DISCORD_EPOCH_MS  # 2023-01-01: stable ids look like real, recent ones
_STABLE_SPAN_MS = 365 * 24 * 3600 * 1000

_VIEW_CHANNEL = 1 << 10
_SEND_MESSAGES = 1 << 11
_EMBED_LINKS = 1 << 14
_ATTACH_FILES = 1 << 15
_READ_MESSAGE_HISTORY = 1 << 16
_ADD_REACTIONS = 1 << 6
_CONNECT = 1 << 20
_SPEAK = 1 << 21
_USE_VAD = 1 << 25
EVERYONE_PERMISSIONS = (
    _VIEW_CHANNEL
    | _SEND_MESSAGES
    | _EMBED_LINKS
    | _ATTACH_FILES
    | _READ_MESSAGE_HISTORY
    | _ADD_REACTIONS
    | _CONNECT
    | _SPEAK
    | _USE_VAD
)
"""Permissions of ``@everyone``: enough to read and send messages, connect and speak."""

_MENTION = re.compile(r"<@!?(\d{1,20})>")
_MESSAGES_KEPT = 500


def stable_snowflake(seed: str) -> int:
    """A snowflake derived from ``seed``: the same seed gives the same id in every run and every process.

    The timestamp part falls in 2023 so ``discord.utils.snowflake_time`` gives a plausible date.
    """
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:16], "big")
    millis = _STABLE_BASE_MS + digest % _STABLE_SPAN_MS
    return (millis << 22) | ((digest >> 64) & 0x3FFFFF)


def _iso(when: datetime.datetime) -> str:
    return when.isoformat()


class _SnowflakeClock:
    """Time-ordered unique snowflakes for things created at run time (messages, attachments)."""

    __slots__ = ("_counter", "_lock")

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            increment = next(self._counter) & 0xFFF
        millis = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (millis << 22) | increment


@dataclass(frozen=True, slots=True)
class LocalUser:
    """A user of the local Discord: a bot (one per token), a simulated speaker, or the human tester."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> JSON:
        """The user object as the API sends it."""
        data: JSON = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass(slots=True)
class VoiceStateRecord:
    """Where one user is in voice and the gateway session that put it there."""

    user_id: int
    channel_id: int
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False


@dataclass(slots=True)
class _Attachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None


@dataclass(slots=True)
class _Member:
    user: LocalUser
    joined_at: str
    roles: list[int] = field(default_factory=list)


class GuildState:
    """A guild every bot of a local Discord is in, with a text and a voice channel.

    Parameters
    ----------
    name:
        Guild name shown to bots.
    base_url:
        ``http://host:port`` of the server, used for attachment URLs.
    key / guild_id:
        What sets this guild's ids apart from the first one's (for a local Discord with several guilds).
    """

    def __init__(
        self, *, name: str = "Local Discord", base_url: str = "", key: str = "", guild_id: int | None = None
    ) -> None:
        self.base_url = base_url
        self.name = name
        self.id = guild_id if guild_id is not None else stable_snowflake(f"local-discord:guild{key}")
        self.text_channel_id = stable_snowflake(f"local-discord:text-channel{key}")
        self.voice_channel_id = stable_snowflake(f"local-discord:voice-channel{key}")
        self.tester = LocalUser(stable_snowflake("local-discord:user:tester"), "tester", global_name="Tester")
        self.users: dict[int, LocalUser] = {}
        self._members: dict[int, _Member] = {}
        self.voice_states: dict[int, VoiceStateRecord] = {}
        self.commands: dict[tuple[int, int | None], list[JSON]] = {}
        self._messages: dict[int, collections.deque[JSON]] = {
            self.text_channel_id: collections.deque(maxlen=_MESSAGES_KEPT),
            self.voice_channel_id: collections.deque(maxlen=_MESSAGES_KEPT),
        }
        self._attachments: dict[int, _Attachment] = {}
        self._clock = _SnowflakeClock()
        self.add_member(self.tester)

    # users and members

    def new_id(self) -> int:
        """A fresh time-based snowflake."""
        return self._clock.next()

    def bot_for_token(self, token: str) -> LocalUser:
        """The bot user a token stands for; each distinct token is a distinct bot, stable across runs."""
        user_id = stable_snowflake("local-discord:bot:" + token)
        user = self.users.get(user_id)
        if user is None:
            tag = hashlib.sha256(token.encode()).hexdigest()[:6]
            user = LocalUser(user_id, f"bot-{tag}", bot=True)
            self.users[user_id] = user
        return user

    def add_member(self, user: LocalUser) -> bool:
        """Make ``user`` a guild member; returns False when it already was one."""
        self.users[user.id] = user
        if user.id in self._members:
            return False
        self._members[user.id] = _Member(user, _iso(datetime.datetime.now(datetime.timezone.utc)))
        return True

    def remove_member(self, user_id: int) -> bool:
        """Remove a member (and its voice state); returns False when it was not one."""
        self.voice_states.pop(user_id, None)
        return self._members.pop(user_id, None) is not None

    def is_member(self, user_id: int) -> bool:
        return user_id in self._members

    @property
    def member_ids(self) -> list[int]:
        """Ids of all members, in join order."""
        return list(self._members)

    def member_payload(self, user_id: int, *, with_user: bool = True) -> JSON:
        """The guild member object; ``with_user=False`` gives the partial form messages carry."""
        member = self._members[user_id]
        data: JSON = {
            "roles": [str(r) for r in member.roles],
            "joined_at": member.joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = member.user.payload()
        return data

    def find_members(self, *, query: str = "", limit: int = 0, user_ids: Iterable[int] | None = None) -> list[JSON]:
        """Members matching a REQUEST_GUILD_MEMBERS query: by id, else by username prefix (case-insensitive)."""
        if user_ids is not None:
            wanted = [uid for uid in user_ids if uid in self._members]
        else:
            prefix = query.lower()
            wanted = [uid for uid, m in self._members.items() if m.user.username.lower().startswith(prefix)]
        if limit > 0:
            wanted = wanted[:limit]
        return [self.member_payload(uid) for uid in wanted]

    # voice

    def set_voice_state(
        self,
        user_id: int,
        channel_id: int | None,
        *,
        session_id: str,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> JSON:
        """Move ``user_id`` into ``channel_id`` (None: out of voice) and return the VOICE_STATE_UPDATE payload."""
        if channel_id is None:
            self.voice_states.pop(user_id, None)
            record = VoiceStateRecord(user_id, 0, session_id, self_mute, self_deaf)
        else:
            record = VoiceStateRecord(user_id, channel_id, session_id, self_mute, self_deaf)
            self.voice_states[user_id] = record
        data = self.voice_state_payload(record, with_member=True)
        if channel_id is None:
            data["channel_id"] = None
        return data

    def voice_state_payload(self, record: VoiceStateRecord, *, with_member: bool = False) -> JSON:
        """A voice state object, with the member when it goes out as an event."""
        data: JSON = {
            "guild_id": str(self.id),
            "channel_id": str(record.channel_id),
            "user_id": str(record.user_id),
            "session_id": record.session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": record.self_deaf,
            "self_mute": record.self_mute,
            "self_video": False,
            "self_stream": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }
        if with_member and record.user_id in self._members:
            data["member"] = self.member_payload(record.user_id)
        return data

    # channels and guild

    def is_channel(self, channel_id: int) -> bool:
        return channel_id in self._messages

    def channel_payload(self, channel_id: int) -> JSON:
        """The guild channel object of one of the two channels (KeyError for others)."""
        common: JSON = {
            "id": str(channel_id),
            "guild_id": str(self.id),
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }
        recent = self._messages[channel_id]
        if recent:
            common["last_message_id"] = recent[-1]["id"]
        if channel_id == self.text_channel_id:
            return {**common, "type": 0, "name": "general", "topic": None}
        return {
            **common,
            "type": 2,
            "name": "Voice",
            "bitrate": 64000,
            "user_limit": 0,
            "rtc_region": None,
            "video_quality_mode": 1,
        }

    def role_payloads(self) -> list[JSON]:
        """The guild's roles: only ``@everyone`` (its id is the guild id)."""
        return [
            {
                "id": str(self.id),
                "name": "@everyone",
                "color": 0,
                "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
                "hoist": False,
                "position": 0,
                "permissions": str(EVERYONE_PERMISSIONS),
                "managed": False,
                "mentionable": False,
                "flags": 0,
                "icon": None,
                "unicode_emoji": None,
            }
        ]

    def guild_payload(self, *, member_ids: Iterable[int] | None = None, voice_states: bool = True) -> JSON:
        """The guild object; with ``member_ids`` it is the GUILD_CREATE form (channels, members, voice states)."""
        data: JSON = {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.tester.id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": self.role_payloads(),
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": str(self.text_channel_id),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
        }
        if member_ids is None:
            return data
        data.update(
            {
                "unavailable": False,
                "large": False,
                "member_count": len(self._members),
                "joined_at": _iso(datetime.datetime.now(datetime.timezone.utc)),
                "channels": [self.channel_payload(self.text_channel_id), self.channel_payload(self.voice_channel_id)],
                "threads": [],
                "presences": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
                "members": [self.member_payload(uid) for uid in dict.fromkeys(member_ids) if uid in self._members],
                "voice_states": [self.voice_state_payload(r) for r in self.voice_states.values()]
                if voice_states
                else [],
            }
        )
        return data

    def application_payload(self, bot: LocalUser) -> JSON:
        """The bot's application: same id as the bot user, owned by the tester."""
        return {
            "id": str(bot.id),
            "name": bot.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot": bot.payload(),
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": hashlib.sha256(str(bot.id).encode()).hexdigest(),
            "owner": self.tester.payload(),
            "team": None,
            "flags": 0,
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": 1,
        }

    # messages

    def create_message(
        self,
        channel_id: int,
        author_id: int,
        content: str,
        *,
        nonce: str | int | None = None,
        tts: bool = False,
        embeds: list[JSON] | None = None,
        reference_id: int | None = None,
        files: Iterable[tuple[str, bytes, str | None]] = (),
    ) -> JSON:
        """Store a message from ``author_id`` in ``channel_id`` and return its full payload.

        ``files`` are ``(filename, data, content_type)``; they become attachments served by the local Discord.
        """
        author = self.users[author_id]
        mentioned = [int(m) for m in _MENTION.findall(content)]
        message: JSON = {
            "id": str(self.new_id()),
            "channel_id": str(channel_id),
            "guild_id": str(self.id),
            "author": author.payload(),
            "content": content,
            "timestamp": _iso(datetime.datetime.now(datetime.timezone.utc)),
            "edited_timestamp": None,
            "tts": tts,
            "mention_everyone": "@everyone" in content,
            "mentions": [
                {**self.users[uid].payload(), "member": self.member_payload(uid, with_user=False)}
                for uid in dict.fromkeys(mentioned)
                if uid in self._members
            ],
            "mention_roles": [],
            "attachments": [self._store_attachment(*f) for f in files],
            "embeds": list(embeds or []),
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if author_id in self._members:
            message["member"] = self.member_payload(author_id, with_user=False)
        if nonce is not None:
            message["nonce"] = nonce
        if reference_id is not None:
            message["type"] = 19
            message["message_reference"] = {
                "type": 0,
                "message_id": str(reference_id),
                "channel_id": str(channel_id),
                "guild_id": str(self.id),
            }
            referenced = self.get_message(channel_id, reference_id)
            if referenced is not None:
                message["referenced_message"] = referenced
        self._messages[channel_id].append(message)
        return message

    def get_message(self, channel_id: int, message_id: int) -> JSON | None:
        wanted = str(message_id)
        return next((m for m in self._messages.get(channel_id, ()) if m["id"] == wanted), None)

    def messages(self, channel_id: int) -> list[JSON]:
        """Messages kept for a channel, oldest first."""
        return list(self._messages.get(channel_id, ()))

    def _store_attachment(self, filename: str, data: bytes, content_type: str | None) -> JSON:
        attachment = _Attachment(self.new_id(), filename, data, content_type)
        self._attachments[attachment.id] = attachment
        url = f"{self.base_url}/local-discord/attachments/{attachment.id}/{filename}"
        payload: JSON = {
            "id": str(attachment.id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            payload["content_type"] = content_type
        return payload

    def attachment(self, attachment_id: int) -> tuple[str, bytes, str | None]:
        """``(filename, data, content_type)`` of an uploaded attachment (KeyError when unknown)."""
        found = self._attachments[attachment_id]
        return found.filename, found.data, found.content_type
