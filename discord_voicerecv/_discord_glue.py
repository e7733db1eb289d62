"""Every discord.py name this library touches that is not public API, in one place.

discord.py 2.7 has no receive API, so the client needs a few internals: the connection state object (socket
listeners, secret key, mode, SSRC, DAVE session) and the websocket hook. Each accessor here is pinned by
``tests/test_discord_glue.py`` so that a discord.py release that renames one fails loudly instead of recording
silence.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from discord.voice_state import VoiceConnectionState

if TYPE_CHECKING:
    import davey
    import discord

__all__ = (
    "MIN_DISCORD_VERSION",
    "WebsocketHook",
    "add_socket_listener",
    "connection_state",
    "dave_protocol_version",
    "dave_session",
    "make_connection_state",
    "own_ssrc",
    "remove_socket_listener",
    "send_udp",
    "transport_params",
)

MIN_DISCORD_VERSION = (2, 7, 1)

WebsocketHook = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, None]]


def make_connection_state(client: discord.VoiceClient, hook: WebsocketHook) -> VoiceConnectionState:
    """Build discord.py's connection state with our websocket hook installed."""
    return VoiceConnectionState(client, hook=hook)


def connection_state(client: discord.VoiceClient) -> VoiceConnectionState:
    state: VoiceConnectionState = client._connection
    return state


def add_socket_listener(client: discord.VoiceClient, callback: Callable[[bytes], None]) -> None:
    """Run ``callback(datagram)`` on discord.py's socket reader thread for every received datagram."""
    connection_state(client).add_socket_listener(callback)


def remove_socket_listener(client: discord.VoiceClient, callback: Callable[[bytes], None]) -> None:
    connection_state(client).remove_socket_listener(callback)


def transport_params(client: discord.VoiceClient) -> tuple[str, bytes] | None:
    """The negotiated ``(mode, secret_key)``, or None before op4 arrived."""
    state = connection_state(client)
    key = state.secret_key
    mode = state.mode
    if not mode or key is None or key is discord_missing():
        return None
    return str(mode), bytes(key)


def own_ssrc(client: discord.VoiceClient) -> int | None:
    ssrc = connection_state(client).ssrc
    return ssrc if isinstance(ssrc, int) else None


def dave_session(client: discord.VoiceClient) -> davey.DaveSession | None:
    """The davey session discord.py owns and drives (created at op4 when DAVE is on)."""
    session: davey.DaveSession | None = connection_state(client).dave_session
    return session


def dave_protocol_version(client: discord.VoiceClient) -> int:
    return int(connection_state(client).dave_protocol_version or 0)


def send_udp(client: discord.VoiceClient, packet: bytes) -> None:
    """Send a datagram on the voice socket (used for keepalives)."""
    connection_state(client).send_packet(packet)


def discord_missing() -> Any:
    import discord.utils

    return discord.utils.MISSING
