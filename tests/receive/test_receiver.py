"""Tests for the Receiver: real transport encryption and real Opus, driven by a fake clock in manual mode."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import discord
import numpy as np
import pytest

from discord_voicerecv.errors import E2EEDecryptError
from discord_voicerecv.frames import FRAME_BYTES, OPUS_SILENCE, VoiceFrame
from discord_voicerecv.opus import OpusEncoder
from discord_voicerecv.protocol.rtcp import build_bye
from discord_voicerecv.protocol.rtp import build_extension_body, build_rtp_header
from discord_voicerecv.protocol.transport import make_cipher
from discord_voicerecv.receive import Receiver
from discord_voicerecv.receive.dave import DaveFrameDecryptor
from discord_voicerecv.receive.stats import StatsSnapshot
from discord_voicerecv.sinks.base import AudioSink, SinkUser

MODE = "aead_aes256_gcm_rtpsize"
KEY = bytes(range(32))
USER_A, USER_B = 1111, 2222
SSRC_A, SSRC_B = 0xA0A0, 0xB0B0


@functools.cache
def _tone(freq: float, frames: int = 120, samples: int = 960) -> tuple[bytes, ...]:
    """Opus packets of a continuous stereo sine, encoded once per test session."""
    encoder = OpusEncoder(fec=True, expected_loss_pct=25)
    out = []
    for k in range(frames):
        t = np.arange(k * samples, (k + 1) * samples) / 48000.0
        mono = (9000 * np.sin(2 * math.pi * freq * t)).astype("<i2")
        out.append(encoder.encode(np.repeat(mono, 2).tobytes(), frame_samples=samples))
    return tuple(out)


def _dominant_freq(pcm: bytes) -> float:
    left = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)[:, 0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(left * np.hanning(len(left))))
    return float(np.fft.rfftfreq(len(left), 1 / 48000)[int(np.argmax(spectrum))])


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


class RecordingSink(AudioSink):
    def __init__(self, wants_pcm: bool = True) -> None:
        self.wants_pcm = wants_pcm
        self.writes: list[tuple[SinkUser, VoiceFrame]] = []
        self.advances: list[int] = []
        self.cleanups = 0

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.writes.append((user, frame))

    def advance(self, tick: int) -> None:
        self.advances.append(tick)

    def cleanup(self) -> None:
        self.cleanups += 1

    def frames(self, ssrc: int | None = None) -> list[VoiceFrame]:
        return [f for _, f in self.writes if ssrc is None or f.ssrc == ssrc]


class Speaker:
    """Builds encrypted RTP packets the way a Discord client sends them."""

    def __init__(self, ssrc: int, freq: float = 440.0, *, seq: int = 1000, ts: int = 77_000, key: bytes = KEY) -> None:
        self.ssrc = ssrc
        self.cipher = make_cipher(MODE, key)
        self.packets = _tone(freq)
        self.seq0 = seq
        self.ts0 = ts

    def wire(self, i: int) -> tuple[int, int]:
        return (self.seq0 + i) & 0xFFFF, (self.ts0 + 960 * i) & 0xFFFFFFFF

    def packet(self, i: int, payload: bytes | None = None, *, ext: bool = False, padding: int = 0) -> bytes:
        seq, ts = self.wire(i)
        body = b""
        ext_words = 0
        if ext:
            body = build_extension_body([(1, b"\x01\x02"), (5, b"\x07")])
            ext_words = len(body) // 4
        header = build_rtp_header(
            sequence=seq,
            timestamp=ts,
            ssrc=self.ssrc,
            ext_profile=0xBEDE if ext else None,
            ext_words=ext_words,
            padding=bool(padding),
        )
        data = payload if payload is not None else self.packets[i % len(self.packets)]
        pad = bytes(padding - 1) + bytes([padding]) if padding else b""
        return self.cipher.encrypt_rtp(header, body + data + pad)


class Harness:
    """A manual-mode Receiver on a fake clock, fed at exact arrival times."""

    def __init__(self, sink: RecordingSink | None = None, **kwargs: Any) -> None:
        self.clock = Clock()
        self.sink = sink if sink is not None else RecordingSink()
        self.after: list[BaseException | None] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.rx = Receiver(
            self.sink,
            clock=self.clock,
            user_resolver=lambda uid: discord.Object(id=uid),
            after=self.after.append,
            on_event=lambda name, payload: self.events.append((name, payload)),
            **kwargs,
        )
        self.rx.set_transport(MODE, KEY)
        self.rx.start(threaded=False)
        self.t0 = self.clock.t

    def at(self, slot: float) -> float:
        return self.t0 + 0.02 * slot

    def feed_at(self, t: float, datagram: bytes) -> None:
        self.rx.pump(until=t)
        self.clock.t = max(self.clock.t, t)
        self.rx.feed(datagram)

    def feed_all(self, schedule: Iterable[tuple[float, bytes]]) -> None:
        for t, datagram in sorted(schedule, key=lambda item: item[0]):
            self.feed_at(t, datagram)

    def finish(self, t: float) -> None:
        self.rx.pump(until=t)
        self.clock.t = max(self.clock.t, t)
        self.rx.stop()

    def stats(self) -> StatsSnapshot:
        return self.rx.stats()


def _stream(speaker: Speaker, h: Harness, indices: Iterable[int], start: float = 10.0, **jitter: Any) -> list[Any]:
    """Schedule packets ``indices`` sent every 20 ms from slot ``start``, arriving 3 ms later (+ jitter)."""
    rng = random.Random(jitter.get("seed", 1))
    spread = jitter.get("spread", 0.0)
    return [(h.at(start + i) + 0.003 + rng.uniform(0, spread), speaker.packet(i)) for i in indices]


def _assert_aligned(sink: RecordingSink) -> None:
    assert sink.advances == list(range(len(sink.advances)))
    assert sink.cleanups == 1


def test_in_order_stream_is_decoded_into_consecutive_ticks() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.feed_all(_stream(Speaker(SSRC_A), h, range(50)))
    h.finish(h.at(80))
    frames = h.sink.frames()
    assert [f.tick for f in frames] == list(range(10, 60))
    assert all(len(f.pcm) == FRAME_BYTES and not f.concealed and f.user_id == USER_A for f in frames)
    assert [f.sequence for f in frames] == [1000 + i for i in range(50)]
    assert abs(_dominant_freq(b"".join(f.pcm for f in frames[10:20])) - 440) < 15
    users = {user.id for user, _ in h.sink.writes if isinstance(user, discord.Object)}
    assert users == {USER_A}
    stats = h.stats()
    assert stats["decoded"] == 50 and stats["rtp"] == 50 and stats["frames"] == 50
    assert stats.by_user[USER_A]["decoded"] == 50
    assert stats.by_ssrc[SSRC_A]["rtp"] == 50
    assert stats.dropped() == 0
    _assert_aligned(h.sink)
    assert h.sink.advances[-1] == 79
    assert h.after == [None]


def test_reordered_and_jittered_packets_keep_their_slots() -> None:
    reference = Harness()
    reference.rx.map_ssrc(SSRC_A, USER_A)
    reference.feed_all(_stream(Speaker(SSRC_A), reference, range(40)))
    reference.finish(reference.at(70))

    h = Harness(playout_delay=0.1)
    h.rx.map_ssrc(SSRC_A, USER_A)
    schedule = _stream(Speaker(SSRC_A), h, range(40), spread=0.06, seed=7)
    schedule[0] = (h.at(10) + 0.05, schedule[0][1])  # the first packet is the most delayed...
    schedule[2] = (h.at(12) + 0.003, schedule[2][1])  # ...and the third barely: the anchor follows the third
    for i in range(1, 39, 4):
        schedule[i] = (max(schedule[i][0], schedule[i + 1][0]) + 0.002, schedule[i][1])  # i arrives after i + 1
    h.feed_all(schedule)
    h.finish(h.at(70))

    got = [(f.tick, f.sequence, f.pcm) for f in h.sink.frames()]
    want = [(f.tick, f.sequence, f.pcm) for f in reference.sink.frames()]
    assert got == want
    assert h.stats()["late"] == 0 and h.stats()["plc"] == 0


def test_duplicates_are_dropped_and_counted() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    schedule = _stream(speaker, h, range(30))
    schedule += [(t + 0.001, pkt) for t, pkt in schedule]
    h.feed_all(schedule)
    h.finish(h.at(60))
    assert len(h.sink.frames()) == 30
    assert h.stats()["duplicate"] == 30


def test_losses_are_recovered_with_fec_then_plc() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    lost = {10, 20, 21, 22}
    h.feed_all(_stream(Speaker(SSRC_A), h, (i for i in range(40) if i not in lost)))
    h.finish(h.at(70))
    frames = h.sink.frames()
    assert [f.tick for f in frames] == list(range(10, 50))
    concealed = {f.tick - 10: f for f in frames if f.concealed}
    assert set(concealed) == lost
    assert all(f.opus is None and len(f.pcm) == FRAME_BYTES for f in concealed.values())
    stats = h.stats()
    assert stats["fec"] == 2  # frames 10 and 22, from packets 11 and 23
    assert stats["plc"] == 2  # frames 20 and 21
    assert stats["decoded"] == 36
    recovered = np.frombuffer(concealed[10].pcm, dtype="<i2")
    assert np.abs(recovered).max() > 1000


def test_loss_at_the_end_of_a_spurt_is_not_concealed() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.feed_all(_stream(Speaker(SSRC_A), h, range(20)))
    h.finish(h.at(60))
    assert [f.tick for f in h.sink.frames()] == list(range(10, 30))
    assert h.stats()["plc"] == 0
    names = [(name, payload["tick"]) for name, payload in h.events]
    assert names == [("speaking_start", 10), ("speaking_stop", 40)]


def test_sequence_and_timestamp_wraparound() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A, seq=65530, ts=(1 << 32) - 960 * 3)
    schedule = _stream(speaker, h, range(30))
    schedule[5] = (schedule[6][0] + 0.001, schedule[5][1])  # 5 arrives just after 6, across the sequence wrap
    h.feed_all(schedule)
    h.finish(h.at(60))
    frames = h.sink.frames()
    assert [f.tick for f in frames] == list(range(10, 40))
    assert [f.sequence for f in frames] == [(65530 + i) & 0xFFFF for i in range(30)]
    assert frames[3].rtp_timestamp == 0 and frames[2].rtp_timestamp == (1 << 32) - 960
    assert not any(f.concealed for f in frames)


def test_unknown_ssrc_is_held_then_played_when_mapped() -> None:
    h = Harness()
    speaker = Speaker(SSRC_A)
    schedule = _stream(speaker, h, range(40))
    h.feed_all(schedule[:15])
    assert h.stats()["unknown_ssrc_held"] == 15
    assert h.rx._streams == {}
    h.rx.map_ssrc(SSRC_A, USER_A)  # in slot 24: slots up to 18 were played while the packets waited
    h.feed_all(schedule[15:])
    h.finish(h.at(90))
    frames = h.sink.frames()
    assert [(f.tick, f.sequence) for f in frames] == [(10 + i, 1000 + i) for i in range(9, 40)]
    assert h.stats()["late"] == 9


def test_held_packets_expire_and_are_counted() -> None:
    h = Harness(unknown_ssrc_hold=0.5)
    h.feed_all(_stream(Speaker(SSRC_A), h, range(5)))
    h.rx.pump(until=h.at(120))
    h.clock.t = h.at(120)
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.finish(h.at(130))
    assert h.stats()["unknown_ssrc_expired"] == 5
    assert h.sink.frames() == []


def test_garbage_and_unauthenticated_packets_are_counted_and_allocate_nothing() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    forger = Speaker(SSRC_A, key=bytes(32))
    good = speaker.packet(0)
    tampered = bytearray(speaker.packet(1))
    tampered[20] ^= 0x40
    rng = random.Random(3)
    datagrams = [
        forger.packet(0),
        bytes(tampered),
        good[:20],
        b"\x80",
        bytes([0x40]) + good[1:],
        bytes([0x8F]) + good[1:14],
        b"\x80\x78" + bytes(2000),
        build_rtp_header(sequence=1, timestamp=1, ssrc=SSRC_A, payload_type=101) + bytes(40),
        b"\x00\x02\x00\x46" + bytes(70),
        b"\x80\xc9\x00\x01" + bytes(30),
        *(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))) for _ in range(300)),
        *(Speaker(rng.getrandbits(32), key=os.urandom(32)).packet(0) for _ in range(50)),
    ]
    for data in datagrams:
        h.rx.feed(data)
    stats = h.stats()
    assert h.rx._streams == {} and h.rx._unmapped.ssrcs() == set()
    assert stats["packets"] == len(datagrams)
    assert stats["decrypt_failed"] >= 53
    assert stats["ip_discovery"] == 1
    assert stats["ignored_payload_type"] >= 1
    assert stats["malformed:oversized"] == 1
    assert stats["malformed:short"] >= 1 and stats["malformed:version"] >= 1
    assert stats["rtp"] == 0 and stats["internal_error"] == 0
    h.feed_at(h.at(10), good)
    assert set(h.rx._streams) == {SSRC_A}


def test_packets_before_the_key_or_from_our_own_ssrc_are_dropped() -> None:
    clock = Clock()
    rx = Receiver(RecordingSink(), clock=clock)
    rx.start(threaded=False)
    rx.ignore_ssrc(SSRC_B)
    rx.feed(Speaker(SSRC_A).packet(0))
    rx.set_transport(MODE, list(KEY))  # discord.py keeps the key as a list of ints
    rx.feed(Speaker(SSRC_B).packet(0))
    stats = rx.stats()
    assert stats["no_transport_key"] == 1 and stats["ignored_ssrc"] == 1
    rx.stop()


def test_two_speakers_are_aligned_by_arrival_across_spurts() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.rx.map_ssrc(SSRC_B, USER_B)
    a = Speaker(SSRC_A, 440.0, seq=10, ts=5_000_000)
    b = Speaker(SSRC_B, 880.0, seq=40_000, ts=3_999_000_000)
    schedule = _stream(a, h, range(60), start=10)
    late_b = _stream(b, h, range(30), start=20, spread=0.005, seed=5)
    late_b[0] = (late_b[0][0] + 0.035, late_b[0][1])  # B's first packet is delayed into slot 21
    schedule += [(t + 0.001, pkt) for t, pkt in late_b]
    h.feed_all(schedule)
    h.finish(h.at(100))
    ticks_a = [f.tick for f in h.sink.frames(SSRC_A)]
    ticks_b = [f.tick for f in h.sink.frames(SSRC_B)]
    assert ticks_a == list(range(10, 70))
    assert ticks_b == list(range(20, 50))
    by_tick: dict[int, set[int]] = {}
    for _, frame in h.sink.writes:
        by_tick.setdefault(frame.tick, set()).add(frame.ssrc)
    assert all(by_tick[t] == {SSRC_A, SSRC_B} for t in range(20, 50))
    mixed_b = b"".join(f.pcm for f in h.sink.frames(SSRC_B)[5:15])
    assert abs(_dominant_freq(mixed_b) - 880) < 20
    starts = [(p["user_id"], p["tick"]) for name, p in h.events if name == "speaking_start"]
    assert starts == [(USER_A, 10), (USER_B, 20)]
    _assert_aligned(h.sink)


def test_a_new_spurt_after_silence_is_placed_by_arrival() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    schedule = _stream(speaker, h, range(10), start=5)
    # discord.py keeps timestamps contiguous across a pause: packet 10 follows 9 in RTP but comes 1 s later
    schedule += [(h.at(65 + i) + 0.004, speaker.packet(10 + i)) for i in range(10)]
    h.feed_all(schedule)
    h.finish(h.at(100))
    ticks = [f.tick for f in h.sink.frames()]
    assert ticks == list(range(5, 15)) + list(range(65, 75))
    names = [(n, p["tick"]) for n, p in h.events]
    assert names == [("speaking_start", 5), ("speaking_stop", 25), ("speaking_start", 65), ("speaking_stop", 85)]


def test_slow_sink_drops_counted_and_advances_never_lost() -> None:
    h = Harness(sink_queue_slots=5)
    h.rx.map_ssrc(SSRC_A, USER_A)
    schedule = _stream(Speaker(SSRC_A), h, range(30))
    for t, pkt in schedule:
        h.rx.pump(until=t, deliver=False)
        h.clock.t = t
        h.rx.feed(pkt)
    h.rx.pump(until=h.at(60), deliver=False)
    assert len(h.rx._out.queue) <= 5 + 2
    assert h.stats()["sink_queue_full"] == 25
    h.finish(h.at(60))
    assert [f.tick for f in h.sink.frames()] == list(range(10, 15))
    _assert_aligned(h.sink)
    assert h.sink.advances[-1] == 59


class ExplodingSink(RecordingSink):
    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        if len(self.writes) == 3:
            raise OSError("disk full")
        super().write(user, frame)


def test_an_exploding_sink_is_detached_and_reported() -> None:
    sink = ExplodingSink()
    h = Harness(sink)
    h.rx.map_ssrc(SSRC_A, USER_A)
    schedule = _stream(Speaker(SSRC_A), h, range(30))
    h.feed_all(schedule)
    assert len(h.after) == 1 and isinstance(h.after[0], OSError)
    assert not h.rx.is_running
    assert sink.cleanups == 1 and len(sink.writes) == 3
    h.rx.feed(schedule[0][1])
    h.finish(h.at(90))
    assert h.stats()["sink_error"] == 1 and h.stats()["not_listening"] >= 1
    assert len(h.after) == 1 and sink.cleanups == 1


def test_opus_only_sink_skips_decoding() -> None:
    h = Harness(RecordingSink(wants_pcm=False))
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    h.feed_all(_stream(speaker, h, (i for i in range(20) if i != 7)))
    h.finish(h.at(50))
    frames = h.sink.frames()
    assert [f.opus for f in frames if not f.concealed] == [speaker.packets[i] for i in range(20) if i != 7]
    assert all(f.pcm == b"" for f in frames)
    assert [f.tick for f in frames if f.concealed] == [17]
    stats = h.stats()
    assert stats["decoded"] == 0 and stats["lost"] == 1
    assert h.rx._streams[SSRC_A].decoder is None


def test_corrupt_opus_is_concealed_and_playout_continues() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    schedule = _stream(speaker, h, range(20))
    schedule[8] = (schedule[8][0], speaker.packet(8, b"\xff\xff\xff\xff"))
    h.feed_all(schedule)
    h.finish(h.at(50))
    frames = h.sink.frames()
    assert [f.tick for f in frames] == list(range(10, 30))
    assert frames[8].concealed and len(frames[8].pcm) == FRAME_BYTES
    assert h.stats()["opus_error"] == 1 and h.stats()["decoded"] == 19


def test_extension_and_padding_are_stripped() -> None:
    h = Harness(RecordingSink(wants_pcm=False))
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    h.feed_all([(h.at(10 + i), speaker.packet(i, ext=True, padding=3 * (i % 2))) for i in range(6)])
    h.finish(h.at(40))
    assert [f.opus for f in h.sink.frames()] == list(speaker.packets[:6])


def test_forty_millisecond_packets_fill_two_slots() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    long_packets = _tone(440.0, frames=10, samples=1920)
    schedule = []
    for i, payload in enumerate(long_packets):
        header = build_rtp_header(sequence=i, timestamp=1920 * i, ssrc=SSRC_A)
        schedule.append((h.at(10 + 2 * i) + 0.001, speaker.cipher.encrypt_rtp(header, payload)))
    h.feed_all(schedule)
    h.finish(h.at(60))
    frames = h.sink.frames()
    assert [f.tick for f in frames] == list(range(10, 30))
    assert not any(f.concealed for f in frames)
    assert [f.opus is not None for f in frames[:4]] == [True, False, True, False]
    assert [f.rtp_timestamp for f in frames[:4]] == [0, 960, 1920, 2880]
    assert abs(_dominant_freq(b"".join(f.pcm for f in frames[6:16])) - 440) < 15


class ToyDave:
    """A stand-in DAVE layer: frames are XOR-ed with a per-user byte and end with 0xFAFA."""

    def __init__(self) -> None:
        self.ready: set[int] = set()
        self.calls: list[bytes] = []

    @staticmethod
    def seal(user_id: int, frame: bytes) -> bytes:
        return bytes(b ^ (user_id & 0xFF) for b in frame) + b"\xfa\xfa"

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        self.calls.append(frame)
        if not frame.endswith(b"\xfa\xfa"):
            raise E2EEDecryptError("plaintext")
        if user_id not in self.ready:
            return None
        return bytes(b ^ (user_id & 0xFF) for b in frame[:-2])


def test_e2ee_frames_are_held_until_the_decryptor_is_ready() -> None:
    dave = ToyDave()
    h = Harness(decryptor=dave)
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    schedule = [(h.at(10 + i) + 0.002, speaker.packet(i, ToyDave.seal(USER_A, speaker.packets[i]))) for i in range(30)]
    schedule[12] = (schedule[12][0], speaker.packet(12, speaker.packets[12]))
    schedule[13] = (schedule[13][0], speaker.packet(13, OPUS_SILENCE))
    h.feed_all(schedule[:3])
    assert h.stats()["e2ee_held"] == 3
    dave.ready.add(USER_A)
    h.feed_all(schedule[3:])
    h.finish(h.at(60))
    frames = h.sink.frames()
    assert [f.opus for f in frames if f.tick - 10 < 12] == list(speaker.packets[:12])
    assert h.stats()["e2ee_failed:plaintext"] == 1
    assert OPUS_SILENCE not in dave.calls
    silence = [f for f in frames if f.tick == 23]
    assert silence and silence[0].opus == OPUS_SILENCE and not silence[0].concealed
    assert frames[12].tick == 22 and frames[12].concealed


def test_frames_released_late_from_the_e2ee_hold_are_lost_alone_without_shifting_the_spurt() -> None:
    dave = ToyDave()
    dave.ready.add(USER_A)
    h = Harness(decryptor=dave)
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    schedule = [(h.at(10 + i) + 0.002, speaker.packet(i, ToyDave.seal(USER_A, speaker.packets[i]))) for i in range(40)]
    h.feed_all(schedule[:15])
    dave.ready.discard(USER_A)  # an epoch change: the key for frames 15..24 comes 200 ms late
    h.feed_all(schedule[15:25])
    dave.ready.add(USER_A)
    h.feed_all(schedule[25:])
    h.finish(h.at(80))
    by_tick = {f.tick: f for f in h.sink.frames()}
    stats = h.stats()
    assert stats["late_shift"] == 0
    assert stats["late"] > 0, "frames whose slot was played while they waited for their key are lost"
    for i in range(25, 40):
        assert by_tick[10 + i].opus == speaker.packets[i], f"frame {i} must keep its slot"


def test_e2ee_frames_that_never_decrypt_expire() -> None:
    dave = ToyDave()
    h = Harness(decryptor=dave)
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    h.feed_all([(h.at(10 + i), speaker.packet(i, ToyDave.seal(USER_A, speaker.packets[i]))) for i in range(80)])
    h.finish(h.at(200))
    stats = h.stats()
    assert stats["e2ee_held"] == 80 and stats["e2ee_expired"] == 80
    assert h.sink.frames() == [] and h.rx._e2ee is not None and h.rx._e2ee.users() == set()


def test_rtcp_bye_ends_the_spurt() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    h.feed_all(_stream(speaker, h, range(10)))
    bye = speaker.cipher.encrypt_rtcp(build_bye([SSRC_A]))
    h.feed_at(h.at(20.5), bye)
    h.finish(h.at(50))
    stats = h.stats()
    assert stats["rtcp"] == 1 and stats["rtcp_bye"] == 1
    stops = [p["tick"] for n, p in h.events if n == "speaking_stop"]
    assert stops == [20]


def test_forget_user_plays_out_then_drops_the_stream_and_its_counters() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.rx.map_ssrc(SSRC_B, USER_B)
    schedule = _stream(Speaker(SSRC_A), h, range(20))
    h.feed_all(schedule[:10] + _stream(Speaker(SSRC_B, 880.0), h, range(5)))
    h.rx.pump(until=h.at(16))
    h.rx.forget_user(USER_A)
    assert set(h.rx._streams) == {SSRC_A, SSRC_B}, "the stream stays until its buffered audio played"
    h.rx.pump(until=h.at(26))  # slot 20, after A's last frame, is due
    assert set(h.rx._streams) == {SSRC_B}
    assert h.events[-1] == ("speaking_stop", {"user_id": USER_A, "ssrc": SSRC_A, "tick": 20})
    h.feed_all(schedule[10:])
    h.finish(h.at(50))
    stats = h.stats()
    assert stats["unknown_ssrc_held"] == 10
    assert [f.tick for f in h.sink.frames(SSRC_A)] == list(range(10, 20))
    assert SSRC_A not in stats.by_ssrc and USER_A not in stats.by_user, "a departed speaker's counters are pruned"
    assert SSRC_B in stats.by_ssrc and stats["decoded"] == 15, "the totals keep everything"


def test_new_transport_key_keeps_stream_state() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    speaker = Speaker(SSRC_A)
    schedule = _stream(speaker, h, range(20))
    h.feed_all(schedule[:10])
    new_key = bytes(reversed(range(32)))
    h.rx.set_transport("aead_xchacha20_poly1305_rtpsize", new_key)
    speaker.cipher = make_cipher("aead_xchacha20_poly1305_rtpsize", new_key)
    h.feed_all(_stream(speaker, h, range(10, 20)))
    h.rx.feed(schedule[19][1])  # sealed with the old key and still in flight: it opens, and is a duplicate
    h.finish(h.at(50))
    assert [f.tick for f in h.sink.frames()] == list(range(10, 30))
    assert h.stats()["decrypt_failed"] == 0 and h.stats()["duplicate"] == 1


def test_flood_of_unmapped_ssrcs_stays_bounded() -> None:
    h = Harness()
    rng = random.Random(11)
    speakers = [Speaker(rng.getrandbits(32)) for _ in range(200)]
    for i in range(3000):
        h.rx.feed(speakers[i % 200].packet(i // 200))
    held = len(h.rx._unmapped)
    assert held <= 1000 and len(h.rx._unmapped.ssrcs()) == 64
    assert h.stats()["unknown_ssrc_dropped"] == 3000 - held
    late_comer = Speaker(SSRC_B, seq=0)
    for i in range(10):
        h.rx.feed(late_comer.packet(i))
    assert SSRC_B not in h.rx._unmapped.ssrcs(), "no 65th SSRC is held"
    assert h.stats()["unknown_ssrc_dropped"] == 3000 - held + 10


def test_one_unmapped_ssrc_keeps_only_its_newest_packets() -> None:
    h = Harness()
    single = Speaker(SSRC_B, seq=0)
    for i in range(300):
        h.rx.feed(single.packet(i))
    assert len(h.rx._unmapped) == 100
    assert h.stats()["unknown_ssrc_dropped"] == 200 and h.stats()["unknown_ssrc_held"] == 300
    assert [p.sequence for p in h.rx._unmapped.take(SSRC_B, h.clock())] == list(range(200, 300))


def test_idle_streams_are_forgotten() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.feed_all(_stream(Speaker(SSRC_A), h, range(5)))
    h.rx.pump(until=h.at(100))
    assert SSRC_A in h.rx._streams
    h.rx.pump(until=h.at(3200))
    assert SSRC_A not in h.rx._streams
    h.finish(h.at(3201))
    assert h.sink.advances[-1] == 3200


def test_stop_flushes_frames_still_in_the_playout_delay() -> None:
    h = Harness(playout_delay=0.2)
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.feed_all(_stream(Speaker(SSRC_A), h, range(10)))
    h.finish(h.at(20))
    assert [f.tick for f in h.sink.frames()] == list(range(10, 20))
    assert h.sink.advances == list(range(20))


def test_stats_snapshot_is_frozen() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.feed_all(_stream(Speaker(SSRC_A), h, range(3)))
    snap = h.stats()
    h.feed_all(_stream(Speaker(SSRC_A), h, range(3, 6)))
    assert snap["rtp"] == 3 and h.stats()["rtp"] == 6
    with pytest.raises(TypeError):
        snap["rtp"] = 0  # type: ignore[index]
    as_dict = snap.as_dict()
    assert as_dict["by_user"][USER_A]["rtp"] == 3 and as_dict["packets"] == 3
    h.finish(h.at(30))


class GatedSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.gate.wait(5)
        super().write(user, frame)


def _wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_threaded_receiver_with_a_blocked_sink_keeps_receiving() -> None:
    sink = GatedSink()
    after: list[BaseException | None] = []
    rx = Receiver(sink, playout_delay=0.02, sink_queue_slots=2, after=after.append)
    rx.set_transport(MODE, KEY)
    rx.map_ssrc(SSRC_A, USER_A)
    rx.start()
    speaker = Speaker(SSRC_A)

    def feed() -> None:
        t_start = time.monotonic()
        for i in range(12):
            while time.monotonic() < t_start + 0.02 * i:
                time.sleep(0.002)
            rx.feed(speaker.packet(i))

    feeder = threading.Thread(target=feed)
    feeder.start()
    feeder.join(30)  # the sink stays blocked throughout: a feed() that waited for it would never return
    assert not feeder.is_alive()
    assert _wait_for(lambda: rx.stats()["sink_queue_full"] > 0)
    sink.gate.set()
    rx.stop()
    assert after == [None] and sink.cleanups == 1
    stats = rx.stats()
    # Every datagram was taken in; with a 20 ms playout delay a loaded machine may make one late, never lost.
    assert stats["packets"] == 12 and stats["rtp"] + stats["late"] == 12, dict(stats)
    assert sink.advances == list(range(len(sink.advances)))
    assert 0 < len(sink.writes) < 12


class StoppingSink(RecordingSink):
    """Calls ``Receiver.stop`` from inside ``advance``, on the receiver's own sink thread."""

    def __init__(self) -> None:
        super().__init__()
        self.receiver: Receiver | None = None

    def advance(self, tick: int) -> None:
        super().advance(tick)
        if tick == 2 and self.receiver is not None:
            self.receiver.stop()


def test_stop_from_a_sink_callback_does_not_deadlock() -> None:
    sink = StoppingSink()
    done = threading.Event()
    after: list[BaseException | None] = []

    def on_after(error: BaseException | None) -> None:
        after.append(error)
        done.set()

    rx = Receiver(sink, playout_delay=0.0, after=on_after)
    sink.receiver = rx
    rx.start()
    assert done.wait(3)
    rx.stop()
    assert after == [None] and sink.cleanups == 1
    assert not rx.is_running
    assert sink.advances[:3] == [0, 1, 2]


def test_stop_from_after_or_on_event_returns_and_stop_from_another_thread_waits() -> None:
    done = threading.Event()
    calls: list[str] = []
    rx: Receiver

    def on_event(name: str, payload: dict[str, Any]) -> None:
        calls.append(name)
        rx.stop()  # on the shared playout scheduler's thread: must not wait for itself

    def after(error: BaseException | None) -> None:
        calls.append("after")
        rx.stop()  # on the sink thread
        done.set()

    rx = Receiver(RecordingSink(), playout_delay=0.0, after=after, on_event=on_event)
    rx.set_transport(MODE, KEY)
    rx.map_ssrc(SSRC_A, USER_A)
    rx.start()
    rx.feed(Speaker(SSRC_A).packet(0))
    assert done.wait(5)
    assert calls[0] == "speaking_start" and calls[-1] == "after" and calls.count("after") == 1
    assert not rx.is_running

    sink = RecordingSink()
    other = Receiver(sink, after=lambda error: calls.append("other"))
    other.start()
    stopper = threading.Thread(target=other.stop)
    stopper.start()
    stopper.join(5)
    assert not stopper.is_alive() and sink.cleanups == 1 and calls[-1] == "other"


def test_an_idle_receiver_sleeps_until_a_datagram_wakes_it() -> None:
    rx = Receiver(RecordingSink())
    rx.set_transport(MODE, KEY)
    rx.map_ssrc(SSRC_A, USER_A)
    rx.start()
    try:
        assert _wait_for(lambda: rx._idle)
        speaker = Speaker(SSRC_A)
        for i in range(5):
            rx.feed(speaker.packet(i))
        assert _wait_for(lambda: rx.stats()["rtp"] == 5)
    finally:
        rx.stop()


# Issue #11, bugs 1-8: each of these fails on the Receiver of reader.py.


def _sealed(speaker: Speaker, h: Harness, user_id: int, indices: range, start: float) -> list[tuple[float, bytes]]:
    return [(h.at(start + i) + 0.003, speaker.packet(i, ToyDave.seal(user_id, speaker.packets[i]))) for i in indices]


def test_bug1_a_spurt_waiting_for_its_e2ee_key_keeps_its_slots() -> None:
    dave = ToyDave()
    dave.ready.add(USER_B)
    h = Harness(decryptor=dave)
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.rx.map_ssrc(SSRC_B, USER_B)
    a = Speaker(SSRC_A, 440.0)
    b = Speaker(SSRC_B, 880.0, seq=5000, ts=9_000_000)
    schedule = _sealed(a, h, USER_A, range(60), 10) + _sealed(b, h, USER_B, range(60), 10)
    key_at = h.at(35)
    h.feed_all(s for s in schedule if s[0] < key_at)
    dave.ready.add(USER_A)  # A's key arrives 0.5 s after A started talking
    h.feed_all(s for s in schedule if s[0] >= key_at)
    h.finish(h.at(100))
    a_frames = [f for f in h.sink.frames(SSRC_A) if not f.concealed]
    b_ticks = {f.sequence - 5000: f.tick for f in h.sink.frames(SSRC_B)}
    assert len(a_frames) >= 25
    for frame in a_frames:
        k = frame.sequence - 1000
        assert frame.tick == 10 + k == b_ticks[k], f"A's frame {k} played at {frame.tick}, B's at {b_ticks[k]}"
    assert h.stats()["late"] >= 15


class HoldOne(ToyDave):
    """Every frame decrypts except one, which waits ``hold`` seconds (a commit in flight) and then fails."""

    def __init__(self, bad: bytes, hold: float = 0.3) -> None:
        super().__init__()
        self.bad = bad
        self.clock: Any = None
        self.hold = hold
        self.first: float | None = None

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        if frame == self.bad:
            if self.first is None:
                self.first = self.clock()
            if self.clock() - self.first < self.hold:
                return None
            raise E2EEDecryptError("auth")
        return super().decrypt(user_id, frame)


def test_bug2_one_held_frame_does_not_block_the_frames_after_it() -> None:
    a = Speaker(SSRC_A)
    bad = ToyDave.seal(USER_A, b"\x01" * 40)
    dave = HoldOne(bad)
    dave.ready.add(USER_A)
    h = Harness(decryptor=dave)
    dave.clock = h.clock
    h.rx.map_ssrc(SSRC_A, USER_A)
    schedule = _sealed(a, h, USER_A, range(40), 10)
    schedule[5] = (schedule[5][0], a.packet(5, bad))
    h.feed_all(schedule)
    h.finish(h.at(80))
    got = {f.tick: f for f in h.sink.frames() if not f.concealed}
    for i in range(40):
        if i != 5:
            assert got[10 + i].opus == a.packets[i], f"frame {i} was not played in its slot"
    stats = h.stats()
    assert stats["late"] == 0 and stats["e2ee_failed:auth"] == 1


def test_bug3_plaintext_ending_in_the_dave_magic_is_not_held_without_a_session() -> None:
    decryptor = DaveFrameDecryptor(lambda: None, lambda: 0)
    h = Harness(decryptor=decryptor)
    h.rx.map_ssrc(SSRC_A, USER_A)
    a = Speaker(SSRC_A)
    frames = [a.packets[i] + b"\x11\xfa\xfa" for i in range(50)]
    h.feed_all((h.at(10 + i) + 0.003, a.packet(i, frames[i])) for i in range(50))
    h.finish(h.at(80))
    got = h.sink.frames()
    assert [f.opus for f in got] == frames
    assert h.stats()["e2ee_held"] == 0


def test_bug4_a_dtx_pause_is_silence_not_loss() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    a = Speaker(SSRC_A)
    schedule = []
    for i in range(40):
        pause = 0 if i < 20 else 5  # the sender paused 100 ms: sequence numbers go on, the timestamp jumps
        header = build_rtp_header(sequence=1000 + i, timestamp=77_000 + 960 * (i + pause), ssrc=SSRC_A)
        schedule.append((h.at(10 + i + pause) + 0.003, a.cipher.encrypt_rtp(header, a.packets[i])))
    h.feed_all(schedule)
    h.finish(h.at(80))
    frames = h.sink.frames()
    assert [f.tick for f in frames] == list(range(10, 30)) + list(range(35, 55))
    assert not any(f.concealed for f in frames)
    stats = h.stats()
    assert stats["plc"] == stats["fec"] == stats["lost"] == 0


def test_bug5_a_spurt_under_way_at_start_is_placed_by_its_least_delayed_packets() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    a = Speaker(SSRC_A)
    # Packet k left the sender at t0 - 14 ms + 20k ms. The first one we see was delayed 15 ms, the rest 2 ms.
    schedule = [(h.t0 - 0.014 + 0.02 * k + (0.015 if k == 0 else 0.002), a.packet(k)) for k in range(30)]
    h.feed_all(schedule)
    h.finish(h.at(60))
    frames = h.sink.frames()
    assert frames[0].sequence == 1001, "the frame from before slot 0 is dropped"
    assert all(f.tick == f.sequence - 1000 - 1 for f in frames), [(f.tick, f.sequence) for f in frames[:3]]


def _half_frames(h: Harness, a: Speaker, lost: set[int]) -> list[tuple[float, bytes]]:
    packets = _tone(440.0, frames=40, samples=480)
    return [
        (
            h.at(10 + i / 2) + 0.001,
            a.cipher.encrypt_rtp(build_rtp_header(sequence=i, timestamp=480 * i, ssrc=SSRC_A), packets[i]),
        )
        for i in range(40)
        if i not in lost
    ]


def test_bug6_a_slot_missing_half_its_samples_is_concealed_not_zero_filled() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    a = Speaker(SSRC_A)
    h.feed_all(_half_frames(h, a, {21}))
    h.finish(h.at(50))
    frame = next(f for f in h.sink.frames() if f.tick == 20)
    second_half = np.frombuffer(frame.pcm[FRAME_BYTES // 2 :], dtype="<i2")
    assert frame.concealed and np.abs(second_half).max() > 1000


def test_bug6_every_opus_packet_of_a_slot_reaches_the_sink() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    a = Speaker(SSRC_A)
    h.feed_all(_half_frames(h, a, set()))
    h.finish(h.at(50))
    packets = _tone(440.0, frames=40, samples=480)
    frames = h.sink.frames()
    assert [f.opus_packets for f in frames] == [(packets[2 * k], packets[2 * k + 1]) for k in range(20)]
    assert all(f.opus == f.opus_packets[0] for f in frames)


def test_bug6_fec_still_recovers_the_frame_before_a_packet_after_a_long_loss() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    lost = set(range(10, 19))
    h.feed_all(_stream(Speaker(SSRC_A), h, (i for i in range(40) if i not in lost)))
    h.finish(h.at(70))
    by_tick = {f.tick: f for f in h.sink.frames()}
    assert h.stats()["fec"] == 1
    assert by_tick[10 + 18].concealed and np.abs(np.frombuffer(by_tick[28].pcm, dtype="<i2")).max() > 1000


def test_bug6_voice_frame_sequence_is_the_wire_sequence_after_a_sender_restart() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    first = Speaker(SSRC_A, seq=30_000)
    restarted = Speaker(SSRC_A, seq=100, ts=5_000_000)
    h.feed_all(_stream(first, h, range(20)))
    h.feed_all(_stream(restarted, h, range(20), start=80))
    h.finish(h.at(140))
    sequences = [f.sequence for f in h.sink.frames() if not f.concealed]
    assert sequences[-17:] == [100 + i for i in range(3, 20)]


def test_bug6_voice_frame_is_immutable() -> None:
    h = Harness()
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.feed_all(_stream(Speaker(SSRC_A), h, range(3)))
    h.finish(h.at(30))
    frame = h.sink.frames()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.pcm = b""  # type: ignore[misc]


def test_bug7_an_rtcp_feedback_packet_is_counted_as_rtcp() -> None:
    h = Harness()
    a = Speaker(SSRC_A)
    pli = bytes([0x81, 206, 0, 2]) + SSRC_A.to_bytes(4, "big") + SSRC_B.to_bytes(4, "big")
    h.rx.feed(a.cipher.encrypt_rtcp(pli))
    stats = h.stats()
    assert stats["rtcp"] == 1 and stats["ignored_payload_type"] == 0
    h.finish(h.at(5))


def test_bug8_forget_user_plays_out_the_buffered_audio_first() -> None:
    h = Harness(playout_delay=0.2)
    h.rx.map_ssrc(SSRC_A, USER_A)
    h.feed_all(_stream(Speaker(SSRC_A), h, range(20)))
    h.rx.forget_user(USER_A)
    h.finish(h.at(60))
    assert [f.tick for f in h.sink.frames()] == list(range(10, 30))
    assert h.stats()["forgotten"] == 0
    assert [(n, p["tick"]) for n, p in h.events][-1][0] == "speaking_stop"


def test_bug8_pump_refuses_threaded_mode() -> None:
    rx = Receiver(RecordingSink())
    rx.start()
    try:
        with pytest.raises(RuntimeError):
            rx.pump()
    finally:
        rx.stop()


# -- sessions where no sink wants PCM (the receiver makes their frames without a decoder) ------------------------

_B_LONG_PACKETS = _tone(550.0, frames=6, samples=1920)


def _eventful_session(wants_pcm: bool, *, dave: bool, ext: bool) -> Harness:
    """Two speakers through everything a playout meets: loss (one frame, then three), a duplicate, reordering, a
    frame late past its slot, a DTX pause, 40 ms packets, wrapping counters, an SSRC mapped late, RTCP BYE, a new
    spurt, a user who leaves with audio still buffered and, with ``dave``, frames held for their key."""
    decryptor = ToyDave() if dave else None
    if decryptor is not None:
        decryptor.ready.add(USER_B)
    h = Harness(RecordingSink(wants_pcm=wants_pcm), decryptor=decryptor)
    a = Speaker(SSRC_A, 440.0)
    b = Speaker(SSRC_B, 660.0, seq=65_530, ts=0xFFFF_FF00)
    actions: list[tuple[float, bytes | Callable[[], None]]] = []

    def send(speaker: Speaker, user_id: int, seq: int, ts: int, payload: bytes, at: float) -> None:
        body = ToyDave.seal(user_id, payload) if dave else payload
        header = build_rtp_header(
            sequence=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF, ssrc=speaker.ssrc, ext_profile=0xBEDE if ext else None
        )
        actions.append((at, speaker.cipher.encrypt_rtp(header, body)))

    lost_a = {7, 20, 21, 22}
    for i in range(60):
        pause = 0 if i < 40 else 6  # a DTX pause: sequence numbers go on, the timestamp jumps 120 ms
        at = h.at(10 + i + pause) + 0.003
        if i in lost_a:
            continue
        if i == 12:
            at += 0.03  # reordered behind 13
        if i == 30:
            at += 0.2  # its slot has been played when it arrives
        send(a, USER_A, 1000 + i, 77_000 + 960 * (i + pause), a.packets[i], at)
        if i == 9:
            send(a, USER_A, 1000 + i, 77_000 + 960 * i, a.packets[i], at + 0.005)  # a duplicate
    for i in range(30):
        send(b, USER_B, b.seq0 + i, b.ts0 + 960 * i, b.packets[i], h.at(14 + i) + 0.011)
    for i, payload in enumerate(_B_LONG_PACKETS):
        send(b, USER_B, b.seq0 + 30 + i, b.ts0 + 960 * 30 + 1920 * i, payload, h.at(44 + 2 * i) + 0.011)
    actions.append((h.at(57), b.cipher.encrypt_rtcp(build_bye([SSRC_B]))))
    for i in range(10):  # a new spurt after the BYE
        send(b, USER_B, b.seq0 + 40 + i, b.ts0 + 960 * (60 + i), b.packets[40 + i], h.at(70 + i) + 0.011)
    actions.append((h.at(18), functools.partial(h.rx.map_ssrc, SSRC_B, USER_B)))  # B's first frames were held
    actions.append((h.at(74), functools.partial(h.rx.forget_user, USER_A)))  # A still has frames buffered
    if decryptor is not None:
        actions.append((h.at(13), functools.partial(decryptor.ready.add, USER_A)))
    h.rx.map_ssrc(SSRC_A, USER_A)
    for at, action in sorted(actions, key=lambda item: item[0]):
        h.rx.pump(until=at)
        h.clock.t = max(h.clock.t, at)
        if isinstance(action, bytes):
            h.rx.feed(action)
        else:
            action()
    h.finish(h.at(110))
    return h


@pytest.mark.parametrize(("dave", "ext"), [(False, True), (False, False), (True, True)])
def test_a_session_without_pcm_delivers_the_frames_of_the_general_path(dave: bool, ext: bool) -> None:
    general = _eventful_session(True, dave=dave, ext=ext)
    lean = _eventful_session(False, dave=dave, ext=ext)
    assert all(stream.decoder is None for stream in lean.rx._streams.values())
    assert all(frame.pcm == b"" for frame in lean.sink.frames())
    assert all(len(frame.pcm) == FRAME_BYTES for frame in general.sink.frames())

    # A slot playing the second half of a 40 ms packet has PCM but no packet of its own: only PCM sinks get it.
    carried = [f for f in general.sink.frames() if not f.opus_packets and not f.concealed]
    assert len(carried) == len(_B_LONG_PACKETS) == 6
    expected = [dataclasses.replace(f, pcm=b"") for f in general.sink.frames() if f.opus_packets or f.concealed]
    assert lean.sink.frames() == expected
    assert len(lean.sink.writes) == len(expected) and all(user is not None for user, _ in lean.sink.writes)
    assert lean.sink.advances == general.sink.advances and lean.sink.cleanups == general.sink.cleanups == 1
    assert lean.events == general.events
    assert lean.after == general.after == [None]

    # The counters agree, except that the general path counts how it decoded and concealed, the lean path the
    # frames it could not deliver.
    decoding = ("decoded", "fec", "plc", "lost", "frames")
    lean_stats, general_stats = lean.stats(), general.stats()
    assert {k: v for k, v in lean_stats.items() if k not in decoding} == {
        k: v for k, v in general_stats.items() if k not in decoding
    }
    assert lean_stats["frames"] == general_stats["frames"] - len(carried)
    assert lean_stats["decoded"] == 0 and lean_stats["fec"] == lean_stats["plc"] == 0
    assert lean_stats["lost"] == general_stats["fec"] + general_stats["plc"] > 0
    assert general_stats["lost"] == 0

    # What the scenario is meant to exercise did happen.
    frames = lean.sink.frames()
    assert any(f.concealed for f in frames) and any(len(f.opus_packets) == 1 for f in frames)
    assert {"late", "duplicate", "rtcp_bye", "unknown_ssrc_held"} <= {k for k, v in lean_stats.items() if v}
    assert SSRC_A not in lean.rx._streams, "the user who left was played out, then dropped"
    if dave:
        assert lean_stats["e2ee_held"] > 0


def test_a_new_spurt_whose_first_frames_wait_for_a_key_starts_where_they_arrived() -> None:
    """A speaker already heard starts talking again while their new key is on its way (someone just joined): the
    frames that waited start the spurt at their arrival, as if they had not waited."""
    dave = ToyDave()
    dave.ready.add(USER_A)
    h = Harness(decryptor=dave)
    h.rx.map_ssrc(SSRC_A, USER_A)
    a = Speaker(SSRC_A)
    first = _sealed(a, h, USER_A, range(20), 10)
    # a second spurt after a 1 s pause: the sequence goes on, the timestamps jump with the pause (DTX)
    later = Speaker(SSRC_A, ts=77_000 + 960 * 50)
    second = [(h.at(60 + i) + 0.003, later.packet(i, ToyDave.seal(USER_A, later.packets[i]))) for i in range(20, 40)]
    h.feed_all(first)
    dave.ready.discard(USER_A)  # the new epoch's key is not there yet
    h.feed_all(second[:3])
    assert h.stats()["e2ee_held"] == 3
    dave.ready.add(USER_A)  # it comes 50 ms after the spurt began; the hold releases the frames on its own
    h.rx.pump(until=h.at(82.5))
    h.feed_all(second[3:])
    h.finish(h.at(130))
    ticks = {f.sequence - 1000: f.tick for f in h.sink.frames() if not f.concealed}
    assert [ticks.get(k) for k in range(20, 40)] == list(range(80, 100)), ticks
    assert h.stats()["late"] == 0
