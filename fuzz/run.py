"""Run the fuzz targets: ``python -m fuzz.run --runs 1000000 [--targets rtp,receiver] [--jobs 2]``.

Each target runs in its own process under atheris (libFuzzer, coverage guided, the library instrumented), starting
from the seeds of :mod:`fuzz.seeds`. Crashing inputs are saved in ``fuzz/crashes/<target>/``; turn each one into a
case of ``tests/test_fuzz_regressions.py``. Without atheris (``pip install -e '.[fuzz]'``) the same targets run on
random and mutated seed inputs instead, which finds less; the summary says which engine ran.

Prints one line per target: executions, seconds, executions per second, crashes, and exits non-zero on a crash.
libFuzzer's own output goes to ``<tmp>/voicerecv-fuzz-<target>.log`` (follow it with ``tail -f`` for progress).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent
CRASH_DIR = ROOT / "crashes"
MAX_LEN = 2048


class Result(NamedTuple):
    target: str
    engine: str
    runs: int
    seconds: float
    crashes: int


def _has_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _worker(target: str, runs: int, corpus: str) -> None:
    """Fuzz one target under atheris in this process (libFuzzer exits the process when done)."""
    import atheris

    with atheris.instrument_imports(include=["discord_voicerecv", "fuzz"]):
        from fuzz.targets import TARGETS

    fn = TARGETS[target]

    def one_input(data: bytes) -> None:
        fn(data)

    crashes = CRASH_DIR / target
    crashes.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        "-timeout=20",
        corpus,
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def _seed_corpus(target: str, directory: str) -> None:
    from fuzz.seeds import SEEDS

    for n, seed in enumerate(SEEDS[target]()):
        Path(directory, f"seed-{n}").write_bytes(seed)


def _run_atheris(target: str, runs: int) -> Result:
    log_path = Path(tempfile.gettempdir(), f"voicerecv-fuzz-{target}.log")
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as corpus, open(log_path, "w") as log_file:
        _seed_corpus(target, corpus)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "fuzz.run", "--worker", target, "--runs", str(runs), "--corpus", corpus],
            cwd=ROOT.parent,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            check=False,
        )
        seconds = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    done = re.search(r"Done (\d+) runs", log)
    executed = int(done.group(1)) if done else _last_count(log)
    crashed = proc.returncode != 0
    if crashed:
        sys.stderr.write(f"--- {target} crashed (exit {proc.returncode}); libFuzzer output tail:\n{log[-4000:]}\n")
    return Result(target, "atheris", executed, seconds, int(crashed))


def _last_count(log: str) -> int:
    counts = re.findall(r"^#(\d+)", log, flags=re.MULTILINE)
    return int(counts[-1]) if counts else 0


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.4 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif choice < 0.6 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif choice < 0.8:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 0xFF, 0x7F, 0x80))
    return bytes(buf[:MAX_LEN])


def _run_random(target: str, runs: int, seed: int) -> Result:
    """Fallback engine: random bytes and mutated seeds, crashes written like libFuzzer's."""
    from fuzz.seeds import SEEDS
    from fuzz.targets import TARGETS

    fn = TARGETS[target]
    rng = random.Random(seed)
    pool = SEEDS[target]()
    crashes = 0
    started = time.monotonic()
    for _ in range(runs):
        mutate = pool and rng.random() < 0.7
        data = _mutate(rng, rng.choice(pool)) if mutate else rng.randbytes(rng.randrange(0, 300))
        try:
            fn(data)
        except Exception:
            crashes += 1
            out = CRASH_DIR / target
            out.mkdir(parents=True, exist_ok=True)
            (out / f"crash-{abs(hash(data)):x}").write_bytes(data)
            if crashes == 1:
                sys.stderr.write(f"--- {target} crashed on {data[:64].hex()}...\n{traceback.format_exc()}\n")
    return Result(target, "random", runs, time.monotonic() - started, crashes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--targets", default="", help="comma-separated target names (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at the same time")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random engine")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.runs, args.corpus)
        return 0

    from fuzz.targets import TARGETS

    names = [n for n in args.targets.split(",") if n] or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _has_atheris() else "random"
        if engine == "random":
            print("atheris is not installed: running the random/mutation engine (pip install -e '.[fuzz]')")

    def run(name: str) -> Result:
        if engine == "atheris":
            return _run_atheris(name, args.runs)
        return _run_random(name, args.runs, args.seed)

    print(f"{'target':<12} {'engine':<8} {'runs':>10} {'seconds':>9} {'exec/s':>8} {'crashes':>8}", flush=True)
    failed = False
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for result in pool.map(run, names):
            rate = result.runs / result.seconds if result.seconds else 0.0
            print(
                f"{result.target:<12} {result.engine:<8} {result.runs:>10} {result.seconds:>9.1f} "
                f"{rate:>8.0f} {result.crashes:>8}",
                flush=True,
            )
            failed |= result.crashes > 0 or (engine == "atheris" and result.runs < args.runs)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
