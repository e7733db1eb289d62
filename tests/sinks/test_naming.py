"""One file-naming rule for every sink that names files per speaker: WAV, FFmpeg, Ogg tracks and RTP SDP files."""

from __future__ import annotations

from pathlib import Path

import pytest

from discord_voicerecv.frames import FRAME_BYTES, OPUS_SILENCE, VoiceFrame
from discord_voicerecv.sinks import RTPForwardSink, WaveSink
from discord_voicerecv.sinks._naming import FileNamer, speaker_stem
from discord_voicerecv.sinks.mix import MIX_SSRC


class Named:
    def __init__(self, display_name: str) -> None:
        self.display_name = display_name


@pytest.mark.parametrize(
    ("user", "user_id", "ssrc", "stem"),
    [
        (Named("Ann Lee"), 11, 1, "Ann_Lee-11"),
        (Named("../../etc/passwd"), 12, 1, "etc_passwd-12"),
        (Named("..."), 13, 1, "13"),
        (Named("Zoë 🎙"), 14, 1, "Zoë-14"),
        (Named("x" * 200), 15, 1, "x" * 80 + "-15"),
        (None, 16, 1, "16"),
        (None, None, 77, "unknown-77"),
        (None, None, MIX_SSRC, "mix"),
    ],
)
def test_speaker_stem(user: Named | None, user_id: int | None, ssrc: int, stem: str) -> None:
    assert speaker_stem(user, user_id, ssrc) == stem  # type: ignore[arg-type]


def test_clashes_get_numbered_case_insensitively(tmp_path: Path) -> None:
    namer = FileNamer(tmp_path, "sdp")
    assert [namer.reserve(s).name for s in ("mix", "Ann-1", "ann-1", "ANN-1")] == [
        "mix.sdp",
        "Ann-1.sdp",
        "ann-1-2.sdp",
        "ANN-1-3.sdp",
    ]


SPEAKERS = [
    (Named("Ann Lee"), 11, 101),
    (Named("ann lee"), 11_1, 102),
    (Named("../evil"), 12, 103),
    (Named("x" * 200), 13, 104),
    (None, 14, 105),
    (None, None, 106),
]


def test_wave_and_rtp_forward_name_the_same_speakers_alike(tmp_path: Path) -> None:
    wave = WaveSink(tmp_path / "wav", mix=False)
    forward = RTPForwardSink(base_port=47_000, sdp_dir=tmp_path / "sdp", silence="skip")
    for tick in range(2):
        for user, user_id, ssrc in SPEAKERS:
            frame = VoiceFrame(ssrc, user_id, tick, bytes(FRAME_BYTES), OPUS_SILENCE, tick, tick * 960)
            wave.write(user, frame)  # type: ignore[arg-type]
            forward.write(user, frame)  # type: ignore[arg-type]
        wave.advance(tick)
        forward.advance(tick)
    forward.cleanup()
    wave.cleanup()
    wav_stems = {key: path.stem for key, path in wave.files.items()}
    sdp_stems = {key: stream.sdp_path.stem for key, stream in forward.streams.items()}
    assert wav_stems == sdp_stems
    assert sorted(sdp_stems.values()) == sorted(
        ["Ann_Lee-11", "ann_lee-111", "evil-12", "x" * 80 + "-13", "14", "unknown-106"]
    )
