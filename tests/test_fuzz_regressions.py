"""Inputs the fuzzers found bugs with, replayed forever, and a short hypothesis pass over every fuzz target.

``make fuzz`` runs the coverage-guided targets for a million inputs each; this file keeps what they found and
gives every target a few thousand inputs in the normal suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.seeds import SEEDS
from fuzz.targets import TARGETS

_TALK = bytes((1, 0, 1, 0, 0))
"""Receiver script: an authentic audio packet of SSRC 1 (user 101), sequence +1."""
_STEP = bytes((5, 1, 0))
"""Receiver script: the clock moves 20 ms and the receiver plays out what is due."""

REGRESSIONS: list[tuple[str, str, bytes]] = [
    (
        "capture",
        "a pcapng interface option longer than its block raised IndexError instead of CaptureFormatError",
        bytes.fromhex(
            "0a0d0d0a1c0000004d3c2b1a5a000000ffffffffffffffff001c0000010000004c00000000000000000000000900010000009bac0f000100002cffffffff00000900010003ff000009000100032cffffffff00000900010003ff0000030100000900010000009bac"
        ),
    ),
    (
        "capture",
        "an rtpdump address line with a port above 65535 gave datagrams an impossible destination port",
        b"#!rtpplay1.0 10.0\x00\x00\x00\x00\x00\x00\x00\x00.0\x00\x00/600000\neS\xf1\x00\x00\x00\x00\x00\n"
        b"\x00\x00\x02\x17p\x00\x00\x00\x17\x00\x0f\x00\x00\x00\x00\x80x\x00\x01\x02 \x00\x00\x00\x00"
        b"\x00\x00\x00\x18\x00\x10\x00\x00\x00<\xa0\xf8\xff\xff\xff",
    ),
    (
        "receiver",
        "a user who left (op13) took buffered packets with them without counting them",
        bytes((0x00,)) + _TALK * 4 + bytes((8, 1)),
    ),
    (
        "receiver",
        "packets waiting for the DAVE key of a user who left were dropped without counting them",
        bytes((0x80,)) + _TALK * 3 + bytes((8, 1)) + _STEP,
    ),
    (
        "receiver",
        "ignoring an SSRC (our own) dropped its held and buffered packets without counting them",
        bytes((0x00,)) + bytes((1, 3, 1, 0, 0)) * 3 + _TALK * 2 + bytes((8, 35)) + bytes((8, 38)),
    ),
    (
        "receiver",
        "packets of an ignored SSRC waiting for a DAVE key were decrypted later and played as a new stream",
        bytes((0x80,)) + _TALK * 3 + bytes((8, 35)) + bytes((8, 49)) + _STEP * 3,
    ),
]
"""``(target, what went wrong, input)`` for every bug a fuzzer found; each must now pass its target."""


@pytest.mark.parametrize(
    ("target", "bug", "data"), REGRESSIONS, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(REGRESSIONS)]
)
def test_fuzz_regression(target: str, bug: str, data: bytes) -> None:
    TARGETS[target](data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeds_pass_their_target(target: str) -> None:
    for seed in _seeds(target):
        TARGETS[target](seed)


@cache
def _seeds(target: str) -> tuple[bytes, ...]:
    return tuple(SEEDS[target]())


def _inputs(target: str) -> st.SearchStrategy[bytes]:
    """Random bytes, and seeds with random bytes spliced in (so inputs get past the first checks)."""
    seeds = _seeds(target)

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        seed = draw(st.sampled_from(seeds))
        at = draw(st.integers(0, len(seed)))
        cut = draw(st.integers(0, 16))
        return seed[:at] + draw(st.binary(max_size=16)) + seed[at + cut :]

    return st.one_of(st.binary(max_size=512), mutated())


def _short_run(target: str, examples: int) -> Callable[[], None]:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(_inputs(target))
    def run(data: bytes) -> None:
        TARGETS[target](data)

    return run


@pytest.mark.parametrize(
    ("target", "examples"),
    [
        ("rtp", 2000),
        ("rtcp", 2000),
        ("ipdiscovery", 2000),
        ("transport", 2000),
        ("capture", 2000),
        ("mls", 2000),
        ("receiver", 2000),
    ],
)
def test_short_fuzz_run(target: str, examples: int) -> None:
    _short_run(target, examples)()


def test_the_capture_target_leaves_no_temporary_files(tmp_path: Path) -> None:
    """Importing the targets creates nothing; the capture target's scratch file is removed when the process exits."""
    script = "import fuzz.targets as t; t.TARGETS['capture'](b'not a capture')"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", "import fuzz.targets"], cwd=root, env=env, check=True)
    assert list(tmp_path.iterdir()) == [], "importing fuzz.targets created a directory"
    subprocess.run([sys.executable, "-c", script], cwd=root, env=env, check=True)
    assert list(tmp_path.iterdir()) == []
