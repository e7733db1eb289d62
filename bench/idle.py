"""What silent voice connections cost: N started receivers in one process while nobody talks.

Discord sends nothing while everyone is silent, so a listening bot in many quiet channels pays only for its own
wake-ups. The baseline, measured first in the same run, is the process with no receiver at all. Prints CPU as a
percentage of one core and the thread count for each N.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import CountingSink

from discord_voicerecv.receive import Receiver


def _cpu_percent(seconds: float) -> float:
    c0, w0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return 100 * (time.process_time() - c0) / (time.perf_counter() - w0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="1,50,500", help="comma-separated numbers of receivers")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured span per count")
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()

    print(f"{'receivers':>9} {'CPU % of a core':>16} {'per receiver %':>15} {'threads':>8}")
    print(f"{0:>9} {_cpu_percent(args.seconds):>16.2f} {'':>15} {threading.active_count():>8}", flush=True)
    for count in (int(c) for c in args.counts.split(",")):
        receivers = [Receiver(CountingSink()) for _ in range(count)]
        for receiver in receivers:
            receiver.set_transport("aead_aes256_gcm_rtpsize", bytes(32))
            receiver.map_ssrc(1, 1)
            receiver.start()
        time.sleep(args.warmup)
        threads = threading.active_count()
        cpu = _cpu_percent(args.seconds)
        print(f"{count:>9} {cpu:>16.2f} {cpu / count:>15.4f} {threads:>8}", flush=True)
        for receiver in receivers:
            receiver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
