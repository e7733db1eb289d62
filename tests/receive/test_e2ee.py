"""The E2EE hold: per-frame holding, release in arrival order, expiry, and pruning of departed users."""

from __future__ import annotations

import pytest

from discord_voicerecv.errors import E2EEDecryptError
from discord_voicerecv.frames import OPUS_SILENCE
from discord_voicerecv.receive.e2ee import E2EEHold
from discord_voicerecv.receive.ingress import RtpPacket
from discord_voicerecv.receive.stats import ReceiveStats

USER = 5


class Keys:
    """Frames ``b"k<n>"`` (or ``b"k<n>:<tag>"``) decrypt once key ``n`` is known; ``b"bad"`` always fails; the rest
    pass."""

    def __init__(self) -> None:
        self.known: set[int] = set()
        self.calls: list[bytes] = []
        self.forgotten: list[int] = []

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        self.calls.append(frame)
        if frame == b"bad":
            raise E2EEDecryptError("auth")
        if frame.startswith(b"k"):
            return b"plain" + frame[1:] if int(frame[1:].split(b":")[0]) in self.known else None
        return frame

    def forget_user(self, user_id: int) -> None:
        self.forgotten.append(user_id)

    def keys(self) -> frozenset[int]:
        return frozenset(self.known)


def _packet(sequence: int, payload: bytes, arrival: float = 0.0, ssrc: int = 9) -> RtpPacket:
    return RtpPacket(ssrc, sequence, 960 * sequence, payload, arrival)


def test_each_frame_is_held_on_its_own() -> None:
    keys, stats = Keys(), ReceiveStats()
    hold = E2EEHold(keys, stats)
    assert hold.open(USER, _packet(1, b"k1")) is None
    assert hold.open(USER, _packet(2, b"x")) == b"x", "a frame behind a held one is not delayed"
    assert hold.open(USER, _packet(3, b"k2")) is None
    keys.known.add(2)
    released = hold.release(0.1, lambda ssrc: USER)
    assert [(p.sequence, plain) for _, p, plain in released] == [(3, b"plain2")]
    assert len(hold) == 1 and stats["e2ee_held"] == 2


def test_held_frames_are_retried_before_a_newer_frame_of_their_sender() -> None:
    """davey refuses a frame older than the first one a new key decrypted: the oldest must meet the key first."""
    keys, stats = Keys(), ReceiveStats()
    hold = E2EEHold(keys, stats)
    assert hold.open(USER, _packet(1, b"k1:a")) is None
    assert hold.open(USER, _packet(2, b"k1:b")) is None
    assert hold.open(7, _packet(3, b"k1:other", ssrc=11)) is None
    keys.calls.clear()
    assert hold.open(USER, _packet(5, b"x")) == b"x"
    assert keys.calls == [b"x"], "the keys did not change since the held frames were tried: no retry"
    keys.known.add(1)
    keys.calls.clear()
    assert hold.open(USER, _packet(4, b"k1:c")) == b"plain1:c"
    assert keys.calls == [b"k1:a", b"k1:b", b"k1:c"], "the sender's held frames first, the other sender's untouched"
    assert len(hold) == 3 and hold.users() == {USER, 7}
    released = hold.release(0.02, lambda ssrc: USER if ssrc == 9 else 7)
    assert [(p.sequence, plain) for _, p, plain in released] == [
        (1, b"plain1:a"),
        (2, b"plain1:b"),
        (3, b"plain1:other"),
    ]
    assert len(hold) == 0 and stats["e2ee_failed:auth"] == 0


def test_held_frames_are_retried_in_sequence_order_across_a_wrap() -> None:
    """The first frame to meet a key must be the oldest sent, whatever order the frames arrived in."""
    keys, stats = Keys(), ReceiveStats()
    hold = E2EEHold(keys, stats)
    for sequence in (0, 65534, 1, 65535):
        assert hold.open(USER, _packet(sequence, b"k1:%d" % sequence)) is None
    keys.known.add(1)
    keys.calls.clear()
    released = hold.release(0.02, lambda ssrc: USER)
    assert [p.sequence for _, p, _ in released] == [65534, 65535, 0, 1]
    assert keys.calls == [b"k1:65534", b"k1:65535", b"k1:0", b"k1:1"]


def test_frames_ready_for_release_are_dropped_with_their_user_or_ssrc() -> None:
    keys, stats = Keys(), ReceiveStats()
    hold = E2EEHold(keys, stats)
    hold.open(USER, _packet(1, b"k1", ssrc=9))
    hold.open(USER, _packet(2, b"k1", ssrc=10))
    keys.known.add(1)
    assert hold.open(USER, _packet(3, b"k1")) == b"plain1"
    assert len(hold) == 2
    assert hold.drop_ssrc(10) == 1
    assert hold.forget(USER) == 1
    assert len(hold) == 0 and hold.release(0.02, lambda ssrc: USER) == []


def test_frames_expire_after_the_window_or_when_their_ssrc_changes_hands() -> None:
    keys, stats = Keys(), ReceiveStats()
    hold = E2EEHold(keys, stats)
    hold.open(USER, _packet(1, b"k1", arrival=0.0))
    hold.open(USER, _packet(2, b"k1", arrival=0.5, ssrc=10))
    assert hold.release(1.2, lambda ssrc: USER) == []
    assert len(hold) == 1
    assert hold.release(1.3, lambda ssrc: None) == []
    assert len(hold) == 0 and hold.users() == set() and stats["e2ee_expired"] == 2


def test_failures_are_counted_and_silence_never_reaches_the_decryptor() -> None:
    keys, stats = Keys(), ReceiveStats()
    hold = E2EEHold(keys, stats)
    assert hold.open(USER, _packet(1, b"bad")) is None
    assert hold.open(USER, _packet(2, OPUS_SILENCE)) == OPUS_SILENCE
    assert keys.calls == [b"bad"]
    assert stats["e2ee_failed:auth"] == 1 and len(hold) == 0


def test_forget_and_drop_ssrc() -> None:
    keys, stats = Keys(), ReceiveStats()
    hold = E2EEHold(keys, stats)
    for sequence in range(60):
        hold.open(USER, _packet(sequence, b"k1", ssrc=9 + sequence % 2))
    assert len(hold) == 50 and stats["e2ee_expired"] == 10, "50 frames per user at most"
    assert hold.drop_ssrc(10) == 25
    assert hold.forget(USER) == 25 and keys.forgotten == [USER]


@pytest.mark.parametrize("error", [E2EEDecryptError("plaintext"), RuntimeError("bug")])
def test_a_raising_decryptor_drops_the_frame(error: Exception) -> None:
    class Raising:
        def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
            raise error

    stats = ReceiveStats()
    assert E2EEHold(Raising(), stats).open(USER, _packet(1, b"f")) is None
    name = "e2ee_failed:plaintext" if isinstance(error, E2EEDecryptError) else "e2ee_failed:error"
    assert stats[name] == 1
