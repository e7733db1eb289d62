"""Griffe extension for the docs site: the reST bits of numpy docstrings become Markdown.

``:class:`~discord_voicerecv.WaveSink``` renders as a link when the target is on the API reference page, as
inline code otherwise (discord.py, the standard library, private helpers), so no role shows up as raw text; a
``::`` literal block becomes a highlighted Python code block.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj|const|ref):`(~?)([^`<]+?)(?:\s*<([^>]+)>)?`")
_API = Path(__file__).resolve().parents[1] / "api.md"


def _documented() -> set[str]:
    """Objects the API page renders: its ``:::`` entries (members are rendered with them)."""
    return set(re.findall(r"^:::\s+([\w.]+)\s*$", _API.read_text(encoding="utf-8"), re.M))


def _literal_blocks(text: str) -> str:
    """``Intro::`` followed by an indented block (reST) becomes ``Intro:`` and a fenced Python block."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        head = line.rstrip()[:-2].rstrip()
        if head:
            out.append(head + ":")
        base = len(line) - len(line.lstrip())
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        while block and not block[0].strip():
            block.pop(0)
        indent = min((len(b) - len(b.lstrip()) for b in block if b.strip()), default=0)
        out += ["", "```python", *(b[indent:] for b in block), "```", ""]
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite roles in every docstring once the package is loaded, so relative names can be resolved."""

    def __init__(self) -> None:
        super().__init__()
        self._documented = _documented()

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._package = pkg
        self._documented_as: dict[str, str] = {}
        """Where an object is defined -> the name the API page documents it under (a re-export, often)."""
        for path in self._documented:
            if path.startswith(pkg.path + "."):
                try:
                    self._documented_as[pkg[path[len(pkg.path) + 1 :]].canonical_path] = path
                except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                    continue
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Object | griffe.Alias, seen: set[str]) -> None:
        if obj.is_alias or obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None and ":" in obj.docstring.value:
            text = _literal_blocks(obj.docstring.value)
            obj.docstring.value = _ROLE.sub(lambda m: self._replace(obj, m), text)
        for member in list(obj.members.values()):
            self._visit(member, seen)

    def _replace(self, obj: griffe.Object | griffe.Alias, match: re.Match[str]) -> str:
        short, written, explicit = match.group(1), match.group(2).strip(), match.group(3)
        target = (explicit or written).strip().lstrip("~")
        label = (
            written.split(".")[-1]
            if short or (not explicit and "." in written and written.startswith("discord_voicerecv"))
            else written
        )
        if explicit:
            label = written
        full = self._resolve(obj, target)
        if full is not None:
            full = self._public_name(full)
        if full is not None and self._linkable(full):
            return f"[`{label}`][{full}]"
        return f"`{label}`"

    def _resolve(self, obj: griffe.Object | griffe.Alias, target: str) -> str | None:
        if target.startswith("discord_voicerecv."):
            return target
        scope: griffe.Object | griffe.Alias | None = obj
        while scope is not None:
            if target.split(".")[0] in scope.members:
                return f"{scope.path}.{target}"
            try:
                return scope.resolve(target)
            except (griffe.NameResolutionError, AttributeError, KeyError, ValueError):
                pass
            scope = scope.parent
        return None

    def _public_name(self, path: str) -> str:
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            documented = self._documented_as.get(".".join(parts[:cut]))
            if documented is not None:
                return ".".join([documented, *parts[cut:]])
        return path

    def _linkable(self, path: str) -> bool:
        """On the API page: an entry, or a public member of one that has a docstring (mkdocstrings shows those)."""
        if path in self._documented:
            return True
        parent, _, name = path.rpartition(".")
        if parent not in self._documented or name.startswith("_"):
            return False
        package = self._package
        try:
            member = package[path[len(package.path) + 1 :]]
            return bool(member.docstring and member.docstring.value.strip())
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return False
