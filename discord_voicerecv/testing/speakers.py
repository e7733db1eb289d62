"""Simulated speakers: in-process call members that talk like a Discord client does.

A speaker sends one Opus frame every 20 ms on absolute deadlines (no drift), announces itself with op5 before a
talk spurt, ends every spurt with five Opus silence frames and op5 ``speaking=0``, and then stays quiet. Its RTP
timestamp advances with the wall clock across pauses (as WebRTC clients do) while the sequence stays contiguous.
With DAVE on it is a real ``davey.DaveSession`` in the group, driven in-process the way discord.py drives its own,
and it end-to-end encrypts every frame once the session is ready. Everything it sends is kept in
:attr:`SimulatedSpeaker.sent` so tests can compare recordings with their sources.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import davey

from ..frames import FRAME_BYTES, FRAME_SAMPLES, OPUS_SILENCE
from ..opus import OpusEncoder
from ..protocol.rtp import EXTENSION_PROFILE_ONE_BYTE, build_extension_body, build_rtp_header
from .clips import clip_frames, tone
from .link import FRAME_INTERVAL, Link, LinkConditions
from .relay import AUDIO_LEVEL_EXTENSION_ID, RelayPeer

__all__ = ("SILENCE_FRAMES", "DaveClient", "SentFrame", "SimulatedSpeaker")

_log = logging.getLogger(__name__)

SILENCE_FRAMES = 5
"""Opus silence frames a speaker sends at the end of each talk spurt."""
SPEAKING_LEAD = 0.005
"""Seconds between the op5 that opens a spurt and its first packet, so the op5 usually arrives first."""
_PAD = b"\x00\x00\x00\x04"
_OP_SPEAKING = 5


@dataclass(frozen=True, slots=True)
class SentFrame:
    """One packet a speaker put on its uplink.

    ``pcm`` is the 20 ms of audio that was encoded (``None`` for the silence frames that close a spurt), ``opus``
    the encoder's packet, ``payload`` what went into RTP after DAVE (equal to ``opus`` when sent in clear).
    ``sent_at`` is the event loop time of sending; ``spurt`` counts talk spurts from 0. ``tampered`` marks a DAVE
    frame whose ciphertext was corrupted after encryption (:attr:`SimulatedSpeaker.tamper_dave`).
    """

    index: int
    spurt: int
    sequence: int
    timestamp: int
    pcm: bytes | None
    opus: bytes
    payload: bytes
    dave_encrypted: bool
    padded: bool
    marker: bool
    sent_at: float
    tampered: bool = False

    @property
    def silence(self) -> bool:
        return self.pcm is None


class SimulatedSpeaker:
    """A call member that speaks clips or tones.

    Build them with ``VoiceServer.add_speaker``; the keyword arguments there are the ones below.

    Parameters
    ----------
    user_id / name:
        Who this speaker is.
    ssrc:
        Its RTP synchronisation source, unique in the call.
    clip:
        Default clip name (see ``testing.clips.list_clips()``); ``None`` speaks a tone.
    tone_hz / tone_seconds:
        The tone spoken when no clip is given.
    bitrate:
        Opus bitrate.
    padding_every:
        Put 4 bytes of RTP padding on every n-th packet (0: never).
    plaintext_every:
        Send every n-th audio frame without DAVE encryption even when the session is ready (0: never); receivers
        accept them only in passthrough mode.
    uplink:
        Network conditions between the speaker and the relay.
    history:
        How many of the latest frames :attr:`sent` keeps at least (older ones are dropped in chunks, so a speaker
        talking for hours does not grow without bound).
    """

    def __init__(
        self,
        *,
        user_id: int,
        name: str,
        ssrc: int,
        channel_id: int,
        inject: Callable[[RelayPeer, bytes], None],
        announce: Callable[[SimulatedSpeaker], None],
        clip: str | None = None,
        tone_hz: float = 440.0,
        tone_seconds: float = 1.0,
        bitrate: int = 64000,
        padding_every: int = 0,
        plaintext_every: int = 0,
        uplink: LinkConditions | None = None,
        history: int = 6000,
    ) -> None:
        self.user_id = user_id
        self.name = name
        self.channel_id = channel_id
        self.clip = clip
        self.tone_hz = tone_hz
        self.tone_seconds = tone_seconds
        self.padding_every = padding_every
        self.plaintext_every = plaintext_every
        self.tamper_dave = False
        """While True, every DAVE-encrypted frame gets a ciphertext byte flipped after encryption (an attacker or a
        broken sender): receivers must fail to authenticate it and drop it."""
        self.peer = RelayPeer(user_id, ssrc, receives=False)
        self.speaking = 0
        self.sent: list[SentFrame] = []
        """The frames sent, oldest first (at least the last ``history``); ``SentFrame.index`` counts from 0."""
        self.history = history
        self._frames_sent = 0
        self.dave = DaveClient(user_id, channel_id)
        """The speaker's DAVE state; the voice server connects its ``send_json`` / ``send_binary``."""
        self._announce = announce
        self._encoder = OpusEncoder(bitrate=bitrate)
        self._uplink = Link(uplink or LinkConditions(), lambda packet: inject(self.peer, packet), salt=user_id)
        rng = random.SystemRandom()
        self._sequence = rng.randrange(1 << 16)
        self._timestamp = rng.randrange(1 << 32)
        self._last_sent: float | None = None
        self._spurts = 0
        self._audio_frames = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = False

    # -- identity ---------------------------------------------------------------------------------------------

    @property
    def ssrc(self) -> int:
        return self.peer.ssrc

    @property
    def uplink(self) -> Link:
        """The link between this speaker and the relay (its ``stats`` count what the network did)."""
        return self._uplink

    @property
    def busy(self) -> bool:
        """True while a spurt is being sent or scheduled."""
        return self._task is not None and not self._task.done()

    def __repr__(self) -> str:
        return f"<SimulatedSpeaker user_id={self.user_id} name={self.name!r} ssrc={self.ssrc}>"

    # -- speaking ---------------------------------------------------------------------------------------------

    def speak(self, clip: str | None = None, *, times: int = 1, pause: float = 1.0) -> asyncio.Task[None]:
        """Speak ``clip`` (the default source when ``None``) ``times`` times, ``pause`` seconds apart.

        Returns the task doing it; await it to wait until the last spurt's silence frames are out. A call while
        the speaker is busy queues behind what it is saying.
        """
        previous = self._task

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.shield(previous)
            for n in range(times):
                if self._stop:
                    break
                if n:
                    await asyncio.sleep(pause)
                await self._spurt(self._source(clip, loop=False))

        self._stop = False
        self._task = asyncio.get_running_loop().create_task(run(), name=f"speaker-{self.user_id}")
        return self._task

    def start(self, clip: str | None = None, *, pause: float = 0.0) -> asyncio.Task[None]:
        """Speak ``clip`` (or the default source) over and over until :meth:`stop`.

        With ``pause`` 0 it is one endless talk spurt; otherwise each repetition is its own spurt (op5, audio,
        silence frames) followed by ``pause`` seconds of quiet, as a person talking now and then.
        """
        if pause < 0:
            raise ValueError("pause must not be negative")
        self.stop_now()
        self._stop = False

        async def chat() -> None:
            while not self._stop:
                await self._spurt(self._source(clip, loop=False))
                if not self._stop:
                    await asyncio.sleep(pause)

        body = chat() if pause else self._spurt(self._source(clip, loop=True))
        self._task = asyncio.get_running_loop().create_task(body, name=f"speaker-{self.user_id}")
        return self._task

    def stop(self) -> None:
        """End the current spurt at the next frame (with the closing silence frames) and cancel queued ones."""
        self._stop = True

    def stop_now(self) -> None:
        """Cancel at once, without closing silence frames (a client that vanished)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def wait_idle(self) -> None:
        """Wait until everything scheduled has been sent."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def audio_frames(self) -> list[SentFrame]:
        """The frames that carried audio (not the closing silence), in sending order."""
        return [frame for frame in self.sent if frame.pcm is not None]

    def _source(self, clip: str | None, *, loop: bool) -> Iterator[bytes]:
        name = clip if clip is not None else self.clip
        if name is not None:
            return clip_frames(name, loop=loop)
        return _tone_frames(self.tone_hz, self.tone_seconds, loop=loop)

    async def _spurt(self, frames: Iterator[bytes]) -> None:
        loop = asyncio.get_running_loop()
        self.speaking = 1
        self._announce(self)
        try:
            await asyncio.sleep(SPEAKING_LEAD)
            start = loop.time()
            if self._last_sent is not None:
                gap = max(1, round((start - self._last_sent) / FRAME_INTERVAL))
                self._timestamp = (self._timestamp + (gap - 1) * FRAME_SAMPLES) & 0xFFFFFFFF
            spurt = self._spurts
            self._spurts += 1
            n = 0
            for pcm in frames:
                await _sleep_until(loop, start + n * FRAME_INTERVAL)
                self._send(pcm, self._encoder.encode(pcm), spurt=spurt, marker=n == 0)
                n += 1
                if self._stop:
                    break
            for _ in range(SILENCE_FRAMES):
                await _sleep_until(loop, start + n * FRAME_INTERVAL)
                self._send(None, OPUS_SILENCE, spurt=spurt, marker=False)
                n += 1
        finally:
            self.speaking = 0
            self._announce(self)

    def _send(self, pcm: bytes | None, opus: bytes, *, spurt: int, marker: bool) -> None:
        payload, encrypted = self._protect(opus, audio=pcm is not None)
        index = self._frames_sent
        self._frames_sent += 1
        if len(self.sent) >= 2 * self.history:
            del self.sent[: len(self.sent) - self.history]
        padded = bool(self.padding_every) and index % self.padding_every == self.padding_every - 1
        ext = build_extension_body([(AUDIO_LEVEL_EXTENSION_ID, bytes((127 if pcm is None else 0x80 | 30,)))])
        header = build_rtp_header(
            sequence=self._sequence,
            timestamp=self._timestamp,
            ssrc=self.ssrc,
            marker=marker,
            ext_profile=EXTENSION_PROFILE_ONE_BYTE,
            ext_words=len(ext) // 4,
            padding=padded,
        )
        now = asyncio.get_running_loop().time()
        self.sent.append(
            SentFrame(
                index=index,
                spurt=spurt,
                sequence=self._sequence,
                timestamp=self._timestamp,
                pcm=pcm,
                opus=opus,
                payload=payload,
                dave_encrypted=encrypted,
                padded=padded,
                marker=marker,
                sent_at=now,
                tampered=encrypted and self.tamper_dave,
            )
        )
        self._last_sent = now
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self._uplink.send(header + ext + payload + (_PAD if padded else b""))

    def _protect(self, opus: bytes, *, audio: bool) -> tuple[bytes, bool]:
        if not audio or not self.dave.can_encrypt:
            return opus, False
        self._audio_frames += 1
        if self.plaintext_every and self._audio_frames % self.plaintext_every == 0:
            return opus, False
        payload = self.dave.encrypt(opus)
        if self.tamper_dave:
            payload = bytes((payload[0] ^ 0x55,)) + payload[1:]
        return payload, True

    # -- gateway messages (the speaker's side of the voice websocket, in-process) ----------------------------

    def deliver_json(self, op: int, data: Any) -> None:
        self.dave.handle_json(op, data)

    def deliver_binary(self, op: int, payload: bytes) -> None:
        self.dave.handle_binary(op, payload)

    def close(self) -> None:
        """Stop at once and drop held-back packets."""
        self.stop_now()
        self._uplink.close()


class DaveClient:
    """The client half of DAVE on the voice gateway, as discord.py runs it, for in-process members.

    It owns a ``davey.DaveSession`` and answers the server's DAVE opcodes: pins the external sender (op25),
    commits proposals (op27 -> op28), applies commits and welcomes (op29/op30 -> op23, or op31 when they fail),
    follows transitions (op21/op22) and re-creates the group on op24 epoch 1. What it sends goes through
    ``send_json(op, data)`` and ``send_binary(op, payload)``, which the owner connects.
    """

    __slots__ = (
        "channel_id",
        "pending_transitions",
        "protocol_version",
        "send_binary",
        "send_json",
        "session",
        "user_id",
    )

    def __init__(self, user_id: int, channel_id: int) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        self.session: davey.DaveSession | None = None
        self.protocol_version = 0
        self.pending_transitions: dict[int, int] = {}
        self.send_json: Callable[[int, Any], None] = _discard
        self.send_binary: Callable[[int, bytes], None] = _discard

    @property
    def can_encrypt(self) -> bool:
        """True when frames must be end-to-end encrypted (DAVE negotiated and the group established)."""
        return self.protocol_version > 0 and self.session is not None and bool(self.session.ready)

    def start(self, protocol_version: int, *, send_key_package: bool = True) -> None:
        """Create or re-create the session (op4 with DAVE, or op24 epoch 1) and send the key package (op26)."""
        self.protocol_version = protocol_version
        if protocol_version <= 0:
            if self.session is not None:
                self.session.reset()
                self.session.set_passthrough_mode(True, 10)
            return
        if self.session is None:
            self.session = davey.DaveSession(protocol_version, self.user_id, self.channel_id)
        else:
            self.session.reinit(protocol_version, self.user_id, self.channel_id)
        if send_key_package:
            self.send_key_package()

    def send_key_package(self) -> None:
        """Send a fresh key package (op26)."""
        if self.session is not None:
            self.send_binary(26, bytes(self.session.get_serialized_key_package()))

    def encrypt(self, opus: bytes) -> bytes:
        """End-to-end encrypt one Opus frame (the session must be ready)."""
        assert self.session is not None
        return bytes(self.session.encrypt_opus(opus))

    def decrypt(self, user_id: int, frame: bytes) -> bytes:
        """Remove the end-to-end layer of a frame from ``user_id`` (raises ``ValueError`` when it cannot)."""
        if self.session is None:
            return frame
        return bytes(self.session.decrypt(user_id, davey.MediaType.audio, frame))

    def handle_json(self, op: int, data: Any) -> None:
        """Answer a DAVE JSON opcode (21, 22, 24); anything else is ignored."""
        session = self.session
        if session is None or not isinstance(data, dict):
            return
        if op == 21:
            transition_id = int(data["transition_id"])
            version = int(data["protocol_version"])
            self.pending_transitions[transition_id] = version
            if transition_id == 0:
                self._execute(transition_id)
            else:
                if version == 0:
                    session.set_passthrough_mode(True, 120)
                self.send_json(23, {"transition_id": transition_id})
        elif op == 22:
            self._execute(int(data["transition_id"]))
        elif op == 24 and int(data["epoch"]) == 1:
            self.start(int(data["protocol_version"]))

    def handle_binary(self, op: int, payload: bytes) -> None:
        """Answer a DAVE binary opcode (25, 27, 29, 30) given without its sequence number and opcode byte."""
        session = self.session
        if session is None or not payload:
            return
        if op == 25:
            session.set_external_sender(payload)
        elif op == 27:
            kind = davey.ProposalsOperationType.append if payload[0] == 0 else davey.ProposalsOperationType.revoke
            result = session.process_proposals(kind, payload[1:])
            if result is not None:
                self.send_binary(28, bytes(result.commit) + bytes(result.welcome or b""))
        elif op in (29, 30):
            (transition_id,) = struct.unpack_from(">H", payload)
            try:
                if op == 29:
                    session.process_commit(payload[2:])
                else:
                    session.process_welcome(payload[2:])
            except Exception as exc:  # davey raises plain exceptions for a commit it cannot apply
                _log.debug("user %s: invalid commit/welcome: %s", self.user_id, exc)
                self.send_json(31, {"transition_id": transition_id})
                self.start(self.protocol_version or 1)
                return
            if transition_id != 0:
                self.pending_transitions[transition_id] = self.protocol_version
                self.send_json(23, {"transition_id": transition_id})

    def _execute(self, transition_id: int) -> None:
        version = self.pending_transitions.pop(transition_id, None)
        if version is not None:
            self.protocol_version = version


def _discard(op: int, data: Any) -> None:
    return None


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    delay = deadline - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _tone_frames(freq: float, seconds: float, *, loop: bool) -> Iterator[bytes]:
    pcm = tone(freq, seconds)
    pcm += bytes(-len(pcm) % FRAME_BYTES)
    while True:
        for start in range(0, len(pcm), FRAME_BYTES):
            yield pcm[start : start + FRAME_BYTES]
        if not loop:
            return
