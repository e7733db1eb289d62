"""The documentation: its Python snippets compile, its links and anchors resolve, every page is in the nav, and
every API reference entry names a real object. ``tests/e2e/test_doc_samples.py`` runs every snippet against the
local Discord; ``make docs`` builds the site itself with ``--strict``."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
SNIPPET = re.compile(r'^--8<--\s+"([^"]+)"\s*$')
API_ENTRY = re.compile(r"^:::\s+([\w.]+)\s*$", re.M)
NAV_ENTRY = re.compile(r"^\s*-\s+[^:\n]+:\s+(\S+\.md)\s*$", re.M)


def _python_blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) not in ("python", "py"):
            continue
        code = match.group(2)
        include = SNIPPET.match(code.strip())
        if include:
            code = (ROOT / include.group(1)).read_text(encoding="utf-8")
        blocks.append((text.count("\n", 0, match.start()) + 1, code))
    return blocks


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _without_code(text: str) -> str:
    return FENCE.sub("", text)


def _api_anchors() -> set[str]:
    """Anchors mkdocstrings makes: every documented object and its public members."""
    anchors = set()
    for name in API_ENTRY.findall((DOCS / "api.md").read_text(encoding="utf-8")):
        obj = _resolve(name)
        anchors.add(name)
        anchors.update(f"{name}.{member}" for member in dir(obj) if not member.startswith("_"))
    return anchors


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _anchors(page: Path) -> set[str]:
    if page.name == "api.md":
        return {_slug(h) for _, h in HEADING.findall(_without_code(page.read_text(encoding="utf-8")))} | _api_anchors()
    return {_slug(h) for _, h in HEADING.findall(_without_code(page.read_text(encoding="utf-8")))}


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_compile(page: Path) -> None:
    for line, code in _python_blocks(page):
        try:
            compile(code, f"{page.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        except SyntaxError as exc:
            pytest.fail(f"{page.relative_to(ROOT)} line {line}: {exc}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_links_between_pages_resolve(page: Path) -> None:
    for target in LINK.findall(_without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page.name}: broken link {target}"
        assert DOCS in linked.parents, f"{page.name}: {target} leaves the docs folder (mkdocs cannot follow it)"
        if anchor:
            assert anchor in _anchors(linked), f"{page.name}: {target} names a missing anchor"


def test_readme_links_to_docs_resolve() -> None:
    for target in LINK.findall(_without_code((ROOT / "README.md").read_text(encoding="utf-8"))):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
            assert (ROOT / target.partition("#")[0]).exists(), f"README: broken link {target}"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = set(NAV_ENTRY.findall((ROOT / "mkdocs.yml").read_text(encoding="utf-8")))
    pages = {str(p.relative_to(DOCS)) for p in PAGES}
    assert nav == pages


def test_api_reference_entries_name_real_objects() -> None:
    entries = API_ENTRY.findall((DOCS / "api.md").read_text(encoding="utf-8"))
    assert "discord_voicerecv.VoiceRecvClient" in entries
    for name in entries:
        _resolve(name)


def test_the_slug_matches_the_toc_extension() -> None:
    assert _slug("Live audio: `async for`") == "live-audio-async-for"
    assert _slug("Decode a capture") == "decode-a-capture"


def test_the_docs_extension_turns_rest_into_markdown() -> None:
    griffe = pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("sphinx_roles", DOCS / "_ext" / "sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Use it as the ``cls`` of :meth:`discord.abc.Connectable.connect`::\n\n    vc = await connect()\n\nDone."
    assert module._literal_blocks(text).splitlines() == [
        "Use it as the ``cls`` of :meth:`discord.abc.Connectable.connect`:",
        "",
        "```python",
        "vc = await connect()",
        "```",
        "",
        "Done.",
    ]
    extension = module.SphinxRoles()
    package = griffe.load("discord_voicerecv", search_paths=[str(ROOT)])
    extension.on_package(pkg=package)
    docstring = package["VoiceRecvClient"].docstring.value
    assert ":meth:`" not in docstring and ":class:`" not in docstring
    assert "`discord.abc.Connectable.connect`" in docstring  # outside the API page: code, not a link
    listen = package["VoiceRecvClient.listen"].docstring.value
    assert "[`stop_listening`][discord_voicerecv.VoiceRecvClient.stop_listening]" in listen  # on it: a link
