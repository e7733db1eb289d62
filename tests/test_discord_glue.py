"""Pins every discord.py internal the client relies on, so a discord.py change fails here first."""

from __future__ import annotations

import asyncio
import inspect
import select
import socket
import threading
import time
import types
from typing import Any

import discord
import pytest
from discord.gateway import DiscordVoiceWebSocket
from discord.voice_state import SocketReader, VoiceConnectionState

from discord_voicerecv import _discord_glue as glue
from discord_voicerecv.client import VoiceRecvClient


class _Holder:
    """Stands in for a VoiceClient: the glue only reaches ``_connection``."""

    def __init__(self, state: VoiceConnectionState) -> None:
        self._connection = state


@pytest.fixture
def state() -> Any:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    st = VoiceConnectionState(object(), hook=None)  # type: ignore[arg-type]
    yield st
    st._socket_reader.stop()
    loop.close()


def test_discord_version_is_supported() -> None:
    version = tuple(int(p) for p in discord.__version__.split(".")[:3] if p.isdigit())
    assert version >= glue.MIN_DISCORD_VERSION


def test_connection_state_takes_a_hook_and_voice_client_builds_it_through_create_connection_state() -> None:
    assert "hook" in inspect.signature(VoiceConnectionState.__init__).parameters
    assert "create_connection_state" in vars(discord.VoiceClient)
    init_src = inspect.getsource(discord.VoiceClient.__init__)
    assert "self._connection" in init_src and "create_connection_state()" in init_src


def test_voice_websocket_calls_the_hook_after_its_own_handling() -> None:
    src = inspect.getsource(DiscordVoiceWebSocket.received_message)
    assert "await self._hook(self, msg)" in src
    assert src.index("load_secret_key") < src.index("await self._hook(self, msg)")


def test_state_attributes_the_glue_reads_exist(state: VoiceConnectionState) -> None:
    for name in ("secret_key", "mode", "ssrc", "dave_session", "dave_protocol_version", "socket"):
        assert hasattr(state, name), name
    holder: Any = _Holder(state)
    assert glue.transport_params(holder) is None
    assert glue.own_ssrc(holder) is None
    assert glue.dave_session(holder) is None
    assert glue.dave_protocol_version(holder) == 0
    state.mode = "aead_xchacha20_poly1305_rtpsize"
    state.secret_key = list(range(32))
    state.ssrc = 1234
    assert glue.transport_params(holder) == ("aead_xchacha20_poly1305_rtpsize", bytes(range(32)))
    assert glue.own_ssrc(holder) == 1234


def test_socket_listener_receives_datagrams_on_the_reader_thread(state: VoiceConnectionState) -> None:
    state._create_socket()  # what discord.py does on VOICE_SERVER_UPDATE: a fresh socket, reader resumed
    receiver = state.socket
    receiver.bind(("127.0.0.1", 0))
    got: list[tuple[bytes, str]] = []
    arrived = threading.Event()

    def callback(data: bytes) -> None:
        got.append((data, threading.current_thread().name))
        arrived.set()

    holder: Any = _Holder(state)
    glue.add_socket_listener(holder, callback)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"hello voice", receiver.getsockname())
        assert arrived.wait(5)
        assert got[0][0] == b"hello voice"
        assert got[0][1].startswith("voice-socket-reader")
        glue.remove_socket_listener(holder, callback)
    finally:
        sender.close()
        receiver.close()


def test_send_packet_exists() -> None:
    assert callable(getattr(VoiceConnectionState, "send_packet", None))


def test_recv_client_offers_aes_gcm_first_and_keeps_discord_modes() -> None:
    assert VoiceRecvClient.supported_modes[0] == "aead_aes256_gcm_rtpsize"
    assert set(discord.VoiceClient.supported_modes) <= set(VoiceRecvClient.supported_modes)


def test_sender_looks_encrypt_methods_up_by_mode_name() -> None:
    src = inspect.getsource(discord.VoiceClient)
    assert "_encrypt_" in src and "getattr(self, '_encrypt_' + self.mode)" in src


def test_dave_state_the_client_reads_exists(state: VoiceConnectionState) -> None:
    holder: Any = _Holder(state)
    assert state.dave_downgraded is False and glue.dave_downgraded(holder) is False
    state.dave_downgraded = True
    assert glue.dave_downgraded(holder) is True
    execute = inspect.getsource(VoiceConnectionState._execute_transition)
    assert "self.dave_downgraded = True" in execute and "self.dave_downgraded = False" in execute


def test_discord_py_still_leaves_passthrough_open_after_an_upgrade() -> None:
    """The client bounds it to UPGRADE_PASSTHROUGH seconds; when this fails, discord.py changed and the fix may go."""
    execute = inspect.getsource(VoiceConnectionState._execute_transition)
    assert "set_passthrough_mode(True, 10)" in execute


class _FakeVoiceWebSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def send_as_json(self, data: Any) -> None:
        self.sent.append(("json", data))

    async def send_binary(self, opcode: int, data: bytes) -> None:
        self.sent.append(("binary", opcode))


def test_recover_dave_session_sends_op31_then_a_fresh_key_package() -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    ws = _FakeVoiceWebSocket()
    voice_client = types.SimpleNamespace(
        ws=ws, user=types.SimpleNamespace(id=1234), channel=types.SimpleNamespace(id=99)
    )
    state = VoiceConnectionState(voice_client, hook=None)  # type: ignore[arg-type]
    try:
        state.dave_protocol_version = 1
        holder: Any = _Holder(state)
        loop.run_until_complete(glue.recover_dave_session(holder, 7))
        assert ws.sent == [("json", {"op": 31, "d": {"transition_id": 7}}), ("binary", 26)]
        assert state.dave_session is not None and not state.dave_session.ready
    finally:
        state._socket_reader.stop()
        loop.close()


def test_socket_reader_internals_the_wakeable_reader_relies_on(state: VoiceConnectionState) -> None:
    init = inspect.getsource(VoiceConnectionState.__init__)
    assert "self._socket_reader = SocketReader(self)" in init and "self._socket_reader.start()" in init
    assert "self._do_run()" in inspect.getsource(SocketReader.run)
    assert "select.select([self.state.socket], [], [], 30)" in inspect.getsource(SocketReader._do_run)
    assert "start_paused" in inspect.signature(SocketReader.__init__).parameters
    reader = state._socket_reader
    for name in ("state", "_callbacks", "_running", "_end", "_idle_paused"):
        assert hasattr(reader, name), name


def test_the_reader_follows_a_new_socket_after_a_reconnect() -> None:
    """What discord.py does on a reconnect while a listener is registered: pause the reader, close the socket, make
    a new one (usually on the same descriptor number) and resume. discord.py's own reader keeps sleeping in select()
    on the closed socket for up to 30 s; ours must read the new socket at once (its IP discovery reply)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    state = glue.ReceivingConnectionState(object(), hook=None)  # type: ignore[arg-type]
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    got: list[bytes] = []
    arrived = threading.Event()
    try:
        assert isinstance(state._socket_reader, glue.WakeableSocketReader)
        state._create_socket()
        old = state.socket
        old.bind(("127.0.0.1", 0))
        state.add_socket_listener(lambda data: (got.append(data), arrived.set()))
        time.sleep(0.1)
        state._socket_reader.pause()
        old.close()
        state._create_socket()
        state.socket.bind(("127.0.0.1", 0))
        peer.sendto(b"ip discovery reply", state.socket.getsockname())
        assert arrived.wait(2), "the reader is still asleep on the closed socket"
        assert got == [b"ip discovery reply"]
        reader = state._socket_reader
        reader.stop()
        reader.join(2)
        assert not reader.is_alive()
    finally:
        state._socket_reader.stop()
        peer.close()
        if state.socket:
            state.socket.close()
        loop.close()


def test_datagrams_queued_while_no_listener_is_registered_are_discarded(state: VoiceConnectionState) -> None:
    """With no listener discord.py's reader is paused, so datagrams wait in the kernel; ``discard_backlog`` drops
    them without blocking, and a listener registered afterwards sees only what arrives later."""
    state._create_socket()
    voice = state.socket
    voice.bind(("127.0.0.1", 0))
    holder: Any = _Holder(state)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[bytes] = []
    arrived = threading.Event()

    def callback(data: bytes) -> None:
        got.append(data)
        arrived.set()

    try:
        for n in range(3):
            sender.sendto(b"old %d" % n, voice.getsockname())
        deadline = time.monotonic() + 5
        while not select.select([voice], [], [], 0)[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert glue.discard_backlog(holder) == 3
        assert glue.discard_backlog(holder) == 0
        glue.add_socket_listener(holder, callback)
        sender.sendto(b"new", voice.getsockname())
        assert arrived.wait(5)
        assert got == [b"new"]
        glue.remove_socket_listener(holder, callback)
    finally:
        sender.close()
        voice.close()


def test_discard_backlog_without_a_socket_does_nothing(state: VoiceConnectionState) -> None:
    holder: Any = _Holder(state)
    assert glue.discard_backlog(holder) == 0
