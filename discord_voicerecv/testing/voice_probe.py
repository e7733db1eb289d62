"""A raw voice client for tests: speaks the voice gateway and UDP protocol directly, without discord.py.

:class:`VoiceProbe` identifies, does IP discovery, selects a mode, keeps every gateway message and every RTP
packet it receives (transport-decrypted, extension and padding stripped), and can send RTP itself. With
``dave=True`` it joins the DAVE group like discord.py does and can remove the end-to-end layer of what it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from ..errors import DecryptionFailed, MalformedPacket
from ..frames import OPUS_SILENCE
from ..protocol import ipdiscovery
from ..protocol.rtp import (
    RtpHeader,
    build_rtp_header,
    is_rtcp,
    parse_extension_elements,
    parse_rtp_header,
    strip_payload,
)
from ..protocol.transport import SUPPORTED_MODES, TransportCipher, make_cipher
from .speakers import DaveClient

__all__ = ("ReceivedPacket", "VoiceProbe")

Message = dict[str, Any]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ReceivedPacket:
    """One RTP packet as the probe received it.

    ``payload`` is the media after transport decryption with the extension body and RTP padding removed (still
    DAVE-encrypted when the sender used DAVE); ``extension`` holds the decoded header extension elements.
    """

    header: RtpHeader
    payload: bytes
    extension: tuple[tuple[int, bytes], ...]
    arrived: float


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.on_datagram(data)


class VoiceProbe:
    """A minimal voice-gateway client that records everything.

    Parameters
    ----------
    endpoint:
        ``host:port`` of the voice server.
    ssl_context:
        Client TLS context trusting the server's certificate.
    guild_id / user_id / session_id / token:
        What IDENTIFY sends; the server must expect this session.
    mode:
        Encryption mode to select; the first offered mode this library supports when ``None``.
    dave:
        Announce DAVE support and take part in the group.
    channel_id:
        The voice channel (DAVE group id); needed with ``dave``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        ssl_context: ssl.SSLContext,
        guild_id: int,
        user_id: int,
        session_id: str,
        token: str,
        mode: str | None = None,
        dave: bool = False,
        channel_id: int = 0,
    ) -> None:
        self.endpoint = endpoint
        self.guild_id = guild_id
        self.user_id = user_id
        self.session_id = session_id
        self.token = token
        self.wanted_mode = mode
        self.messages: list[Message] = []
        """Every JSON message received, in order (each with ``op``, ``d`` and, usually, ``seq``)."""
        self.binary: list[bytes] = []
        """Every binary message received, whole (``seq u16 | op u8 | payload``)."""
        self.packets: list[ReceivedPacket] = []
        self.rtcp: list[bytes] = []
        self.transport_failures = 0
        self.malformed = 0
        self.ssrc = 0
        self.mode: str | None = None
        self.secret_key: bytes | None = None
        self.dave_protocol_version = 0
        self.seq_ack = -1
        self.close_code: int | None = None
        self.ssrc_users: dict[int, int] = {}
        """SSRC -> user id, learned from op5."""
        self.dave = DaveClient(user_id, channel_id) if dave else None
        self._max_dave = 1 if dave else 0
        self._ssl = ssl_context
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._udp: asyncio.DatagramTransport | None = None
        self._cipher: TransportCipher | None = None
        self._discovery: asyncio.Future[bytes] | None = None
        self._changed = asyncio.Event()
        self._sequence = 0
        self._timestamp = 0
        if self.dave is not None:
            self.dave.send_json = lambda op, data: self._queue_json(op, data)
            self.dave.send_binary = lambda op, payload: self._outbox.put_nowait(bytes((op,)) + payload)

    # -- connecting -------------------------------------------------------------------------------------------

    async def connect(self, timeout: float = 5.0) -> None:
        """Identify, discover the UDP address, select a mode and wait for SESSION_DESCRIPTION."""
        await self._open_websocket()
        self._queue_json(
            0,
            {
                "server_id": str(self.guild_id),
                "user_id": str(self.user_id),
                "session_id": self.session_id,
                "token": self.token,
                "max_dave_protocol_version": self._max_dave,
            },
        )
        ready = (await self.wait_for(2, timeout=timeout))["d"]
        self.ssrc = int(ready["ssrc"])
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self._datagram), remote_addr=(ready["ip"], int(ready["port"]))
        )
        self._udp = transport
        ip, port = await asyncio.wait_for(self.discover_ip(), timeout)
        offered = [m for m in ready["modes"] if m in SUPPORTED_MODES]
        mode = self.wanted_mode if self.wanted_mode is not None else offered[0]
        self._queue_json(1, {"protocol": "udp", "data": {"address": ip, "port": port, "mode": mode}})
        await self.wait_for(4, timeout=timeout)

    async def discover_ip(self) -> tuple[str, int]:
        """Send an IP discovery request and return the address the server saw."""
        assert self._udp is not None
        self._discovery = asyncio.get_running_loop().create_future()
        self._udp.sendto(ipdiscovery.build_request(self.ssrc))
        reply = await self._discovery
        return ipdiscovery.parse_response(reply)

    async def resume(self, timeout: float = 5.0) -> Message:
        """Open a new websocket and RESUME with the last sequence seen; returns the RESUMED message."""
        await self._close_websocket()
        start = len(self.messages)
        await self._open_websocket()
        self._queue_json(
            7,
            {
                "server_id": str(self.guild_id),
                "session_id": self.session_id,
                "token": self.token,
                "seq_ack": self.seq_ack,
            },
        )
        return await self.wait_for(9, timeout=timeout, after=start)

    async def close(self, code: int = 1000) -> None:
        """Close the websocket with ``code`` and the UDP socket."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close(code=code)
        await self._close_websocket()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> VoiceProbe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- gateway ----------------------------------------------------------------------------------------------

    async def send_json(self, op: int, data: Any) -> None:
        """Send a JSON message (in order with everything else the probe sends)."""
        self._queue_json(op, data)
        await asyncio.sleep(0)

    async def heartbeat(self, timeout: float = 5.0) -> Message:
        """Send op3 and return the op6 that acknowledges it."""
        nonce = len(self.messages) + 1_000_000
        start = len(self.messages)
        self._queue_json(3, {"t": nonce, "seq_ack": self.seq_ack})
        return await self.wait_for(6, lambda m: m["d"].get("t") == nonce, timeout=timeout, after=start)

    async def speak(self, speaking: int = 1, timeout: float = 5.0) -> None:
        """Send op5 SPEAKING for this probe's SSRC and wait until the server has handled it (a heartbeat round trip
        behind it): Discord forwards a member's media only after its op5."""
        self._queue_json(5, {"speaking": speaking, "delay": 0, "ssrc": self.ssrc})
        await self.heartbeat(timeout)

    async def wait_for(
        self, op: int, predicate: Callable[[Message], bool] | None = None, *, timeout: float = 5.0, after: int = 0
    ) -> Message:
        """The first JSON message with ``op`` (from index ``after``) that satisfies ``predicate``.

        Raises
        ------
        ConnectionResetError
            The websocket closed before such a message came (``close_code`` says why).
        asyncio.TimeoutError
            Nothing matched within ``timeout`` seconds.
        """

        def find() -> Message | None:
            for message in self.messages[after:]:
                if message.get("op") == op and (predicate is None or predicate(message)):
                    return message
            return None

        return await self._until(find, timeout, needs_ws=True)

    def ops(self, op: int) -> list[Message]:
        """Every JSON message received with ``op``."""
        return [m for m in self.messages if m.get("op") == op]

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close the websocket; returns the close code."""
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    # -- media ------------------------------------------------------------------------------------------------

    async def wait_packets(self, count: int, *, timeout: float = 5.0, ssrc: int | None = None) -> list[ReceivedPacket]:
        """Wait until ``count`` packets (from ``ssrc`` if given) arrived; returns them."""

        def enough() -> list[ReceivedPacket] | None:
            got = self.packets_from(ssrc)
            return got if len(got) >= count else None

        return await self._until(enough, timeout)

    def packets_from(self, ssrc: int | None) -> list[ReceivedPacket]:
        """Packets received from ``ssrc`` (all when ``None``), in arrival order."""
        return [p for p in self.packets if ssrc is None or p.header.ssrc == ssrc]

    def open_dave(self, packet: ReceivedPacket) -> bytes:
        """The Opus frame of ``packet`` with the DAVE layer removed (silence and clear frames pass through).

        Raises
        ------
        ValueError
            davey could not decrypt it, or the sender's user id is not known from op5 yet.
        """
        if packet.payload == OPUS_SILENCE or self.dave is None or self.dave.session is None:
            return packet.payload
        user_id = self.ssrc_users.get(packet.header.ssrc)
        if user_id is None:
            raise ValueError(f"no op5 mapped SSRC {packet.header.ssrc} to a user")
        return self.dave.decrypt(user_id, packet.payload)

    def send_opus(self, opus: bytes, *, marker: bool = False) -> None:
        """Send one Opus frame as RTP (transport-encrypted, no extension), advancing sequence and timestamp."""
        assert self._udp is not None and self._cipher is not None
        if self.dave is not None and self.dave.can_encrypt and opus != OPUS_SILENCE:
            opus = self.dave.encrypt(opus)
        header = build_rtp_header(sequence=self._sequence, timestamp=self._timestamp, ssrc=self.ssrc, marker=marker)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + 960) & 0xFFFFFFFF
        self._udp.sendto(self._cipher.encrypt_rtp(header, opus))

    def send_raw(self, datagram: bytes) -> None:
        """Send any datagram to the voice server's UDP port."""
        assert self._udp is not None
        self._udp.sendto(datagram)

    # -- internals --------------------------------------------------------------------------------------------

    async def _until(self, probe: Callable[[], _T | None], timeout: float, *, needs_ws: bool = False) -> _T:
        async def loop() -> _T:
            while True:
                found = probe()
                if found is not None:
                    return found
                if needs_ws and (self._reader is None or self._reader.done()):
                    raise ConnectionResetError(f"voice websocket closed with code {self.close_code}")
                await self._changed.wait()

        return await asyncio.wait_for(loop(), timeout)

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _queue_json(self, op: int, data: Any) -> None:
        self._outbox.put_nowait(json.dumps({"op": op, "d": data}))

    async def _open_websocket(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._outbox = asyncio.Queue()
        self.close_code = None
        ws = await self._http.ws_connect(f"wss://{self.endpoint}/?v=8", ssl=self._ssl, compress=15)
        self._ws = ws
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))
        self._writer = asyncio.get_running_loop().create_task(self._write(ws, self._outbox))

    async def _close_websocket(self) -> None:
        for task in (self._writer, self._reader):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()
        self._ws = None

    async def _write(self, ws: aiohttp.ClientWebSocketResponse[bool], outbox: asyncio.Queue[str | bytes]) -> None:
        while True:
            frame = await outbox.get()
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._on_json(json.loads(msg.data))
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    self._on_binary(bytes(msg.data))
                self._changed_now()
        finally:
            self.close_code = ws.close_code
            self._changed_now()

    def _on_json(self, message: Message) -> None:
        self.messages.append(message)
        if "seq" in message:
            self.seq_ack = int(message["seq"])
        op = message["op"]
        data: Any = message.get("d")
        if op == 4:
            self.mode = str(data["mode"])
            self.secret_key = bytes(data["secret_key"])
            self._cipher = make_cipher(self.mode, self.secret_key)
            self.dave_protocol_version = int(data.get("dave_protocol_version", 0))
            if self.dave is not None and self.dave_protocol_version > 0:
                self.dave.start(self.dave_protocol_version)
        elif op == 5:
            self.ssrc_users[int(data["ssrc"])] = int(data["user_id"])
        elif self.dave is not None:
            self.dave.handle_json(op, data)

    def _on_binary(self, frame: bytes) -> None:
        self.binary.append(frame)
        (self.seq_ack,) = struct.unpack_from(">H", frame)
        if self.dave is not None and len(frame) >= 3:
            self.dave.handle_binary(frame[2], frame[3:])

    def _datagram(self, data: bytes) -> None:
        if ipdiscovery.is_response(data):
            if self._discovery is not None and not self._discovery.done():
                self._discovery.set_result(data)
            return
        if is_rtcp(data):
            self.rtcp.append(data)
            return
        cipher = self._cipher
        try:
            header = parse_rtp_header(data)
        except MalformedPacket:
            self.malformed += 1
            return
        if cipher is None:
            self.transport_failures += 1
            return
        try:
            header, plaintext = cipher.open_rtp(data, header)
        except (DecryptionFailed, MalformedPacket):
            self.transport_failures += 1
            return
        try:
            payload = strip_payload(header, plaintext)
            body = plaintext[: header.ext_body_size]
            elements = parse_extension_elements(header.ext_profile, body) if header.ext_profile is not None else []
        except MalformedPacket:
            self.malformed += 1
            return
        loop = asyncio.get_running_loop()
        self.packets.append(ReceivedPacket(header, payload, tuple(elements), loop.time()))
        self._changed_now()
