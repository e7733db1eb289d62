"""A realistic received stream: N speakers of 64 kbit/s stereo Opus speech in Discord's packet layout.

Each speaker loops one of the shipped speech clips (from a different offset) through its own Opus encoder; every
frame becomes an RTP packet with a one-byte (0xBEDE) header extension, optionally DAVE-encrypted by the speaker's
own davey session, then transport-encrypted in an rtpsize AEAD mode. Packets are grouped by the 20 ms slot they
are sent in, so runs can feed a slot and play it out.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from davegroup import DaveGroup

from discord_voicerecv.opus import OpusEncoder
from discord_voicerecv.protocol.rtp import EXTENSION_PROFILE_ONE_BYTE, build_extension_body, build_rtp_header
from discord_voicerecv.protocol.transport import make_cipher
from discord_voicerecv.testing.clips import clip_frames, list_clips

__all__ = (
    "AESGCM",
    "XCHACHA",
    "Speech",
    "Stream",
    "arrival_offset",
    "build_stream",
    "encode_speech",
    "write_packets",
)

XCHACHA = "aead_xchacha20_poly1305_rtpsize"
AESGCM = "aead_aes256_gcm_rtpsize"
SPEAKER_BASE = 7_000_000
"""User id of speaker 0; speaker i is ``SPEAKER_BASE + i`` with SSRC ``1000 + i``."""
RECEIVER_BASE = 9_000_000
_BITRATE = 64_000
_POOL_SECONDS = 20.0
"""Seconds of Opus encoded per speaker; longer streams cycle through them (decoding cost is content-driven)."""


@dataclass
class Speech:
    """Encoded Opus frames per speaker (plain, and DAVE-encrypted when a group was given)."""

    frames: list[list[bytes]]
    dave_frames: list[list[bytes]] | None
    group: DaveGroup | None
    receivers: list[int] = field(default_factory=list)
    """DAVE members reserved for decrypting runs; take them with :meth:`take_receiver`."""

    def take_receiver(self) -> int:
        """A receiving member no run has used yet (davey refuses a frame a session already decrypted)."""
        if not self.receivers:
            raise RuntimeError("no DAVE receiver session left: make the group with more receivers")
        return self.receivers.pop(0)


@dataclass
class Stream:
    """The packets of one run: ``slots[k]`` holds the datagrams sent in slot ``k``, speakers in order."""

    mode: str
    key: bytes
    dave: bool
    slots: list[list[bytes]]
    ssrc_users: dict[int, int]

    @property
    def packets(self) -> int:
        return sum(len(s) for s in self.slots)

    def datagrams(self) -> Iterator[bytes]:
        for slot in self.slots:
            yield from slot

    def schedule(self) -> list[tuple[float, bytes]]:
        """Arrival time (seconds from the start) of every datagram when paced at real time.

        Speakers' clocks are independent, so each one's packets arrive at its own phase of the 20 ms slot:
        speaker ``i`` of ``n`` at ``1 ms + 18 ms * i / n`` into it. A receiver is woken once per packet, as a
        socket thread is.
        """
        out = []
        for k, slot in enumerate(self.slots):
            n = len(slot)
            out += [(0.02 * k + arrival_offset(i, n), datagram) for i, datagram in enumerate(slot)]
        return out


def arrival_offset(index: int, count: int) -> float:
    """Where in its slot speaker ``index`` of ``count`` has its packets arrive (see :meth:`Stream.schedule`)."""
    return 0.001 + 0.018 * index / max(1, count)


def encode_speech(speakers: int, seconds: float, *, dave_receivers: int = 0, bitrate: int = _BITRATE) -> Speech:
    """Encode ``speakers`` x ``seconds`` of speech; with ``dave_receivers`` > 0, also DAVE-encrypt every frame.

    DAVE frames exist for ``seconds`` of audio (nonces must not repeat); the plain Opus frames cycle after
    20 seconds since their content, not their position, is what decoding costs.
    """
    clips = list_clips()
    count = round(seconds * 50)
    pool = min(count, round(_POOL_SECONDS * 50))
    frames: list[list[bytes]] = []
    for i in range(speakers):
        encoder = OpusEncoder(bitrate=bitrate)
        source = clip_frames(clips[i % len(clips)], loop=True)
        for _ in range(37 * i):
            next(source)
        encoded = [encoder.encode(next(source)) for _ in range(pool)]
        frames.append([encoded[k % pool] for k in range(count)])
    if dave_receivers <= 0:
        return Speech(frames, None, None)
    senders = [SPEAKER_BASE + i for i in range(speakers)]
    receivers = [RECEIVER_BASE + i for i in range(dave_receivers)]
    group = DaveGroup(senders + receivers)
    dave_frames = []
    for i, user in enumerate(senders):
        session = group.session(user)
        dave_frames.append([bytes(session.encrypt_opus(frame)) for frame in frames[i]])
    return Speech(frames, dave_frames, group, receivers)


def build_stream(speech: Speech, mode: str, *, dave: bool, seed: int = 1) -> Stream:
    """Lay ``speech`` out as Discord sends it: RTP + 0xBEDE extension, transport-encrypted in ``mode``."""
    rng = random.Random(seed)
    key = bytes(rng.getrandbits(8) for _ in range(32))
    source = speech.dave_frames if dave else speech.frames
    if source is None:
        raise ValueError("speech was encoded without DAVE")
    speakers = len(source)
    count = len(source[0])
    ssrc_users = {1000 + i: SPEAKER_BASE + i for i in range(speakers)}
    slots: list[list[bytes]] = [[] for _ in range(count)]
    for i in range(speakers):
        cipher = make_cipher(mode, key)
        ssrc = 1000 + i
        seq0 = rng.randrange(1 << 16)
        ts0 = rng.randrange(1 << 32)
        for k, frame in enumerate(source[i]):
            level = bytes([rng.randrange(20, 60)])
            body = build_extension_body([(1, level)], EXTENSION_PROFILE_ONE_BYTE)
            header = build_rtp_header(
                sequence=seq0 + k,
                timestamp=ts0 + 960 * k,
                ssrc=ssrc,
                marker=k == 0,
                ext_profile=EXTENSION_PROFILE_ONE_BYTE,
                ext_words=len(body) // 4,
            )
            slots[k].append(cipher.encrypt_rtp(header, body + frame))
    return Stream(mode, key, dave, slots, ssrc_users)


_RECORD = struct.Struct("<IH")


def write_packets(stream: Stream, path: Path) -> None:
    """Store a stream for the anchor's process: a line of metadata, then ``slot u32 | len u16 | datagram``."""
    with open(path, "wb") as f:
        users = ",".join(f"{s}:{u}" for s, u in stream.ssrc_users.items())
        f.write(f"{stream.mode} {stream.key.hex()} {users}\n".encode())
        for k, slot in enumerate(stream.slots):
            for data in slot:
                f.write(_RECORD.pack(k, len(data)) + data)
    os.chmod(path, 0o644)
