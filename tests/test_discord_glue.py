"""Pins every discord.py internal the client relies on, so a discord.py change fails here first."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from typing import Any

import discord
import pytest
from discord.gateway import DiscordVoiceWebSocket
from discord.voice_state import VoiceConnectionState

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
