"""A short run of the receive benchmark (bench/): ratios measured in the same run, failing only on gross regressions.

Absolute times move with whatever else the machine runs, so nothing here compares against a stored number: the
floor (bare C primitives) and our pipeline run interleaved on the same datagrams and only their ratio is checked,
with a bound loose enough (3x) that noise cannot trip it while a real regression (an extra copy per sample, a lock
per byte, a sleep in the hot path) does.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from discord_voicerecv import opus

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, object]]:
    sys.path.insert(0, str(BENCH))
    try:
        import floor
        import measure
        import pipeline
        import stream

        speech = stream.encode_speech(5, 2.0)
        yield {
            "floor": floor,
            "measure": measure,
            "pipeline": pipeline,
            "stream": stream,
            "xchacha": stream.build_stream(speech, stream.XCHACHA, dave=False),
            "aesgcm": stream.build_stream(speech, stream.AESGCM, dave=False),
        }
    finally:
        sys.path.remove(str(BENCH))


def _median_ratio(bench: dict[str, object], mode: str, sink: str, passes: int = 5) -> tuple[float, float, float, int]:
    floor_mod = bench["floor"]
    pipeline_mod = bench["pipeline"]
    timed: Callable[[Callable[[], int]], object] = bench["measure"].timed  # type: ignore[attr-defined]
    stream = bench[mode]
    floors: list[float] = []
    ours: list[float] = []
    frames = 0
    for _ in range(passes):
        floor = floor_mod.Floor(stream, None)  # type: ignore[attr-defined]
        try:
            floors.append(timed(floor.run).cpu_us)  # type: ignore[attr-defined]
        finally:
            floor.close()
        run = pipeline_mod.Pipeline(stream, sink, None)  # type: ignore[attr-defined]
        ours.append(timed(run.run).cpu_us)  # type: ignore[attr-defined]
        frames = run.frames()
    f, o = statistics.median(floors), statistics.median(ours)
    return f, o, o / f, frames


@pytest.mark.timing
@pytest.mark.parametrize("mode", ["xchacha", "aesgcm"])
def test_pipeline_stays_within_3x_of_the_c_floor(bench: dict[str, object], mode: str) -> None:
    floor_us, ours_us, ratio, frames = _median_ratio(bench, mode, "noop")
    print(f"\n{mode}: floor {floor_us:.1f} us/packet, ours {ours_us:.1f} us/packet, ours/floor {ratio:.2f}")
    assert frames == bench[mode].packets  # type: ignore[attr-defined]
    assert ratio < 3.0


@pytest.mark.timing
def test_opus_passthrough_costs_a_fraction_of_decoding(bench: dict[str, object]) -> None:
    _, ours_us, ratio, frames = _median_ratio(bench, "xchacha", "opus")
    print(f"\nopus-only: ours {ours_us:.1f} us/packet, {ratio:.2f} of the decoding floor")
    assert frames == bench["xchacha"].packets  # type: ignore[attr-defined]
    assert ratio < 0.6


def test_packet_samples_table_matches_libopus() -> None:
    """The pure-Python TOC fast path of ``packet_samples`` gives what libopus gives, for every first byte."""
    lib = opus._load()
    for toc in range(256):
        for tail in (b"", b"\x01", b"\x83\x00", b"\x3f" * 3):
            packet = bytes([toc]) + tail
            expected = lib.opus_packet_get_nb_samples(packet, len(packet), 48000)
            if expected < 0:
                with pytest.raises(opus.OpusError):
                    opus.packet_samples(packet)
            else:
                assert opus.packet_samples(packet) == expected, (toc, tail)
