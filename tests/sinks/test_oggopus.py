from __future__ import annotations

import struct
import subprocess
from dataclasses import replace
from itertools import accumulate
from pathlib import Path

import discord
import numpy as np
import pytest

from discord_voicerecv.ffmpeg import find_ffmpeg
from discord_voicerecv.frames import FRAME_SAMPLES, OPUS_SILENCE, VoiceFrame
from discord_voicerecv.opus import OpusDecoder, OpusEncoder, packet_samples
from discord_voicerecv.sinks import CallbackSink, MultiSink, OggOpusSink
from discord_voicerecv.sinks._ogg import FLAG_BOS, FLAG_EOS, build_page, ogg_crc
from discord_voicerecv.sinks.ogg import _concealment_packets
from discord_voicerecv.testing.analysis import normalized_xcorr
from discord_voicerecv.testing.clips import clip_frames
from discord_voicerecv.testing.decoding import decode_file
from discord_voicerecv.testing.ogg import iter_pages, read_packets

ANN = discord.Object(id=11)
BOB = discord.Object(id=22)
TOTAL = 150

pytestmark = pytest.mark.ffmpeg


def reference_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x8000_0000 else crc << 1) & 0xFFFF_FFFF
    return crc


def decode_natively(path: Path) -> bytes:
    """Decode with ffmpeg's own Opus decoder (what ffplay and mpv use), not libopus."""
    result = subprocess.run(
        [find_ffmpeg(), "-v", "error", "-c:a", "opus", "-i", str(path), "-f", "s16le", "-ac", "2", "-ar", "48000",
         "pipe:1"],
        capture_output=True,
        check=True,
    )  # fmt: skip
    return result.stdout


def has_lbrr(packet: bytes) -> bool:
    """Whether a one-frame 10/20 ms SILK or hybrid packet carries in-band FEC: the (mid) channel's LBRR flag follows
    its voice-activity flag (RFC 6716 section 4.2.3); both are even-odds bits, the top two of the first byte."""
    config = packet[0] >> 3
    if config >= 16 or packet[0] & 3 != 0 or len(packet) < 2 or (config < 12 and config & 3 > 1):
        return False
    return bool(packet[1] >> 6 & 1)


def similarity(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, dtype="<i2").astype(float)
    y = np.frombuffer(b, dtype="<i2").astype(float)
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))


def opus_frame(tick: int, user_id: int, packet: bytes | None) -> VoiceFrame:
    return VoiceFrame(user_id * 10, user_id, tick, b"", packet, tick, tick * FRAME_SAMPLES, packet is None)


def audio_packets(path: Path) -> list[tuple[bytes, int]]:
    """The audio packets of a file with the sample each starts at."""
    packets = [packet for packet, _ in read_packets(path.read_bytes())[2:]]
    starts = [0, *accumulate(packet_samples(p) for p in packets)][:-1]
    return list(zip(packets, starts, strict=True))


class Script:
    """Ann from slot 10 (one frame lost at 30), pausing 70..99 then talking again; Bob from slot 40 to 89."""

    def __init__(self) -> None:
        encoder = OpusEncoder()
        self.pcm = list(clip_frames("en_us_male"))[:100]
        self.packets = [encoder.encode(pcm) for pcm in self.pcm]
        self.ann_ticks = [*range(10, 70), *range(100, 140)]
        self.bob_ticks = list(range(40, 90))
        self.lost_tick = 30
        bob_encoder = OpusEncoder()
        self.bob_packets = [bob_encoder.encode(pcm) for pcm in list(clip_frames("fr_female"))[:50]]
        self.sent: dict[int, dict[int, bytes | None]] = {11: {}, 22: {}}

    def play(self, sink: OggOpusSink | MultiSink, until: int = TOTAL, *, pcm: bool = False) -> None:
        """Hand the sink the script's frames; with ``pcm``, decoded as the receiver would (PLC for the lost one)."""
        decoders = {11: OpusDecoder(), 22: OpusDecoder()}
        for tick in range(until):
            for user, uid, packet in self._due(tick):
                self.sent[uid][tick] = packet
                frame = opus_frame(tick, uid, packet)
                if pcm:
                    frame = replace(frame, pcm=decoders[uid].decode(packet))
                sink.write(user, frame)
            sink.advance(tick)

    def _due(self, tick: int) -> list[tuple[discord.Object, int, bytes | None]]:
        due: list[tuple[discord.Object, int, bytes | None]] = []
        if tick in self.ann_ticks:
            due.append((ANN, 11, self.packets[self.ann_ticks.index(tick)] if tick != self.lost_tick else None))
        if tick in self.bob_ticks:
            due.append((BOB, 22, self.bob_packets[tick - 40]))
        return due


def test_ogg_crc_matches_the_bitwise_definition() -> None:
    rng = np.random.default_rng(1)
    for size in (0, 1, 27, 255, 4096):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert ogg_crc(data) == reference_crc(data)


def test_pages_written_by_ffmpeg_pass_our_checks(tmp_path: Path) -> None:
    path = tmp_path / "tone.opus"
    subprocess.run(
        [find_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "libopus",
         "-y", str(path)],
        check=True,
    )  # fmt: skip
    pages = list(iter_pages(path.read_bytes()))
    assert pages[0].flags & FLAG_BOS and pages[-1].flags & FLAG_EOS
    assert pages[0].segments[0].startswith(b"OpusHead")
    corrupt = bytearray(path.read_bytes())
    corrupt[-1] ^= 0x01
    with pytest.raises(ValueError, match="checksum"):
        list(iter_pages(bytes(corrupt)))


def test_packets_are_bit_exact_and_on_the_listening_timeline(tmp_path: Path) -> None:
    script = Script()
    sink = OggOpusSink(tmp_path)
    script.play(sink)
    sink.cleanup()
    assert sink.wants_pcm is False
    assert {key: path.name for key, path in sink.files.items()} == {11: "11.opus", 22: "22.opus"}
    for user_id, path in sink.files.items():
        assert isinstance(user_id, int)
        raw = path.read_bytes()
        pages = list(iter_pages(raw))
        assert pages[0].flags == FLAG_BOS and pages[0].granule == 0 and len(pages[0].segments) == 1
        assert all(p.serial == pages[0].serial for p in pages)
        assert [p.sequence for p in pages] == list(range(len(pages)))
        assert pages[-1].flags & FLAG_EOS and pages[-1].granule == TOTAL * FRAME_SAMPLES
        granules = [p.granule for p in pages]
        assert granules == sorted(granules)
        head, tags = (packet for packet, _ in read_packets(raw)[:2])
        assert struct.unpack("<8sBBHIhB", head) == (b"OpusHead", 1, 2, 0, 48_000, 0, 0)
        assert tags.startswith(b"OpusTags") and f"DISCORD_USER_ID={user_id}".encode() in tags

        by_start = dict((start, packet) for packet, start in audio_packets(path))
        sent = script.sent[user_id]
        first = min(sent)
        for tick in range(TOTAL):
            packet = by_start[tick * FRAME_SAMPLES]
            if tick in sent and sent[tick] is not None:
                assert packet == sent[tick], f"slot {tick}"
            elif tick in sent:
                assert packet == bytes((script.packets[19][0] & 0xFC,)), "a concealment request in the same mode"
            else:
                assert packet == OPUS_SILENCE, f"slot {tick} (first heard at {first})"


def test_ffmpeg_decodes_the_expected_duration_in_sync_with_libopus(tmp_path: Path) -> None:
    script = Script()
    sink = OggOpusSink(tmp_path)
    script.play(sink)
    sink.cleanup()
    ann = sink.files[11]
    decoded = decode_file(ann)
    assert len(decoded) == TOTAL * FRAME_SAMPLES * 4
    assert len(decode_file(sink.files[22])) == len(decoded)
    assert not any(decoded[: 10 * FRAME_SAMPLES * 4]), "silence before the speaker is first heard"
    decoder = OpusDecoder()
    reference = b"".join(decoder.decode(packet) for packet, _ in audio_packets(ann))
    assert similarity(decoded, reference) >= 0.999, "same decoder, same samples"


def received_pcm(script: Script) -> bytes:
    """Ann's track as the receiver decodes it with libopus: silence where she sent nothing, concealment at a loss."""
    decoder = OpusDecoder()
    track = bytearray()
    for tick in range(TOTAL):
        if tick in script.sent[11]:
            track += decoder.decode(script.sent[11][tick])
        else:
            track += bytes(FRAME_SAMPLES * 4)
    return bytes(track)


@pytest.mark.parametrize("receiver_decodes", [True, False], ids=["receiver-pcm", "own-decoder"])
def test_reencoded_files_play_in_every_opus_decoder_in_sync(tmp_path: Path, receiver_decodes: bool) -> None:
    script = Script()
    assert any(has_lbrr(packet) for packet in script.packets), "the script sends in-band FEC, as Discord does"
    sink = OggOpusSink(tmp_path, reencode=True)
    assert sink.wants_pcm is True, "the receiver's decode (with its FEC recovery) is what gets re-encoded"
    script.play(sink, pcm=receiver_decodes)
    sink.cleanup()
    reference = received_pcm(script)
    ann = sink.files[11]
    assert not any(has_lbrr(packet) for packet, _ in audio_packets(ann))
    head = read_packets(ann.read_bytes())[0][0]
    pre_skip = struct.unpack_from("<H", head, 10)[0]
    assert read_packets(ann.read_bytes())[-1][1] == TOTAL * FRAME_SAMPLES + pre_skip
    decoded = decode_file(ann)
    assert len(decoded) == len(reference) == len(decode_file(sink.files[22]))
    score, lag = normalized_xcorr(decoded, reference)
    assert score >= 0.99 and lag == 0, f"one generation of coding loss, sample-aligned: {score:.4f} at {lag}"
    last = slice(69 * FRAME_SAMPLES * 4, 70 * FRAME_SAMPLES * 4)  # Ann's last frame before her pause
    assert similarity(decoded[last], reference[last]) >= 0.95, "the end of a talk spurt stays in its place"
    assert similarity(decode_natively(ann), reference) >= 0.99, "ffmpeg's own decoder plays it too, on every version"


def test_a_killed_process_leaves_a_file_playable_to_the_last_second(tmp_path: Path) -> None:
    script = Script()
    sink = OggOpusSink(tmp_path)
    script.play(sink, until=120)
    crashed = tmp_path / "crashed.opus"
    crashed.write_bytes(sink.files[11].read_bytes())  # what is on disk if the process dies now
    pages = list(iter_pages(crashed.read_bytes()))
    assert pages[-1].granule >= (120 - 50) * FRAME_SAMPLES
    assert not pages[-1].flags & FLAG_EOS
    assert len(decode_file(crashed)) == pages[-1].granule * 4
    sink.cleanup()


def test_longer_packets_and_late_or_duplicate_frames(tmp_path: Path) -> None:
    encoder = OpusEncoder()
    pcm = list(clip_frames("de_male"))
    long_packet = encoder.encode(pcm[0] + pcm[1], frame_samples=2 * FRAME_SAMPLES)
    sink = OggOpusSink(tmp_path)
    sink.write(ANN, opus_frame(2, 11, long_packet))  # covers slots 2 and 3
    sink.advance(2)
    sink.advance(3)
    sink.write(ANN, opus_frame(4, 11, encoder.encode(pcm[2])))
    sink.write(ANN, opus_frame(4, 11, encoder.encode(pcm[2])))  # duplicate
    sink.advance(4)
    sink.write(ANN, opus_frame(3, 11, encoder.encode(pcm[3])))  # late
    sink.write(None, VoiceFrame(999, None, 5, b"", encoder.encode(pcm[4]), 5, 5 * FRAME_SAMPLES))
    sink.cleanup()
    assert sink.dropped == 2
    assert sink.files["ssrc:999"].name == "unknown-999.opus"
    starts = [start for _, start in audio_packets(sink.files[11])]
    assert starts == [0, 960, 1920, 3840, 4800]
    assert read_packets(sink.files[11].read_bytes())[-1][1] == 6 * FRAME_SAMPLES
    assert len(decode_file(sink.files[11])) == len(decode_file(sink.files["ssrc:999"]))


def test_concealment_packets_cover_whole_frames_of_the_mode() -> None:
    for config in range(32):
        for stereo in (0, 4):
            toc = config << 3 | stereo | 1
            size = packet_samples(bytes((toc & 0xFC,)))
            for wanted in (FRAME_SAMPLES, FRAME_SAMPLES // 2, 5 * FRAME_SAMPLES + 120):
                packets = _concealment_packets(toc, wanted)
                assert all(p[0] >> 2 == toc >> 2 for p in packets), f"config {config}: same mode and channels"
                assert sum(packet_samples(p) for p in packets) == wanted // size * size, f"config {config}"
    assert _concealment_packets(None, FRAME_SAMPLES) == []
    decoder = OpusDecoder()
    decoder.decode(OpusEncoder().encode(next(iter(clip_frames("de_male")))))
    (packet,) = _concealment_packets(0xFC, FRAME_SAMPLES)
    assert len(decoder.decode(packet)) == FRAME_SAMPLES * 4


def split_10ms(pcm: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Each 20 ms frame of ``pcm`` encoded as two 10 ms packets by one encoder."""
    encoder = OpusEncoder()
    half = len(pcm[0]) // 2
    return [(encoder.encode(f[:half], frame_samples=480), encoder.encode(f[half:], frame_samples=480)) for f in pcm]


def test_every_packet_of_a_slot_is_written_with_its_own_duration(tmp_path: Path) -> None:
    """Two 10 ms packets in one slot: both go in, in order, and the pages' granules stay on the slot grid."""
    pcm = list(clip_frames("de_male"))[:4]
    pairs = split_10ms(pcm)
    assert all(packet_samples(p) == 480 for pair in pairs for p in pair)
    sink = OggOpusSink(tmp_path, flush_interval=0.02)  # a page per slot
    for tick in range(8):
        if 2 <= tick < 6:
            first, second = pairs[tick - 2]
            sink.write(ANN, VoiceFrame(1, 11, tick, b"", first, tick, tick * 960, opus_packets=(first, second)))
        sink.advance(tick)
    sink.cleanup()
    audio = audio_packets(sink.files[11])
    spoken = [(packet, start) for packet, start in audio if 2 * FRAME_SAMPLES <= start < 6 * FRAME_SAMPLES]
    assert spoken == [(p, 1920 + 480 * i) for i, p in enumerate(p for pair in pairs for p in pair)]
    assert [start for _, start in audio if start % FRAME_SAMPLES == 0] == [n * FRAME_SAMPLES for n in range(8)]
    granules = [granule for _, granule in read_packets(sink.files[11].read_bytes())[2:]]
    for (_, start), granule in zip(audio, granules, strict=True):
        if start >= 2 * FRAME_SAMPLES:
            assert granule == (start // FRAME_SAMPLES + 1) * FRAME_SAMPLES, f"the page of sample {start}"
    assert len(decode_file(sink.files[11])) == 8 * FRAME_SAMPLES * 4


def test_a_slot_short_of_a_lost_packet_is_concealed_to_its_end(tmp_path: Path) -> None:
    first, _ = split_10ms(list(clip_frames("de_male"))[:1])[0]
    sink = OggOpusSink(tmp_path)
    sink.write(ANN, VoiceFrame(1, 11, 0, b"", first, 0, 0, concealed=True))  # the slot's second 10 ms was lost
    sink.advance(0)
    sink.cleanup()
    assert audio_packets(sink.files[11]) == [(first, 0), (bytes((first[0] & 0xFC,)), 480)]


@pytest.mark.parametrize("samples", [2 * FRAME_SAMPLES, FRAME_SAMPLES])
def test_the_slot_after_a_packet_running_into_it_adds_no_concealment(tmp_path: Path, samples: int) -> None:
    """When another sink wants PCM, the receiver hands over the slot a packet runs into (a 40 ms one, or a 20 ms one
    that started mid-slot) with no packet of its own and nothing lost: the file must neither grow by a slot nor
    get concealment there."""
    encoder = OpusEncoder()
    pcm = list(clip_frames("de_male"))[:3]
    packet = encoder.encode(b"".join(pcm[: samples // FRAME_SAMPLES]), frame_samples=samples)
    after = encoder.encode(pcm[2])
    sink = OggOpusSink(tmp_path)
    sink.write(ANN, opus_frame(1, 11, packet))
    sink.advance(1)
    sink.write(ANN, VoiceFrame(1, 11, 2, pcm[1], None, 1, 1920))  # the decoded rest of slot 1's packet
    sink.advance(2)
    sink.write(ANN, opus_frame(3, 11, after))
    sink.advance(3)
    sink.cleanup()
    filler = [(OPUS_SILENCE, 1920)] if samples == FRAME_SAMPLES else []
    assert audio_packets(sink.files[11]) == [(OPUS_SILENCE, 0), (packet, 960), *filler, (after, 2880)]


def test_opus_only_sinks_let_the_receiver_skip_decoding(tmp_path: Path) -> None:
    ogg = OggOpusSink(tmp_path)
    assert MultiSink(ogg, CallbackSink(print, wants_pcm=False)).wants_pcm is False
    assert MultiSink(ogg, CallbackSink(print)).wants_pcm is True
    ogg.cleanup()


def test_build_page_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError):
        build_page(0, 0, 1, 0, [b"x"] * 256)
    with pytest.raises(ValueError):
        build_page(0, 0, 1, 0, [bytes(255 * 255)])


def test_custom_names_are_made_safe_and_unique(tmp_path: Path) -> None:
    sink = OggOpusSink(tmp_path, naming=lambda user, user_id: "Same/Name.OPUS")
    packet = OpusEncoder().encode(next(iter(clip_frames("de_male"))))
    sink.write(ANN, opus_frame(0, 11, packet))
    sink.write(BOB, opus_frame(0, 22, packet))
    sink.cleanup()
    assert [path.name for path in sink.files.values()] == ["Same_Name.opus", "Same_Name-2.opus"]
