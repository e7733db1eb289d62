"""The local voice server end to end on loopback: gateway v8, relay, simulated speakers, DAVE, resume."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import discord
import numpy as np
import pytest

from discord_voicerecv.frames import OPUS_SILENCE
from discord_voicerecv.opus import OpusDecoder, ensure_discord_opus
from discord_voicerecv.testing import LocalDiscord, using_local_discord
from discord_voicerecv.testing.bots import default_intents, running
from discord_voicerecv.testing.clips import load_clip
from discord_voicerecv.testing.link import LinkConditions
from discord_voicerecv.testing.speakers import SILENCE_FRAMES
from discord_voicerecv.testing.tls import LocalCertificate, generate_certificate
from discord_voicerecv.testing.voice import DEFAULT_MODES, LEGACY_MODES, VoiceServer
from discord_voicerecv.testing.voice_probe import VoiceProbe

pytestmark = pytest.mark.e2e

GUILD = 1001
CHANNEL = 2002

ProbeFactory = Callable[..., VoiceProbe]


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a state the local Discord reaches on its own (a DAVE transition applied), instead of a fixed sleep."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "the state was not reached"
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def certificate() -> LocalCertificate:
    return generate_certificate()


@pytest.fixture
def dave() -> bool:
    return False


@pytest.fixture
async def server(certificate: LocalCertificate, dave: bool) -> AsyncIterator[VoiceServer]:
    voice = VoiceServer(
        host="127.0.0.1",
        ssl_context=certificate.server_context(),
        guild_id=GUILD,
        channel_id=CHANNEL,
        dave=dave,
        resume_window=2.0,
    )
    await voice.start()
    yield voice
    await voice.stop()


@pytest.fixture
async def make_probe(server: VoiceServer, certificate: LocalCertificate) -> AsyncIterator[ProbeFactory]:
    probes: list[VoiceProbe] = []

    def make(user_id: int, *, expect: bool = True, token: str = "token", **kwargs: object) -> VoiceProbe:
        if expect:
            server.expect_session(user_id=user_id, session_id=f"session-{user_id}", token="token", channel_id=CHANNEL)
        probe = VoiceProbe(
            server.endpoint,
            ssl_context=certificate.client_context(),
            guild_id=kwargs.pop("guild_id", GUILD),  # type: ignore[arg-type]
            user_id=user_id,
            session_id=f"session-{user_id}",
            token=token,
            channel_id=CHANNEL,
            **kwargs,  # type: ignore[arg-type]
        )
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        await probe.close()


# -- handshake ------------------------------------------------------------------------------------------------


async def test_handshake_follows_gateway_v8(server: VoiceServer, make_probe: ProbeFactory) -> None:
    probe = make_probe(10)
    await probe.connect()
    hello, ready, description = probe.messages[:3]
    assert hello["op"] == 8 and hello["d"]["heartbeat_interval"] > 0
    assert ready["op"] == 2
    assert ready["d"]["ip"] == "127.0.0.1" and ready["d"]["port"] == server.port
    assert ready["d"]["modes"] == list(DEFAULT_MODES)
    assert list(DEFAULT_MODES) == ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"]  # Discord's today
    assert description["op"] == 4
    d = description["d"]
    assert d["mode"] == "aead_aes256_gcm_rtpsize" == probe.mode
    assert len(d["secret_key"]) == 32 and all(0 <= b < 256 for b in d["secret_key"])
    assert d["dave_protocol_version"] == 0 and d["audio_codec"] == "opus"
    assert [ready["seq"], description["seq"]] == [1, 2]
    session = server.session(10)
    assert session is not None and session.ssrc == ready["d"]["ssrc"] == probe.ssrc
    assert session.secret_key == probe.secret_key
    assert server.endpoint == f"127.0.0.1:{server.port}"
    assert server.relay_stats.ip_discovery == 1


async def test_heartbeat_is_acknowledged_with_its_nonce(make_probe: ProbeFactory) -> None:
    probe = make_probe(10)
    await probe.connect()
    ack = await probe.heartbeat()
    assert ack["op"] == 6 and ack["seq"] == probe.seq_ack


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"expect": False}, 4004),
        ({"token": "wrong"}, 4004),
        ({"guild_id": 999}, 4011),
        ({"mode": "plaintext_please"}, 4016),
    ],
)
async def test_bad_identify_or_select_closes_with_discords_code(
    make_probe: ProbeFactory, kwargs: dict[str, object], code: int
) -> None:
    probe = make_probe(10, **kwargs)
    with pytest.raises(ConnectionResetError):
        await probe.connect()
    assert probe.close_code == code


async def test_messages_before_identify_close_with_not_authenticated(make_probe: ProbeFactory) -> None:
    probe = make_probe(10)
    await probe._open_websocket()
    await probe.send_json(1, {"protocol": "udp", "data": {}})
    assert await probe.wait_closed() == 4003


async def test_offered_modes_are_configurable(certificate: LocalCertificate) -> None:
    async with VoiceServer(
        host="127.0.0.1",
        ssl_context=certificate.server_context(),
        guild_id=GUILD,
        channel_id=CHANNEL,
        dave=False,
        modes=LEGACY_MODES[:1],  # the retired modes only on request
    ) as server:
        server.expect_session(user_id=5, session_id="s", token="t", channel_id=CHANNEL)
        probe = VoiceProbe(
            server.endpoint,
            ssl_context=certificate.client_context(),
            guild_id=GUILD,
            user_id=5,
            session_id="s",
            token="t",
        )
        async with probe:
            await probe.connect()
            assert probe.ops(2)[0]["d"]["modes"] == ["xsalsa20_poly1305_lite"]
            assert probe.mode == "xsalsa20_poly1305_lite"


# -- membership -------------------------------------------------------------------------------------------------


async def test_joins_leaves_and_speaking_are_announced(server: VoiceServer, make_probe: ProbeFactory) -> None:
    alice, bob = make_probe(10), make_probe(11)
    await alice.connect()
    await bob.connect()
    joined = await alice.wait_for(11)
    assert joined["d"]["user_ids"] == ["11"]
    assert bob.ops(11)[0]["d"]["user_ids"] == ["10"]

    await bob.send_json(5, {"speaking": 1, "delay": 0, "ssrc": bob.ssrc})
    speaking = await alice.wait_for(5, lambda m: m["d"]["speaking"] == 1)
    assert speaking["d"] == {"user_id": "11", "ssrc": bob.ssrc, "speaking": 1}

    server.end_session(11)
    left = await alice.wait_for(13)
    assert left["d"] == {"user_id": "11"}
    assert await bob.wait_closed() == 4014
    assert 11 not in server.members


async def test_a_client_closing_normally_leaves_the_call(server: VoiceServer, make_probe: ProbeFactory) -> None:
    alice, bob = make_probe(10), make_probe(11)
    await alice.connect()
    await bob.connect()
    await bob.close(1000)
    assert (await alice.wait_for(13))["d"]["user_id"] == "11"
    await server.gateway.wait_for(lambda: 11 not in server.members)


async def test_a_joiner_learns_who_is_already_speaking(server: VoiceServer, make_probe: ProbeFactory) -> None:
    speaker = server.add_speaker(user_id=20, name="loop", tone_seconds=0.2)
    task = speaker.start()
    probe = make_probe(10)
    await probe.connect()
    assert probe.ops(11)[0]["d"]["user_ids"] == ["20"]
    announced = await probe.wait_for(5)
    assert announced["d"] == {"user_id": "20", "ssrc": speaker.ssrc, "speaking": 1}
    await probe.wait_packets(3, ssrc=speaker.ssrc)
    speaker.stop()
    await task


# -- media ------------------------------------------------------------------------------------------------------


async def test_speaker_audio_arrives_intact_and_decodes_to_the_clip(
    server: VoiceServer, make_probe: ProbeFactory
) -> None:
    probe = make_probe(10)
    await probe.connect()
    speaker = server.add_speaker(user_id=20, name="fox", clip="en_us_male")
    task = speaker.start()
    await asyncio.sleep(0.8)
    speaker.stop()
    await task
    sent = speaker.sent
    got = await probe.wait_packets(len(sent), ssrc=speaker.ssrc)
    assert [(p.header.sequence, p.header.timestamp) for p in got] == [(f.sequence, f.timestamp) for f in sent]
    assert [p.payload for p in got] == [f.payload for f in sent]
    assert all(p.header.extension and p.header.payload_type == 120 for p in got)
    assert [p.header.marker for p in got] == [i == 0 for i in range(len(sent))]
    assert [f.opus for f in sent[-SILENCE_FRAMES:]] == [OPUS_SILENCE] * SILENCE_FRAMES
    audio = speaker.audio_frames()
    assert load_clip("en_us_male").startswith(b"".join(f.pcm or b"" for f in audio))

    decoder = OpusDecoder()
    decoded = np.frombuffer(b"".join(decoder.decode(p.payload) for p in got[: len(audio)]), "<i2")[0::2]
    source = np.frombuffer(b"".join(f.pcm or b"" for f in audio), "<i2")[0::2]
    lags = range(0, 960)
    best = max(np.corrcoef(decoded[lag : lag + 30000], source[:30000])[0, 1] for lag in lags[::8])
    assert best > 0.9

    ops = [(m["d"]["speaking"]) for m in probe.ops(5)]
    assert ops == [1, 0]
    sent_at = [f.sent_at for f in sent]
    assert sent_at[-1] - sent_at[0] == pytest.approx(0.02 * (len(sent) - 1), abs=0.1)


async def test_timestamps_follow_the_clock_across_pauses(server: VoiceServer, make_probe: ProbeFactory) -> None:
    probe = make_probe(10)
    await probe.connect()
    speaker = server.add_speaker(user_id=20, name="beep", tone_seconds=0.1)
    await speaker.speak(times=2, pause=0.2)
    first = [f for f in speaker.sent if f.spurt == 0]
    second = [f for f in speaker.sent if f.spurt == 1]
    assert len(first) == len(second) == 5 + SILENCE_FRAMES
    assert second[0].sequence == (first[-1].sequence + 1) & 0xFFFF
    gap = (second[0].timestamp - first[-1].timestamp) & 0xFFFFFFFF
    elapsed = second[0].sent_at - first[-1].sent_at
    assert gap % 960 == 0
    assert gap / 48000 == pytest.approx(elapsed, abs=0.021)
    assert gap >= 960 * 10
    assert [m["d"]["speaking"] for m in await _ops_soon(probe, 5, 4)] == [1, 0, 1, 0]


async def _ops_soon(probe: VoiceProbe, op: int, count: int) -> list[dict[str, Any]]:
    await probe.wait_for(op, lambda _m: len(probe.ops(op)) >= count)
    return probe.ops(op)


async def test_stop_ends_the_spurt_with_silence_and_removal_is_announced(
    server: VoiceServer, make_probe: ProbeFactory
) -> None:
    probe = make_probe(10)
    await probe.connect()
    speaker = server.add_speaker(user_id=20, name="looping", tone_seconds=0.05, history=4)
    task = speaker.start()
    await asyncio.sleep(0.2)
    speaker.stop()
    await task
    assert speaker.sent[-1].index >= 10 + SILENCE_FRAMES - 1
    assert 4 <= len(speaker.sent) <= 8, "history bounds what a speaker keeps"
    assert [f.opus for f in speaker.sent[-SILENCE_FRAMES:]] == [OPUS_SILENCE] * SILENCE_FRAMES
    assert [m["d"]["speaking"] for m in await _ops_soon(probe, 5, 2)] == [1, 0]
    server.remove_speaker(20)
    assert (await probe.wait_for(13))["d"] == {"user_id": "20"}
    assert 20 not in server.members and server.relay.peer(20) is None


async def test_padding_is_carried_and_stripped(server: VoiceServer, make_probe: ProbeFactory) -> None:
    probe = make_probe(10)
    await probe.connect()
    speaker = server.add_speaker(user_id=20, name="pad", tone_seconds=0.1, padding_every=2)
    await speaker.speak()
    got = await probe.wait_packets(len(speaker.sent), ssrc=speaker.ssrc)
    assert [p.header.padding for p in got] == [f.padded for f in speaker.sent]
    assert any(p.header.padding for p in got)
    assert [p.payload for p in got] == [f.opus for f in speaker.sent]


async def test_client_audio_is_relayed_to_other_clients(server: VoiceServer, make_probe: ProbeFactory) -> None:
    alice = make_probe(10, mode="aead_xchacha20_poly1305_rtpsize")
    bob = make_probe(11)
    await alice.connect()
    await bob.connect()
    frames = [bytes([0x78]) + bytes([i]) * 30 for i in range(10)]
    for i, frame in enumerate(frames[:3]):  # before op5: Discord drops them
        alice.send_opus(frame, marker=i == 0)
    for _ in range(500):
        if server.relay_stats.unannounced == 3:
            break
        await asyncio.sleep(0.01)
    assert server.relay_stats.unannounced == 3
    await alice.speak()
    for frame in frames[3:]:
        alice.send_opus(frame)
    got = await bob.wait_packets(7, ssrc=alice.ssrc)
    assert [p.payload for p in got] == frames[3:]
    assert bob.packets_from(alice.ssrc) == got
    assert all(p.header.extension for p in got), "Discord's SFU adds a header extension"
    assert alice.packets == []
    assert (server.relay_stats.rtp, server.relay_stats.unannounced) == (10, 3)


async def test_link_conditions_match_what_the_receiver_saw(certificate: LocalCertificate) -> None:
    conditions = LinkConditions(loss=0.1, duplicate=0.1, reorder=0.1, seed=21)
    async with VoiceServer(
        host="127.0.0.1",
        ssl_context=certificate.server_context(),
        guild_id=GUILD,
        channel_id=CHANNEL,
        dave=False,
        link=conditions,
    ) as server:
        server.expect_session(user_id=10, session_id="s", token="t", channel_id=CHANNEL)
        probe = VoiceProbe(
            server.endpoint,
            ssl_context=certificate.client_context(),
            guild_id=GUILD,
            user_id=10,
            session_id="s",
            token="t",
        )
        async with probe:
            await probe.connect()
            speaker = server.add_speaker(user_id=20, name="lossy", tone_seconds=0.6)
            await speaker.speak()
            stats = server.link_stats(10)
            await probe.wait_packets(stats.offered - stats.dropped + stats.duplicated, ssrc=speaker.ssrc)
            await asyncio.sleep(0.1)
            got = [p.header.sequence for p in probe.packets_from(speaker.ssrc)]
            sent = [f.sequence for f in speaker.sent]
            assert stats.offered == len(sent)
            assert len(got) == len(sent) - stats.dropped + stats.duplicated
            assert sorted(set(sent) - set(got)) == sorted(sent[i] for i in stats.dropped_indices)
            assert len(got) - len(set(got)) == stats.duplicated
            late = sum(1 for n, seq in enumerate(got) if any(((seq - s) & 0xFFFF) > 0x8000 for s in got[:n]))
            assert 0 < late <= 2 * stats.reordered
            assert stats.dropped > 0


async def test_speaker_uplink_conditions_apply_before_the_relay(server: VoiceServer, make_probe: ProbeFactory) -> None:
    probe = make_probe(10)
    await probe.connect()
    speaker = server.add_speaker(user_id=20, name="far", tone_seconds=0.4, uplink=LinkConditions(loss=0.2, seed=4))
    await speaker.speak()
    uplink = speaker.uplink.stats
    await probe.wait_packets(len(speaker.sent) - uplink.dropped, ssrc=speaker.ssrc)
    assert uplink.dropped > 0
    assert len(probe.packets_from(speaker.ssrc)) == len(speaker.sent) - uplink.dropped
    assert server.relay_stats.injected == len(speaker.sent) - uplink.dropped


# -- resume -----------------------------------------------------------------------------------------------------


async def test_resume_replays_what_was_missed(server: VoiceServer, make_probe: ProbeFactory) -> None:
    probe = make_probe(10)
    await probe.connect()
    seq_before = probe.seq_ack
    server.drop_connection(10)
    assert await probe.wait_closed() == 4015
    session = server.session(10)
    assert session is not None and session.connection is None
    server.add_speaker(user_id=20, name="while away", tone_seconds=0.1)
    await asyncio.sleep(0.05)
    resumed = await probe.resume()
    assert resumed["op"] == 9
    joined = await probe.wait_for(11)
    assert joined["d"]["user_ids"] == ["20"]
    assert joined["seq"] == seq_before + 1
    assert server.session(10) is session
    assert (await probe.heartbeat())["op"] == 6


async def test_resume_with_unknown_session_is_refused(server: VoiceServer, make_probe: ProbeFactory) -> None:
    probe = make_probe(10)
    await probe.connect()
    probe.session_id = "forged"
    with pytest.raises(ConnectionResetError):
        await probe.resume()
    assert probe.close_code == 4006


async def test_a_dropped_session_expires_after_the_resume_window(server: VoiceServer, make_probe: ProbeFactory) -> None:
    server.gateway.resume_window = 0.1
    alice, bob = make_probe(10), make_probe(11)
    await alice.connect()
    await bob.connect()
    server.drop_connection(11)
    left = await alice.wait_for(13)
    assert left["d"]["user_id"] == "11"
    assert server.session(11) is None


# -- DAVE -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dave", [True])
async def test_dave_group_forms_and_frames_decrypt_end_to_end(server: VoiceServer, make_probe: ProbeFactory) -> None:
    probe = make_probe(10, dave=True)
    await probe.connect()
    assert probe.dave_protocol_version == 1
    speaker = server.add_speaker(user_id=20, name="secret", tone_seconds=0.2, plaintext_every=4)
    await server.wait_dave_settled()
    await probe.wait_for(22)
    assert probe.dave is not None and probe.dave.session is not None
    session = probe.dave.session
    await _until(lambda: session.ready and speaker.dave.can_encrypt)
    assert probe.dave.session.voice_privacy_code == speaker.dave.session.voice_privacy_code  # type: ignore[union-attr]

    await speaker.speak()
    got = await probe.wait_packets(len(speaker.sent), ssrc=speaker.ssrc)
    encrypted = [f.dave_encrypted for f in speaker.sent]
    assert encrypted.count(True) == 8 and encrypted[3] is encrypted[7] is False
    assert all(p.payload[-2:] == b"\xfa\xfa" for p, f in zip(got, speaker.sent, strict=True) if f.dave_encrypted)
    probe.dave.session.set_passthrough_mode(True, 10)
    assert [probe.open_dave(p) for p in got] == [f.opus for f in speaker.sent]


@pytest.mark.parametrize("dave", [True])
async def test_a_member_without_dave_downgrades_the_call(server: VoiceServer, make_probe: ProbeFactory) -> None:
    secure = make_probe(10, dave=True)
    await secure.connect()
    speaker = server.add_speaker(user_id=20, name="secret", tone_seconds=0.1)
    await server.wait_dave_settled()
    await secure.wait_for(22)
    legacy = make_probe(11)
    await legacy.connect()
    assert legacy.dave_protocol_version == 0
    prepare = await secure.wait_for(21, lambda m: m["d"]["protocol_version"] == 0)
    await secure.wait_for(22, lambda m: m["d"]["transition_id"] == prepare["d"]["transition_id"])
    await server.wait_dave_settled()
    assert server.dave_group is not None and server.dave_group.protocol_version == 0
    await _until(lambda: not speaker.dave.can_encrypt)
    await speaker.speak()
    got = await legacy.wait_packets(len(speaker.sent), ssrc=speaker.ssrc)
    assert [p.payload for p in got] == [f.opus for f in speaker.sent]
    assert not any(f.dave_encrypted for f in speaker.sent)

    await legacy.close(1000)
    upgrade = await secure.wait_for(24)
    assert upgrade["d"] == {"protocol_version": 1, "epoch": 1}


# -- a real discord.py voice client -----------------------------------------------------------------------------


@pytest.mark.parametrize("dave", [False, True])
async def test_discord_py_voice_client_plays_through_the_relay(dave: bool) -> None:
    ensure_discord_opus()
    clip = load_clip("fr_female")[: 3840 * 30]
    async with LocalDiscord(dave=dave) as local, contextlib.AsyncExitStack() as stack:
        stack.enter_context(using_local_discord(local.url))
        assert local.certificate is not None
        voice = local.voice
        voice.expect_session(user_id=77, session_id="raw", token="raw", channel_id=local.voice_channel_id)
        probe = VoiceProbe(
            voice.endpoint,
            ssl_context=local.certificate.client_context(),
            guild_id=local.guild_id,
            user_id=77,
            session_id="raw",
            token="raw",
            dave=dave,
            channel_id=local.voice_channel_id,
        )
        await stack.enter_async_context(probe)
        await probe.connect()
        bot = await stack.enter_async_context(
            running(discord.Client(intents=default_intents(), guild_ready_timeout=0.1), "player-token")
        )
        channel = bot.get_channel(local.voice_channel_id)
        assert isinstance(channel, discord.VoiceChannel) and bot.user is not None
        vc: discord.VoiceClient = await channel.connect()
        assert type(vc) is discord.VoiceClient
        assert vc.mode == "aead_xchacha20_poly1305_rtpsize"
        session = await voice.wait_for_member(bot.user.id)
        assert session.ssrc == vc.ssrc and session.mode == vc.mode
        assert (await probe.wait_for(11))["d"]["user_ids"] == [str(bot.user.id)]
        if dave:
            await voice.wait_dave_settled()
            await probe.wait_for(22)
            await _until(lambda: vc.voice_privacy_code is not None)
            assert probe.dave is not None and probe.dave.session is not None
            assert vc.voice_privacy_code == probe.dave.session.voice_privacy_code

        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        vc.play(discord.PCMAudio(io.BytesIO(clip)), after=lambda _: loop.call_soon_threadsafe(done.set))
        await asyncio.wait_for(done.wait(), timeout=5)
        speaking = await probe.wait_for(5, lambda m: m["d"]["ssrc"] == vc.ssrc and m["d"]["speaking"] == 1)
        assert speaking["d"]["user_id"] == str(bot.user.id)
        await probe.wait_packets(30, ssrc=vc.ssrc)
        await asyncio.sleep(0.05)
        got = probe.packets_from(vc.ssrc)
        frames = [probe.open_dave(p) for p in got]

    assert voice.relay_stats.decrypt_failures == 0
    assert all(p.header.extension for p in got), "the relay adds Discord's header extension"
    sequences = [p.header.sequence for p in got]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(got))]
    assert (sum(f[-2:] == b"\xfa\xfa" for f in (p.payload for p in got)) > 25) is dave
    decoder = OpusDecoder()
    pcm = b"".join(decoder.decode(f) for f in frames if f != OPUS_SILENCE)
    decoded = np.frombuffer(pcm, "<i2")[0::2].astype(np.float64)
    source = np.frombuffer(clip, "<i2")[0::2].astype(np.float64)
    best = max(np.corrcoef(decoded[lag : lag + 20000], source[:20000])[0, 1] for lag in range(0, 960, 8))
    assert best > 0.9
