"""An in-process DAVE group: real davey sessions joined through the local voice gateway's MLS coordinator.

The benchmark needs the DAVE layer to cost what it costs in a call, so senders encrypt with their own davey
session and every decrypting run gets a receiving member of the same group. davey refuses a nonce it has already
processed (replay protection), so each pass over the same frames needs a receiver session of its own: the group is
formed once with every receiver needed, before any frame is encrypted.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import davey

from discord_voicerecv.testing.dave_group import DaveGroupCoordinator, Outbound
from discord_voicerecv.testing.speakers import DaveClient

__all__ = ("DaveGroup",)

_CHANNEL = 424_242_424_242_424_242


class DaveGroup:
    """Members ``user_ids`` in one established DAVE group, every message delivered in order in this thread.

    Parameters
    ----------
    user_ids:
        Every member: senders and receivers alike (a session both encrypts and decrypts).
    """

    def __init__(self, user_ids: list[int]) -> None:
        self.coordinator = DaveGroupCoordinator(_CHANNEL)
        self.clients: dict[int, DaveClient] = {}
        self._queue: deque[Any] = deque()
        # The first two members create the group; everyone else joins in one later commit. A member keeps a
        # cryptor per epoch it lived through and decrypts slower the more it has, so few epochs keep every
        # receiving member equally fast (one join per epoch would make a run's cost depend on its member).
        for batch in (user_ids[:2], user_ids[2:]):
            for user_id in batch:
                self._join(user_id)
            self._drain()
        leaves = self.coordinator.leaves()
        missing = [uid for uid in user_ids if uid not in leaves]
        if missing or self.coordinator.pending_transition is not None:
            raise RuntimeError(f"DAVE group did not settle: missing {missing}")
        for client in self.clients.values():
            if client.session is None or not client.session.ready:
                raise RuntimeError(f"DAVE session of {client.user_id} is not ready")

    def _join(self, user_id: int) -> None:
        client = DaveClient(user_id, _CHANNEL)
        client.send_binary = lambda op, payload: self._queue.append(("bin", user_id, op, payload))
        client.send_json = lambda op, data: self._queue.append(("json", user_id, op, data))
        self.clients[user_id] = client
        client.start(self.coordinator.protocol_version, send_key_package=False)
        self._route(self.coordinator.member_joined(user_id))
        client.send_key_package()

    @property
    def epoch(self) -> int:
        return self.coordinator.epoch

    def session(self, user_id: int) -> davey.DaveSession:
        """The davey session of member ``user_id``."""
        session = self.clients[user_id].session
        assert session is not None
        return session

    def _route(self, messages: list[Outbound]) -> None:
        self._queue.extend(("out", m) for m in messages)

    def _drain(self) -> None:
        coordinator = self.coordinator
        for _ in range(100_000):
            if not self._queue:
                return
            item = self._queue.popleft()
            if item[0] == "out":
                message: Outbound = item[1]
                client = self.clients[message.user_id]
                if message.binary is not None:
                    client.handle_binary(message.binary[0], message.binary[1:])
                else:
                    client.handle_json(message.opcode, message.json)
            elif item[0] == "bin":
                _, uid, op, payload = item
                if op == 26:
                    self._route(coordinator.key_package(uid, payload))
                elif op == 28:
                    self._route(coordinator.commit_welcome(uid, payload))
            else:
                _, uid, op, data = item
                if op == 23:
                    self._route(coordinator.transition_ready(uid, int(data["transition_id"])))
                elif op == 31:
                    self._route(coordinator.invalid_commit_welcome(uid, int(data["transition_id"])))
        raise RuntimeError("DAVE group messages never settled")
