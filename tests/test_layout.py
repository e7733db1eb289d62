"""Each protocol constant is defined once: no module assigns the 20 ms slot or the IP-discovery size by value."""

from __future__ import annotations

import ast
from pathlib import Path

import discord_voicerecv

PACKAGE = Path(discord_voicerecv.__file__).parent
OWNERS = {
    0.02: "frames.py",
    960: "frames.py",
    3840: "frames.py",
    74: "protocol/ipdiscovery.py",
    70: "protocol/ipdiscovery.py",
}
"""Literal values that must only be spelled out by the module that owns them (which here derives them)."""


def _literal_assignments(path: Path) -> list[tuple[int, float]]:
    found: list[tuple[int, float]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or not isinstance(node.value, ast.Constant):
            continue
        literal = node.value.value
        if isinstance(literal, (int, float)) and not isinstance(literal, bool) and literal in OWNERS:
            found.append((node.lineno, literal))
    return found


def test_slot_and_ip_discovery_constants_have_one_definition() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        found = _literal_assignments(path)
        offenders += [f"{name}:{line} = {value!r}" for line, value in found if OWNERS[value] != name]
    assert offenders == []


def test_the_checker_sees_a_redefinition(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("_SLOT_SECONDS = 0.02\nclass A:\n    def f(self):\n        self.samples = 960\n")
    assert _literal_assignments(module) == [(1, 0.02), (4, 960)]


def test_the_receive_path_and_the_protocol_never_import_discord() -> None:
    """Only the client and its glue talk to discord.py; the pure and receive parts run without it."""
    offenders = []
    for folder in ("protocol", "receive"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                offenders += [
                    f"{folder}/{path.name}:{node.lineno}" for name in names if name.split(".")[0] == "discord"
                ]
    assert offenders == []
