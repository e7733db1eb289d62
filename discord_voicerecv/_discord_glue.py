"""Every discord.py name this library touches that is not public API, in one place.

discord.py 2.7 has no receive API, so the client needs a few internals: the connection state object (socket
listeners, secret key, mode, SSRC, DAVE session) and the websocket hook. Each accessor here is pinned by
``tests/test_discord_glue.py`` so that a discord.py release that renames one fails loudly instead of recording
silence.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from discord.voice_state import VoiceConnectionState

if TYPE_CHECKING:
    import davey
    import discord

__all__ = (
    "MIN_DISCORD_VERSION",
    "ReceivingConnectionState",
    "WebsocketHook",
    "add_socket_listener",
    "connection_state",
    "dave_downgraded",
    "dave_protocol_version",
    "dave_session",
    "make_connection_state",
    "own_ssrc",
    "recover_dave_session",
    "remove_socket_listener",
    "send_udp",
    "transport_params",
    "wake_socket_reader",
)

MIN_DISCORD_VERSION = (2, 7, 1)

WebsocketHook = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, None]]


class ReceivingConnectionState(VoiceConnectionState):
    """discord.py's connection state, waking its socket reader before the voice socket is closed.

    discord.py's reader thread waits in ``select()`` on the voice socket for up to 30 s. Without listeners it is
    paused outside ``select()``; with ours registered it is inside it, and closing the socket (every reconnect)
    does not wake it. It then sleeps on the dead socket, the new socket's IP discovery reply is never read, and
    the reconnect stalls for up to 30 s or times out. Pausing the reader and shutting the socket down first wakes
    it at once (the read then fails with ``EAGAIN``, which the reader ignores), so it picks up the new socket.
    """

    async def disconnect(self, *, force: bool = True, cleanup: bool = True, wait: bool = False) -> None:
        if force or self.is_connected():
            wake_socket_reader(self)
        await super().disconnect(force=force, cleanup=cleanup, wait=wait)

    async def soft_disconnect(self, **kwargs: Any) -> None:
        wake_socket_reader(self)
        await super().soft_disconnect(**kwargs)


def wake_socket_reader(state: VoiceConnectionState) -> None:
    """Pause discord.py's socket reader and make a ``select()`` on the current socket return."""
    state._socket_reader.pause()
    sock = state.socket
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


def make_connection_state(client: discord.VoiceClient, hook: WebsocketHook) -> VoiceConnectionState:
    """Build discord.py's connection state with our websocket hook installed."""
    return ReceivingConnectionState(client, hook=hook)


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


def dave_downgraded(client: discord.VoiceClient) -> bool:
    """True from an executed downgrade to protocol version 0 until the upgrade's transition executes: the window
    in which senders may send plaintext."""
    return bool(getattr(connection_state(client), "dave_downgraded", False))


async def recover_dave_session(client: discord.VoiceClient, transition_id: int) -> None:
    """Tell the voice gateway our MLS state is unusable (op31 for ``transition_id``) and re-join with a fresh key
    package, exactly as discord.py does after a commit or welcome it cannot process."""
    await connection_state(client)._recover_from_invalid_commit(transition_id)


def send_udp(client: discord.VoiceClient, packet: bytes) -> None:
    """Send a datagram on the voice socket (used for keepalives)."""
    connection_state(client).send_packet(packet)


def discord_missing() -> Any:
    import discord.utils

    return discord.utils.MISSING
