"""The DAVE receive layer against real davey sessions grouped by the local Discord's MLS coordinator."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import davey
import numpy as np
import pytest

from discord_voicerecv.errors import E2EEDecryptError
from discord_voicerecv.frames import OPUS_SILENCE, VoiceFrame
from discord_voicerecv.opus import OpusEncoder
from discord_voicerecv.protocol.rtp import build_rtp_header
from discord_voicerecv.protocol.transport import make_cipher
from discord_voicerecv.receive import Receiver
from discord_voicerecv.receive.dave import DaveFrameDecryptor, is_dave_frame
from discord_voicerecv.receive.e2ee import E2EEHold
from discord_voicerecv.receive.ingress import RtpPacket
from discord_voicerecv.receive.stats import ReceiveStats
from discord_voicerecv.sinks.base import AudioSink, SinkUser
from discord_voicerecv.testing.dave_group import DaveGroupCoordinator, Outbound
from discord_voicerecv.testing.speakers import DaveClient

CHANNEL = 4_242_000_111
ALICE, BOB, CAROL, DAN = 1001, 2002, 3003, 4004
AUDIO = davey.MediaType.audio
OPUS = b"\x78" + bytes(range(1, 61))


class Group:
    """Members driven in-process by the coordinator through one FIFO; messages to a member can be parked."""

    def __init__(self) -> None:
        self.coordinator = DaveGroupCoordinator(CHANNEL)
        self.members: dict[int, DaveClient] = {}
        self.queue: deque[tuple[str, Any]] = deque()
        self.parked: dict[int, list[Outbound]] = {}
        self.invalid: list[tuple[int, int]] = []

    def join(self, user_id: int) -> DaveClient:
        client = DaveClient(user_id, CHANNEL)
        client.send_json = lambda op, data: self.queue.append(("up", (user_id, op, data)))
        client.send_binary = lambda op, payload: self.queue.append(("up", (user_id, op, payload)))
        self.members[user_id] = client
        client.start(self.coordinator.protocol_version, send_key_package=False)
        self._down(self.coordinator.member_joined(user_id))
        client.send_key_package()
        return client

    def leave(self, user_id: int) -> None:
        del self.members[user_id]
        self._down(self.coordinator.member_left(user_id))

    def park(self, user_id: int) -> None:
        self.parked.setdefault(user_id, [])

    def release(self, user_id: int, count: int | None = None) -> None:
        """Deliver the member's parked messages (the first ``count`` of them; the rest stay parked)."""
        parked = self.parked.pop(user_id, [])
        if count is not None:
            self.parked[user_id] = parked[count:]
            parked = parked[:count]
        self.queue.extend(("deliver", out) for out in parked)
        self.run()

    def expire_transition(self) -> None:
        """The gateway's transition timeout: execute the pending transition without the members parked."""
        pending = self.coordinator.pending_transition
        assert pending is not None
        self._down(self.coordinator.expire_transition(pending))
        self.run()

    def _deliver(self, out: Outbound) -> None:
        member = self.members.get(out.user_id)
        if member is None:
            return
        if out.binary is not None:
            member.handle_binary(out.binary[0], out.binary[1:])
        else:
            member.handle_json(out.opcode, out.json)

    def _down(self, outs: Iterable[Outbound]) -> None:
        self.queue.extend(("down", out) for out in outs)

    def run(self) -> None:
        for _ in range(1000):
            if not self.queue:
                return
            kind, item = self.queue.popleft()
            if kind == "deliver":
                self._deliver(item)
            elif kind == "down":
                assert isinstance(item, Outbound)
                if item.user_id in self.parked:
                    self.parked[item.user_id].append(item)
                    continue
                self._deliver(item)
            else:
                user_id, op, data = item
                self._down(self._serve(user_id, op, data))
        raise AssertionError("the group never settled")

    def _serve(self, user_id: int, op: int, data: object) -> list[Outbound]:
        coordinator = self.coordinator
        if user_id not in self.members:
            return []
        if op == 26:
            assert isinstance(data, bytes)
            return coordinator.key_package(user_id, data)
        if op == 28:
            assert isinstance(data, bytes)
            return coordinator.commit_welcome(user_id, data)
        assert isinstance(data, dict)
        if op == 23:
            return coordinator.transition_ready(user_id, data["transition_id"])
        assert op == 31
        self.invalid.append((user_id, data["transition_id"]))
        return coordinator.invalid_commit_welcome(user_id, data["transition_id"])

    def session(self, user_id: int) -> davey.DaveSession:
        session = self.members[user_id].session
        assert session is not None
        return session


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _pair() -> tuple[Group, DaveClient, DaveClient]:
    group = Group()
    alice = group.join(ALICE)
    bob = group.join(BOB)
    group.run()
    assert alice.can_encrypt and bob.can_encrypt
    return group, alice, bob


def _decryptor(
    group: Group, user_id: int, clock: Clock | None = None, **kwargs: object
) -> tuple[DaveFrameDecryptor, dict[str, object]]:
    """A decryptor reading ``user_id``'s session, with switchable version and downgrade flag."""
    flags: dict[str, object] = {"version": 1, "downgraded": False, "recovered": []}
    decryptor = DaveFrameDecryptor(
        lambda: group.members[user_id].session,
        lambda: int(flags["version"]),  # type: ignore[call-overload]
        get_downgraded=lambda: bool(flags["downgraded"]),
        on_recover=flags["recovered"].append,  # type: ignore[attr-defined]
        clock=clock or Clock(),
        **kwargs,  # type: ignore[arg-type]
    )
    return decryptor, flags


def _tampered(frame: bytes) -> bytes:
    return bytes((frame[0] ^ 0x55,)) + frame[1:]


def test_davey_error_messages_the_classifier_relies_on() -> None:
    group, alice, _bob = _pair()
    frame = alice.encrypt(OPUS)
    cases = {
        "NoDecryptorForUser": (CAROL, frame),
        "UnencryptedWhenPassthroughDisabled": (ALICE, OPUS),
        "NoValidCryptorFound": (ALICE, _tampered(frame)),
    }
    for marker, (user_id, data) in cases.items():
        with pytest.raises(ValueError, match=marker):
            group.session(BOB).decrypt(user_id, AUDIO, data)


def test_members_frames_decrypt_and_silence_passes_untouched() -> None:
    group, alice, _ = _pair()
    decryptor, _ = _decryptor(group, BOB)
    frame = alice.encrypt(OPUS)
    assert is_dave_frame(frame) and not is_dave_frame(OPUS)
    assert decryptor.decrypt(ALICE, frame) == OPUS
    assert decryptor.decrypt(ALICE, OPUS_SILENCE) == OPUS_SILENCE
    assert decryptor.user_stats() == {ALICE: {"decrypted": 1}}
    assert decryptor.privacy_code() == group.session(ALICE).voice_privacy_code is not None


def test_a_sender_not_in_our_group_yet_is_held() -> None:
    group, _alice, _ = _pair()
    decryptor, _ = _decryptor(group, BOB)
    group.park(BOB)
    group.join(CAROL)
    group.run()
    carol = group.members[CAROL]
    assert carol.can_encrypt
    frame = carol.encrypt(OPUS)
    assert decryptor.decrypt(CAROL, frame) is None
    group.release(BOB)
    assert decryptor.decrypt(CAROL, frame) == OPUS
    assert decryptor.user_stats()[CAROL] == {"held": 1, "decrypted": 1}


def test_a_frame_from_an_epoch_before_we_joined_is_held_once_more_then_dropped_without_a_recovery() -> None:
    """Held while we had no key for its sender, then undecryptable with the keys our welcome gave: it gets one hold
    (our session may be a commit short) on its own clock, then counts as failed, never towards a recovery."""
    group = Group()
    alice = group.join(ALICE)
    group.join(CAROL)
    group.run()
    group.park(BOB)
    group.join(BOB)
    clock = Clock()
    decryptor, flags = _decryptor(group, BOB, clock, hold=0.06, recover_after=1)
    old_epoch_frame = alice.encrypt(OPUS)
    assert decryptor.decrypt(ALICE, old_epoch_frame) is None
    group.run()
    group.release(BOB)
    assert group.members[BOB].can_encrypt
    clock.t += 5.0
    assert decryptor.decrypt(ALICE, old_epoch_frame) is None, "its hold starts when it first fails, not on arrival"
    clock.t += 0.059
    assert decryptor.decrypt(ALICE, old_epoch_frame) is None
    clock.t += 0.002
    with pytest.raises(E2EEDecryptError) as info:
        decryptor.decrypt(ALICE, old_epoch_frame)
    assert info.value.reason == "auth" and "epoch we were not in" in str(info.value)
    assert decryptor.decrypt(ALICE, alice.encrypt(OPUS)) == OPUS
    assert decryptor.user_stats()[ALICE] == {"held": 3, "failed:auth": 1, "decrypted": 1}
    assert flags["recovered"] == [] and decryptor.recoveries == 0


def _welcome_then_a_commit_behind() -> tuple[Group, DaveClient]:
    """Alice and Carol are a group; we (Bob) join and Carol leaves while every message to us is parked (the join's
    transition expires without us): Alice sends in the epoch after the one our parked welcome gives.

    Bob's parked messages: op25, op30 (welcome), op22, op27, op29 (Carol's removal).
    """
    group = Group()
    alice = group.join(ALICE)
    group.join(CAROL)
    group.run()
    group.park(BOB)
    group.join(BOB)
    group.run()
    welcome_epoch = group.session(ALICE).epoch
    group.expire_transition()
    group.leave(CAROL)
    group.run()
    assert welcome_epoch is not None and group.session(ALICE).epoch == welcome_epoch + 1
    assert [out.opcode for out in group.parked[BOB]] == [25, 30, 22, 27, 29]
    return group, alice


def test_a_frame_that_waited_for_our_welcome_but_belongs_to_the_next_epoch_decrypts_once_we_commit() -> None:
    """The regression: such a frame was dropped at once as "from an epoch before we joined"."""
    group, alice = _welcome_then_a_commit_behind()
    clock = Clock()
    decryptor, flags = _decryptor(group, BOB, clock, hold=0.06)
    frame = alice.encrypt(OPUS)
    assert decryptor.decrypt(ALICE, frame) is None
    group.release(BOB, 3)
    with pytest.raises(ValueError, match="NoValidCryptorFound"):
        group.session(BOB).decrypt(ALICE, AUDIO, frame)
    assert decryptor.decrypt(ALICE, frame) is None, "our session is one commit short: hold it"
    clock.t += 0.04
    assert decryptor.decrypt(ALICE, frame) is None
    group.release(BOB)
    assert decryptor.decrypt(ALICE, frame) == OPUS
    assert decryptor.user_stats()[ALICE] == {"held": 3, "decrypted": 1}
    assert flags["recovered"] == []


def test_the_e2ee_hold_releases_a_frame_that_waited_through_a_welcome_and_a_commit() -> None:
    """The receiver's hold, retrying every slot, with the real decryptor: the frame comes out, nothing fails."""
    group, alice = _welcome_then_a_commit_behind()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock, hold=0.06)
    stats = ReceiveStats()
    hold = E2EEHold(decryptor, stats)
    frames = [alice.encrypt(bytes((0x78, k)) + OPUS[2:]) for k in range(3)]
    for k, frame in enumerate(frames):
        assert hold.open(ALICE, RtpPacket(SSRC, k, 960 * k, frame, clock.t)) is None
    assert hold.release(clock.t, lambda ssrc: ALICE) == []
    group.release(BOB, 3)
    for _ in range(2):
        clock.t += 0.02
        assert hold.release(clock.t, lambda ssrc: ALICE) == []
    assert len(hold) == 3 and stats["e2ee_failed:auth"] == 0
    group.release(BOB)
    clock.t += 0.02
    released = hold.release(clock.t, lambda ssrc: ALICE)
    assert [(p.sequence, plain[:2]) for _, p, plain in released] == [(k, bytes((0x78, k))) for k in range(3)]
    assert len(hold) == 0 and stats["e2ee_failed:auth"] == 0 and stats["e2ee_expired"] == 0


def test_frames_held_for_a_commit_decrypt_although_a_newer_frame_comes_first_under_it() -> None:
    """davey refuses a frame older than the first one a new key decrypted; the hold retries the held frames before
    the sender's next frame, so the frames that beat our commit are not lost when the next one arrives first."""
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock, hold=0.06)
    stats = ReceiveStats()
    hold = E2EEHold(decryptor, stats)
    group.park(BOB)
    group.join(CAROL)
    group.run()
    frames = [alice.encrypt(bytes((0x78, k)) + OPUS[2:]) for k in range(4)]
    for k, frame in enumerate(frames[:3]):
        assert hold.open(ALICE, RtpPacket(SSRC, k, 960 * k, frame, clock.t)) is None
    group.release(BOB)
    clock.t += 0.01
    assert hold.open(ALICE, RtpPacket(SSRC, 3, 960 * 3, frames[3], clock.t)) == bytes((0x78, 3)) + OPUS[2:]
    released = hold.release(clock.t + 0.01, lambda ssrc: ALICE)
    assert [(p.sequence, plain[:2]) for _, p, plain in released] == [(k, bytes((0x78, k))) for k in range(3)]
    assert len(hold) == 0 and stats["e2ee_failed:auth"] == 0 and "failed:auth" not in decryptor.user_stats()[ALICE]


def _drain(hold: E2EEHold, clock: Clock, opened: dict[int, bytes], until: float) -> None:
    """Release the hold every 20 ms up to clock time ``until``, collecting the frames by sequence."""
    while clock.t < until:
        clock.t += 0.02
        opened.update((p.sequence, plain) for _, p, plain in hold.release(clock.t, lambda ssrc: ALICE))


@pytest.mark.parametrize("key_change", [False, True])
def test_the_first_two_frames_of_a_sender_reordered_both_decrypt(key_change: bool) -> None:
    """davey starts a key ratchet's replay window at the first nonce it decrypts: the newer frame, first to arrive,
    waits briefly so that the older one, overtaken on the network, is not refused for good."""
    group, alice, _ = _pair()
    if key_change:
        alice.encrypt(OPUS)
        group.join(CAROL)
        group.run()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock)
    stats = ReceiveStats()
    hold = E2EEHold(decryptor, stats)
    frames = [alice.encrypt(bytes((0x78, k)) + OPUS[2:]) for k in range(4)]
    opened: dict[int, bytes] = {}
    for k in (1, 0, 2, 3):
        plain = hold.open(ALICE, RtpPacket(SSRC, k, 960 * k, frames[k], clock.t))
        if plain is not None:
            opened[k] = plain
        clock.t += 0.005
    assert sorted(opened) == [0, 2, 3], "the older frame decrypts at once, then the window covers the held one"
    _drain(hold, clock, opened, clock.t + 1.2)
    assert {k: plain[:2] for k, plain in opened.items()} == {k: bytes((0x78, k)) for k in range(4)}
    assert len(hold) == 0 and stats["e2ee_failed:auth"] == 0 and stats["e2ee_held"] == 1


def test_a_lost_first_frame_delays_the_next_ones_only_briefly() -> None:
    """The first frame of the ratchet never comes: the frames after it wait the ordering time, then decrypt in
    sequence order (not in their arrival order, which would start the window past the older one)."""
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock)
    stats = ReceiveStats()
    hold = E2EEHold(decryptor, stats)
    frames = [alice.encrypt(bytes((0x78, k)) + OPUS[2:]) for k in range(5)]
    for k in (2, 1, 3):
        assert hold.open(ALICE, RtpPacket(SSRC, k, 960 * k, frames[k], clock.t)) is None
        clock.t += 0.005
    assert hold.release(clock.t, lambda ssrc: ALICE) == [], "still within the ordering wait"
    clock.t += 0.04
    released = hold.release(clock.t, lambda ssrc: ALICE)
    assert [(p.sequence, plain[:2]) for _, p, plain in released] == [(k, bytes((0x78, k))) for k in (1, 2, 3)]
    assert hold.open(ALICE, RtpPacket(SSRC, 4, 960 * 4, frames[4], clock.t)) == bytes((0x78, 4)) + OPUS[2:]
    assert len(hold) == 0 and stats["e2ee_failed:auth"] == 0


def test_an_older_frame_opened_after_the_wait_joins_the_retry_of_the_held_newer_one() -> None:
    """No release ran between the newer frame and the older one (datagrams are processed in batches): the older one
    is decrypted first, although the newer one's wait ran out, instead of being refused after it."""
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock)
    stats = ReceiveStats()
    hold = E2EEHold(decryptor, stats)
    frames = [alice.encrypt(bytes((0x78, k)) + OPUS[2:]) for k in range(3)]
    t = clock.t
    assert hold.open(ALICE, RtpPacket(SSRC, 2, 960 * 2, frames[2], t)) is None
    assert hold.open(ALICE, RtpPacket(SSRC, 0, 0, frames[0], t + 0.05)) == bytes((0x78, 0)) + OPUS[2:]
    assert hold.open(ALICE, RtpPacket(SSRC, 1, 960, frames[1], t + 0.06)) == bytes((0x78, 1)) + OPUS[2:]
    released = hold.release(t + 0.06, lambda ssrc: ALICE)
    assert [(p.sequence, plain[:2]) for _, p, plain in released] == [(2, bytes((0x78, 2)))]
    assert len(hold) == 0 and stats["e2ee_failed:auth"] == 0 and stats["e2ee_held"] == 1


def test_a_frame_waits_for_a_waiting_older_one_but_never_more_than_twice_the_ordering_wait() -> None:
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock)
    frames = [alice.encrypt(bytes((0x78, k)) + OPUS[2:]) for k in range(5)]
    t = clock.t
    assert decryptor.decrypt_at(ALICE, frames[2], t) is None
    assert decryptor.decrypt_at(ALICE, frames[1], t + 0.03) is None
    assert decryptor.decrypt_at(ALICE, frames[2], t + 0.045) is None, "nonce 2 still waits for nonce 1"
    assert decryptor.decrypt_at(ALICE, frames[1], t + 0.071) == bytes((0x78, 1)) + OPUS[2:]
    assert decryptor.decrypt_at(ALICE, frames[2], t + 0.071) == bytes((0x78, 2)) + OPUS[2:]

    group, alice, _ = _pair()
    decryptor, _ = _decryptor(group, BOB, clock)
    frames = [alice.encrypt(bytes((0x78, k)) + OPUS[2:]) for k in range(5)]
    assert decryptor.decrypt_at(ALICE, frames[3], t) is None
    assert decryptor.decrypt_at(ALICE, frames[2], t + 0.05) is None
    assert decryptor.decrypt_at(ALICE, frames[4], t + 0.06) is None, "a later frame waits while older ones do"
    assert decryptor.decrypt_at(ALICE, frames[3], t + 0.079) is None
    assert decryptor.decrypt_at(ALICE, frames[3], t + 0.081) == bytes((0x78, 3)) + OPUS[2:], "80 ms at most"
    assert decryptor.decrypt_at(ALICE, frames[4], t + 0.081) == bytes((0x78, 4)) + OPUS[2:]
    assert decryptor.user_stats()[ALICE] == {"held": 4, "decrypted": 2}


def test_frames_in_order_are_never_held() -> None:
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock)
    stats = ReceiveStats()
    hold = E2EEHold(decryptor, stats)
    for k in range(40):
        frame = alice.encrypt(bytes((0x78, k)) + OPUS[2:])
        assert hold.open(ALICE, RtpPacket(SSRC, k, 960 * k, frame, clock.t)) == bytes((0x78, k)) + OPUS[2:]
    assert stats["e2ee_held"] == 0 and decryptor.user_stats()[ALICE] == {"decrypted": 40}


def test_new_keys_give_a_failing_frame_another_hold() -> None:
    """A member two commits behind: a frame that still fails under the first commit's keys is held again."""
    group, alice, _ = _pair()
    group.join(CAROL)
    group.run()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock, hold=0.06)
    group.park(BOB)
    group.join(DAN)
    group.run()
    group.expire_transition()
    group.leave(CAROL)
    group.run()
    assert [out.opcode for out in group.parked[BOB]] == [27, 29, 22, 27, 29]
    frame = alice.encrypt(OPUS)
    assert decryptor.decrypt(ALICE, frame) is None
    clock.t += 0.05
    group.release(BOB, 2)
    assert decryptor.decrypt(ALICE, frame) is None
    clock.t += 0.05
    assert decryptor.decrypt(ALICE, frame) is None, "0.1 s after it first failed, but 0.05 s under these keys"
    group.release(BOB)
    assert decryptor.decrypt(ALICE, frame) == OPUS
    assert decryptor.user_stats()[ALICE] == {"held": 3, "decrypted": 1}


def test_frames_of_a_new_epoch_that_beat_our_commit_are_held_then_decrypt() -> None:
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, _ = _decryptor(group, BOB, clock)
    old_epoch = group.session(BOB).epoch
    assert old_epoch is not None
    group.park(BOB)
    group.join(CAROL)
    group.run()
    assert group.session(ALICE).epoch == old_epoch + 1 and group.session(BOB).epoch == old_epoch
    frame = alice.encrypt(OPUS)
    with pytest.raises(ValueError, match="NoValidCryptorFound"):
        group.session(BOB).decrypt(ALICE, AUDIO, frame)
    assert decryptor.decrypt(ALICE, frame) is None
    clock.t += 0.04
    assert decryptor.decrypt(ALICE, frame) is None
    group.release(BOB)
    assert decryptor.decrypt(ALICE, frame) == OPUS
    assert "failed:auth" not in decryptor.user_stats()[ALICE]


def test_a_tampered_frame_is_held_for_the_hold_window_then_dropped_as_auth() -> None:
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, flags = _decryptor(group, BOB, clock, hold=0.06)
    bad = _tampered(alice.encrypt(OPUS))
    assert decryptor.decrypt(ALICE, bad) is None
    clock.t += 0.059
    assert decryptor.decrypt(ALICE, bad) is None
    clock.t += 0.002
    with pytest.raises(E2EEDecryptError) as info:
        decryptor.decrypt(ALICE, bad)
    assert info.value.reason == "auth"
    with pytest.raises(E2EEDecryptError):
        decryptor.decrypt(ALICE, _tampered(alice.encrypt(OPUS)))
    assert decryptor.decrypt(ALICE, alice.encrypt(OPUS)) == OPUS
    assert decryptor.decrypt(ALICE, bad) is None, "a success ends the failure streak: a new one starts held"
    assert decryptor.user_stats()[ALICE] == {"held": 3, "failed:auth": 2, "decrypted": 1}
    assert flags["recovered"] == []


def test_plaintext_passes_only_inside_a_passthrough_window() -> None:
    group, _alice, _ = _pair()
    decryptor, flags = _decryptor(group, BOB)
    with pytest.raises(E2EEDecryptError) as info:
        decryptor.decrypt(ALICE, OPUS)
    assert info.value.reason == "plaintext"
    with pytest.raises(E2EEDecryptError):
        decryptor.decrypt(CAROL, OPUS)
    flags["downgraded"] = True
    assert decryptor.decrypt(ALICE, OPUS) == OPUS
    flags["downgraded"] = False
    flags["version"] = 0
    assert decryptor.decrypt(CAROL, OPUS) == OPUS
    flags["version"] = 1
    group.session(BOB).set_passthrough_mode(True, None)
    assert decryptor.decrypt(ALICE, OPUS) == OPUS
    group.session(BOB).set_passthrough_mode(False, 0)
    with pytest.raises(E2EEDecryptError):
        decryptor.decrypt(ALICE, OPUS)
    stats = decryptor.user_stats()
    assert stats[ALICE] == {"failed:plaintext": 2, "passthrough": 2}
    assert stats[CAROL] == {"failed:plaintext": 1, "passthrough": 1}


def test_without_a_session_nothing_is_held() -> None:
    version = [0]
    decryptor = DaveFrameDecryptor(lambda: None, lambda: version[0])
    assert decryptor.decrypt(ALICE, OPUS) == OPUS
    looks_encrypted = OPUS + bytes(8) + b"\x05\x0c\xfa\xfa"
    assert is_dave_frame(looks_encrypted)
    assert decryptor.decrypt(ALICE, looks_encrypted) == looks_encrypted, "protocol version 0: there is no DAVE"
    version[0] = 1
    _group, alice, _ = _pair()
    with pytest.raises(E2EEDecryptError) as info:
        decryptor.decrypt(ALICE, alice.encrypt(OPUS))
    assert info.value.reason == "no_session"
    assert decryptor.privacy_code() is None


def test_the_dave_trailer_is_checked_not_just_the_magic() -> None:
    _group, alice, _ = _pair()
    assert all(is_dave_frame(alice.encrypt(bytes([0x78]) + bytes(n))) for n in (1, 20, 200, 1000))
    assert not is_dave_frame(OPUS + b"\xfa\xfa")  # a size byte 0x3C (60) overruns into the media: no nonce end
    assert not is_dave_frame(bytes(20) + b"\x00\xfa\xfa")  # supplemental size 0
    assert not is_dave_frame(bytes(20) + b"\x30\xfa\xfa")  # supplemental size past the frame
    assert not is_dave_frame(bytes(8) + b"\x80\x80\x0c\xfa\xfa")  # nonce runs into the size byte
    rng = np.random.default_rng(7)
    frames = [
        rng.integers(0, 256, int(rng.integers(20, 200)), dtype=np.uint8).tobytes() + b"\xfa\xfa" for _ in range(5000)
    ]
    assert sum(map(is_dave_frame, frames)) < 250, "a random frame ending in FA FA rarely passes"


def test_a_departed_user_is_forgotten() -> None:
    group, alice, _ = _pair()
    decryptor, _ = _decryptor(group, BOB)
    assert decryptor.decrypt(ALICE, alice.encrypt(OPUS)) == OPUS
    decryptor.forget_user(ALICE)
    assert decryptor.user_stats() == {}


def test_sustained_auth_failures_trigger_one_rate_limited_recovery() -> None:
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, flags = _decryptor(group, BOB, clock, hold=0.05, recover_after=10, recover_interval=5.0)
    recovered: list[int] = flags["recovered"]  # type: ignore[assignment]

    def fail(n: int) -> None:
        for _ in range(n):
            clock.t += 0.02
            result = None
            try:
                result = decryptor.decrypt(ALICE, _tampered(alice.encrypt(OPUS)))
            except E2EEDecryptError as exc:
                assert exc.reason == "auth"
            assert result is None

    fail(3)
    fail(10)
    assert recovered == [ALICE] and decryptor.recoveries == 1
    fail(100)
    assert recovered == [ALICE], "at most one recovery per interval"
    fail(200)
    assert recovered == [ALICE, ALICE], "a sender still failing after the interval gets another one"
    fail(300)
    assert len(recovered) == 2, "the interval doubled: not 5 s again..."
    fail(250)
    assert len(recovered) == 3, "...but 10 s"
    assert decryptor.decrypt(ALICE, alice.encrypt(OPUS)) == OPUS
    assert decryptor.user_stats()[ALICE]["failed:auth"] > 700


def test_no_recovery_while_the_sender_is_outside_our_group() -> None:
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, flags = _decryptor(group, BOB, clock, recover_after=3)
    group.park(BOB)
    group.leave(ALICE)
    group.join(CAROL)
    group.run()
    group.release(BOB)
    assert str(ALICE) not in group.session(BOB).get_user_ids()
    for _ in range(20):
        clock.t += 0.02
        assert decryptor.decrypt(ALICE, _tampered(alice.encrypt(OPUS))) is None
    assert flags["recovered"] == []


def test_recovery_through_op31_brings_the_sender_back() -> None:
    """What the client does on ``on_recover``: op31 + re-init; the coordinator re-adds us and audio decrypts."""
    group, alice, bob = _pair()
    group.join(CAROL)
    group.run()
    clock = Clock()
    decryptor, _flags = _decryptor(group, BOB, clock, recover_after=5)
    group.session(BOB).reinit(1, BOB, CHANNEL)  # our MLS state is gone without the group knowing
    group.session(BOB).set_external_sender(group.coordinator.external_sender)
    assert decryptor.decrypt(ALICE, alice.encrypt(OPUS)) is None
    bob.send_json(31, {"transition_id": 0})
    bob.start(1)
    group.run()
    assert group.invalid == [(BOB, 0)]
    assert decryptor.decrypt(ALICE, alice.encrypt(OPUS)) == OPUS
    assert decryptor.decrypt(CAROL, group.members[CAROL].encrypt(OPUS)) == OPUS


def test_one_session_used_from_two_threads_never_raises_anything_unexpected() -> None:
    """The socket thread decrypts while the event loop thread commits, re-initialises and toggles passthrough.

    davey holds the GIL for every call, so the two threads' calls are serialised: no "already borrowed", no
    partially applied commit, every frame that decrypts is exactly what was sent. Each frame is decrypted once
    (fresh nonces), so every call reaches davey.
    """
    group, alice, bob = _pair()
    decryptor, _ = _decryptor(group, BOB, hold=0.0, recover_after=1_000_000)
    frames: deque[tuple[bytes, bytes]] = deque()
    outcomes: dict[str, int] = {}
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def socket_thread() -> None:
        while not stop.is_set() or frames:
            try:
                plain, frame = frames.popleft()
            except IndexError:
                time.sleep(0)
                continue
            try:
                out = decryptor.decrypt(ALICE, frame)
            except E2EEDecryptError as exc:
                key = "failed:" + exc.reason
            except BaseException as exc:
                unexpected.append(exc)
                continue
            else:
                key = "held" if out is None else "ok" if out == plain else "garbage"
            outcomes[key] = outcomes.get(key, 0) + 1

    def encrypt_batch(n: int) -> None:
        for k in range(400):
            payload = bytes((0x78, n & 0xFF, k & 0xFF)) + OPUS[3:]
            frames.append((payload, alice.encrypt(payload)))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread = threading.Thread(target=socket_thread)
    thread.start()
    try:
        for n in range(1, 11):  # two re-initialisations, five joins and leaves
            encrypt_batch(n)
            group.join(CAROL) if n % 2 else group.leave(CAROL)
            group.run()
            session = group.session(BOB)
            session.set_passthrough_mode(True, None)
            session.set_passthrough_mode(False, 0)
            if n % 5 == 0:
                bob.start(1)
                group.run()
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert unexpected == []
    assert outcomes.get("garbage", 0) == 0
    assert outcomes.get("ok", 0) > 500, outcomes


# The receiver with the real decryptor ---------------------------------------------------------------------------

MODE = "aead_aes256_gcm_rtpsize"
KEY = bytes(range(32))
SSRC = 0xABCD


class Sink(AudioSink):
    def __init__(self) -> None:
        self.frames: list[VoiceFrame] = []

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.frames.append(frame)

    def advance(self, tick: int) -> None:
        pass

    def cleanup(self) -> None:
        pass


def _tone(frames: int) -> list[bytes]:
    encoder = OpusEncoder()
    out = []
    for k in range(frames):
        t = np.arange(k * 960, (k + 1) * 960) / 48000.0
        mono = (8000 * np.sin(2 * math.pi * 330 * t)).astype("<i2")
        out.append(encoder.encode(np.repeat(mono, 2).tobytes()))
    return out


def test_receiver_never_decodes_a_failed_frame_and_keeps_the_rest_in_time() -> None:
    group, alice, _ = _pair()
    clock = Clock()
    decryptor, flags = _decryptor(group, BOB, clock, hold=0.06, recover_after=10)
    sink = Sink()
    receiver = Receiver(sink, decryptor=decryptor, clock=clock, playout_delay=0.1)
    receiver.set_transport(MODE, KEY)
    receiver.start(threaded=False)
    receiver.map_ssrc(SSRC, ALICE)
    cipher = make_cipher(MODE, KEY)
    opus = _tone(60)
    tampered = {5, *range(30, 45)}
    sent: dict[int, bytes] = {}
    t0 = clock.t
    for i, packet in enumerate(opus):
        frame = alice.encrypt(packet)
        if i in tampered:
            frame = _tampered(frame)
        sent[i] = frame
        header = build_rtp_header(sequence=100 + i, timestamp=5000 + 960 * i, ssrc=SSRC)
        arrival = t0 + 0.2 + 0.02 * i
        receiver.pump(until=arrival)
        clock.t = arrival
        receiver.feed(cipher.encrypt_rtp(header, frame))
    receiver.pump(until=clock.t + 0.5)
    clock.t += 0.5
    receiver.stop()
    stats = receiver.stats()
    by_sequence = {f.sequence: f for f in sink.frames}
    for i, packet in enumerate(opus):
        got = by_sequence.get(100 + i)
        if i in tampered:
            assert got is None or got.concealed, f"tampered frame {i} was decoded"
        else:
            assert got is not None and got.opus == packet and not got.concealed, f"frame {i} lost"
    assert all(f.opus not in sent.values() for f in sink.frames if f.opus is not None)
    assert stats["e2ee_failed:auth"] == len(tampered)
    assert stats.by_user[ALICE]["e2ee_failed:auth"] == len(tampered)
    assert stats["late"] == 0 and stats["e2ee_expired"] == 0
    assert decryptor.user_stats()[ALICE]["failed:auth"] == len(tampered)
    assert flags["recovered"] == [ALICE], "15 consecutive failures while in the group ask for a recovery"


def test_a_duplicated_packet_is_not_an_authentication_failure() -> None:
    """davey refuses a nonce twice (replay protection); a network duplicate must still not look like tampering."""
    group, alice, _ = _pair()
    decryptor, _ = _decryptor(group, BOB)
    frame = alice.encrypt(OPUS)
    assert decryptor.decrypt(ALICE, frame) == OPUS
    with pytest.raises(ValueError, match="NoValidCryptorFound"):
        group.session(BOB).decrypt(ALICE, AUDIO, frame)
    assert decryptor.decrypt(ALICE, frame) == OPUS
    assert decryptor.user_stats()[ALICE] == {"decrypted": 1, "duplicate": 1}
