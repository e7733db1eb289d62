"""Fixtures for end-to-end tests: a local Discord on loopback and real discord.py bots connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from discord_voicerecv.opus import ensure_discord_opus
from discord_voicerecv.testing import LocalDiscord, restore_discord, use_local_discord


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
async def local() -> AsyncIterator[LocalDiscord]:
    ensure_discord_opus()
    async with LocalDiscord() as server:
        use_local_discord(server.url)
        try:
            yield server
        finally:
            restore_discord()
