"""MLS encodings of the local voice gateway, checked against davey (openmls) as the judge."""

from __future__ import annotations

import struct
from collections.abc import Callable

import davey
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from discord_voicerecv.errors import MalformedMlsMessage
from discord_voicerecv.testing import mls

CHANNEL = 1_234_567_890_123_456_789
APPEND = davey.ProposalsOperationType.append
REVOKE = davey.ProposalsOperationType.revoke


def _vector_body(op27: bytes) -> bytes:
    """What discord.py hands davey from an op27 payload: everything after the operation type byte."""
    return op27[1:]


class _Pair:
    """Two davey sessions and the external sender key they both pin, before any group exists."""

    def __init__(self) -> None:
        self.key = mls.ExternalSenderKey()
        self.package = mls.build_external_sender(self.key.public_key, b"gateway")
        self.a = davey.DaveSession(1, 111, CHANNEL)
        self.b = davey.DaveSession(1, 222, CHANNEL)
        self.kp_a = self.a.get_serialized_key_package()
        self.kp_b = self.b.get_serialized_key_package()
        self.a.set_external_sender(self.package)
        self.b.set_external_sender(self.package)

    def create(self) -> tuple[bytes, bytes]:
        """A commits B's Add; both join epoch 1. Returns A's commit and welcome."""
        add_b = mls.build_add_proposal(CHANNEL, 0, self.kp_b, self.key)
        result = self.a.process_proposals(APPEND, _vector_body(mls.build_proposals(mls.PROPOSALS_APPEND, [add_b])))
        assert result is not None and result.welcome is not None
        self.a.process_commit(result.commit)
        self.b.process_welcome(result.welcome)
        return result.commit, result.welcome


@pytest.fixture
def pair() -> _Pair:
    return _Pair()


# -- varints ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (63, b"\x3f"), (64, b"\x40\x40"), (16383, b"\x7f\xff"), (16384, b"\x80\x00\x40\x00")],
)
def test_varint_uses_the_shortest_form(value: int, encoded: bytes) -> None:
    assert mls.encode_varint(value) == encoded


@given(st.binary(max_size=20_000))
def test_vector_round_trips_through_the_reader(data: bytes) -> None:
    reader = mls._Reader(mls.encode_vector(data) + b"tail")
    assert reader.vector("test") == data
    assert reader.data[reader.pos :] == b"tail"


@pytest.mark.parametrize("encoded", [b"\x40\x05", b"\x80\x00\x00\x05", b"\xc0"])
def test_reader_rejects_long_or_reserved_varints(encoded: bytes) -> None:
    with pytest.raises(MalformedMlsMessage):
        mls._Reader(encoded + bytes(8)).varint("test")


def test_varint_out_of_range() -> None:
    with pytest.raises(ValueError):
        mls.encode_varint(1 << 30)


# -- external sender and proposals ------------------------------------------------------------------------------------


def test_external_sender_layout() -> None:
    key = mls.ExternalSenderKey()
    package = mls.build_external_sender(key.public_key, b"id")
    assert len(key.public_key) == 65 and key.public_key[0] == 4
    assert package == b"\x40\x41" + key.public_key + b"\x00\x01" + b"\x02id"


def test_davey_accepts_the_external_sender_and_our_proposals(pair: _Pair) -> None:
    pair.create()
    assert pair.a.ready and pair.b.ready
    assert pair.a.epoch == pair.b.epoch == 1
    assert pair.a.voice_privacy_code == pair.b.voice_privacy_code
    assert pair.b.decrypt(111, davey.MediaType.audio, pair.a.encrypt_opus(b"opus!")) == b"opus!"


def test_proposal_signature_is_over_the_framed_content_tbs(pair: _Pair) -> None:
    message = mls.build_add_proposal(CHANNEL, 0, pair.kp_b, pair.key)
    reader = mls._Reader(message)
    reader.take(4 + 9, "header and group id")
    reader.take(8 + 1 + 4, "epoch and sender")
    assert reader.vector("aad") == b""
    assert reader.u8("content type") == mls.CONTENT_PROPOSAL
    assert reader.u16("proposal type") == 1
    reader.take(len(pair.kp_b), "key package")
    tbs_end = reader.pos
    signature = reader.vector("signature")
    assert reader.done()
    sign_content = mls.encode_vector(b"MLS 1.0 FramedContentTBS") + mls.encode_vector(message[:tbs_end])
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pair.key.public_key)
    public.verify(signature, sign_content, ec.ECDSA(hashes.SHA256()))


def test_davey_rejects_a_tampered_proposal_signature(pair: _Pair) -> None:
    message = bytearray(mls.build_add_proposal(CHANNEL, 0, pair.kp_b, pair.key))
    message[-5] ^= 0x01
    with pytest.raises(ValueError):
        pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(mls.PROPOSALS_APPEND, [bytes(message)])))
    assert not pair.a.ready


def test_davey_rejects_a_proposal_signed_by_another_key(pair: _Pair) -> None:
    message = mls.build_add_proposal(CHANNEL, 0, pair.kp_b, mls.ExternalSenderKey())
    with pytest.raises(ValueError):
        pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(mls.PROPOSALS_APPEND, [message])))


def test_davey_rejects_a_proposal_for_another_epoch(pair: _Pair) -> None:
    message = mls.build_add_proposal(CHANNEL, 5, pair.kp_b, pair.key)
    with pytest.raises(ValueError):
        pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(mls.PROPOSALS_APPEND, [message])))


def test_build_proposals_framing() -> None:
    assert mls.build_proposals(mls.PROPOSALS_APPEND, [b"ab", b"c"]) == b"\x00\x03abc"
    assert mls.build_proposals(mls.PROPOSALS_REVOKE, [b"r" * 32]) == b"\x01\x21\x20" + b"r" * 32
    with pytest.raises(ValueError):
        mls.build_proposals(7, [])


def test_proposal_ref_matches_the_reference_davey_commits_to(pair: _Pair) -> None:
    add_b = mls.build_add_proposal(CHANNEL, 0, pair.kp_b, pair.key)
    result = pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(mls.PROPOSALS_APPEND, [add_b])))
    assert result is not None
    assert mls.parse_commit(result.commit).proposal_refs == (mls.proposal_ref(add_b),)


def test_revoke_by_ref_withdraws_the_proposal_in_davey(pair: _Pair) -> None:
    add_b = mls.build_add_proposal(CHANNEL, 0, pair.kp_b, pair.key)
    assert pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(0, [add_b]))) is not None
    committing = pair.a.status
    revoke = mls.build_proposals(mls.PROPOSALS_REVOKE, [mls.proposal_ref(add_b)])
    assert pair.a.process_proposals(REVOKE, _vector_body(revoke)) is None
    assert (committing, pair.a.status) == (davey.SessionStatus.awaiting_response, davey.SessionStatus.pending)


# -- key packages ----------------------------------------------------------------------------------------------------


def test_parse_key_package_reads_the_user_id(pair: _Pair) -> None:
    info = mls.parse_key_package(pair.kp_a)
    assert info.user_id == 111
    assert info.identity == struct.pack(">Q", 111)
    assert info.cipher_suite == mls.CIPHER_SUITE_P256
    assert len(info.signature_key) == 65


def test_parse_key_package_rejects_every_truncation_and_trailing_bytes(pair: _Pair) -> None:
    for size in range(0, len(pair.kp_a), 7):
        with pytest.raises(MalformedMlsMessage):
            mls.parse_key_package(pair.kp_a[:size])
    with pytest.raises(MalformedMlsMessage):
        mls.parse_key_package(pair.kp_a + b"\x00")


def test_unwrap_key_package(pair: _Pair) -> None:
    assert mls.unwrap_key_package(pair.kp_a) == pair.kp_a
    assert mls.unwrap_key_package(b"\x00\x01\x00\x05" + pair.kp_a) == pair.kp_a


def test_key_package_user_id_needs_eight_bytes() -> None:
    assert mls.KeyPackageInfo(2, b"abc", b"").user_id is None


# -- commits and welcomes --------------------------------------------------------------------------------------------


def test_split_commit_with_welcome(pair: _Pair) -> None:
    add_b = mls.build_add_proposal(CHANNEL, 0, pair.kp_b, pair.key)
    result = pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(0, [add_b])))
    assert result is not None and result.welcome is not None
    commit, welcome = mls.split_commit_welcome(result.commit + result.welcome)
    assert (commit, welcome) == (result.commit, result.welcome)
    assert welcome is not None
    info = mls.parse_commit(commit)
    assert (info.group_id, info.epoch, info.sender_type, info.sender_index) == (
        struct.pack(">Q", CHANNEL),
        0,
        mls.SENDER_MEMBER,
        0,
    )
    assert info.size == len(commit) and info.inline_proposals == 0
    assert mls.welcome_recipients(welcome) == (mls.key_package_ref(pair.kp_b),)


def test_split_commit_without_welcome_and_with_update_path(pair: _Pair) -> None:
    pair.create()
    remove = mls.build_remove_proposal(CHANNEL, 1, 1, pair.key)
    result = pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(0, [remove])))
    assert result is not None and result.welcome is None
    commit, welcome = mls.split_commit_welcome(result.commit)
    assert commit == result.commit and welcome is None
    info = mls.parse_commit(commit)
    assert info.has_path and info.epoch == 1 and info.proposal_refs == (mls.proposal_ref(remove),)
    pair.a.process_commit(commit)
    assert pair.a.epoch == 2


def test_split_rejects_garbage_after_the_commit(pair: _Pair) -> None:
    add_b = mls.build_add_proposal(CHANNEL, 0, pair.kp_b, pair.key)
    result = pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(0, [add_b])))
    assert result is not None and result.welcome is not None
    with pytest.raises(MalformedMlsMessage):
        mls.split_commit_welcome(result.commit + result.welcome + b"\x00")
    with pytest.raises(MalformedMlsMessage):
        mls.split_commit_welcome(result.commit[:-1])


def test_targeted_welcome_keeps_only_the_joiners_secrets() -> None:
    key = mls.ExternalSenderKey()
    package = mls.build_external_sender(key.public_key, b"gateway")
    sessions = [davey.DaveSession(1, uid, CHANNEL) for uid in (1, 2, 3)]
    packages = [s.get_serialized_key_package() for s in sessions]
    for session in sessions:
        session.set_external_sender(package)
    adds = [mls.build_add_proposal(CHANNEL, 0, kp, key) for kp in packages[1:]]
    result = sessions[0].process_proposals(APPEND, _vector_body(mls.build_proposals(0, adds)))
    assert result is not None and result.welcome is not None
    sessions[0].process_commit(result.commit)
    for session, kp in zip(sessions[1:], packages[1:], strict=True):
        targeted = mls.targeted_welcome(result.welcome, kp)
        assert mls.welcome_recipients(targeted) == (mls.key_package_ref(kp),)
        assert len(targeted) < len(result.welcome)
        session.process_welcome(targeted)
    assert len({s.voice_privacy_code for s in sessions}) == 1
    assert [s.own_leaf_index for s in sessions] == [0, 1, 2]
    with pytest.raises(MalformedMlsMessage):
        mls.targeted_welcome(result.welcome, packages[0])
    wrapped = b"\x00\x01\x00\x03" + result.welcome
    assert mls.welcome_recipients(wrapped) == mls.welcome_recipients(result.welcome)


def test_parse_commit_rejects_a_proposal_message(pair: _Pair) -> None:
    with pytest.raises(MalformedMlsMessage, match="content_type"):
        mls.parse_commit(mls.build_add_proposal(CHANNEL, 0, pair.kp_b, pair.key))
    with pytest.raises(MalformedMlsMessage, match="version"):
        mls.parse_commit(b"\x00\x02\x00\x01")
    with pytest.raises(MalformedMlsMessage, match="wire_format"):
        mls.parse_commit(b"\x00\x01\x00\x02")


# -- fuzz ------------------------------------------------------------------------------------------------------------


def _parses_or_is_malformed(parse: Callable[[bytes], object], data: bytes) -> None:
    try:
        parse(data)
    except MalformedMlsMessage as exc:
        assert exc.reason


@given(st.binary(max_size=400))
def test_parsers_raise_only_malformed_on_random_bytes(data: bytes) -> None:
    for parse in (mls.parse_key_package, mls.split_commit_welcome, mls.welcome_recipients):
        _parses_or_is_malformed(parse, data)


_COMMIT_SAMPLE: list[bytes] = []


def _commit_sample() -> bytes:
    if not _COMMIT_SAMPLE:
        pair = _Pair()
        pair.create()
        remove = mls.build_remove_proposal(CHANNEL, 1, 1, pair.key)
        result = pair.a.process_proposals(APPEND, _vector_body(mls.build_proposals(0, [remove])))
        assert result is not None
        _COMMIT_SAMPLE.append(result.commit)
    return _COMMIT_SAMPLE[0]


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_commits_parse_or_raise_malformed(position: int, value: int) -> None:
    commit = bytearray(_commit_sample())
    commit[position % len(commit)] = value
    _parses_or_is_malformed(mls.split_commit_welcome, bytes(commit))
