"""RTPForwardSink: the RTP, RTCP and SDP it emits, read back from real UDP sockets on loopback."""

from __future__ import annotations

import math
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import discord
import pytest

from discord_voicerecv import opus
from discord_voicerecv.frames import FRAME_BYTES, FRAME_SAMPLES, OPUS_SILENCE, VoiceFrame
from discord_voicerecv.protocol.rtcp import Bye, SenderReport, SourceDescription, parse_rtcp
from discord_voicerecv.protocol.rtp import RtpHeader, parse_rtp_header
from discord_voicerecv.sinks import RTPForwardSink, SinkUser
from discord_voicerecv.sinks._sdp import opus_sdp
from discord_voicerecv.sinks.rtp_forward import _MIX_LOOKAHEAD
from discord_voicerecv.testing.clips import clip_frames

NTP_EPOCH_OFFSET = 2_208_988_800


class PortPair:
    """An even RTP port and the RTCP port above it, both bound on 127.0.0.1, as a receiver would hold them."""

    def __init__(self, port: int, rtp: socket.socket, rtcp: socket.socket) -> None:
        self.port = port
        self.rtp = rtp
        self.rtcp = rtcp

    def packets(self) -> list[tuple[RtpHeader, bytes]]:
        return [(parse_rtp_header(data), data[12:]) for data in _drain(self.rtp)]

    def reports(self) -> list[bytes]:
        return _drain(self.rtcp)

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    sock.settimeout(0.05)
    while True:
        try:
            out.append(sock.recv(2048))
        except TimeoutError:
            return out
        sock.settimeout(0.005)


def _bind_pair(port: int) -> PortPair | None:
    socks: list[socket.socket] = []
    for p in (port, port + 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", p))
        except OSError:
            sock.close()
            for other in socks:
                other.close()
            return None
        socks.append(sock)
    return PortPair(port, socks[0], socks[1])


def _free_run(count: int) -> list[PortPair]:
    """``count`` consecutive free port pairs starting at a random even port."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000, 2)
        pairs: list[PortPair] = []
        for i in range(count):
            pair = _bind_pair(base + 2 * i)
            if pair is None:
                break
            pairs.append(pair)
        if len(pairs) == count:
            return pairs
        for pair in pairs:
            pair.close()
    raise RuntimeError("no free UDP ports")


@pytest.fixture
def pairs() -> Iterator[list[PortPair]]:
    taken = _free_run(3)
    yield taken
    for pair in taken:
        pair.close()


def opus_frame(
    tick: int, user_id: int | None, payload: bytes | None, *, ssrc: int = 1000, pcm: bytes = b""
) -> VoiceFrame:
    return VoiceFrame(ssrc, user_id, tick, pcm, payload, tick, tick * FRAME_SAMPLES)


def payload(tick: int) -> bytes:
    """A distinct 20 ms CELT packet per tick (TOC 0xFC: config 31, stereo, one frame)."""
    return b"\xfc" + struct.pack(">I", tick) + bytes(20)


def test_sdp_text_describes_opus_stream() -> None:
    text = opus_sdp("127.0.0.1", 5004, payload_type=111, session_name="alice", session_id=42)
    lines = text.split("\r\n")
    assert text.endswith("\r\n")
    assert lines[:5] == ["v=0", "o=- 42 1 IN IP4 127.0.0.1", "s=alice", "c=IN IP4 127.0.0.1", "t=0 0"]
    assert "m=audio 5004 RTP/AVP 111" in lines
    assert "a=rtpmap:111 opus/48000/2" in lines
    assert "a=ptime:20" in lines
    assert lines.index("m=audio 5004 RTP/AVP 111") < lines.index("a=rtpmap:111 opus/48000/2")
    assert "c=IN IP6 ::1" in opus_sdp("::1", 5004)
    for bad in ({"port": 5005}, {"port": 0}, {"port": 65_536}, {"payload_type": 0}):
        with pytest.raises(ValueError):
            opus_sdp("127.0.0.1", **{"port": 5004, **bad})  # type: ignore[arg-type]


def test_preallocated_users_get_port_pairs_and_sdp_files(tmp_path: Path, pairs: list[PortPair]) -> None:
    seen: list[tuple[SinkUser, Path]] = []
    sink = RTPForwardSink(
        base_port=pairs[0].port,
        users=[111, discord.Object(id=222)],
        sdp_dir=tmp_path,
        on_stream=lambda user, path: seen.append((user, path)),
    )
    try:
        assert sink.wants_pcm is False
        assert [(key, s.port, s.rtcp_port) for key, s in sink.streams.items()] == [
            (111, pairs[0].port, pairs[0].port + 1),
            (222, pairs[1].port, pairs[1].port + 1),
        ]
        assert [(getattr(user, "id", None), path.name) for user, path in seen] == [(111, "111.sdp"), (222, "222.sdp")]
        for stream in sink.streams.values():
            assert stream.sdp_path.parent == tmp_path
            text = stream.sdp_path.read_bytes().decode()
            assert text == stream.sdp
            assert f"m=audio {stream.port} RTP/AVP 111\r\n" in text
            assert "c=IN IP4 127.0.0.1\r\n" in text
        assert len({s.ssrc for s in sink.streams.values()}) == 2
        assert sink.mix_stream is None
    finally:
        sink.cleanup()
    assert (tmp_path / "111.sdp").exists(), "a given sdp_dir is kept"


def test_has_receiver_tells_whether_a_program_holds_the_rtp_port(tmp_path: Path, pairs: list[PortPair]) -> None:
    held, free = pairs[0], pairs[1]
    free.close()
    sink = RTPForwardSink(base_port=held.port, users=[111, 222], sdp_dir=tmp_path)
    try:
        assert [s.port for s in sink.streams.values()] == [held.port, free.port]
        assert [s.has_receiver() for s in sink.streams.values()] == [True, False]
        held.close()
        assert not sink.streams[111].has_receiver(), "the port was let go"
    finally:
        sink.cleanup()


def test_packets_are_plain_rtp_with_timeline_timestamps_and_contiguous_sequence(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, silence="skip")
    spoken = [*range(3, 8), *range(20, 23)]
    for tick in range(25):
        if tick in spoken:
            sink.write(None, opus_frame(tick, 7, payload(tick)))
        sink.advance(tick)
    got = pairs[0].packets()
    sink.cleanup()
    assert [body for _, body in got] == [payload(t) for t in spoken]
    first = got[0][0]
    for header, _ in got:
        assert (header.version, header.payload_type, header.padding, header.extension, header.csrcs) == (
            2,
            111,
            False,
            False,
            (),
        )
        assert header.ssrc == first.ssrc
    assert [(h.sequence - first.sequence) & 0xFFFF for h, _ in got] == list(range(len(spoken)))
    assert [(h.timestamp - first.timestamp) & 0xFFFF_FFFF for h, _ in got] == [(t - 3) * 960 for t in spoken]
    assert [h.marker for h, _ in got] == [True, False, False, False, False, True, False, False]
    assert sink.streams[7].port == pairs[0].port


def test_opus_silence_fills_pauses_and_losses_from_listen_start(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, users=[7])
    for tick in range(12):
        if tick in (4, 5, 9):
            sink.write(None, opus_frame(tick, 7, payload(tick)))
        elif tick == 6:
            sink.write(None, opus_frame(tick, 7, None))
        sink.advance(tick)
    got = pairs[0].packets()
    sink.cleanup()
    assert len(got) == 12, "one packet per slot from the first slot on"
    base = got[0][0]
    for tick, (header, body) in enumerate(got):
        assert (header.timestamp - base.timestamp) & 0xFFFF_FFFF == tick * 960
        assert (header.sequence - base.sequence) & 0xFFFF == tick
        assert body == (payload(tick) if tick in (4, 5, 9) else OPUS_SILENCE)
        assert header.marker == (tick in (4, 9)), f"marker at {tick}"


def test_a_40ms_packet_covers_two_slots(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port)
    long_packet = b"\x10" + bytes(30)  # SILK narrowband 40 ms (config 2), one frame
    for tick in range(5):
        if tick == 1:
            sink.write(None, opus_frame(tick, 7, long_packet))
        elif tick == 3:
            sink.write(None, opus_frame(tick, 7, payload(tick)))
        sink.advance(tick)
    got = pairs[0].packets()
    sink.cleanup()
    assert [body for _, body in got] == [long_packet, payload(3), OPUS_SILENCE]
    base = got[0][0].timestamp
    assert [(h.timestamp - base) & 0xFFFF_FFFF for h, _ in got] == [0, 1920, 2880]


def test_every_packet_of_a_slot_is_sent_at_its_own_timestamp(pairs: list[PortPair]) -> None:
    """Two 10 ms packets in one slot go out as two RTP packets, the second 480 samples on; the next slot keeps its
    place on the timeline."""
    encoder = opus.OpusEncoder()
    speech = next(clip_frames("de_male"))
    first, second = (encoder.encode(speech[i : i + FRAME_BYTES // 2], frame_samples=480) for i in (0, FRAME_BYTES // 2))
    assert first != second
    assert [opus.packet_samples(p) for p in (first, second)] == [480, 480]
    sink = RTPForwardSink(base_port=pairs[0].port, silence="skip")
    for tick in range(6):
        if tick == 2:
            sink.write(None, VoiceFrame(1000, 7, tick, b"", first, tick, 0, opus_packets=(first, second)))
        elif tick == 3:
            sink.write(None, opus_frame(tick, 7, payload(tick)))
        sink.advance(tick)
    got = pairs[0].packets()
    sink.cleanup()
    assert [body for _, body in got] == [first, second, payload(3)]
    base = got[0][0]
    assert [(h.timestamp - base.timestamp) & 0xFFFF_FFFF for h, _ in got] == [0, 480, 960]
    assert [(h.sequence - base.sequence) & 0xFFFF for h, _ in got] == [0, 1, 2]
    assert [h.marker for h, _ in got] == [True, False, False]


def test_each_speaker_gets_own_stream_and_only_chosen_users_are_sent(pairs: list[PortPair], tmp_path: Path) -> None:
    opened: list[Path] = []
    sink = RTPForwardSink(
        base_port=pairs[0].port, silence="skip", sdp_dir=tmp_path, on_stream=lambda _, p: opened.append(p)
    )
    member = discord.Object(id=5)
    for tick in range(3):
        sink.write(member, opus_frame(tick, 5, payload(tick), ssrc=50))
        sink.write(None, opus_frame(tick, None, payload(100 + tick), ssrc=60))
        sink.advance(tick)
    a, b = pairs[0].packets(), pairs[1].packets()
    sink.cleanup()
    assert [body for _, body in a] == [payload(t) for t in range(3)]
    assert [body for _, body in b] == [payload(100 + t) for t in range(3)]
    assert a[0][0].ssrc != b[0][0].ssrc
    assert set(sink.streams) == {5, "ssrc:60"}
    assert [p.name for p in opened] == ["5.sdp", "unknown-60.sdp"]

    chosen = RTPForwardSink(base_port=pairs[2].port, users=[5], silence="skip")
    for tick in range(3):
        chosen.write(None, opus_frame(tick, 6, payload(tick), ssrc=66))
        chosen.write(None, opus_frame(tick, 5, payload(tick), ssrc=55))
        chosen.advance(tick)
    got = pairs[2].packets()
    chosen.cleanup()
    assert len(got) == 3 and set(chosen.streams) == {5}
    assert not pairs[0].packets() and not pairs[1].packets()


def test_sender_reports_map_wall_clock_to_rtp_time(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, users=[7, 8], bye_delay=0)
    for tick in range(120):
        sink.write(None, opus_frame(tick, 7, payload(tick)))
        sink.advance(tick)
    rtp = pairs[0].packets()
    reports = [parse_rtcp(data) for data in pairs[0].reports()]
    other = [parse_rtcp(data) for data in pairs[1].reports()]
    sink.cleanup()
    goodbye = [parse_rtcp(data) for data in pairs[0].reports()]
    assert len(reports) == 3, "one at the start, then one every second"
    srs = [packets[0] for packets in reports]
    assert all(isinstance(sr, SenderReport) for sr in srs)
    assert all(isinstance(packets[1], SourceDescription) for packets in reports)
    ssrc = rtp[0][0].ssrc
    assert {sr.ssrc for sr in srs if isinstance(sr, SenderReport)} == {ssrc}
    first, second = srs[0], srs[1]
    assert isinstance(first, SenderReport) and isinstance(second, SenderReport)
    assert second.packet_count == 51 and second.octet_count == 51 * len(payload(0))
    assert (second.rtp_timestamp - first.rtp_timestamp) & 0xFFFF_FFFF == 50 * 960
    assert abs((second.ntp_timestamp - first.ntp_timestamp) / 2**32 - 1.0) < 1e-6
    assert (first.rtp_timestamp - rtp[0][0].timestamp) & 0xFFFF_FFFF == 0
    assert abs(first.ntp_timestamp / 2**32 - NTP_EPOCH_OFFSET - time.time()) < 5
    other_first = other[0][0]
    assert isinstance(other_first, SenderReport) and other_first.ssrc != ssrc
    assert other_first.ntp_timestamp == first.ntp_timestamp, "every stream shares one clock"
    assert len(goodbye) == 1 and isinstance(goodbye[0][-1], Bye) and goodbye[0][-1].ssrcs == (ssrc,)
    last = goodbye[0][0]
    assert isinstance(last, SenderReport) and last.packet_count == 120


def test_mix_is_encoded_once_per_slot_on_its_own_port(pairs: list[PortPair], tmp_path: Path) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, mix=True, sdp_dir=tmp_path, silence="skip")
    assert sink.wants_pcm is True
    assert sink.mix_stream is not None and sink.mix_stream.port == pairs[0].port
    assert sink.mix_stream.sdp_path == tmp_path / "mix.sdp"
    encoder = opus.OpusEncoder()
    pcm = b"".join(struct.pack("<hh", v, v) for v in (round(8000 * math.sin(i * math.pi / 50)) for i in range(960)))
    for tick in range(10):
        for user in (1, 2):
            sink.write(None, opus_frame(tick, user, encoder.encode(pcm), ssrc=user, pcm=pcm))
        sink.advance(tick)
    mixed = pairs[0].packets()
    sink.cleanup()
    assert len(mixed) == 10
    assert set(sink.streams) == {1, 2}
    assert {s.port for s in sink.streams.values()} == {pairs[1].port, pairs[2].port}
    decoder = opus.OpusDecoder()
    last = b""
    for _, body in mixed:
        last = decoder.decode(body)
    samples = struct.unpack(f"<{len(last) // 2}h", last)
    peak = max(abs(s) for s in samples[len(samples) // 2 :])
    assert 12_000 < peak < 20_000, f"two 8000 tones mixed should peak near 16000, got {peak}"


def test_mix_sender_reports_account_for_the_encoder_delay(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, mix=True, users=[1], bye_delay=0)
    click = bytearray(FRAME_BYTES * 5)
    click[FRAME_BYTES * 2 : FRAME_BYTES * 2 + 4] = struct.pack("<hh", 30_000, 30_000)
    encoder = opus.OpusEncoder()
    for tick in range(5):
        pcm = bytes(click[tick * FRAME_BYTES : (tick + 1) * FRAME_BYTES])
        sink.write(None, opus_frame(tick, 1, encoder.encode(pcm), pcm=pcm))
        sink.advance(tick)
    mixed, reports = pairs[0].packets(), [parse_rtcp(data) for data in pairs[0].reports()]
    speaker_reports = [parse_rtcp(data) for data in pairs[1].reports()]
    sink.cleanup()
    decoder = opus.OpusDecoder()
    pcm = b"".join(decoder.decode(body) for _, body in mixed)
    left = struct.unpack(f"<{len(pcm) // 2}h", pcm)[::2]
    peak = max(range(len(left)), key=lambda i: abs(left[i]))
    assert abs(peak - (2 * FRAME_SAMPLES + _MIX_LOOKAHEAD)) <= 8, f"the click comes out at sample {peak}"
    mix_sr, user_sr = reports[0][0], speaker_reports[0][0]
    assert isinstance(mix_sr, SenderReport) and isinstance(user_sr, SenderReport)
    assert mix_sr.ntp_timestamp == user_sr.ntp_timestamp
    assert (mix_sr.rtp_timestamp - mixed[0][0].timestamp) & 0xFFFF_FFFF == _MIX_LOOKAHEAD
    assert (user_sr.rtp_timestamp - pairs[1].packets()[0][0].timestamp) & 0xFFFF_FFFF == 0


def test_mix_only_and_mix_on_chosen_port(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, mix=pairs[2].port, per_user=False)
    for tick in range(3):
        sink.write(None, opus_frame(tick, 1, payload(tick), pcm=bytes(FRAME_BYTES)))
        sink.advance(tick)
    assert len(pairs[2].packets()) == 3
    assert not pairs[0].packets() and not sink.streams
    sink.cleanup()


def test_port_for_picks_ports_and_bad_ports_are_refused(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, port_for=lambda user, ident: pairs[2].port, silence="skip")
    sink.write(None, opus_frame(0, 9, payload(0)))
    sink.advance(0)
    assert len(pairs[2].packets()) == 1 and sink.streams[9].port == pairs[2].port
    with pytest.raises(ValueError, match="already used"):
        sink.write(None, opus_frame(1, 10, payload(1)))
    sink.cleanup()
    with pytest.raises(ValueError):
        RTPForwardSink(base_port=5005)
    with pytest.raises(ValueError):
        RTPForwardSink(payload_type=8)
    with pytest.raises(ValueError):
        RTPForwardSink(silence="comfort_noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RTPForwardSink(per_user=False)


def test_temporary_sdp_folder_is_removed_and_nothing_is_sent_after_cleanup(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, users=[3], bye_delay=0)
    folder = sink.sdp_dir
    assert (folder / "3.sdp").is_file()
    sink.cleanup()
    assert not folder.exists()
    goodbye = [parse_rtcp(data) for data in pairs[0].reports()]
    assert len(goodbye) == 1 and isinstance(goodbye[0][-1], Bye)
    sink.write(None, opus_frame(0, 3, payload(0)))
    sink.advance(0)
    sink.cleanup()
    assert not pairs[0].packets() and not pairs[0].reports()


def test_bye_waits_so_receivers_read_the_last_packets_first(pairs: list[PortPair]) -> None:
    sink = RTPForwardSink(base_port=pairs[0].port, users=[3], bye_delay=0.15)
    sink.write(None, opus_frame(0, 3, payload(0)))
    sink.advance(0)
    assert len(pairs[0].reports()) == 1, "the first sender report"
    sink.cleanup()
    closed = time.monotonic()
    pairs[0].rtcp.settimeout(2)
    data = pairs[0].rtcp.recv(2048)
    assert time.monotonic() - closed >= 0.14
    packets = parse_rtcp(data)
    assert isinstance(packets[0], SenderReport) and isinstance(packets[-1], Bye)
    assert [body for _, body in pairs[0].packets()] == [payload(0)]


def test_on_stream_errors_do_not_stop_forwarding(pairs: list[PortPair]) -> None:
    def explode(user: SinkUser, path: Path) -> None:
        raise RuntimeError("no ffmpeg here")

    sink = RTPForwardSink(base_port=pairs[0].port, on_stream=explode, silence="skip")
    sink.write(None, opus_frame(0, 4, payload(0)))
    sink.advance(0)
    assert [body for _, body in pairs[0].packets()] == [payload(0)]
    sink.cleanup()
