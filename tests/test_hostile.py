"""A recording bot under a flood of spoofed datagrams: nothing allocated for them, memory flat, speech intact.

The local Discord runs two simulated speakers; while they talk, 100k forged datagrams of every kind a hostile
network can send (random bytes, RTP with bad tags and random SSRCs, absurd header extensions, RTCP garbage,
oversized and runt datagrams, other payload types) hit the recording bot's UDP socket. discord.py connects that
socket to the voice server, so they are sent from the relay's address, as an attacker forging it would.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import discord
import pytest

from discord_voicerecv import VoiceRecvClient, WaveSink
from discord_voicerecv.opus import ensure_discord_opus
from discord_voicerecv.receive import Receiver
from discord_voicerecv.testing import LocalDiscord, restore_discord, use_local_discord
from discord_voicerecv.testing.analysis import normalized_xcorr, read_wav
from discord_voicerecv.testing.bots import new_client, running
from discord_voicerecv.testing.clips import load_clip

pytestmark = pytest.mark.e2e

FLOOD = 100_000
BURST = 500
PACED_BURST = 50
RSS_BOUND = 16 * 1024 * 1024
"""Bytes the process may grow by while the flood is processed."""


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _udp_rcvbuf_errors() -> int:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def _taken(receiver: Receiver) -> int:
    """Datagrams the receiver has processed or turned away (its inbox full)."""
    stats = receiver.stats()
    return int(stats["packets"] + stats["inbox_full"])


def _rtp_header(rng: random.Random, *, pt: int = 120, ext_words: int | None = None) -> bytes:
    b0 = 0x80 | (0x10 if ext_words is not None else 0)
    head = struct.pack(">BBHII", b0, pt, rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32))
    if ext_words is not None:
        head += struct.pack(">HH", 0xBEDE, ext_words)
    return head


def _kinds() -> dict[str, tuple[Callable[[random.Random], bytes], str]]:
    """Forged datagram makers and the counter each must land in."""

    def garbage(rng: random.Random) -> bytes:
        data = bytearray(rng.randbytes(rng.randrange(12, 1400)))
        data[0] = rng.choice((0x00, 0x40, 0xC0)) | (data[0] & 0x3F)
        data[1] = rng.choice([b for b in range(256) if not 200 <= b <= 204])
        return bytes(data)

    def runt(rng: random.Random) -> bytes:
        return bytes((0x80, 120)) + rng.randbytes(rng.randrange(0, 10))

    def bad_tag(rng: random.Random) -> bytes:
        return _rtp_header(rng) + rng.randbytes(rng.randrange(40, 400))

    def huge_extension(rng: random.Random) -> bytes:
        return _rtp_header(rng, ext_words=rng.choice((0xFFFF, 0x8000, 0x0400))) + rng.randbytes(200)

    def other_payload_type(rng: random.Random) -> bytes:
        pt = rng.choice([p for p in range(128) if p != 120 and not 72 <= p <= 76])
        return _rtp_header(rng, pt=pt) + rng.randbytes(100)

    def rtcp_garbage(rng: random.Random) -> bytes:
        return bytes((0x80 | rng.randrange(32), rng.randrange(200, 205))) + rng.randbytes(rng.randrange(30, 300))

    def oversized(rng: random.Random) -> bytes:
        return _rtp_header(rng) + bytes(rng.randrange(1600, 4000))

    return {
        "garbage": (garbage, "malformed:version"),
        "runt": (runt, "malformed:short"),
        "bad_tag": (bad_tag, "decrypt_failed"),
        "huge_extension": (huge_extension, "decrypt_failed"),
        "other_payload_type": (other_payload_type, "ignored_payload_type"),
        "rtcp_garbage": (rtcp_garbage, "decrypt_failed"),
        "oversized": (oversized, "malformed:oversized"),
    }


async def _flood(
    send: Callable[[bytes], bool], count: int, seed: int, read: Callable[[], int] | None = None
) -> Counter[str]:
    """Send ``count`` forged datagrams in paced bursts; returns how many of each kind were sent.

    With ``read`` (datagrams the receiver took or the kernel dropped so far), bursts are small and each waits (up
    to a second) for the receiver to catch up, so the socket buffer rarely overflows even on a loaded machine: the
    legitimate speakers' packets then reach the receiver there too, and the recording can be judged on content.
    """
    rng = random.Random(seed)
    kinds = _kinds()
    names = sorted(kinds)
    sent: Counter[str] = Counter()
    burst = BURST if read is None else PACED_BURST
    start = read() if read is not None else 0
    total = 0
    while total < count:
        for _ in range(min(burst, count - total)):
            name = rng.choice(names)
            assert send(kinds[name][0](rng))
            sent[name] += 1
        total = sum(sent.values())
        if read is None:
            await asyncio.sleep(0.01)
            continue
        for _ in range(500):
            await asyncio.sleep(0.002)
            if read() - start >= total:
                break
    return sent


async def test_flood_of_spoofed_datagrams_during_a_recording(tmp_path: Path) -> None:
    ensure_discord_opus()
    clips = {"en_gb_female": None, "de_male": None}
    async with LocalDiscord() as local:
        use_local_discord(local.url)
        try:
            recorder = new_client()
            async with running(recorder, "recorder-token"):
                channel = recorder.get_channel(local.voice_channel_id)
                assert isinstance(channel, discord.VoiceChannel)
                vc = await channel.connect(cls=VoiceRecvClient)
                bot_id = recorder.user.id if recorder.user else 0
                speakers = [local.add_speaker(clip=clip) for clip in clips]
                await local.voice.wait_dave_settled()
                sink = WaveSink(tmp_path)
                vc.listen(sink)
                receiver = vc._receiver
                assert receiver is not None
                for speaker in speakers:
                    speaker.speak()
                await asyncio.sleep(0.5)
                rss_before = _rss()
                kernel_drops = _udp_rcvbuf_errors()
                started = time.monotonic()
                relay = local.voice.relay
                sent = await _flood(
                    lambda datagram: relay.send_raw(bot_id, datagram),
                    FLOOD,
                    seed=2024,
                    read=lambda: _taken(receiver) + _udp_rcvbuf_errors() - kernel_drops,
                )
                flood_seconds = time.monotonic() - started
                await asyncio.gather(*(speaker.wait_idle() for speaker in speakers))
                await asyncio.sleep(0.4)
                kernel_drops = _udp_rcvbuf_errors() - kernel_drops
                rss_growth = _rss() - rss_before
                streams, held = set(receiver._streams), receiver._unmapped.ssrcs()
                pending = receiver._e2ee.users() if receiver._e2ee is not None else set()
                vc.stop_listening()
                await vc.wait_listening_stopped()
                stats = receiver.stats()
                legit_delivered = local.voice.link_stats(bot_id).delivered
        finally:
            restore_discord()

    legit = {speaker.ssrc for speaker in speakers}
    print(
        f"\nflood: {sum(sent.values())} datagrams in {flood_seconds:.1f} s, kernel drops {kernel_drops}, "
        f"RSS growth {rss_growth / 1e6:.1f} MB; counters "
        + ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if v and k not in ("bytes",))
    )
    assert streams <= legit and set(held) <= legit, "per-SSRC state was allocated for forged packets"
    assert not pending - {speaker.user_id for speaker in speakers}
    assert set(stats.by_ssrc) <= legit
    assert rss_growth < RSS_BOUND, f"RSS grew {rss_growth / 1e6:.1f} MB under the flood"

    expected: Counter[str] = Counter()
    kinds = _kinds()
    for name, count in sent.items():
        expected[kinds[name][1]] += count
    flood_seen = stats["packets"] - legit_delivered
    assert sum(sent.values()) - kernel_drops <= flood_seen <= sum(sent.values())
    unsorted = kernel_drops + stats["inbox_full"]  # dropped unread: socket buffer full, or the receiver's inbox
    for counter, count in expected.items():
        assert count - unsorted <= stats[counter] <= count + (legit_delivered if counter == "decrypt_failed" else 0)
    assert stats["internal_error"] == 0

    for speaker, clip in zip(speakers, clips, strict=True):
        _, _, samples = read_wav(sink.files[speaker.user_id])
        score, _ = normalized_xcorr(samples, load_clip(clip))
        assert score >= 0.9, f"{speaker.name}: the flood spoiled the recording (score {score:.3f})"
