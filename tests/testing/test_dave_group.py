"""The local voice gateway's DAVE coordinator driving real davey sessions, and discord.py's own DAVE code."""

from __future__ import annotations

import asyncio
import json
import struct
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import davey
import pytest
from discord.gateway import DiscordVoiceWebSocket
from discord.voice_state import VoiceConnectionState

from discord_voicerecv.errors import MalformedMlsMessage
from discord_voicerecv.testing import mls
from discord_voicerecv.testing.dave_group import (
    OP_ANNOUNCE_COMMIT,
    OP_EXECUTE_TRANSITION,
    OP_EXTERNAL_SENDER,
    OP_PREPARE_EPOCH,
    OP_PREPARE_TRANSITION,
    OP_PROPOSALS,
    OP_WELCOME,
    DaveGroupCoordinator,
    Outbound,
)

CHANNEL = 987_654_321_000_111
AUDIO = davey.MediaType.audio
_ServerEvent = tuple[int, int, Any]
"""(user id, client opcode, payload) for the coordinator."""


class SimClient:
    """A simulated member that reacts to DAVE opcodes the way discord.py 2.7.1 does (gateway.py / voice_state.py)."""

    def __init__(self, user_id: int, send: Callable[[_ServerEvent], None]) -> None:
        self.user_id = user_id
        self.send = send
        self.session: davey.DaveSession | None = None
        self.version = 0
        self.pending: dict[int, int] = {}
        self.downgraded = False
        self.tamper_welcome = False

    def select_protocol_ack(self, version: int) -> None:
        self.version = version
        if version > 0:
            self._reinit()

    def _reinit(self) -> None:
        if self.version > 0:
            if self.session is not None:
                self.session.reinit(self.version, self.user_id, CHANNEL)
            else:
                self.session = davey.DaveSession(self.version, self.user_id, CHANNEL)
            self.send((self.user_id, 26, self.session.get_serialized_key_package()))
        elif self.session is not None:
            self.session.reset()
            self.session.set_passthrough_mode(True, 10)

    def deliver(self, out: Outbound, seq: int) -> None:
        frame = out.wire(seq)
        if isinstance(frame, str):
            self._on_json(json.loads(frame))
        else:
            self._on_binary(frame)

    def _execute(self, transition_id: int) -> None:
        if transition_id not in self.pending:
            return
        old = self.version
        self.version = self.pending.pop(transition_id)
        if old != self.version and self.version == 0:
            self.downgraded = True
        elif transition_id > 0 and self.downgraded:
            self.downgraded = False
            assert self.session is not None
            self.session.set_passthrough_mode(True, 10)

    def _recover(self, transition_id: int) -> None:
        self.send((self.user_id, 31, transition_id))
        self._reinit()

    def _on_json(self, msg: dict[str, Any]) -> None:
        op, data = msg["op"], msg["d"]
        if self.session is None:
            return
        if op == 21:
            self.pending[data["transition_id"]] = data["protocol_version"]
            if data["transition_id"] == 0:
                self._execute(0)
            else:
                if data["protocol_version"] == 0:
                    self.session.set_passthrough_mode(True, 120)
                self.send((self.user_id, 23, data["transition_id"]))
        elif op == 22:
            self._execute(data["transition_id"])
        elif op == 24 and data["epoch"] == 1:
            self.version = data["protocol_version"]
            self._reinit()

    def _on_binary(self, msg: bytes) -> None:
        op = msg[2]
        session = self.session
        if session is None:
            return
        if op == 25:
            session.set_external_sender(msg[3:])
        elif op == 27:
            kind = davey.ProposalsOperationType.append if msg[3] == 0 else davey.ProposalsOperationType.revoke
            result = session.process_proposals(kind, msg[4:])
            if isinstance(result, davey.CommitWelcome):
                self.send((self.user_id, 28, result.commit + result.welcome if result.welcome else result.commit))
        elif op in (29, 30):
            transition_id = struct.unpack_from(">H", msg, 3)[0]
            try:
                if op == 29:
                    session.process_commit(msg[5:])
                else:
                    session.process_welcome(msg[5:-1] if self.tamper_welcome else msg[5:])
                if transition_id != 0:
                    self.pending[transition_id] = self.version
                    self.send((self.user_id, 23, transition_id))
            except Exception:
                self.tamper_welcome = False
                self._recover(transition_id)


class Hub:
    """Delivers gateway and client messages in one FIFO, like sockets with no reordering, and logs the opcodes."""

    def __init__(self, coordinator: DaveGroupCoordinator | None = None) -> None:
        self.coordinator = coordinator or DaveGroupCoordinator(CHANNEL)
        self.clients: dict[int, SimClient] = {}
        self.events: deque[tuple[str, Any]] = deque()
        self.log: list[tuple[str, int, int]] = []
        self.ignored_commits = 0
        self.seq = 0

    def _to_server(self, event: _ServerEvent) -> None:
        self.events.append(("server", event))

    def _dispatch(self, outs: list[Outbound]) -> None:
        for out in outs:
            self.events.append(("client", out))

    def join(self, user_id: int) -> SimClient:
        client = self.clients[user_id] = SimClient(user_id, self._to_server)
        client.select_protocol_ack(self.coordinator.protocol_version)
        self._dispatch(self.coordinator.member_joined(user_id))
        return client

    def leave(self, user_id: int) -> None:
        del self.clients[user_id]
        self._dispatch(self.coordinator.member_left(user_id))

    def act(self, outs: list[Outbound]) -> None:
        self._dispatch(outs)

    def run(self, limit: int = 500) -> None:
        for _ in range(limit):
            if not self.events:
                return
            kind, item = self.events.popleft()
            if kind == "client":
                self.log.append(("->", item.user_id, item.opcode))
                client = self.clients.get(item.user_id)
                if client is not None:
                    self.seq += 1
                    client.deliver(item, self.seq)
            else:
                self._dispatch(self._serve(item))
        raise AssertionError("the group never settled")

    def _serve(self, event: _ServerEvent) -> list[Outbound]:
        user_id, op, payload = event
        self.log.append(("<-", user_id, op))
        if user_id not in self.clients:
            return []
        coordinator = self.coordinator
        if op == 26:
            return coordinator.key_package(user_id, payload)
        if op == 28:
            outs = coordinator.commit_welcome(user_id, payload)
            self.ignored_commits += not outs
            return outs
        if op == 23:
            return coordinator.transition_ready(user_id, payload)
        assert op == 31
        return coordinator.invalid_commit_welcome(user_id, payload)

    def sessions(self) -> list[davey.DaveSession]:
        return [c.session for c in self.clients.values() if c.session is not None]

    def opcodes(self) -> list[tuple[str, int, int]]:
        """The log since the last call."""
        log, self.log = self.log, []
        return log


def _assert_one_group(hub: Hub) -> None:
    """Every member is ready in the same epoch with the same privacy code, and everyone decrypts everyone."""
    clients = list(hub.clients.values())
    sessions = [c.session for c in clients]
    assert all(s is not None and s.ready for s in sessions)
    assert len({s.epoch for s in sessions if s}) == 1
    assert sessions[0] is not None and sessions[0].epoch == hub.coordinator.epoch
    assert len({s.voice_privacy_code for s in sessions if s}) == 1
    assert hub.coordinator.leaves() == {c.user_id: c.session.own_leaf_index for c in clients if c.session}
    for sender in clients:
        assert sender.session is not None
        payload = f"frame from {sender.user_id} at epoch {sender.session.epoch}".encode()
        frame = sender.session.encrypt_opus(payload)
        assert frame != payload and frame.endswith(b"\xfa\xfa")
        for receiver in clients:
            if receiver is not sender:
                assert receiver.session is not None
                assert receiver.session.decrypt(sender.user_id, AUDIO, frame) == payload


def _run_holding_commits(hub: Hub, opcode: int = 28) -> list[_ServerEvent]:
    """Run the hub to quiescence but keep every ``opcode`` message away from the gateway; return them in order."""
    held: list[_ServerEvent] = []
    while hub.events:
        kind, item = hub.events.popleft()
        if kind == "client":
            hub.clients[item.user_id].deliver(item, 0)
        elif item[1] == opcode:
            held.append(item)
        else:
            hub._dispatch(hub._serve(item))
    return held


def test_first_member_alone_stays_pending() -> None:
    hub = Hub()
    a = hub.join(1)
    hub.run()
    assert hub.opcodes() == [("<-", 1, 26), ("->", 1, OP_EXTERNAL_SENDER)]
    assert a.session is not None and not a.session.ready
    assert a.session.status == davey.SessionStatus.pending
    assert hub.coordinator.epoch == 0


def test_second_member_creates_the_group() -> None:
    hub = Hub()
    hub.join(1)
    hub.run()
    hub.opcodes()
    hub.join(2)
    hub.run()
    log = hub.opcodes()
    # 2 gets the Add for 1 in flight as it joins, then 1 gets the Add for 2 once 2's key package is in
    assert log[:4] == [("<-", 2, 26), ("->", 2, 25), ("->", 2, 27), ("->", 1, 27)]
    assert ("->", 2, OP_ANNOUNCE_COMMIT) in log and ("->", 1, OP_WELCOME) in log
    assert sorted(entry for entry in log if entry[2] == OP_EXECUTE_TRANSITION) == [("->", 1, 22), ("->", 2, 22)]
    assert hub.ignored_commits == 1  # both pending members committed; the second commit for epoch 0 lost
    assert hub.coordinator.epoch == 1
    _assert_one_group(hub)


def test_a_key_package_is_proposed_to_every_other_member_at_once() -> None:
    # DAVE whitepaper, Initial Group Creation: no waiting for a second key package; a pending member with a local
    # group may commit the Adds it was sent and so create the group.
    coordinator = DaveGroupCoordinator(CHANNEL)
    one = davey.DaveSession(1, 1, CHANNEL)
    coordinator.member_joined(1)
    coordinator.member_joined(2)
    outs = coordinator.key_package(1, one.get_serialized_key_package())
    assert [(o.user_id, o.opcode) for o in outs] == [(2, OP_PROPOSALS)]
    coordinator.member_joined(3)  # a joiner gets the proposals already in flight, with the external sender
    assert [(o.user_id, o.opcode) for o in coordinator.member_joined(4)] == [(4, 25), (4, OP_PROPOSALS)]


def test_a_joiner_may_create_the_group_before_its_key_package_arrives() -> None:
    coordinator = DaveGroupCoordinator(CHANNEL)
    one, two = davey.DaveSession(1, 1, CHANNEL), davey.DaveSession(1, 2, CHANNEL)
    for out in coordinator.member_joined(1):
        one.set_external_sender(out.binary[1:])  # type: ignore[index]
    coordinator.key_package(1, one.get_serialized_key_package())
    late_key_package = two.get_serialized_key_package()  # sent on op4, still on its way
    external_sender, proposals = coordinator.member_joined(2)
    two.set_external_sender(external_sender.binary[1:])  # type: ignore[index]
    result = two.process_proposals(davey.ProposalsOperationType.append, proposals.binary[2:])  # type: ignore[index]
    assert result is not None
    outs = coordinator.commit_welcome(2, bytes(result.commit) + bytes(result.welcome or b""))
    assert {(o.user_id, o.opcode) for o in outs} == {(2, OP_ANNOUNCE_COMMIT), (1, OP_WELCOME)}
    assert coordinator.leaves() == {2: 0, 1: 1}
    assert coordinator.key_package(2, late_key_package) == []  # not a reset: 2 is in the group it created
    assert coordinator.leaves() == {2: 0, 1: 1}


def test_late_joiners_and_leavers_move_the_epoch_and_keep_decrypting() -> None:
    hub = Hub()
    for uid in (1, 2, 3, 4):
        hub.join(uid)
        hub.run()
    _assert_one_group(hub)
    assert hub.coordinator.epoch == 3
    assert hub.coordinator.leaves() == {2: 0, 1: 1, 3: 2, 4: 3}  # 2 committed first: it had 1's Add on joining

    gone = hub.clients[2].session
    hub.opcodes()
    hub.leave(2)
    hub.run()
    log = hub.opcodes()
    assert {e for e in log if e[2] == OP_PROPOSALS} == {("->", 1, 27), ("->", 3, 27), ("->", 4, 27)}
    assert hub.coordinator.epoch == 4
    _assert_one_group(hub)
    assert gone is not None
    frame = hub.clients[1].session.encrypt_opus(b"secret after leaving")  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        gone.decrypt(1, AUDIO, frame)

    hub.join(5)
    hub.run()
    assert hub.coordinator.leaves()[5] == 0  # the leftmost blank leaf (2's) is reused
    _assert_one_group(hub)


def test_second_leaver_waits_for_the_first_removal_to_finish() -> None:
    hub = Hub()
    for uid in (1, 2, 3, 4):
        hub.join(uid)
        hub.run()
    hub.leave(3)
    hub.leave(4)
    hub.run()
    assert hub.coordinator.epoch == 5  # one proposal round at a time: remove 3, then remove 4
    assert hub.coordinator.leaves() == {2: 0, 1: 1}
    _assert_one_group(hub)


def test_sole_member_reset_and_regroup() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    hub.run()
    hub.opcodes()
    hub.leave(2)
    hub.run()
    assert hub.opcodes() == [("->", 1, OP_PREPARE_EPOCH), ("->", 1, OP_PREPARE_TRANSITION), ("<-", 1, 26)]
    a = hub.clients[1].session
    assert a is not None and not a.ready and a.status == davey.SessionStatus.pending
    assert hub.coordinator.epoch == 0
    hub.join(3)
    hub.run()
    assert hub.coordinator.epoch == 1
    _assert_one_group(hub)


def test_invalid_welcome_is_recovered_by_remove_and_readd() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    hub.run()
    hub.join(3).tamper_welcome = True
    hub.run()
    log = hub.opcodes()
    assert ("<-", 3, 31) in log
    assert hub.coordinator.epoch == 4  # add 3, then remove the stale leaf, then add the fresh key package
    _assert_one_group(hub)


def test_member_leaving_with_its_add_in_flight_is_revoked() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    hub.run()
    coordinator = hub.coordinator
    hub.join(3)
    held = _run_holding_commits(hub)  # the gateway broadcast the Add for 3 and both members committed
    assert len(held) == 2
    revokes = coordinator.member_left(3)
    del hub.clients[3]
    assert [(o.user_id, o.opcode, o.binary[1] if o.binary else None) for o in revokes] == [
        (1, OP_PROPOSALS, mls.PROPOSALS_REVOKE),
        (2, OP_PROPOSALS, mls.PROPOSALS_REVOKE),
    ]
    for _user, _op, commit in held:
        assert coordinator.commit_welcome(_user, commit) == []  # stale: references the revoked Add
    hub.act(revokes)
    hub.run()
    assert all(s.status == davey.SessionStatus.active for s in hub.sessions())
    assert coordinator.epoch == 1 and coordinator.pending_transition is None
    _assert_one_group(hub)


def _step(hub: Hub, count: int) -> None:
    for _ in range(count):
        kind, item = hub.events.popleft()
        if kind == "client":
            hub.log.append(("->", item.user_id, item.opcode))
            hub.clients[item.user_id].deliver(item, 0)
        else:
            hub._dispatch(hub._serve(item))


def test_newcomer_during_group_creation_gets_the_in_flight_proposals() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    _step(hub, 3)  # 1's key package, 1's op25, 2's key package: the creation proposals are on their way
    hub.opcodes()
    hub.join(3)
    hub.run()
    log = hub.opcodes()
    assert log.count(("->", 1, OP_PROPOSALS)) == 2  # add(2), then add(3) appended mid-round
    assert log.count(("->", 3, OP_PROPOSALS)) == 1  # the in-flight add(1) and add(2)
    assert hub.ignored_commits >= 2  # the commits made before add(3) arrived no longer reference everything
    _assert_one_group(hub)
    assert set(hub.coordinator.leaves()) == {1, 2, 3}
    assert hub.coordinator.epoch == 1


def test_pending_member_leaving_during_creation_is_revoked() -> None:
    hub = Hub()
    for uid in (1, 2, 3):
        hub.join(uid)
    held = _run_holding_commits(hub)
    assert {event[0] for event in held} == {1, 2, 3}
    hub.opcodes()
    hub.leave(3)
    for event in held:
        if event[0] != 3:
            assert hub.coordinator.commit_welcome(event[0], event[2]) == []
    hub.run()
    log = hub.opcodes()
    assert sorted(log[:2]) == [("->", 1, OP_PROPOSALS), ("->", 2, OP_PROPOSALS)]
    _assert_one_group(hub)
    assert hub.coordinator.leaves() == {1: 0, 2: 1} or hub.coordinator.leaves() == {2: 0, 1: 1}


def test_joiners_arriving_together_are_added_one_round_after_another() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    hub.run()
    hub.join(3)
    hub.join(4)
    hub.run()
    assert hub.coordinator.epoch == 3
    _assert_one_group(hub)


def test_downgrade_then_upgrade() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    hub.run()
    hub.opcodes()
    hub.act(hub.coordinator.downgrade())
    hub.run()
    assert hub.opcodes() == [
        ("->", 1, OP_PREPARE_TRANSITION),
        ("->", 2, OP_PREPARE_TRANSITION),
        ("<-", 1, 23),
        ("<-", 2, 23),
        ("->", 1, OP_EXECUTE_TRANSITION),
        ("->", 2, OP_EXECUTE_TRANSITION),
    ]
    assert hub.coordinator.protocol_version == 0
    assert all(c.version == 0 and c.downgraded for c in hub.clients.values())
    a, b = (c.session for c in hub.clients.values())
    assert a is not None and b is not None
    assert b.decrypt(1, AUDIO, b"plain opus") == b"plain opus"  # passthrough while downgraded

    hub.act(hub.coordinator.upgrade())
    hub.run()
    log = hub.opcodes()
    assert log[:4] == [("->", 1, 24), ("->", 2, 24), ("<-", 1, 26), ("<-", 2, 26)]
    assert sorted(log[-2:]) == [("->", 1, OP_EXECUTE_TRANSITION), ("->", 2, OP_EXECUTE_TRANSITION)]
    assert hub.coordinator.protocol_version == 1
    assert all(c.version == 1 and not c.downgraded for c in hub.clients.values())
    _assert_one_group(hub)


def test_downgrade_during_a_round_revokes_it() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    hub.run()
    hub.join(3)
    held = _run_holding_commits(hub)
    outs = hub.coordinator.downgrade()
    assert [(o.user_id, o.opcode) for o in outs] == [(1, 27), (2, 27), (1, 21), (2, 21), (3, 21)]
    assert all(o.binary is not None and o.binary[1] == mls.PROPOSALS_REVOKE for o in outs[:2])
    assert all(hub.coordinator.commit_welcome(user, commit) == [] for user, _, commit in held)
    hub.act(outs)
    hub.run()
    assert hub.coordinator.protocol_version == 0 and hub.coordinator.pending_transition is None
    assert all(c.version == 0 for c in hub.clients.values())


def test_upgrade_while_the_downgrade_waits_cancels_it() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    hub.run()
    hub.join(3)
    readies = _run_holding_commits(hub, opcode=23)
    coordinator = hub.coordinator
    assert coordinator.pending_transition is not None and len(readies) == 3
    assert coordinator.downgrade() == []  # waits for the commit transition
    assert coordinator.protocol_version == 0
    assert coordinator.upgrade() == []
    for user, _, transition_id in readies:
        hub.act(coordinator.transition_ready(user, transition_id))
    hub.opcodes()
    hub.run()
    assert {op for _, _, op in hub.opcodes()} == {OP_EXECUTE_TRANSITION}
    assert coordinator.protocol_version == 1 and coordinator.epoch == 2
    _assert_one_group(hub)


def test_upgrade_before_the_downgrade_started_cancels_it() -> None:
    coordinator = DaveGroupCoordinator(CHANNEL)
    assert coordinator.upgrade() == []
    assert coordinator.downgrade() == []  # no members: the transition completes at once
    assert coordinator.protocol_version == 0
    assert coordinator.downgrade() == []


def test_transition_waits_for_everyone_or_expires() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    # Run without delivering any op23 to the gateway.
    for _ in range(200):
        if not hub.events:
            break
        kind, item = hub.events.popleft()
        if kind == "client":
            hub.clients[item.user_id].deliver(item, 0)
        elif item[1] != 23:
            hub._dispatch(hub._serve(item))
    coordinator = hub.coordinator
    transition_id = coordinator.pending_transition
    assert transition_id is not None and transition_id > 0
    assert coordinator.transition_ready(1, transition_id + 1) == []
    assert coordinator.transition_ready(1, transition_id) == []
    assert coordinator.expire_transition(transition_id + 1) == []
    outs = coordinator.expire_transition(transition_id)
    assert sorted((o.user_id, o.opcode, o.json == {"transition_id": transition_id}) for o in outs) == [
        (1, OP_EXECUTE_TRANSITION, True),
        (2, OP_EXECUTE_TRANSITION, True),
    ]
    assert coordinator.pending_transition is None


def test_commits_that_do_not_fit_are_ignored() -> None:
    hub = Hub()
    hub.join(1)
    hub.join(2)
    hub.run()
    coordinator = hub.coordinator
    hub.join(3)
    held = _run_holding_commits(hub)
    assert len(held) == 2
    user, _, commit = held[0]
    assert coordinator.commit_welcome(user, commit[:-3]) == []  # truncated welcome
    assert coordinator.commit_welcome(3, commit) == []  # not a committer this round
    assert coordinator.commit_welcome(user, b"\x00\x01") == []  # malformed
    other = held[1]
    assert coordinator.commit_welcome(user, other[2]) == []  # someone else's commit (wrong sender leaf)
    winner = coordinator.commit_welcome(user, commit)
    assert [(o.user_id, o.opcode) for o in winner] == [(1, 29), (2, 29), (3, 30)]
    assert coordinator.commit_welcome(other[0], other[2]) == []  # later commit for the same epoch
    transition_ids = {struct.unpack_from(">H", o.binary, 1)[0] for o in winner if o.binary}
    assert transition_ids == {coordinator.pending_transition}


def test_key_package_for_someone_else_is_refused() -> None:
    coordinator = DaveGroupCoordinator(CHANNEL)
    coordinator.member_joined(1)
    package = davey.DaveSession(1, 2, CHANNEL).get_serialized_key_package()
    with pytest.raises(MalformedMlsMessage, match="identity"):
        coordinator.key_package(1, package)
    with pytest.raises(MalformedMlsMessage):
        coordinator.key_package(1, package[:20])
    assert coordinator.key_package(99, package) == []  # unknown member


def test_outbound_wire_framing() -> None:
    binary = Outbound(1, 29, binary=b"\x1d\x00\x07commit")
    assert binary.wire(0x1234) == b"\x12\x34\x1d\x00\x07commit"
    text = Outbound(1, 22, json={"transition_id": 7})
    assert json.loads(text.wire(9)) == {"op": 22, "d": {"transition_id": 7}, "seq": 9}


def test_version_zero_channel_sends_no_dave() -> None:
    coordinator = DaveGroupCoordinator(CHANNEL, protocol_version=0)
    assert coordinator.member_joined(1) == []
    assert coordinator.key_package(1, b"anything") == []
    assert coordinator.external_sender.startswith(b"\x40\x41\x04")


# -- discord.py's own DAVE handling ----------------------------------------------------------------------------------


class _FakeAiohttpSocket:
    """Stands in for aiohttp's websocket: records what discord.py sends."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    async def send_str(self, data: str) -> None:
        self.sent.append(data)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(bytes(data))


class DpyClient:
    """A real discord.py VoiceConnectionState + DiscordVoiceWebSocket pair, minus the network."""

    def __init__(self, user_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.user_id = user_id
        self.socket = _FakeAiohttpSocket()
        voice_client = SimpleNamespace(user=SimpleNamespace(id=user_id), channel=SimpleNamespace(id=CHANNEL), ws=None)
        self.state = VoiceConnectionState(voice_client)  # type: ignore[arg-type]
        self.state.ssrc = user_id
        self.ws = DiscordVoiceWebSocket(self.socket, loop)  # type: ignore[arg-type]
        self.ws._connection = self.state
        voice_client.ws = self.ws

    async def deliver(self, out: Outbound, seq: int) -> None:
        frame = out.wire(seq)
        if isinstance(frame, str):
            await self.ws.received_message(json.loads(frame))
        else:
            await self.ws.received_binary_message(frame)

    def drain(self) -> list[_ServerEvent]:
        events: list[_ServerEvent] = []
        for item in self.socket.sent:
            if isinstance(item, bytes):
                events.append((self.user_id, item[0], item[1:]))
            else:
                msg = json.loads(item)
                if msg["op"] in (23, 31):
                    events.append((self.user_id, msg["op"], msg["d"]["transition_id"]))
        self.socket.sent.clear()
        return events


async def test_discord_py_clients_and_a_simulated_speaker_share_one_group() -> None:
    loop = asyncio.get_running_loop()
    hub = Hub()
    dpy: dict[int, DpyClient] = {}
    simulated: dict[int, SimClient] = hub.clients
    queue: deque[tuple[str, Any]] = hub.events

    async def settle() -> None:
        for _ in range(500):
            for client in dpy.values():
                for event in client.drain():
                    queue.append(("server", event))
            if not queue:
                return
            kind, item = queue.popleft()
            if kind == "server":
                hub.log.append(("<-", item[0], item[1]))
                user_id, op, payload = item
                c = hub.coordinator
                outs = (
                    c.key_package(user_id, payload) if op == 26
                    else c.commit_welcome(user_id, payload) if op == 28
                    else c.transition_ready(user_id, payload) if op == 23
                    else c.invalid_commit_welcome(user_id, payload)
                )  # fmt: skip
                queue.extend(("client", o) for o in outs)
            else:
                hub.log.append(("->", item.user_id, item.opcode))
                hub.seq += 1
                if item.user_id in dpy:
                    await dpy[item.user_id].deliver(item, hub.seq)
                elif item.user_id in simulated:
                    simulated[item.user_id].deliver(item, hub.seq)
        raise AssertionError("never settled")

    async def join_dpy(user_id: int) -> DpyClient:
        client = dpy[user_id] = DpyClient(user_id, loop)
        op4 = {"mode": "aead_xchacha20_poly1305_rtpsize", "secret_key": [0] * 32, "dave_protocol_version": 1}
        await client.ws.received_message({"op": 4, "d": op4})
        queue.extend(("client", o) for o in hub.coordinator.member_joined(user_id))
        await settle()
        return client

    bot = await join_dpy(10)
    assert bot.state.dave_session is not None and not bot.state.can_encrypt
    await join_dpy(20)
    hub.join(30)  # a simulated speaker
    await settle()

    sessions = {10: dpy[10].state.dave_session, 20: dpy[20].state.dave_session, 30: simulated[30].session}
    assert all(s is not None and s.ready for s in sessions.values())
    assert len({s.voice_privacy_code for s in sessions.values() if s}) == 1
    assert dpy[10].state.can_encrypt and dpy[20].state.can_encrypt
    assert not dpy[10].state.dave_pending_transitions and dpy[10].ws.seq_ack > 0
    for sender_id, sender in sessions.items():
        assert sender is not None
        frame = sender.encrypt_opus(b"hello from %d" % sender_id)
        for receiver_id, receiver in sessions.items():
            if receiver_id != sender_id:
                assert receiver is not None
                assert receiver.decrypt(sender_id, AUDIO, frame) == b"hello from %d" % sender_id

    # The speaker leaves, then discord.py goes through a downgrade and an upgrade.
    del simulated[30]
    queue.extend(("client", o) for o in hub.coordinator.member_left(30))
    await settle()
    queue.extend(("client", o) for o in hub.coordinator.downgrade())
    await settle()
    assert dpy[10].state.dave_protocol_version == 0 and dpy[10].state.dave_downgraded
    queue.extend(("client", o) for o in hub.coordinator.upgrade())
    await settle()
    bot_session, other = dpy[10].state.dave_session, dpy[20].state.dave_session
    assert bot_session is not None and other is not None
    assert dpy[10].state.can_encrypt and not dpy[10].state.dave_downgraded
    assert bot_session.voice_privacy_code == other.voice_privacy_code
    assert other.decrypt(10, AUDIO, bot_session.encrypt_opus(b"after upgrade")) == b"after upgrade"
