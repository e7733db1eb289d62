"""Side-by-side receive benchmark: the C floor, our pipeline and discord-ext-voice-recv on the same datagrams.

``python bench/run.py`` (``make bench``) prints one table. Every variant runs several times, interleaved with the
others, and the table shows medians of process CPU time per packet, so the ratios hold on a machine that other work
is loading; absolute numbers move with that load. See ``bench/README.md`` for what each row measures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
if str(_HERE.parent) not in sys.path:
    sys.path.insert(1, str(_HERE.parent))

from capture_rtf import capture_rtf  # noqa: E402
from floor import Floor, run_threads  # noqa: E402
from measure import Run, Sample, median, timed  # noqa: E402
from pipeline import Pipeline  # noqa: E402
from scale import scale_manual, scale_threaded  # noqa: E402
from stream import AESGCM, XCHACHA, Speech, Stream, build_stream, encode_speech, write_packets  # noqa: E402

from discord_voicerecv.opus import libopus_path  # noqa: E402

ANCHOR_PACKAGE = "discord-ext-voice-recv==0.5.2a179"
ANCHOR_VENV = _HERE / ".venv-anchor"
SECTIONS = ("throughput", "paced", "cores", "scale", "capture")


@dataclass
class Variant:
    """One row: a name and a function that runs one pass and returns its Sample."""

    name: str
    group: str
    run: Callable[[], Sample]
    floor: str | None = None
    """The row this one is compared with (ours/floor)."""
    result: Run = field(init=False)

    def __post_init__(self) -> None:
        self.result = Run(self.name)


# -- the anchor (discord-ext-voice-recv in its own venv) ------------------------------------------------------------


def anchor_python() -> Path | None:
    """The anchor venv's interpreter, creating the venv on first use; None when it cannot be installed."""
    python = ANCHOR_VENV / "bin" / "python"
    stamp = ANCHOR_VENV / ".installed"
    if stamp.exists() and python.exists():
        return python
    print(f"setting up {ANCHOR_VENV.name} with {ANCHOR_PACKAGE} (once)...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(ANCHOR_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", ANCHOR_PACKAGE],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"anchor unavailable: {exc}", file=sys.stderr)
        return None
    stamp.touch()
    return python


_TEMP_FILES: list[Path] = []


def temp_packets(stream: Stream) -> Path:
    """The stream in a temporary file for the anchor's process (removed at exit)."""
    fd, name = tempfile.mkstemp(prefix="voicerecv-anchor-", suffix=".bin")
    os.close(fd)
    path = Path(name)
    _TEMP_FILES.append(path)
    write_packets(stream, path)
    return path


def anchor_run(python: Path, packets: Path, how: str) -> Sample:
    out = subprocess.run(
        [str(python), str(_HERE / "anchor.py"), str(packets), "--libopus", libopus_path(), "--how", how],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"anchor failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout)
    return Sample(
        result["cpu"],
        result["wall"],
        result["packets"],
        result["rss_before"],
        result["rss"],
        {"frames": result["frames"]},
    )


# -- passes ---------------------------------------------------------------------------------------------------------


def floor_pass(stream: Stream, speech: Speech, *, paced: bool = False) -> Sample:
    session = speech.group.session(speech.take_receiver()) if stream.dave and speech.group else None
    floor = Floor(stream, session)
    try:
        return timed(floor.run_paced if paced else floor.run)
    finally:
        floor.close()


def ours_pass(stream: Stream, speech: Speech, sink: str, *, paced: bool = False) -> Sample:
    session = speech.group.session(speech.take_receiver()) if stream.dave and speech.group else None
    pipeline = Pipeline(stream, sink, session)
    return timed(pipeline.run_paced if paced else pipeline.run)


def two_threads(make: Callable[[], Callable[[], int]]) -> Sample:
    targets = [make(), make()]
    return timed(lambda: run_threads(targets))


def floor_target(stream: Stream) -> Callable[[], int]:
    floor = Floor(stream, None)
    return floor.run


def ours_target(stream: Stream) -> Callable[[], int]:
    return Pipeline(stream, "noop", None).run


def trimmed(stream: Stream, seconds: float) -> Stream:
    slots = stream.slots[: round(seconds * 50)]
    return Stream(stream.mode, stream.key, stream.dave, slots, stream.ssrc_users)


# -- sections -------------------------------------------------------------------------------------------------------


def interleave(variants: list[Variant], reps: int, label: str) -> None:
    for rep in range(reps):
        for variant in variants:
            gc.collect()
            variant.result.samples.append(variant.run())
        print(f"  {label}: pass {rep + 1}/{reps} done", file=sys.stderr)


def throughput_variants(streams: dict[tuple[str, bool], Stream], speech: Speech, anchor: Path | None) -> list[Variant]:
    variants: list[Variant] = []
    for (mode, dave), stream in streams.items():
        tag = f"{'xchacha' if mode == XCHACHA else 'aes-gcm'}{' +DAVE' if dave else ''}"
        floor_name = f"floor          {tag}"
        variants.append(Variant(floor_name, tag, lambda s=stream: floor_pass(s, speech)))
        variants.append(
            Variant(f"ours noop-sink {tag}", tag, lambda s=stream: ours_pass(s, speech, "noop"), floor_name)
        )
        if mode == XCHACHA:
            variants.append(
                Variant(f"ours WaveSink  {tag}", tag, lambda s=stream: ours_pass(s, speech, "wave"), floor_name)
            )
            variants.append(
                Variant(f"ours opus-only {tag}", tag, lambda s=stream: ours_pass(s, speech, "opus"), floor_name)
            )
        if anchor is not None and mode == XCHACHA and not dave:
            packets = temp_packets(stream)
            variants.append(
                Variant(f"ext-voice-recv {tag}", tag, lambda p=packets: anchor_run(anchor, p, "manual"), floor_name)
            )
    return variants


def paced_variants(streams: dict[tuple[str, bool], Stream], speech: Speech, anchor: Path | None) -> list[Variant]:
    variants: list[Variant] = []
    for dave in (False, True):
        stream = streams[(XCHACHA, dave)]
        tag = f"xchacha{' +DAVE' if dave else ''} paced"
        floor_name = f"floor          {tag}"
        variants.append(Variant(floor_name, tag, lambda s=stream: floor_pass(s, speech, paced=True)))
        variants.append(
            Variant(f"ours noop-sink {tag}", tag, lambda s=stream: ours_pass(s, speech, "noop", paced=True), floor_name)
        )
        if not dave:
            variants.append(
                Variant(
                    f"ours WaveSink  {tag}", tag, lambda s=stream: ours_pass(s, speech, "wave", paced=True), floor_name
                )
            )
            if anchor is not None:
                packets = temp_packets(stream)
                variants.append(
                    Variant(f"ext-voice-recv {tag}", tag, lambda p=packets: anchor_run(anchor, p, "paced"), floor_name)
                )
    return variants


def cores_variants(stream: Stream) -> list[Variant]:
    return [
        Variant("floor 1 thread ", "cores", lambda: timed(floor_target(stream))),
        Variant("floor 2 threads", "cores", lambda: two_threads(lambda: floor_target(stream))),
        Variant("ours  1 thread ", "cores", lambda: timed(ours_target(stream))),
        Variant("ours  2 threads", "cores", lambda: two_threads(lambda: ours_target(stream))),
    ]


# -- report ---------------------------------------------------------------------------------------------------------


def print_table(variants: list[Variant], anchor_rows: dict[str, str]) -> None:
    by_name = {v.name: v for v in variants}
    header = (
        f"{'variant':<36} {'us/pkt':>8} {'pkt/s/core':>11} {'x floor':>8} {'anchor/ours':>12} "
        f"{'peak RSS MB':>12} {'RSS +MB':>8}"
    )
    print(header)
    print("-" * len(header))
    group = None
    for v in variants:
        if v.group != group:
            group = v.group
            print()
        us = v.result.cpu_us
        ratio = f"{us / by_name[v.floor].result.cpu_us:8.2f}" if v.floor else f"{'1.00':>8}"
        anchor = ""
        if v.name in anchor_rows and anchor_rows[v.name] in by_name:
            anchor = f"{by_name[anchor_rows[v.name]].result.cpu_us / us:12.2f}"
        print(
            f"{v.name:<36} {us:8.1f} {1e6 / us:11.0f} {ratio} {anchor:>12} {v.result.rss_peak:12.1f} "
            f"{v.result.rss_growth:8.1f}"
        )


def overhead_line(variants: list[Variant], ours: str, anchor: str, floor: str) -> str | None:
    by_name = {v.name: v for v in variants}
    if not all(n in by_name for n in (ours, anchor, floor)):
        return None
    f = by_name[floor].result.cpu_us
    o = by_name[ours].result.cpu_us - f
    a = by_name[anchor].result.cpu_us - f
    ratio = f"{a / o:.1f}x" if o > 0.5 else "ours is at the floor"
    return f"overhead above the floor: ours {o:.1f} us, ext-voice-recv {a:.1f} us ({ratio})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per throughput pass")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--paced-seconds", type=float, default=8.0)
    parser.add_argument("--paced-reps", type=int, default=3)
    parser.add_argument("--receivers", type=int, default=50, help="Receivers in the scale section")
    parser.add_argument("--scale-seconds", type=float, default=4.0)
    parser.add_argument("--capture-seconds", type=float, default=3600.0)
    parser.add_argument("--capture-speakers", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--no-anchor", action="store_true", help="skip discord-ext-voice-recv")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")

    anchor = None if args.no_anchor or not ({"throughput", "paced"} & set(sections)) else anchor_python()
    dave_runs = 0
    if "throughput" in sections:
        dave_runs += args.reps * 6
    if "paced" in sections:
        dave_runs += args.paced_reps * 2
    seconds = max(args.seconds, args.paced_seconds if "paced" in sections else 0, args.scale_seconds)
    t = time.perf_counter()
    speech = encode_speech(args.speakers, seconds, dave_receivers=dave_runs)
    print(
        f"encoded {args.speakers} speakers x {seconds:.0f} s at 64 kbit/s stereo, DAVE group of "
        f"{args.speakers + dave_runs} in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    daves = (False, True) if speech.dave_frames is not None else (False,)
    streams = {(mode, dave): build_stream(speech, mode, dave=dave) for mode in (XCHACHA, AESGCM) for dave in daves}
    sample_stream = streams[(XCHACHA, False)]
    mean_size = sum(len(d) for d in sample_stream.datagrams()) / sample_stream.packets
    report: dict[str, Any] = {"speakers": args.speakers, "mean_datagram_bytes": mean_size}

    all_variants: list[Variant] = []
    anchor_rows: dict[str, str] = {}
    if "throughput" in sections:
        full = {k: trimmed(s, args.seconds) for k, s in streams.items()}
        variants = throughput_variants(full, speech, anchor)
        interleave(variants, args.reps, "throughput")
        all_variants += variants
        for v in variants:
            if v.name.startswith("ours noop-sink xchacha") and "DAVE" not in v.name:
                anchor_rows[v.name] = "ext-voice-recv xchacha"
    if "paced" in sections:
        paced = {k: trimmed(s, args.paced_seconds) for k, s in streams.items()}
        variants = paced_variants(paced, speech, anchor)
        interleave(variants, args.paced_reps, "paced")
        all_variants += variants
        anchor_rows["ours noop-sink xchacha paced"] = "ext-voice-recv xchacha paced"
    cores: list[Variant] = []
    if "cores" in sections:
        cores = cores_variants(trimmed(streams[(XCHACHA, False)], args.seconds))
        interleave(cores, args.reps, "cores")

    print()
    if all_variants:
        print(
            f"{args.speakers} speakers of 64 kbit/s stereo Opus speech, {mean_size:.0f}-byte datagrams; "
            f"process CPU per packet, median of {args.reps} (paced: {args.paced_reps}) interleaved passes"
        )
        print()
        print_table(all_variants, anchor_rows)
        for ours, anch, fl in (
            ("ours noop-sink xchacha", "ext-voice-recv xchacha", "floor          xchacha"),
            ("ours noop-sink xchacha paced", "ext-voice-recv xchacha paced", "floor          xchacha paced"),
        ):
            line = overhead_line(all_variants, ours, anch, fl)
            if line:
                print(f"{ours.strip()}: {line}")
    if cores:
        by = {v.name.strip(): v.result for v in cores}
        print()
        print("two cores (manual mode, xchacha, no-op sink): wall-clock throughput, median")
        for who in ("floor", "ours"):
            one = median([s.wall for s in by[f"{who}  1 thread" if who == "ours" else f"{who} 1 thread"].samples])
            two = median([s.wall for s in by[f"{who}  2 threads" if who == "ours" else f"{who} 2 threads"].samples])
            busy = median(
                [s.cpu / s.wall for s in by[f"{who}  2 threads" if who == "ours" else f"{who} 2 threads"].samples]
            )
            print(f"  {who:<5} 2 threads / 1 thread = {2 * one / two:.2f}x  (cores busy with 2 threads: {busy:.2f})")
            report[f"cores_{who}"] = {"speedup": 2 * one / two, "cores_busy": busy}
    if "scale" in sections:
        stream = trimmed(streams[(XCHACHA, False)], args.scale_seconds)
        manual = scale_manual(stream, args.receivers)
        threaded = scale_threaded(stream, args.receivers)
        report["scale"] = {"manual": manual, "threaded": threaded}
        print()
        print(f"scale: {args.receivers} Receivers x {args.speakers} speakers ({manual['streams']} streams), xchacha")
        print(
            f"  manual, one thread : {manual['cpu_per_audio_second']:.2f} CPU-s per audio second, "
            f"{manual['realtime_factor']:.2f}x real time, frames {manual['frames']}/{manual['expected']}"
        )
        print(
            f"  threaded, real time: {threaded['cpu_per_audio_second']:.2f} CPU-s per audio second "
            f"({threaded['cores_busy']:.2f} cores busy), frames {threaded['frames']}/{threaded['expected']}, "
            f"late {threaded['late']}, sink queue full {threaded['sink_queue_full']}, "
            f"feeder behind by up to {threaded['feeder_max_behind_ms']:.0f} ms"
        )
    if "capture" in sections:
        cap_speech = Speech(speech.frames[: args.capture_speakers], None, None)
        result = capture_rtf(cap_speech, args.capture_seconds)
        report["capture"] = result
        print()
        print(
            f"decode_capture: {result['audio_seconds'] / 60:.0f} min x {result['speakers']} speakers "
            f"({result['datagrams']} datagrams, {result['pcap_mb']:.0f} MB pcap) in {result['wall']:.1f} s: "
            f"{result['rtf']:.1f}x real time, {result['cpu'] / result['audio_seconds'] * 1000:.1f} ms CPU per "
            f"audio second; RSS {result['rss_start']:.0f} MB, drift {result['rss_drift']:+.1f} MB while decoding, "
            f"peak {result['rss_peak']:.0f} MB ({result['rss_peak'] - result['rss_before']:+.0f} MB over the start)"
        )
    if args.json:
        report["samples"] = {v.name.strip(): [s.__dict__ for s in v.result.samples] for v in [*all_variants, *cores]}
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for _path in _TEMP_FILES:
            _path.unlink(missing_ok=True)
