"""Every discord.py name this library touches that is not public API, in one place.

discord.py 2.7 has no receive API, so the client needs a few internals: the connection state object (socket
listeners, secret key, mode, SSRC, DAVE session) and the websocket hook. Each accessor here is pinned by
``tests/test_discord_glue.py`` so that a discord.py release that renames one fails loudly instead of recording
silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
from discord.errors import ConnectionClosed
from discord.voice_state import ConnectionFlowState, SocketReader, VoiceConnectionState

if TYPE_CHECKING:
    import davey
    import discord

__all__ = (
    "MIN_DISCORD_VERSION",
    "ReceivingConnectionState",
    "WakeableSocketReader",
    "WebsocketHook",
    "add_socket_listener",
    "connection_state",
    "dave_downgraded",
    "dave_protocol_version",
    "dave_session",
    "discard_backlog",
    "make_connection_state",
    "own_ssrc",
    "recover_dave_session",
    "remove_socket_listener",
    "send_udp",
    "transport_params",
)

_log = logging.getLogger(__name__)

MIN_DISCORD_VERSION = (2, 7, 1)

_MAX_BACKLOG = 1 << 16
"""Most datagrams :func:`discard_backlog` reads, so a flood cannot keep it reading forever."""
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)

WebsocketHook = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, None]]


class ReceivingConnectionState(VoiceConnectionState):
    """discord.py's connection state with a socket reader that a pause or a reconnect always wakes.

    See :class:`WakeableSocketReader`: with discord.py's own reader, a listener kept registered across a reconnect
    can leave the reader asleep on the closed socket, and discord.py's IP discovery on the new socket then waits up
    to 30 s for a reply nobody reads.
    """

    def __init__(self, voice_client: discord.VoiceClient, *, hook: WebsocketHook | None = None) -> None:
        super().__init__(voice_client, hook=hook)
        original = self._socket_reader
        original.stop()
        self._socket_reader = WakeableSocketReader(self)
        self._socket_reader.start()

    async def _connect(self, reconnect: bool, timeout: float, self_deaf: bool, self_mute: bool, resume: bool) -> None:
        """Resume the voice websocket after close code 4015 the way Discord documents it.

        discord.py 2.7.1 answers 4015 with ``resume=True`` while still connected: it re-sends its voice state and
        waits for both voice updates, which a connected state never reaches, gives up after ``timeout`` and
        disconnects (ending a recording); and it would then wait for an op4 that Discord does not send after
        RESUMED. Here a new websocket to the same endpoint sends op7 Resume; the UDP socket, keys and listeners
        stay as they are. If that fails, reconnect from scratch as discord.py does for other close codes.
        """
        if resume and self.state is ConnectionFlowState.connected:
            previous = self.ws
            with contextlib.suppress(Exception):
                await previous.close(4015)
            try:
                self.ws = await asyncio.wait_for(self._connect_websocket(True), timeout)
            except (ConnectionClosed, OSError, aiohttp.ClientError, asyncio.TimeoutError):
                _log.info("voice websocket resume failed; reconnecting from scratch", exc_info=True)
                await self.disconnect(cleanup=False)
                resume = False
            else:
                self.state = ConnectionFlowState.connected
                _log.info("voice websocket resumed after close code 4015")
                return
        await super()._connect(reconnect, timeout, self_deaf, self_mute, resume)


class WakeableSocketReader(SocketReader):
    """discord.py's socket reader thread, waiting on the voice socket *and* a wake-up socket.

    discord.py's reader sleeps in ``select()`` on the voice socket for up to 30 s and is not woken by closing it.
    While no listener is registered it is paused outside ``select()``, so plain discord.py never notices; with a
    receive listener registered it is inside it at every reconnect. The kernel then keeps it waiting on the dead
    socket (or re-polls a new socket that reused the descriptor number without waiting on it), the new socket's IP
    discovery reply is never read, and the reconnect stalls until the timeout. Here ``pause()`` and ``stop()``
    write to a socketpair the reader also waits on, so it always comes back to re-read ``state.socket``.
    """

    def __init__(self, state: VoiceConnectionState, *, start_paused: bool = True) -> None:
        super().__init__(state, start_paused=start_paused)
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)
        self._wake_send.setblocking(False)

    def pause(self) -> None:
        super().pause()
        self._wake()

    def stop(self) -> None:
        super().stop()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_send.send(b"\0")

    def _do_run(self) -> None:
        try:
            while not self._end.is_set():
                if not self._running.is_set():
                    self._running.wait()
                    continue
                sock = self.state.socket
                try:
                    readable, _, _ = select.select([sock, self._wake_recv], [], [], 30)
                except (ValueError, TypeError, OSError):
                    self._end.wait(0.01)
                    continue
                if self._wake_recv in readable:
                    with contextlib.suppress(OSError):
                        self._wake_recv.recv(4096)
                if sock not in readable:
                    continue
                try:
                    data = sock.recv(2048)
                except OSError:
                    continue
                for callback in list(self._callbacks):
                    try:
                        callback(data)
                    except Exception:
                        _log.exception("voice socket listener %r raised", callback)
        finally:
            self._wake_recv.close()
            self._wake_send.close()


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


def discard_backlog(client: discord.VoiceClient) -> int:
    """Read and drop every datagram waiting on the voice socket; returns how many.

    While no listener is registered discord.py's reader is paused and the kernel queues what arrives (seconds of
    speech); ``listen()`` calls this first so a recording holds only what arrived after it. The socket is
    non-blocking (discord.py) and read with ``MSG_DONTWAIT`` where there is one, so this never waits.
    """
    sock = connection_state(client).socket
    if not isinstance(sock, socket.socket):
        return 0
    count = 0
    while count < _MAX_BACKLOG:
        try:
            sock.recv(2048, _DONTWAIT)
        except OSError:
            break
        count += 1
    return count


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
