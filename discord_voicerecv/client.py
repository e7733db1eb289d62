"""``VoiceRecvClient``: a discord.py ``VoiceClient`` that can also receive."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import discord

from . import _discord_glue as glue
from .errors import AlreadyListening
from .protocol.transport import TransportCipher, make_cipher
from .receive import Receiver
from .receive.dave import DaveFrameDecryptor
from .sinks.base import AudioSink, SinkUser
from .sinks.limits import LimitSink, StopReason, UserFilterSink, Users, others_present
from .sinks.stream import DEFAULT_QUEUE_SECONDS, AudioStream, SinkHub

__all__ = ("VoiceRecvClient",)

_log = logging.getLogger(__name__)

_in_after = threading.local()
"""``session`` is set while that session's ``after`` runs on this thread (a listen() there starts a follow-up)."""


ALONE_CHECK_INTERVAL = 0.25
"""Seconds between checks of ``listen(stop_when_alone=True)``."""

_OP_READY = 2
_OP_SESSION_DESCRIPTION = 4
_OP_SPEAKING = 5
_OP_CLIENTS_CONNECT = 11
_OP_CLIENT_CONNECT = 12
_OP_CLIENT_DISCONNECT = 13
_OP_DAVE_PREPARE_TRANSITION = 21
_OP_DAVE_EXECUTE_TRANSITION = 22

UPGRADE_PASSTHROUGH = 10
"""Seconds plaintext frames stay acceptable after an upgrade back to DAVE executes (the transition expiry)."""


After = Callable[[BaseException | None], Any]
"""``listen(after=...)``: a function, or a coroutine function awaited on the bot's loop."""


class _Session:
    """One ``listen()``: its receiver and sinks; ``done`` resolves once the sinks are cleaned up (files final) and
    a plain ``after`` has returned."""

    __slots__ = ("after", "done", "follow_up", "hub", "receiver", "stopping", "tasks")

    def __init__(self, receiver: Receiver, hub: SinkHub, after: After | None) -> None:
        self.receiver = receiver
        self.hub = hub
        self.after = after
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.stopping = False
        """Stopped by the client or ended by itself: no longer listening, maybe still finishing its files."""
        self.follow_up = getattr(_in_after, "session", None) is not None
        """Started by another session's ``after``: not what a caller stopping that one waits for."""
        self.tasks: list[asyncio.Task[None]] = []
        """Its keepalive and alone-watch tasks (on the bot's loop)."""


class VoiceRecvClient(discord.VoiceClient):
    """A :class:`discord.VoiceClient` that receives voice as well as sending it.

    Use it as the ``cls`` of :meth:`discord.abc.Connectable.connect`::

        vc = await channel.connect(cls=VoiceRecvClient)
        vc.listen(WaveSink("out"))
        ...
        vc.stop_listening()  # returns at once; the files are finished in the background
        await vc.wait_listening_stopped()  # the files are final

    It also offers ``aead_aes256_gcm_rtpsize``, Discord's preferred transport mode, in both directions.
    """

    keepalive_interval: float = 5.0
    """Seconds between 8-byte UDP keepalives while listening, so NAT bindings and the voice server keep sending."""

    supported_modes = ("aead_aes256_gcm_rtpsize", *discord.VoiceClient.supported_modes)  # type: ignore[arg-type]

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        self._ssrc_users: dict[int, int] = {}
        self._session: _Session | None = None
        self._unfinished: set[_Session] = set()
        self._receiver_lock = threading.Lock()
        self._aes_sender: tuple[bytes, TransportCipher] | None = None
        self._stop_reason: StopReason | None = None
        self._speaking: set[int] = set()
        self._speaking_lock = threading.Lock()
        self._voice_members: set[int] = set()
        self._dave: DaveFrameDecryptor | None = None
        self._dave_transition_id = 0
        self._dave_recovery: asyncio.Task[None] | None = None
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
            self._on_speaking_op(data)
        elif op == _OP_CLIENT_CONNECT:
            self._map(data.get("audio_ssrc"), data.get("user_id"))
        elif op == _OP_CLIENT_DISCONNECT:
            user_id = _as_int(data.get("user_id"))
            if user_id is not None:
                for ssrc in [s for s, u in self._ssrc_users.items() if u == user_id]:
                    del self._ssrc_users[ssrc]
                if receiver is not None:
                    receiver.forget_user(user_id)
                self._voice_members.discard(user_id)
                self._speaking_changed(user_id, False)
                self._dispatch("voice_member_disconnect", self._resolve_user(user_id))
        elif op == _OP_CLIENTS_CONNECT:
            for raw in data.get("user_ids") or ():
                user_id = _as_int(raw)
                if user_id is not None:
                    self._voice_members.add(user_id)
                    self._dispatch("voice_member_connect", self._resolve_user(user_id))
        elif op in (_OP_DAVE_PREPARE_TRANSITION, _OP_DAVE_EXECUTE_TRANSITION):
            self._on_dave_transition(op, data)

    def _on_dave_transition(self, op: int, data: dict[str, Any]) -> None:
        """Remember the latest transition id (op31 names it) and bound passthrough after an upgrade executes.

        discord.py 2.7.1 re-enables passthrough with no end when the upgrade after a downgrade executes; the DAVE
        protocol allows plaintext only for a transition expiry, so it is limited to :data:`UPGRADE_PASSTHROUGH`.
        """
        transition_id = _as_int(data.get("transition_id"))
        if transition_id is not None:
            self._dave_transition_id = transition_id
        session = glue.dave_session(self)
        if op == _OP_DAVE_EXECUTE_TRANSITION and session is not None and glue.dave_protocol_version(self) > 0:
            session.set_passthrough_mode(False, UPGRADE_PASSTHROUGH)

    def _map(self, raw_ssrc: object, raw_user: object) -> None:
        ssrc, user_id = _as_int(raw_ssrc), _as_int(raw_user)
        if not ssrc or user_id is None:
            return
        self._ssrc_users[ssrc] = user_id
        self._voice_members.add(user_id)
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
        self._stop(StopReason.DISCONNECTED)
        super().cleanup()

    async def disconnect(self, *, force: bool = False) -> None:
        """Disconnect from voice (:meth:`discord.VoiceClient.disconnect`); returns once a recording that this
        ended has its files final."""
        await super().disconnect(force=force)
        await self.wait_listening_stopped()

    # public receive API -----------------------------------------------------------------------------------------

    def listen(
        self,
        sink: AudioSink,
        *,
        after: After | None = None,
        playout_delay: float = 0.1,
        users: Users | None = None,
        max_duration: float | None = None,
        max_bytes: int | None = None,
        stop_when_alone: bool = False,
    ) -> None:
        """Start receiving into ``sink``: only audio that arrives from now on is recorded.

        When listening ends, for whatever reason (:attr:`stop_reason`), the sink is cleaned up (its files are
        final), then ``after`` is called and the bot's ``on_voice_listening_stopped(vc, error)`` event is
        dispatched. Safe to call from ``after``.

        Parameters
        ----------
        sink:
            Where frames go; see :mod:`discord_voicerecv.sinks`.
        after:
            Called once when listening ended and every file is final: with None after :meth:`stop_listening`, a
            disconnect or a limit, or with the exception that stopped a sink. A plain function runs on a
            background thread and may call :meth:`listen` or :meth:`stop_listening`; a coroutine function is
            awaited on the bot's event loop.
        playout_delay:
            Seconds of jitter buffering before a frame is played out; more tolerates worse networks.
        users:
            Only these users (members, users or ids) reach ``sink``; every slot still does, so tracks stay aligned.
        max_duration:
            Stop after this many seconds; the sink gets exactly that much timeline.
        max_bytes:
            Stop once the sink wrote this many bytes (its ``bytes_written`` when it has one, otherwise the audio
            bytes handed to it); see :class:`~discord_voicerecv.sinks.limits.LimitSink`.
        stop_when_alone:
            Stop when no one but bots is left in the voice channel, once someone was there.

        Raises
        ------
        TypeError
            ``sink`` is not an :class:`~discord_voicerecv.sinks.AudioSink`.
        SinkError
            ``sink`` is an :class:`~discord_voicerecv.sinks.FFmpegSink` whose format or options the ffmpeg in use
            cannot write.
        discord.ClientException
            Not connected to voice.
        AlreadyListening
            A sink is already attached; call :meth:`stop_listening` first.
        SinkError
            The sink could not create its files or start its processes (:meth:`AudioSink.open`).
        """
        if not isinstance(sink, AudioSink):
            raise TypeError(f"sink must be an AudioSink, not {type(sink).__name__}")
        if not self.is_connected():
            raise discord.ClientException("Not connected to voice.")
        main = sink if users is None else UserFilterSink(sink, users)
        limited: LimitSink | None = None
        if max_duration is not None or max_bytes is not None:
            main = limited = LimitSink(main, max_duration=max_duration, max_bytes=max_bytes)
        hub = SinkHub(main)
        decryptor = DaveFrameDecryptor(
            lambda: glue.dave_session(self),
            lambda: glue.dave_protocol_version(self),
            get_downgraded=lambda: glue.dave_downgraded(self),
            on_recover=self._request_dave_recovery,
        )
        receiver = Receiver(  # before the sink opens: a missing libopus raises here, with no file created
            hub,
            user_resolver=self._resolve_user,
            decryptor=decryptor,
            playout_delay=playout_delay,
            after=lambda error: self._session_ended(session, error),
            on_event=self._on_receiver_event,
        )
        session = _Session(receiver, hub, after)
        with self._receiver_lock:
            if self.is_listening():
                raise AlreadyListening("already listening; call stop_listening() first")
            hub.open()  # the sink's files and processes appear only now; raising leaves nothing behind
            self._dave = decryptor
            if limited is not None:
                limited.on_limit = lambda reason: self._limit_reached(receiver, reason)
            # From here the gateway hook configures this receiver too; reading the state only after this means a
            # message handled on the loop meanwhile (listen() from ``after`` runs on another thread) is not lost.
            self._session = session
            params = glue.transport_params(self)
            if params is not None:
                receiver.set_transport(*params)
            own = glue.own_ssrc(self)
            if own is not None:
                receiver.ignore_ssrc(own)
            for ssrc, user_id in list(self._ssrc_users.items()):
                receiver.map_ssrc(ssrc, user_id)
            stale = glue.discard_backlog(self)
            if stale:
                _log.debug("listen(): discarded %d datagrams that arrived before it", stale)
            hub.started_at = time.time()
            receiver.start()
            self._unfinished.add(session)
            self._stop_reason = None
            glue.add_socket_listener(self, receiver.feed)
        self._on_loop(self._start_tasks, session, stop_when_alone)

    def stop_listening(self) -> None:
        """Stop receiving. Returns at once: the sink is flushed and cleaned up on a background thread, then
        ``after`` is called. ``await`` :meth:`wait_listening_stopped` to know when the files are final. Does
        nothing when not listening."""
        self._stop(StopReason.STOPPED)

    async def wait_listening_stopped(self) -> None:
        """Wait until the listening sessions started so far have ended and their files are final (sinks cleaned
        up, a plain ``after`` returned). Returns at once when nothing is listening or finishing.

        ``vc.stop_listening(); await vc.wait_listening_stopped()`` then the files can be uploaded. A session that
        an ``after`` started (listening again) is waited for only once it is stopped too. Do not await it from a
        coroutine ``after`` (that runs before its session counts as finished).
        """
        for session in list(self._unfinished):
            if session.follow_up and not session.stopping:
                continue  # started by an ``after`` while its predecessor finished: still listening, not waited for
            await asyncio.shield(asyncio.wrap_future(session.done))

    def listen_stream(
        self,
        *,
        users: Users | None = None,
        opus: bool = False,
        max_queue_seconds: float = DEFAULT_QUEUE_SECONDS,
    ) -> AudioStream:
        """Live frames for ``async for``: attached next to the current ``listen()`` sink, or listening just for it.

        ``async with vc.listen_stream() as stream: async for frame in stream: ...`` yields a
        :class:`~discord_voicerecv.StreamFrame` per speaker per 20 ms, in order per speaker. A consumer more than
        ``max_queue_seconds`` behind loses frames (``stream.dropped``, ``receive_stats()["stream_dropped"]``);
        the reader and the other sinks never wait for it. Call :meth:`listen` first to record and stream at once;
        a stream that started listening by itself stops it when closed.

        Parameters
        ----------
        users:
            Only these users (members, users or ids).
        opus:
            Opus packets only (``frame.pcm`` empty); decoding is skipped when nothing else needs PCM.
        max_queue_seconds:
            Audio per speaker kept for a consumer that is not reading.

        Raises
        ------
        discord.ClientException
            Not connected to voice.
        """
        stream = AudioStream(users=users, opus=opus, max_queue_seconds=max_queue_seconds, loop=self.loop)
        session = self._session
        if session is not None and self.is_listening():
            session.hub.attach(stream)
            return stream
        self.listen(stream)
        session = self._session
        if session is not None:
            stream.started_at = session.hub.started_at
        stream._on_close = lambda _: self.stop_listening() if self._session is session else None
        return stream

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the last listening session ended (None while listening or before the first one)."""
        return None if self.is_listening() else self._stop_reason

    def is_listening(self) -> bool:
        session = self._session
        return session is not None and not session.stopping and session.receiver.is_running

    @property
    def _receiver(self) -> Receiver | None:
        """The current or last session's receiver."""
        session = self._session
        return session.receiver if session is not None else None

    def receive_stats(self) -> Mapping[str, Any]:
        """Counters of the current (or last) listening session: packets, decoded frames, drops by reason.

        ``stream_dropped`` counts frames that :meth:`listen_stream` consumers were too slow to take.
        """
        session = self._session
        if session is None:
            return {}
        stats = session.receiver.stats().as_dict()
        stats["stream_dropped"] = session.hub.stream_dropped
        return stats

    @property
    def dave_stats(self) -> dict[int, dict[str, int]]:
        """Per-user DAVE counters, for debugging end-to-end encryption.

        davey's own counts for the current MLS group (``successes``, ``failures``, ``passthroughs``, ``attempts``;
        they restart when the session is re-initialised, and count every retry of a held frame) merged with this
        library's counts for the current or last listening session, which never restart: ``decrypted``,
        ``passthrough``, ``held`` (times a frame was put off, waiting for a key) and ``failed:<reason>`` (frames
        dropped: ``auth``, ``plaintext``).
        """
        import davey

        out: dict[int, dict[str, int]] = {}
        if self._dave is not None:
            out.update(self._dave.user_stats())
        session = glue.dave_session(self)
        if session is None:
            return out
        for user_id in set(self._ssrc_users.values()) | set(out):
            try:
                stats = session.get_decryption_stats(user_id, davey.MediaType.audio)
            except ValueError:
                continue
            if stats is not None:
                out.setdefault(user_id, {}).update(
                    successes=stats.successes,
                    failures=stats.failures,
                    passthroughs=stats.passthroughs,
                    attempts=stats.attempts,
                )
        return out

    @property
    def dave_recoveries(self) -> int:
        """How many times this listening session re-joined the DAVE group (op31) because a sender's frames kept
        failing authentication while our group state looked fine."""
        return self._dave.recoveries if self._dave is not None else 0

    def _request_dave_recovery(self, user_id: int) -> None:
        """Reader thread: schedule op31 + re-init on the event loop (discord.py owns the session and websocket)."""
        try:
            self.loop.call_soon_threadsafe(self._start_dave_recovery, user_id)
        except RuntimeError:
            _log.debug("event loop closed; DAVE recovery for %s not started", user_id)

    def _start_dave_recovery(self, user_id: int) -> None:
        if not self.is_connected() or glue.dave_session(self) is None:
            return
        _log.info("DAVE: re-joining the group after repeated failures for user %s", user_id)
        task = self.loop.create_task(glue.recover_dave_session(self, self._dave_transition_id), name="dave recovery")
        self._dave_recovery = task
        task.add_done_callback(_log_task_error)

    # internals -----------------------------------------------------------------------------------------------------

    def _stop(self, reason: StopReason) -> None:
        """Stop the current session without waiting for it: unhook it now, finish it on a background thread."""
        with self._receiver_lock:
            session = self._session
            if session is None or session.stopping:
                return
            if self._stop_reason is None and session.receiver.is_running:
                self._stop_reason = reason
            session.stopping = True
            with contextlib.suppress(Exception):
                glue.remove_socket_listener(self, session.receiver.feed)
        self._on_loop(self._cancel_tasks, session)
        # Not a daemon: an interpreter exit waits for the files to be finished.
        threading.Thread(target=session.receiver.stop, name="voice-recv finish").start()

    @staticmethod
    def _cancel_tasks(session: _Session) -> None:
        """On the loop: end the keepalive and alone-watch tasks of a session that is no longer listening."""
        tasks, session.tasks = session.tasks, []
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def _start_tasks(self, session: _Session, stop_when_alone: bool) -> None:
        """On the loop, right after ``listen()``: keepalives and the alone watch, unless it already stopped."""
        if self._session is not session or session.stopping:
            return
        session.tasks.append(self.loop.create_task(self._keepalive(session), name="voice-recv keepalive"))
        if stop_when_alone:
            session.tasks.append(self.loop.create_task(self._watch_alone(session), name="voice-recv alone watch"))

    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` now when on the bot's event loop, otherwise soon on it (``listen()`` from ``after``)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            callback(*args)
            return
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            _log.debug("event loop closed; %s not run", callback)

    def _set_stop_reason(self, reason: StopReason) -> None:
        if self._stop_reason is None and self.is_listening():
            self._stop_reason = reason

    def _limit_reached(self, receiver: Receiver, reason: StopReason) -> None:
        """On the sink thread: stop the session without waiting for it (``stop()`` returns at once there)."""
        if self._receiver is receiver:
            self._set_stop_reason(reason)
        receiver.stop()

    def _session_ended(self, session: _Session, error: BaseException | None) -> None:
        """The receiver finished and its sink is cleaned up (its sink thread): ``after``, pending speaking stops
        (unless a newer session is listening), the stopped event, then the session counts as finished."""
        if self._session is session:
            if error is not None:
                self._stop_reason = StopReason.ERROR
            elif self._stop_reason is None:
                self._stop_reason = StopReason.STOPPED
        session.stopping = True
        try:
            self._on_loop(self._release_session, session)
            _in_after.session = session
            try:
                self._run_after(session.after, error)
            finally:
                _in_after.session = None
        finally:
            still: set[int] = set()
            with self._receiver_lock, self._speaking_lock:
                if self._session is session:  # else a newer session owns who is speaking now
                    still, self._speaking = self._speaking, set()
            for user_id in still:
                self._dispatch("voice_member_speaking_stop", self._resolve_user(user_id))
            self._dispatch("voice_listening_stopped", self, error)
            self._unfinished.discard(session)
            session.done.set_result(None)

    def _run_after(self, after: After | None, error: BaseException | None) -> None:
        """Call ``after`` here; a coroutine it returns is awaited on the bot's loop. Its errors are logged."""
        if after is None:
            return
        try:
            result = after(error)
        except Exception:
            _log.exception("listen(after=...) raised")
            return
        if asyncio.iscoroutine(result):
            try:
                future = asyncio.run_coroutine_threadsafe(result, self.loop)
            except RuntimeError:
                result.close()
                _log.warning("event loop closed; listen(after=...) coroutine not run")
                return
            future.add_done_callback(_log_after_error)

    def _release_session(self, session: _Session) -> None:
        """On the loop, once a session ended (also by itself: limit, sink error): unhook it from the socket."""
        with contextlib.suppress(Exception):
            glue.remove_socket_listener(self, session.receiver.feed)
        self._cancel_tasks(session)

    async def _watch_alone(self, session: _Session) -> None:
        """``stop_when_alone``: stop once the gateway and the voice server both show no one else (bots aside)."""
        seen = False
        while self._session is session and self.is_listening():
            if self._others_here():
                seen = True
            elif seen:
                self._stop(StopReason.ALONE)
                return
            await asyncio.sleep(ALONE_CHECK_INTERVAL)

    def _others_here(self) -> bool:
        me = self.client.user.id if self.client.user is not None else None
        if others_present(self.channel, me):
            return True
        return any(
            not getattr(self._resolve_user(user_id), "bot", False) for user_id in self._voice_members if user_id != me
        )

    def _on_speaking_op(self, data: Mapping[str, Any]) -> None:
        """op5 drives the speaking events while not listening (while listening, the audio itself does)."""
        if self.is_listening():
            return
        user_id, flags = _as_int(data.get("user_id")), _as_int(data.get("speaking"))
        if user_id is not None and flags is not None:
            self._speaking_changed(user_id, bool(flags))

    def _speaking_changed(self, user_id: int, speaking: bool) -> None:
        with self._speaking_lock:
            if (user_id in self._speaking) == speaking:
                return
            if speaking:
                self._speaking.add(user_id)
            else:
                self._speaking.discard(user_id)
        event = "voice_member_speaking_start" if speaking else "voice_member_speaking_stop"
        self._dispatch(event, self._resolve_user(user_id))

    async def _keepalive(self, session: _Session) -> None:
        counter = 0
        while self._session is session and self.is_listening():
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
        if name in ("speaking_start", "speaking_stop") and isinstance(user_id, int):
            self._speaking_changed(user_id, name == "speaking_start")
            return
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


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("DAVE recovery failed", exc_info=task.exception())


def _log_after_error(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.error("listen(after=...) coroutine raised", exc_info=future.exception())
