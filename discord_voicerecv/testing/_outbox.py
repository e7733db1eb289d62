"""The ordered outgoing queue both local gateways put in front of each websocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web

__all__ = ("Outbox", "decode_op")

_log = logging.getLogger(__name__)


class Outbox:
    """One websocket: frames queue in order and a writer task sends them, so callers dispatch synchronously.

    ``close(code)`` flushes what is queued first; after it, or after the peer went away, puts are dropped.
    """

    __slots__ = ("closed", "queue", "writer", "ws")

    def __init__(self, ws: web.WebSocketResponse, *, name: str) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str | bytes | int] = asyncio.Queue()
        self.writer = asyncio.get_running_loop().create_task(self._write(), name=name)
        self.closed = False

    def put(self, frame: str | bytes) -> None:
        if not self.closed:
            self.queue.put_nowait(frame)

    def close(self, code: int) -> None:
        """Flush what is queued, then close with ``code``."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(code)

    async def drain(self, code: int) -> None:
        """The peer's side ended: close with ``code`` after what is queued and wait (1 s at most) for the writer."""
        self.closed = True
        self.queue.put_nowait(code)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer, 1.0)

    async def _write(self) -> None:
        ws = self.ws
        try:
            while True:
                frame = await self.queue.get()
                if isinstance(frame, int):
                    await ws.close(code=frame)
                    return
                if isinstance(frame, str):
                    await ws.send_str(frame)
                else:
                    await ws.send_bytes(frame)
        except (ConnectionError, RuntimeError) as exc:
            _log.debug("%s stopped: %s", self.writer.get_name(), exc)
            self.closed = True


def decode_op(text: str) -> tuple[int, Any]:
    """``(op, d)`` of a JSON gateway message; ValueError, KeyError or TypeError when it is not one."""
    payload = json.loads(text)
    return int(payload["op"]), payload.get("d")
