"""The Opus TOC table against RFC 6716 section 3.1 and against libopus for any bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discord_voicerecv import opus
from discord_voicerecv.protocol.opus_toc import MAX_PACKET_SAMPLES, frame_samples, packet_samples

_MS = {2.5: 120, 5: 240, 10: 480, 20: 960, 40: 1920, 60: 2880}


def _rfc_frame_ms(config: int) -> float:
    """RFC 6716 table 2, spelled out by mode."""
    if config < 12:  # SILK-only NB, MB, WB
        return (10, 20, 40, 60)[config % 4]
    if config < 16:  # hybrid SWB, FB
        return (10, 20)[config % 2]
    return (2.5, 5, 10, 20)[config % 4]  # CELT-only NB, WB, SWB, FB


@pytest.mark.parametrize("config", range(32))
def test_frame_samples_follow_table_2_of_rfc_6716(config: int) -> None:
    for low in range(8):  # stereo flag and frame-count code do not change the frame size
        assert frame_samples(config << 3 | low) == _MS[_rfc_frame_ms(config)]


def test_discord_packets() -> None:
    assert packet_samples(b"\xf8\xff\xfe") == 960  # Discord's silence frame: CELT FB 20 ms, code 0
    assert packet_samples(b"\xfc" + bytes(60)) == 960
    assert packet_samples(b"\xf9\x00") == 1920  # code 1: two equal 20 ms frames
    assert packet_samples(b"\x0b\x03") == 3 * 960  # code 3: three SILK NB 20 ms frames


def test_code_3_counts_frames_and_caps_at_120_ms() -> None:
    assert packet_samples(b"\x03\x02") == 2 * 480  # SILK NB 10 ms, two frames
    assert packet_samples(b"\x1b\x02") == 2 * 2880  # SILK MB 60 ms x 2 = 120 ms: the longest allowed
    assert packet_samples(b"\x1b\x03") is None  # 180 ms
    assert packet_samples(b"\xfb\x86") == 6 * 960  # VBR/padding flags in the top bits are not the count
    assert packet_samples(b"\xfb\x00") == 0
    assert packet_samples(b"\xfb") is None
    assert packet_samples(b"") is None
    assert MAX_PACKET_SAMPLES == 120 * 48


def test_every_two_byte_prefix_agrees_with_libopus() -> None:
    lib = opus._load()
    for toc in range(256):
        for second in range(256):
            packet = bytes((toc, second))
            expected = lib.opus_packet_get_nb_samples(packet, 2, 48_000)
            assert packet_samples(packet) == (expected if expected >= 0 else None), packet.hex()


@given(st.binary(max_size=8))
def test_packet_samples_agree_with_libopus(packet: bytes) -> None:
    expected = opus._load().opus_packet_get_nb_samples(packet, len(packet), 48_000)
    assert packet_samples(packet) == (expected if expected >= 0 else None)
