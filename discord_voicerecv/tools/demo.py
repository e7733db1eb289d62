"""``make demo``: record simulated speakers from an embedded local Discord, no token or network needed.

Progress goes to stderr as it happens; the result is a short table on stdout (per speaker: name, clip, seconds
recorded, whether the track matches the clip), or the same facts as JSON with ``--json``.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import discord

from ..client import VoiceRecvClient
from ..opus import ensure_discord_opus
from ..sinks.wave import WaveSink
from ..testing import LocalDiscord, use_local_discord
from ..testing.bots import new_client, running
from ..testing.clips import list_clips

__all__ = ("format_summary", "run_demo")

MATCH_SCORE = 0.9
"""Normalised cross-correlation above which a track counts as its speaker's clip."""
_OWN_DAVE_COUNTS = ("decrypted", "passthrough", "held")
"""This library's per-user DAVE counts shown by the demo. davey's own (``attempts`` counts every retry of a held
frame, so it exceeds ``successes`` without anything being wrong) are left out of the summary."""

Progress = Callable[[str], object]


async def run_demo(
    *, seconds: float, speakers: int, out: Path, dave: bool = True, progress: Progress | None = None
) -> dict[str, Any]:
    """Serve a local Discord with ``speakers`` simulated speakers, record them for ``seconds`` into ``out``.

    ``progress`` gets a line at each step (connecting, recording, once a second, checking). Returns the summary:
    ``ok``, ``seconds``, ``out``, ``mix``, ``speakers`` (name, user id, clip, file, seconds, match, score),
    ``dave`` (on/off, privacy code, per-speaker counts) and ``stats`` (receive counters).
    """
    say: Progress = progress or (lambda line: None)
    ensure_discord_opus()
    say("starting a local Discord on loopback" + (" (DAVE end-to-end encryption on)" if dave else ""))
    async with LocalDiscord(dave=dave) as local:
        use_local_discord(local.url)
        client = new_client()
        async with running(client, "demo-recorder"):
            channel = client.get_channel(local.voice_channel_id)
            assert isinstance(channel, discord.VoiceChannel)
            say(f"bot connecting to voice channel #{channel.name}")
            vc = await channel.connect(cls=VoiceRecvClient)
            clips = list_clips()
            talkers = [local.add_speaker(clip=clips[i % len(clips)]) for i in range(speakers)]
            say(f"{_plural(len(talkers), 'speaker')} joined: " + ", ".join(f"{t.name} ({t.clip})" for t in talkers))
            await asyncio.sleep(0.5)  # let the DAVE group settle with the new members before recording
            sink = WaveSink(out)
            started = time.monotonic()
            vc.listen(sink)
            for i, talker in enumerate(talkers):
                talker.speak(times=1000, pause=0.4 + 0.3 * i)
            say(f"recording {seconds:g} s into {out}")
            await _wait_with_progress(seconds, vc, say)
            vc.stop_listening()
            await vc.wait_listening_stopped()
            elapsed = time.monotonic() - started
            stats = dict(vc.receive_stats())
            privacy = vc.voice_privacy_code
            dave_stats = vc.dave_stats
            for talker in talkers:
                talker.stop_now()
            await vc.disconnect()
    say("checking each track against the clip its speaker said")
    rows = [
        _speaker_row(t.name, t.user_id, t.clip, sink.files.get(t.user_id), dave_stats.get(t.user_id, {}))
        for t in talkers
    ]
    return {
        "ok": stats.get("decoded", 0) > 0 and all(row["match"] is not False and row["file"] for row in rows),
        "seconds": max((row["seconds"] for row in rows), default=round(elapsed, 2)),  # what the files hold
        "out": str(out),
        "mix": str(sink.mix_path),
        "speakers": rows,
        "dave": {"enabled": dave, "voice_privacy_code": privacy},
        "stats": {k: v for k, v in stats.items() if not isinstance(v, dict)},
    }


async def _wait_with_progress(seconds: float, vc: VoiceRecvClient, say: Progress) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(1.0, left))
        elapsed = seconds - max(0.0, end - loop.time())
        stats = vc.receive_stats()
        say(f"  {elapsed:4.1f} s  {stats.get('packets', 0)} packets, {stats.get('decoded', 0)} frames decoded")


def _speaker_row(
    name: str, user_id: int, clip: str | None, path: Path | None, dave: Mapping[str, int]
) -> dict[str, Any]:
    seconds = _wav_seconds(path) if path is not None else 0.0
    score = _match_score(path, clip) if path is not None and clip is not None else None
    return {
        "name": name,
        "user_id": user_id,
        "clip": clip,
        "file": str(path) if path is not None else None,
        "seconds": round(seconds, 3),
        "match": None if score is None else score >= MATCH_SCORE,
        "score": None if score is None else round(score, 3),
        "dave": {k: v for k, v in dave.items() if k in _OWN_DAVE_COUNTS or k.startswith("failed:")},
    }


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def _match_score(path: Path, clip: str) -> float | None:
    """How well the track holds ``clip`` (None without numpy, which the check needs)."""
    try:
        from ..testing.analysis import normalized_xcorr, read_wav
        from ..testing.clips import load_clip
    except ImportError:
        return None
    rate, channels, samples = read_wav(path)
    reference = load_clip(clip)
    # a recording shorter than the clip holds its beginning (the speaker starts just after recording does)
    usable = max(len(samples) - rate // 2, rate // 2) * channels * 2
    score, _ = normalized_xcorr(samples, reference[: min(len(reference), usable)])
    return score


def format_summary(summary: Mapping[str, Any]) -> str:
    """The demo's result for people: a line per speaker, the mix, the counters that matter."""
    rows: list[dict[str, Any]] = summary["speakers"]
    lines = [f"Recorded {summary['seconds']:.2f} s from {_plural(len(rows), 'speaker')} into {summary['out']}"]
    width = max([len(r["name"]) for r in rows] + [7])
    clip_width = max([len(str(r["clip"])) for r in rows] + [4])
    lines.append(f"  {'speaker':<{width}}  {'clip':<{clip_width}}  {'seconds':>7}  matches clip  file")
    for row in rows:
        match = {True: "yes", False: "NO", None: "not checked"}[row["match"]]
        if row["score"] is not None:
            match += f" ({row['score']:.2f})"
        lines.append(
            f"  {row['name']:<{width}}  {row['clip']!s:<{clip_width}}  {row['seconds']:7.2f}  {match:<12}  "
            f"{row['file'] or '(nothing recorded)'}"
        )
    lines.append(f"  mix: {summary['mix']}")
    stats = summary["stats"]
    lines.append(
        f"Packets: {stats.get('packets', 0)} received, {stats.get('decoded', 0)} frames decoded, "
        f"{stats.get('decrypt_failed', 0)} failed transport decryption."
    )
    dave = summary["dave"]
    if dave["enabled"]:
        decrypted = sum(r["dave"].get("decrypted", 0) for r in rows)
        failed = sum(v for r in rows for k, v in r["dave"].items() if k.startswith("failed:"))
        lines.append(
            f"DAVE end-to-end encryption: {decrypted} frames decrypted, {failed} dropped; "
            f"voice privacy code {_groups(dave['voice_privacy_code'])}."
        )
    else:
        lines.append("DAVE end-to-end encryption: off.")
    if any(row["match"] is None for row in rows):
        lines.append("(Install numpy to check the tracks against the clips.)")
    lines.append("All tracks match their clips." if summary["ok"] else "Something is off: see the table above.")
    return "\n".join(lines)


def _groups(code: str | None) -> str:
    """The privacy code in groups of five digits, as Discord's clients show it."""
    if not code:
        return "(none)"
    return " ".join(code[i : i + 5] for i in range(0, len(code), 5))


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
