"""Memory under churn: 10,000 speakers join, talk briefly and leave during one listening session.

Each speaker gets its own SSRC and user id, sends half a second of DAVE frames, and leaves (op13, ``forget_user``).
RSS is printed after a warm-up and then every 2,000 speakers; what the receiver still keeps per departed speaker
(streams, per-SSRC and per-user counters, the DAVE layer's per-user state) is printed at the end. The DAVE
session is a stand-in that strips the trailer (no MLS group can hold 10,000 members here); the DAVE layer's own
per-user bookkeeping, duplicate cache and holds run unchanged. Manual mode on a fake clock, so it runs flat out.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import rss_mb
from pipeline import CountingSink

from discord_voicerecv.opus import OpusEncoder
from discord_voicerecv.protocol.rtp import build_rtp_header
from discord_voicerecv.protocol.transport import make_cipher
from discord_voicerecv.receive import Receiver
from discord_voicerecv.receive.dave import DaveFrameDecryptor

MODE = "aead_aes256_gcm_rtpsize"
KEY = bytes(range(32))
FRAMES_PER_SPEAKER = 25


class StandInSession:
    """Answers what ``DaveFrameDecryptor`` asks of a davey session; ``decrypt`` strips the DAVE trailer."""

    ready = True
    status = None
    voice_privacy_code = "stand-in"

    def decrypt(self, user_id: int, media: object, frame: bytes) -> bytes:
        return frame[: -frame[-3]]

    def get_user_ids(self) -> list[str]:
        return []


def _sealed(opus: bytes, nonce: int) -> bytes:
    """``opus`` with a DAVE trailer: tag, a 2-byte ULEB128 nonce, size byte, magic."""
    return opus + bytes(8) + bytes((0x80 | nonce & 0x7F, nonce >> 7 & 0x7F)) + b"\x0d\xfa\xfa"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speakers", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    args = parser.parse_args()

    encoder = OpusEncoder()
    opus = [encoder.encode(bytes(3840)) for _ in range(FRAMES_PER_SPEAKER)]
    session = StandInSession()
    decryptor = DaveFrameDecryptor(lambda: session, lambda: 1)  # type: ignore[arg-type,return-value]
    now = [100.0]
    receiver = Receiver(CountingSink(), decryptor=decryptor, clock=lambda: now[0])
    receiver.set_transport(MODE, KEY)
    cipher = make_cipher(MODE, KEY)
    receiver.start(threaded=False)
    print(f"{'speakers':>9} {'RSS MB':>8} {'growth MB':>10}")
    base = None
    for n in range(args.speakers):
        ssrc, user_id = 10_000 + n, 1_000_000 + n
        receiver.map_ssrc(ssrc, user_id)
        for i in range(FRAMES_PER_SPEAKER):
            header = build_rtp_header(sequence=i, timestamp=960 * i, ssrc=ssrc)
            now[0] += 0.02
            receiver.pump(now[0])
            receiver.feed(cipher.encrypt_rtp(header, _sealed(opus[i], n * FRAMES_PER_SPEAKER + i)))
        receiver.forget_user(user_id)
        now[0] += 0.3
        receiver.pump(now[0])
        done = n + 1
        if done == args.warmup or (done > args.warmup and done % 2000 == 0) or done == args.speakers:
            gc.collect()
            rss = rss_mb()
            base = rss if base is None else base
            print(f"{done:>9} {rss:>8.1f} {rss - base:>10.1f}", flush=True)
    stats = receiver.stats()
    receiver.stop()
    kept = {
        "streams": len(receiver._streams),
        "stats.by_ssrc": len(stats.by_ssrc),
        "stats.by_user": len(stats.by_user),
        "dave users": len(decryptor.user_stats()),
    }
    print("kept after everyone left:", ", ".join(f"{k} {v}" for k, v in kept.items()))
    print(f"frames {stats['frames']}, decoded {stats['decoded']}, dropped {stats.dropped()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
