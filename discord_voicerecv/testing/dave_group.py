"""The voice gateway's side of DAVE: one MLS external sender and group coordinator per voice channel.

Sans-I/O: the local voice gateway feeds it what members do (join, op26 key package, op28 commit/welcome, op23
ready, op31 invalid, leave) and sends the `Outbound` messages it returns, in order. It follows the DAVE whitepaper
(https://daveprotocol.com): while no group is established, each key package's Add proposal goes at once to every
other member of the call, a joiner gets the proposals already in flight, and the first valid commit creates the
group; later joiners are added and leavers removed by external proposals to
the established members, a sole remaining member is reset, and version changes go through op21/op22 (downgrade)
or op24 with epoch 1 (upgrade, re-creating the group).
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedMlsMessage
from .mls import (
    CIPHER_SUITE_P256,
    PROPOSALS_APPEND,
    PROPOSALS_REVOKE,
    SENDER_MEMBER,
    ExternalSenderKey,
    build_add_proposal,
    build_external_sender,
    build_proposals,
    build_remove_proposal,
    parse_commit,
    parse_key_package,
    proposal_ref,
    split_commit_welcome,
    targeted_welcome,
    unwrap_key_package,
)

__all__ = (
    "OP_ANNOUNCE_COMMIT",
    "OP_COMMIT_WELCOME",
    "OP_EXECUTE_TRANSITION",
    "OP_EXTERNAL_SENDER",
    "OP_INVALID_COMMIT_WELCOME",
    "OP_KEY_PACKAGE",
    "OP_PREPARE_EPOCH",
    "OP_PREPARE_TRANSITION",
    "OP_PROPOSALS",
    "OP_TRANSITION_READY",
    "OP_WELCOME",
    "DaveGroupCoordinator",
    "Outbound",
)

_log = logging.getLogger(__name__)

OP_PREPARE_TRANSITION = 21
OP_EXECUTE_TRANSITION = 22
OP_TRANSITION_READY = 23
OP_PREPARE_EPOCH = 24
OP_EXTERNAL_SENDER = 25
OP_KEY_PACKAGE = 26
OP_PROPOSALS = 27
OP_COMMIT_WELCOME = 28
OP_ANNOUNCE_COMMIT = 29
OP_WELCOME = 30
OP_INVALID_COMMIT_WELCOME = 31

_MAX_TRANSITION_ID = 0xFFFF


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message for one member of the voice channel.

    Exactly one of ``json`` and ``binary`` is set. ``json`` is the ``d`` object of a text frame. ``binary`` is a
    binary frame without its sequence number: ``opcode u8 | payload`` (op29 and op30 carry ``transition_id u16 BE``
    before the payload); the voice gateway prefixes its own ``seq u16 BE`` (`wire` does both).
    """

    user_id: int
    opcode: int
    json: dict[str, Any] | None = None
    binary: bytes | None = None

    def wire(self, seq: int) -> bytes | str:
        """The frame as the voice gateway sends it, numbered ``seq``."""
        if self.binary is not None:
            return struct.pack(">H", seq & 0xFFFF) + self.binary
        return json.dumps({"op": self.opcode, "d": self.json, "seq": seq})


@dataclass(slots=True)
class _Member:
    user_id: int
    key_package: bytes | None = None
    leaf: int | None = None
    """Leaf index in the established group, None while pending."""
    awaiting_key_package: bool = True
    """Its MLS session (re)started and the key package it sends then has not arrived yet."""


@dataclass(frozen=True, slots=True)
class _Proposal:
    message: bytes
    ref: bytes
    add_user: int | None = None
    key_package: bytes | None = None
    remove_leaf: int | None = None


@dataclass(slots=True)
class _Round:
    """Proposals broadcast for one epoch and not yet committed; ``sent`` maps each committer to its proposal refs."""

    epoch: int
    creation: bool
    pool: dict[bytes, _Proposal] = field(default_factory=dict)
    sent: dict[int, set[bytes]] = field(default_factory=dict)


@dataclass(slots=True)
class _Transition:
    transition_id: int
    waiting: set[int]
    participants: list[int]


class DaveGroupCoordinator:
    """MLS external sender and delivery service for one voice channel's DAVE group.

    Parameters
    ----------
    channel_id:
        The voice channel id; the MLS group id is its 8 big-endian bytes.
    protocol_version:
        The DAVE protocol version to announce in op4 (0 keeps the channel on transport encryption only).
    signer:
        The external sender key; generated when omitted.
    identity:
        The external sender's basic credential identity.

    Notes
    -----
    Call `member_joined` right after sending a member op4 (discord.py only reads binary frames once op4 gave it a
    DAVE session); every method returns the messages to send, in order. Nothing here has a clock: the gateway
    calls `expire_transition` when members are slow to send op23.
    """

    __slots__ = (
        "_downgrade_pending",
        "_epoch",
        "_external_sender",
        "_group_id",
        "_leaves",
        "_members",
        "_next_transition_id",
        "_round",
        "_signer",
        "_stale",
        "_transition",
        "_upgrade_pending",
        "_version",
        "channel_id",
    )

    def __init__(
        self,
        channel_id: int,
        protocol_version: int = 1,
        *,
        signer: ExternalSenderKey | None = None,
        identity: bytes = b"voice-gateway",
    ) -> None:
        self.channel_id = channel_id
        self._group_id = struct.pack(">Q", channel_id)
        self._signer = signer if signer is not None else ExternalSenderKey()
        self._external_sender = build_external_sender(self._signer.public_key, identity)
        self._version = protocol_version
        self._members: dict[int, _Member] = {}
        self._leaves: dict[int, int] = {}
        self._stale: set[int] = set()
        self._epoch = 0
        self._round: _Round | None = None
        self._transition: _Transition | None = None
        self._next_transition_id = 1
        self._downgrade_pending = False
        self._upgrade_pending = False

    # -- views ---------------------------------------------------------------------------------------------------

    @property
    def protocol_version(self) -> int:
        """The DAVE protocol version to put in op4 for members joining now."""
        return self._version

    @property
    def epoch(self) -> int:
        """The established group's epoch; 0 while no group is established."""
        return self._epoch

    @property
    def external_sender(self) -> bytes:
        """The op25 payload every member pins."""
        return self._external_sender

    @property
    def pending_transition(self) -> int | None:
        """The transition id awaiting op23 from members, if any."""
        return self._transition.transition_id if self._transition is not None else None

    def leaves(self) -> dict[int, int]:
        """Connected members of the established group: user id -> leaf index."""
        return {m.user_id: m.leaf for m in self._members.values() if m.leaf is not None}

    # -- member events -------------------------------------------------------------------------------------------

    def member_joined(self, user_id: int) -> list[Outbound]:
        """A member finished op4: send it the external sender (op25) when DAVE is on."""
        out: list[Outbound] = []
        if user_id in self._members:
            out += self.member_left(user_id)
        self._members[user_id] = _Member(user_id)
        if self._version > 0:
            out.append(self._binary(user_id, OP_EXTERNAL_SENDER, self._external_sender))
            if self._transition is None:
                out += self._in_flight_for(user_id)
        return out

    def member_left(self, user_id: int) -> list[Outbound]:
        """A member disconnected: withdraw its in-flight proposals and remove it from the group."""
        member = self._members.pop(user_id, None)
        if member is None:
            return []
        out = self._withdraw(user_id)
        if member.leaf is not None:
            self._stale.add(member.leaf)
        return out + self._settle(user_id)

    def key_package(self, user_id: int, data: bytes) -> list[Outbound]:
        """op26: store the member's key package and propose adding it.

        Raises `MalformedMlsMessage` when the key package does not parse, uses another cipher suite, or names
        another user (the gateway should close that connection).
        """
        member = self._members.get(user_id)
        if member is None or self._version == 0:
            return []
        package = unwrap_key_package(data)
        info = parse_key_package(package)
        if info.user_id != user_id:
            raise MalformedMlsMessage("identity", f"key package names user {info.user_id}, sender is {user_id}")
        if info.cipher_suite != CIPHER_SUITE_P256:
            raise MalformedMlsMessage("cipher_suite", f"cipher suite {info.cipher_suite}")
        if member.leaf is not None and member.awaiting_key_package:
            # Sent when its session started, overtaken by its own commit of the proposals in flight: it created
            # the group from its local one.
            member.awaiting_key_package = False
            return []
        # A member in the group that sends another key package re-initialised its session (its leaf is stale); a
        # replacement key package withdraws a pending member's Add; a first one only makes it addable (the
        # proposals it was sent while pending stay valid: its local group is the same).
        out = self._reset_member(member) if member.key_package is not None or member.leaf is not None else []
        member.awaiting_key_package = False
        member.key_package = package
        return out + self._settle(user_id)

    def commit_welcome(self, user_id: int, data: bytes) -> list[Outbound]:
        """op28: the first valid commit for the round's epoch wins; announce it (op29) and welcome joiners (op30)."""
        round_ = self._round
        if round_ is None or user_id not in round_.sent:
            return []
        try:
            commit, welcome = split_commit_welcome(data)
            info = parse_commit(commit)
        except MalformedMlsMessage as exc:
            _log.debug("ignoring malformed commit from %d: %s", user_id, exc)
            return []
        problem = self._commit_problem(round_, user_id, info.group_id, info.epoch, info.sender_type, info.sender_index)
        refs = info.proposal_refs
        if not problem and (info.inline_proposals or len(set(refs)) != len(refs) or set(refs) != round_.sent[user_id]):
            problem = "proposals"
        if problem:
            _log.debug("ignoring commit from %d for epoch %d: wrong %s", user_id, info.epoch, problem)
            return []
        proposals = [round_.pool[ref] for ref in refs]
        adds = [p for p in proposals if p.add_user is not None]
        welcomes: dict[int, bytes] = {}
        for proposal in adds:
            assert proposal.add_user is not None and proposal.key_package is not None
            try:
                if welcome is None:
                    raise MalformedMlsMessage("welcome", "missing")
                welcomes[proposal.add_user] = targeted_welcome(welcome, proposal.key_package)
            except MalformedMlsMessage as exc:
                _log.debug("ignoring commit from %d: it adds %d but %s", user_id, proposal.add_user, exc)
                return []
        return self._accept(round_, user_id, commit, proposals, welcomes)

    def transition_ready(self, user_id: int, transition_id: int) -> list[Outbound]:
        """op23: once every participant is ready, execute the transition (op22)."""
        transition = self._transition
        if transition is None or transition.transition_id != transition_id:
            return []
        transition.waiting.discard(user_id)
        return [] if transition.waiting else self._finish_transition()

    def invalid_commit_welcome(self, user_id: int, transition_id: int) -> list[Outbound]:
        """op31: the member could not process a commit or welcome; remove it and wait for its fresh key package."""
        member = self._members.get(user_id)
        if member is None:
            return []
        _log.debug("member %d flagged transition %d invalid", user_id, transition_id)
        out = self._reset_member(member)
        return out + self._settle(user_id)

    def expire_transition(self, transition_id: int) -> list[Outbound]:
        """The gateway's transition timeout ran out: execute ``transition_id`` without the stragglers."""
        transition = self._transition
        if transition is None or transition.transition_id != transition_id:
            return []
        return self._finish_transition()

    # -- protocol version ----------------------------------------------------------------------------------------

    def downgrade(self) -> list[Outbound]:
        """Move the channel to transport-only encryption: op21 (version 0) to all, op22 once all are ready."""
        if self._version == 0:
            return []
        self._version = 0
        self._upgrade_pending = False
        self._downgrade_pending = True
        return self._cancel_round() + self._advance()

    def upgrade(self, protocol_version: int = 1) -> list[Outbound]:
        """Return to DAVE: op24 (epoch 1) to all, then the usual group creation and its op29/op30/op22 transition."""
        if self._version == protocol_version or protocol_version <= 0:
            return []
        self._version = protocol_version
        if self._downgrade_pending:
            self._downgrade_pending = False
        else:
            self._upgrade_pending = True
        return self._advance()

    # -- internals -----------------------------------------------------------------------------------------------

    def _commit_problem(
        self, round_: _Round, user_id: int, group_id: bytes, epoch: int, sender_type: int, sender_index: int
    ) -> str:
        """What makes a commit's framing unacceptable for this round ("" when nothing)."""
        expected_leaf = 0 if round_.creation else self._members[user_id].leaf
        if group_id != self._group_id:
            return "group"
        if epoch != round_.epoch:
            return "epoch"
        if sender_type != SENDER_MEMBER or sender_index != expected_leaf:
            return "sender"
        return ""

    def _binary(self, user_id: int, opcode: int, payload: bytes) -> Outbound:
        return Outbound(user_id, opcode, binary=bytes((opcode,)) + payload)

    def _json(self, user_id: int, opcode: int, data: dict[str, Any]) -> Outbound:
        return Outbound(user_id, opcode, json=data)

    def _new_transition_id(self) -> int:
        transition_id = self._next_transition_id
        self._next_transition_id = transition_id % _MAX_TRANSITION_ID + 1
        return transition_id

    def _add_proposal(self, member: _Member, epoch: int) -> _Proposal:
        assert member.key_package is not None
        message = build_add_proposal(self.channel_id, epoch, member.key_package, self._signer)
        return _Proposal(message, proposal_ref(message), add_user=member.user_id, key_package=member.key_package)

    def _remove_proposal(self, leaf: int, epoch: int) -> _Proposal:
        message = build_remove_proposal(self.channel_id, epoch, leaf, self._signer)
        return _Proposal(message, proposal_ref(message), remove_leaf=leaf)

    def _send_proposals(self, user_id: int, proposals: list[_Proposal]) -> Outbound:
        payload = build_proposals(PROPOSALS_APPEND, [p.message for p in proposals])
        return self._binary(user_id, OP_PROPOSALS, payload)

    def _reset_member(self, member: _Member) -> list[Outbound]:
        """The member's MLS state is gone (op31 or a fresh key package): back to pending, old leaf to remove."""
        out = self._withdraw(member.user_id)
        if member.leaf is not None:
            self._stale.add(member.leaf)
            member.leaf = None
        member.key_package = None
        member.awaiting_key_package = True
        return out

    def _withdraw(self, user_id: int) -> list[Outbound]:
        """Drop the user as a committer of the round; if the round adds it, revoke the whole round.

        Revoking only the user's Add would be enough for MLS, but davey re-commits the remaining proposals without
        a welcome after a revoke, so every recipient drops everything and `_advance` starts a fresh round.
        """
        round_ = self._round
        if round_ is None:
            return []
        round_.sent.pop(user_id, None)
        if not any(p.add_user == user_id for p in round_.pool.values()):
            if not round_.sent:
                self._round = None
            return []
        return self._cancel_round()

    def _cancel_round(self) -> list[Outbound]:
        """Revoke every in-flight proposal, so members drop their pending commits; commits still in flight go stale."""
        round_, self._round = self._round, None
        if round_ is None:
            return []
        return [
            self._binary(recipient, OP_PROPOSALS, build_proposals(PROPOSALS_REVOKE, sorted(refs)))
            for recipient, refs in round_.sent.items()
        ]

    def _settle(self, user_id: int) -> list[Outbound]:
        """The member no longer holds up the transition; then move the group along."""
        transition = self._transition
        if transition is not None:
            if user_id in transition.participants:
                transition.participants.remove(user_id)
            if user_id in transition.waiting:
                transition.waiting.discard(user_id)
                if not transition.waiting:
                    return self._finish_transition()
        return self._advance()

    def _finish_transition(self) -> list[Outbound]:
        transition = self._transition
        assert transition is not None
        self._transition = None
        data = {"transition_id": transition.transition_id}
        out = [self._json(uid, OP_EXECUTE_TRANSITION, data) for uid in transition.participants if uid in self._members]
        return out + self._advance()

    def _dissolve(self) -> None:
        self._epoch = 0
        self._leaves.clear()
        self._stale.clear()
        self._round = None
        for member in self._members.values():
            member.leaf = None
            member.awaiting_key_package = True

    def _advance(self) -> list[Outbound]:
        """Start whatever the group needs next, one transition at a time."""
        if self._transition is not None:
            return []
        if self._downgrade_pending:
            return self._start_downgrade()
        if self._upgrade_pending:
            return self._start_upgrade()
        if self._version == 0:
            return []
        if self._epoch == 0:
            return self._creation_step()
        if self._round is None:
            return self._established_step()
        return []

    def _start_downgrade(self) -> list[Outbound]:
        self._downgrade_pending = False
        self._dissolve()
        for member in self._members.values():
            member.key_package = None
        transition_id = self._new_transition_id()
        participants = list(self._members)
        self._transition = _Transition(transition_id, set(participants), participants)
        data = {"transition_id": transition_id, "protocol_version": 0}
        out = [self._json(uid, OP_PREPARE_TRANSITION, data) for uid in participants]
        return out + ([] if participants else self._finish_transition())

    def _start_upgrade(self) -> list[Outbound]:
        self._upgrade_pending = False
        self._dissolve()
        data = {"protocol_version": self._version, "epoch": 1}
        return [self._json(uid, OP_PREPARE_EPOCH, data) for uid in self._members]

    def _creation_step(self) -> list[Outbound]:
        """No established group: each key package's Add proposal goes to every other pending member at once.

        As the DAVE whitepaper's Initial Group Creation says: no waiting for a second key package, every member of
        the call (all are pending) is sent each Add as it comes, and a member is sent the in-flight proposals it
        has not had yet (see `member_joined`). The first valid commit establishes the group.
        """
        round_ = self._round
        pooled = {p.add_user for p in round_.pool.values()} if round_ is not None else set()
        fresh = [m for m in self._members.values() if m.key_package is not None and m.user_id not in pooled]
        if not fresh:
            return []
        if round_ is None:
            round_ = self._round = _Round(0, creation=True)
        out: list[Outbound] = []
        for member in fresh:
            proposal = self._add_proposal(member, 0)
            round_.pool[proposal.ref] = proposal
            for other in self._members.values():
                if other.user_id != member.user_id:
                    round_.sent.setdefault(other.user_id, set()).add(proposal.ref)
                    out.append(self._send_proposals(other.user_id, [proposal]))
        return out

    def _in_flight_for(self, user_id: int) -> list[Outbound]:
        """A member joining while the group is being created gets the Add proposals already sent to the others."""
        round_ = self._round
        if round_ is None or not round_.creation or self._epoch != 0:
            return []
        missing = [p for ref, p in round_.pool.items() if p.add_user != user_id]
        if not missing:
            return []
        round_.sent.setdefault(user_id, set()).update(p.ref for p in missing)
        return [self._send_proposals(user_id, missing)]

    def _established_step(self) -> list[Outbound]:
        committers = [m for m in self._members.values() if m.leaf is not None]
        adds = [m for m in self._members.values() if m.leaf is None and m.key_package is not None]
        removes = sorted(self._stale)
        if not committers:
            self._dissolve()
            return self._creation_step()
        if not adds and not removes:
            return []
        if len(committers) == 1 and not adds:
            return self._sole_member_reset(committers[0])
        round_ = self._round = _Round(self._epoch, creation=False)
        proposals = [self._remove_proposal(leaf, self._epoch) for leaf in removes]
        proposals += [self._add_proposal(member, self._epoch) for member in adds]
        round_.pool = {p.ref: p for p in proposals}
        out = []
        for member in committers:
            round_.sent[member.user_id] = set(round_.pool)
            out.append(self._send_proposals(member.user_id, proposals))
        return out

    def _sole_member_reset(self, member: _Member) -> list[Outbound]:
        """Nobody else is left: the last member drops the group and goes back to pending with a new key package."""
        self._dissolve()
        member.key_package = None
        return [
            self._json(member.user_id, OP_PREPARE_EPOCH, {"protocol_version": self._version, "epoch": 1}),
            self._json(member.user_id, OP_PREPARE_TRANSITION, {"transition_id": 0, "protocol_version": self._version}),
        ]

    def _accept(
        self,
        round_: _Round,
        committer: int,
        commit: bytes,
        proposals: list[_Proposal],
        welcomes: dict[int, bytes],
    ) -> list[Outbound]:
        """Make the commit the group's next epoch: assign leaves the way MLS does (removes, then leftmost blanks)."""
        if round_.creation:
            leaves = {0: committer}
            announce = [committer]
        else:
            leaves = dict(self._leaves)
            announce = [uid for uid in round_.sent if uid in self._members]
        for proposal in proposals:
            if proposal.remove_leaf is not None:
                leaves.pop(proposal.remove_leaf, None)
                self._stale.discard(proposal.remove_leaf)
        for proposal in proposals:
            if proposal.add_user is not None:
                leaf = next(i for i in range(len(leaves) + 1) if i not in leaves)
                leaves[leaf] = proposal.add_user
        self._leaves = leaves
        self._epoch = round_.epoch + 1
        self._round = None
        for leaf, uid in leaves.items():
            member = self._members.get(uid)
            if member is not None and leaf not in self._stale:
                member.leaf = leaf
                member.key_package = None
        transition_id = self._new_transition_id()
        header = struct.pack(">H", transition_id)
        out = [self._binary(uid, OP_ANNOUNCE_COMMIT, header + commit) for uid in announce]
        out += [self._binary(uid, OP_WELCOME, header + welcome) for uid, welcome in welcomes.items()]
        participants = announce + list(welcomes)
        self._transition = _Transition(transition_id, set(participants), participants)
        _log.debug("epoch %d via %d, transition %d, leaves %s", self._epoch, committer, transition_id, leaves)
        return out
