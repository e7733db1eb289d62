"""``VoiceRecvClient``: a discord.py ``VoiceClient`` that can also receive."""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

import discord

from . import _discord_glue as glue
from .dave import DaveFrameDecryptor
from .errors import AlreadyListening
from .protocol.transport import TransportCipher, make_cipher
from .reader import Receiver
from .sinks.base import AudioSink, SinkUser

__all__ = ("VoiceRecvClient",)

_log = logging.getLogger(__name__)


_OP_READY = 2
_OP_SESSION_DESCRIPTION = 4
_OP_SPEAKING = 5
_OP_CLIENTS_CONNECT = 11
_OP_CLIENT_CONNECT = 12
_OP_CLIENT_DISCONNECT = 13


class VoiceRecvClient(discord.VoiceClient):
    """A :class:`discord.VoiceClient` that receives voice as well as sending it.

    Use it as the ``cls`` of :meth:`discord.abc.Connectable.connect`::

        vc = await channel.connect(cls=VoiceRecvClient)
        vc.listen(WaveSink("out"))
        ...
        vc.stop_listening()

    It also offers ``aead_aes256_gcm_rtpsize``, Discord's preferred transport mode, in both directions.
    """

    keepalive_interval: float = 5.0
    """Seconds between 8-byte UDP keepalives while listening, so NAT bindings and the voice server keep sending."""

    supported_modes = ("aead_aes256_gcm_rtpsize", *discord.VoiceClient.supported_modes)  # type: ignore[arg-type]

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        self._ssrc_users: dict[int, int] = {}
        self._receiver: Receiver | None = None
        self._receiver_lock = threading.Lock()
        self._keepalive_task: asyncio.Task[None] | None = None
        self._aes_sender: tuple[bytes, TransportCipher] | None = None
        super().__init__(client, channel)

    # discord.py integration -----------------------------------------------------------------------------------

    def create_connection_state(self) -> Any:
        return glue.make_connection_state(self, self._on_voice_ws_message)

    async def _on_voice_ws_message(self, ws: Any, msg: dict[str, Any]) -> None:
        """Runs after discord.py handled each JSON voice-gateway message; never raises (that breaks its poll loop)."""
        try:
            self._handle_voice_ws_message(msg)
        except Exception:
            _log.exception("voice receive: failed to handle voice gateway op %s", msg.get("op"))

    def _handle_voice_ws_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        data = msg.get("d") or {}
        receiver = self._receiver
        if op == _OP_SESSION_DESCRIPTION:
            params = glue.transport_params(self)
            if receiver is not None and params is not None:
                receiver.set_transport(*params)
        elif op == _OP_READY:
            ssrc = glue.own_ssrc(self)
            if receiver is not None and ssrc is not None:
                receiver.ignore_ssrc(ssrc)
        elif op == _OP_SPEAKING:
            self._map(data.get("ssrc"), data.get("user_id"))
        elif op == _OP_CLIENT_CONNECT:
            self._map(data.get("audio_ssrc"), data.get("user_id"))
        elif op == _OP_CLIENT_DISCONNECT:
            user_id = _as_int(data.get("user_id"))
            if user_id is not None:
                for ssrc in [s for s, u in self._ssrc_users.items() if u == user_id]:
                    del self._ssrc_users[ssrc]
                if receiver is not None:
                    receiver.forget_user(user_id)
                self._dispatch("voice_member_disconnect", self._resolve_user(user_id))
        elif op == _OP_CLIENTS_CONNECT:
            for raw in data.get("user_ids") or ():
                user_id = _as_int(raw)
                if user_id is not None:
                    self._dispatch("voice_member_connect", self._resolve_user(user_id))

    def _map(self, raw_ssrc: object, raw_user: object) -> None:
        ssrc, user_id = _as_int(raw_ssrc), _as_int(raw_user)
        if not ssrc or user_id is None:
            return
        self._ssrc_users[ssrc] = user_id
        receiver = self._receiver
        if receiver is not None:
            receiver.map_ssrc(ssrc, user_id)

    def _encrypt_aead_aes256_gcm_rtpsize(self, header: bytes, data: bytes) -> bytes:
        """Sending half of AES-GCM, looked up by name by discord.py's packet builder."""
        key = bytes(self.secret_key)
        if self._aes_sender is None or self._aes_sender[0] != key:
            self._aes_sender = (key, make_cipher("aead_aes256_gcm_rtpsize", key))
        return self._aes_sender[1].encrypt_rtp(bytes(header), bytes(data))

    def cleanup(self) -> None:
        self._stop_receiver(None)
        super().cleanup()

    # public receive API -----------------------------------------------------------------------------------------

    def listen(
        self,
        sink: AudioSink,
        *,
        after: Callable[[BaseException | None], Any] | None = None,
        playout_delay: float = 0.1,
    ) -> None:
        """Start receiving into ``sink``.

        Parameters
        ----------
        sink:
            Where frames go; see :mod:`discord_voicerecv.sinks`.
        after:
            Called once, from a background thread, when listening ends: with None after :meth:`stop_listening`
            or a disconnect, or with the exception that stopped a sink.
        playout_delay:
            Seconds of jitter buffering before a frame is played out; more tolerates worse networks.

        Raises
        ------
        discord.ClientException
            Not connected to voice.
        AlreadyListening
            A sink is already attached; call :meth:`stop_listening` first.
        """
        if not self.is_connected():
            raise discord.ClientException("Not connected to voice.")
        with self._receiver_lock:
            if self._receiver is not None and self._receiver.is_running:
                raise AlreadyListening("already listening; call stop_listening() first")
            decryptor = DaveFrameDecryptor(lambda: glue.dave_session(self), lambda: glue.dave_protocol_version(self))
            receiver = Receiver(
                sink,
                user_resolver=self._resolve_user,
                decryptor=decryptor,
                playout_delay=playout_delay,
                after=after,
                on_event=self._on_receiver_event,
            )
            params = glue.transport_params(self)
            if params is not None:
                receiver.set_transport(*params)
            own = glue.own_ssrc(self)
            if own is not None:
                receiver.ignore_ssrc(own)
            for ssrc, user_id in self._ssrc_users.items():
                receiver.map_ssrc(ssrc, user_id)
            receiver.start()
            self._receiver = receiver
            glue.add_socket_listener(self, receiver.feed)
        self._keepalive_task = self.loop.create_task(self._keepalive(), name="voice-recv keepalive")

    def stop_listening(self) -> None:
        """Stop receiving: flush and close the sink, then call ``after``. Does nothing when not listening."""
        self._stop_receiver(None)

    def is_listening(self) -> bool:
        receiver = self._receiver
        return receiver is not None and receiver.is_running

    def receive_stats(self) -> Mapping[str, Any]:
        """Counters of the current (or last) listening session: packets, decoded frames, drops by reason."""
        receiver = self._receiver
        return receiver.stats().as_dict() if receiver is not None else {}

    @property
    def dave_stats(self) -> dict[int, dict[str, int]]:
        """Per-user DAVE decryption counts from the davey session (for debugging E2EE)."""
        import davey

        session = glue.dave_session(self)
        out: dict[int, dict[str, int]] = {}
        if session is None:
            return out
        for user_id in set(self._ssrc_users.values()):
            stats = session.get_decryption_stats(user_id, davey.MediaType.audio)
            if stats is not None:
                out[user_id] = {
                    "successes": stats.successes,
                    "failures": stats.failures,
                    "passthroughs": stats.passthroughs,
                    "attempts": stats.attempts,
                }
        return out

    # internals -----------------------------------------------------------------------------------------------------

    def _stop_receiver(self, error: BaseException | None) -> None:
        with self._receiver_lock:
            receiver = self._receiver
            if receiver is None:
                return
            try:
                glue.remove_socket_listener(self, receiver.feed)
            except Exception:
                _log.debug("socket listener already gone", exc_info=True)
            if receiver.is_running:
                receiver.stop()
        task = self._keepalive_task
        self._keepalive_task = None
        if task is not None:
            task.cancel()

    async def _keepalive(self) -> None:
        counter = 0
        while self.is_listening():
            try:
                if self.is_connected():
                    glue.send_udp(self, struct.pack(">Q", counter))
                    counter = (counter + 1) & 0xFFFFFFFFFFFFFFFF
            except OSError:
                _log.debug("keepalive send failed", exc_info=True)
            await asyncio.sleep(self.keepalive_interval)

    def _resolve_user(self, user_id: int) -> SinkUser:
        guild: discord.Guild | None = getattr(self.channel, "guild", None)
        member = guild.get_member(user_id) if guild is not None else None
        if member is not None:
            return member
        user: discord.User | None = self.client.get_user(user_id)
        return user if user is not None else discord.Object(id=user_id)

    def _on_receiver_event(self, name: str, payload: dict[str, Any]) -> None:
        user_id = payload.get("user_id")
        user = self._resolve_user(user_id) if isinstance(user_id, int) else None
        self._dispatch(f"voice_member_{name}", user)

    def _dispatch(self, event: str, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.client.dispatch, event, *args)
        except RuntimeError:
            _log.debug("event loop closed; dropping event %s", event)


def _as_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None
