"""Pins what the client relies on in discord.py by its behaviour: real discord.py objects around fakes of the
network, observed doing what the glue expects. A reformatted discord.py passes; a changed one fails here first."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import discord
import pytest
from discord.gateway import DiscordVoiceWebSocket
from discord.voice_state import SocketReader, VoiceConnectionState

from discord_voicerecv import _discord_glue as glue
from discord_voicerecv.client import VoiceRecvClient

MODE: Final = "aead_xchacha20_poly1305_rtpsize"
KEY = list(range(32))


class _Holder:
    """Stands in for a VoiceClient: the glue only reaches ``_connection``."""

    def __init__(self, state: VoiceConnectionState) -> None:
        self._connection = state


class _FakeAiohttpSocket:
    """What discord.py's voice websocket writes to: every JSON text it sends is kept."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_str(self, data: str) -> None:
        self.sent.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append({"binary": data[0]})


class _FakeHttp:
    def __init__(self) -> None:
        self.socket = _FakeAiohttpSocket()

    async def ws_connect(self, url: str, **_: Any) -> _FakeAiohttpSocket:
        return self.socket


def _voice_client(loop: asyncio.AbstractEventLoop, http: _FakeHttp | None = None) -> Any:
    """The parts of a VoiceClient that VoiceConnectionState and the voice websocket read."""
    return types.SimpleNamespace(
        user=types.SimpleNamespace(id=1234),
        channel=types.SimpleNamespace(id=99),
        loop=loop,
        _state=types.SimpleNamespace(http=http or _FakeHttp()),
        ws=None,
        supported_modes=VoiceRecvClient.supported_modes,
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()


@pytest.fixture
def state(loop: asyncio.AbstractEventLoop) -> Iterator[VoiceConnectionState]:
    st = VoiceConnectionState(_voice_client(loop), hook=None)
    yield st
    st._socket_reader.stop()
    if st.socket:
        st.socket.close()


@pytest.fixture
async def udp_peer() -> AsyncIterator[socket.socket]:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    yield peer
    peer.close()


def test_discord_version_is_supported() -> None:
    version = tuple(int(p) for p in discord.__version__.split(".")[:3] if p.isdigit())
    assert version >= glue.MIN_DISCORD_VERSION


def test_voice_client_builds_its_connection_state_through_create_connection_state(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def hook(ws: Any, msg: dict[str, Any]) -> None:
        pass

    class Probe(discord.VoiceClient):
        def create_connection_state(self) -> VoiceConnectionState:
            return glue.make_connection_state(self, hook)

    client: Any = types.SimpleNamespace(_connection=types.SimpleNamespace(loop=loop))
    vc = Probe(client, types.SimpleNamespace(id=99, guild=None))
    try:
        state = glue.connection_state(vc)
        assert isinstance(state, glue.ReceivingConnectionState)
        assert state.voice_client is vc and state.hook is hook
        assert isinstance(state._socket_reader, glue.WakeableSocketReader) and state._socket_reader.is_alive()
    finally:
        vc._connection._socket_reader.stop()


async def test_the_hook_reaches_the_websocket_and_runs_after_discord_py_handled_each_json_message() -> None:
    loop = asyncio.get_running_loop()
    http = _FakeHttp()
    seen: list[tuple[int, Any, Any, Any, list[int]]] = []

    async def hook(ws: Any, msg: dict[str, Any]) -> None:
        st = ws._connection
        key = None if st.secret_key is discord.utils.MISSING else bytes(st.secret_key)
        seen.append((msg["op"], st.mode, key, st.dave_protocol_version, [m["op"] for m in http.socket.sent]))

    state = VoiceConnectionState(_voice_client(loop, http), hook=hook)
    try:
        state.endpoint = "127.0.0.1:1"
        state.ssrc = 77
        ws = await state._connect_websocket(resume=False)  # discord.py's own path: identify goes out
        assert [m["op"] for m in http.socket.sent] == [DiscordVoiceWebSocket.IDENTIFY]
        description = {"mode": MODE, "secret_key": KEY, "dave_protocol_version": 0}
        await ws.received_message({"op": DiscordVoiceWebSocket.SESSION_DESCRIPTION, "d": description})
        speaking = {"user_id": "5", "ssrc": 900, "speaking": 1}
        await ws.received_message({"op": DiscordVoiceWebSocket.SPEAKING, "d": speaking})
        await ws.received_message({"op": 13, "d": {"user_id": "5"}})
        await ws.received_binary_message(b"\x00\x01\x19external-sender")  # DAVE op25: binary, never hooked
    finally:
        state._socket_reader.stop()

    identify, speak = DiscordVoiceWebSocket.IDENTIFY, DiscordVoiceWebSocket.SPEAKING
    assert seen == [
        # op4: mode and key stored and discord.py's own op5 reply (which tells Discord our SSRC) already sent
        (DiscordVoiceWebSocket.SESSION_DESCRIPTION, MODE, bytes(KEY), 0, [identify, speak]),
        (DiscordVoiceWebSocket.SPEAKING, MODE, bytes(KEY), 0, [identify, speak]),  # not handled by discord.py
        (13, MODE, bytes(KEY), 0, [identify, speak]),
    ]
    assert glue.transport_params(_Holder(state)) == (MODE, bytes(KEY))  # type: ignore[arg-type]


def test_state_attributes_the_glue_reads(state: VoiceConnectionState) -> None:
    holder: Any = _Holder(state)
    assert glue.transport_params(holder) is None
    assert glue.own_ssrc(holder) is None
    assert glue.dave_session(holder) is None
    assert glue.dave_protocol_version(holder) == 0
    state.mode = MODE
    state.secret_key = KEY
    state.ssrc = 1234
    assert glue.transport_params(holder) == (MODE, bytes(KEY))
    assert glue.own_ssrc(holder) == 1234


def test_socket_listeners_get_every_datagram_in_order_on_the_reader_thread(
    state: VoiceConnectionState, udp_peer: socket.socket
) -> None:
    state._create_socket()  # what discord.py does on VOICE_SERVER_UPDATE: a fresh socket, reader resumed
    state.socket.bind(("127.0.0.1", 0))
    first: list[tuple[bytes, str]] = []
    second: list[bytes] = []
    arrived = {b"marker": threading.Event(), b"last": threading.Event()}

    def listener(data: bytes) -> None:
        first.append((data, threading.current_thread().name))

    def watcher(data: bytes) -> None:
        second.append(data)
        if data in arrived:
            arrived[data].set()

    holder: Any = _Holder(state)
    glue.add_socket_listener(holder, listener)
    glue.add_socket_listener(holder, watcher)
    datagrams = [f"datagram {n}".encode() for n in range(20)]
    for data in datagrams:
        udp_peer.sendto(data, state.socket.getsockname())
    udp_peer.sendto(b"marker", state.socket.getsockname())
    assert arrived[b"marker"].wait(5), "the reader delivered nothing"
    glue.remove_socket_listener(holder, listener)
    udp_peer.sendto(b"last", state.socket.getsockname())
    assert arrived[b"last"].wait(5), "the reader stopped delivering"
    assert [data for data, _ in first] == [*datagrams, b"marker"], "each datagram once, in order, then no more"
    assert all(name.startswith("voice-socket-reader") for _, name in first)
    assert second == [*datagrams, b"marker", b"last"]


def test_send_udp_sends_on_the_voice_socket(state: VoiceConnectionState, udp_peer: socket.socket) -> None:
    state._create_socket()
    state.socket.connect(udp_peer.getsockname())
    glue.send_udp(_Holder(state), b"keepalive")  # type: ignore[arg-type]
    assert udp_peer.recv(64) == b"keepalive"


def test_sending_looks_the_encrypt_method_up_by_mode_name(loop: asyncio.AbstractEventLoop) -> None:
    calls: list[tuple[bytes, bytes]] = []

    class Probe(discord.VoiceClient):
        def _encrypt_aead_aes256_gcm_rtpsize(self, header: bytes, data: bytes) -> bytes:
            calls.append((bytes(header), bytes(data)))
            return b"sealed"

    client: Any = types.SimpleNamespace(_connection=types.SimpleNamespace(loop=loop))
    vc = Probe(client, types.SimpleNamespace(id=99, guild=None))
    try:
        connection: Any = vc._connection
        connection.mode = "aead_aes256_gcm_rtpsize"
        connection.ssrc = 0x01020304
        assert vc._get_voice_packet(b"opus") == b"sealed"
    finally:
        vc._connection._socket_reader.stop()
    assert calls == [(b"\x80\x78\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04", b"opus")]
    for mode in VoiceRecvClient.supported_modes:
        assert callable(getattr(VoiceRecvClient, "_encrypt_" + mode, None)), f"no sender for {mode}"


def test_recv_client_offers_aes_gcm_first_and_keeps_discord_modes() -> None:
    assert VoiceRecvClient.supported_modes[0] == "aead_aes256_gcm_rtpsize"
    assert set(discord.VoiceClient.supported_modes) <= set(VoiceRecvClient.supported_modes)


class _FakeDaveSession:
    def __init__(self) -> None:
        self.passthrough: list[tuple[bool, int]] = []

    def set_passthrough_mode(self, on: bool, seconds: int) -> None:
        self.passthrough.append((on, seconds))


async def test_transitions_set_dave_downgraded_and_an_upgrade_reopens_passthrough_for_10_s() -> None:
    """The client bounds the upgrade's passthrough to UPGRADE_PASSTHROUGH seconds; when the 10 s here change,
    discord.py changed and that fix may go."""
    state = VoiceConnectionState(_voice_client(asyncio.get_running_loop()), hook=None)
    session = _FakeDaveSession()
    try:
        state.dave_session = session  # type: ignore[assignment]
        state.dave_protocol_version = 1
        holder: Any = _Holder(state)
        assert glue.dave_downgraded(holder) is False
        state.dave_pending_transitions[3] = 0
        await state._execute_transition(3)
        assert glue.dave_downgraded(holder) is True and glue.dave_protocol_version(holder) == 0
        state.dave_pending_transitions[4] = 1
        await state._execute_transition(4)
        assert glue.dave_downgraded(holder) is False and glue.dave_protocol_version(holder) == 1
        assert session.passthrough == [(True, 10)]
    finally:
        state._socket_reader.stop()


async def test_recover_dave_session_sends_op31_then_a_fresh_key_package() -> None:
    http = _FakeHttp()
    voice_client = _voice_client(asyncio.get_running_loop(), http)
    state = VoiceConnectionState(voice_client, hook=None)
    try:
        voice_client.ws = DiscordVoiceWebSocket(http.socket, asyncio.get_running_loop())  # type: ignore[arg-type]
        state.dave_protocol_version = 1
        await glue.recover_dave_session(_Holder(state), 7)  # type: ignore[arg-type]
        assert http.socket.sent == [{"op": 31, "d": {"transition_id": 7}}, {"binary": 26}]
        assert state.dave_session is not None and not state.dave_session.ready
    finally:
        state._socket_reader.stop()


def test_socket_reader_parts_the_wakeable_reader_builds_on(state: VoiceConnectionState) -> None:
    reader = state._socket_reader
    assert type(reader) is SocketReader and reader.is_alive(), "VoiceConnectionState starts its reader"
    for name in ("state", "_callbacks", "_running", "_end", "_idle_paused", "start_paused"):
        assert hasattr(reader, name), name
    assert reader.state is state
    reader.register(print)
    assert reader._callbacks == [print]
    reader.stop()
    reader.join(5)
    assert reader._end.is_set() and not reader.is_alive()


def test_the_reader_follows_a_new_socket_after_a_reconnect(
    loop: asyncio.AbstractEventLoop, udp_peer: socket.socket
) -> None:
    """What discord.py does on a reconnect while a listener is registered: pause the reader, close the socket, make
    a new one (usually on the same descriptor number) and resume. discord.py's own reader keeps sleeping in select()
    on the closed socket for up to 30 s; ours must read the new socket at once (its IP discovery reply)."""
    state = glue.ReceivingConnectionState(_voice_client(loop), hook=None)
    got: list[bytes] = []
    arrived = threading.Event()
    try:
        assert isinstance(state._socket_reader, glue.WakeableSocketReader)
        state._create_socket()
        old = state.socket
        old.bind(("127.0.0.1", 0))

        def listener(data: bytes) -> None:
            got.append(data)
            arrived.set()

        state.add_socket_listener(listener)
        udp_peer.sendto(b"before", old.getsockname())
        assert arrived.wait(5), "the reader never read the first socket"
        arrived.clear()  # the reader is now back inside select() on the old socket
        state._socket_reader.pause()
        old.close()
        state._create_socket()
        state.socket.bind(("127.0.0.1", 0))
        udp_peer.sendto(b"ip discovery reply", state.socket.getsockname())
        assert arrived.wait(5), "the reader is still asleep on the closed socket"
        assert got == [b"before", b"ip discovery reply"]
        reader = state._socket_reader
        reader.stop()
        reader.join(5)
        assert not reader.is_alive()
    finally:
        state._socket_reader.stop()
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
