"""Every Python sample in README.md and docs/ runs against the local Discord, so a sample that breaks fails here.

How a sample runs (the only liberties taken with its text are the last three rules):

- A fragment runs as top-level-await code in the test's event loop. The names it takes for granted are provided:
  ``local`` (the LocalDiscord), ``bot`` (a ready ``commands.Bot``, prefix ``!``), ``channel`` (the voice channel as
  the bot sees it), ``vc`` (a VoiceRecvClient already in that channel, unless the sample connects itself),
  ``alice``, ``bob`` and ``member`` (Members that are simulated speakers, talking in a loop with pauses),
  ``speaker`` (alice's SimulatedSpeaker), ``owner_id`` (alice's id), and stand-ins for the reader's own code:
  ``recognizer.feed``, ``feed_recognizer`` and ``transcribe`` (they count the audio they are given).
- Imports, functions, classes and UPPER_CASE constants of the earlier samples of a page are defined first: a page
  reads top to bottom.
- A fragment that leaves the bot listening records ``ELIDED`` more seconds and is then stopped, as its reader
  would; the check runs after that.
- A complete script (``asyncio.run(...)``, ``bot.run(...)``) runs in its own process, pointed at the local Discord.
- A line that is only ``...`` (the reader's own code) waits ``ELIDED`` seconds; ``asyncio.sleep(N)`` and
  ``max_duration=N`` above ``CAP`` seconds are cut to ``CAP``; a sample that runs until stopped (``while True``, a
  live ``async for``) is stopped once its check holds.

Every sample has an entry in ``SAMPLES`` saying what must be true after it ran; a new sample without one fails.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import pytest
from discord.ext import commands

from discord_voicerecv import VoiceRecvClient
from discord_voicerecv.opus import ensure_discord_opus
from discord_voicerecv.testing import LocalDiscord, SimulatedSpeaker, restore_discord, use_local_discord
from discord_voicerecv.testing.bots import new_client, running

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))

from test_docs import PAGES, SNIPPET, _python_blocks  # noqa: E402

ELIDED = 1.0
CAP = 2.0
TIMEOUT = 30.0
_ELLIPSIS_LINE = re.compile(r"^(\s*)\.\.\.\s*(#.*)?$", re.M)
_SLEEP = re.compile(r"asyncio\.sleep\((\d+(?:\.\d+)?)\)")
_MAX_DURATION = re.compile(r"max_duration=(\d+(?:\.\d+)?)")


def _parse(code: str) -> ast.Module:
    """``ast.parse`` with the garbage collector held off: a finalizer that logs a traceback would parse source in
    the middle of it, which CPython 3.11.7 reports as "AST constructor recursion depth mismatch"."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(code)
    finally:
        if enabled:
            gc.enable()


@dataclass
class Harness:
    """What a running sample sees and leaves behind."""

    local: LocalDiscord
    bot: commands.Bot
    cwd: Path
    speakers: list[SimulatedSpeaker]
    printed: list[str] = field(default_factory=list)
    fed: int = 0
    namespace: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""

    def print(self, *args: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
        self.printed.append(sep.join(str(a) for a in args))

    def feed(self, pcm: bytes) -> None:
        self.fed += len(pcm)

    async def transcribe(self, pcm: bytes) -> str:
        self.feed(pcm)
        return f"{len(pcm)} bytes of speech"

    def text(self) -> str:
        return "\n".join(self.printed) + self.stdout

    def files(self, pattern: str) -> list[Path]:
        return [p for p in self.cwd.glob(pattern) if p.is_file() and p.stat().st_size > 0]

    def listening_vc(self) -> VoiceRecvClient | None:
        for vc in self.bot.voice_clients:
            if isinstance(vc, VoiceRecvClient):
                return vc
        return None


Check = Callable[[Harness], bool]
Drive = Callable[[Harness], Awaitable[None]]


@dataclass(frozen=True)
class Sample:
    """What must hold after a sample ran (``check``), and what the reader would do around it (``before``/``after``)."""

    check: Check
    before: Drive | None = None
    after: Drive | None = None
    forever: bool = False
    script: bool = False
    env: dict[str, str] = field(default_factory=dict)


def _wav_tracks(h: Harness, folder: str = "out") -> bool:
    return len(h.files(f"{folder}/*.wav")) >= 2


def _stats(h: Harness) -> dict[str, Any]:
    vc = h.namespace.get("vc") or h.listening_vc()
    return dict(vc.receive_stats()) if isinstance(vc, VoiceRecvClient) else {}


async def _add_record_cog(h: Harness) -> None:
    from record_cog import Recorder

    await h.bot.add_cog(Recorder(h.bot, h.cwd / "recordings"))


async def _presence(h: Harness) -> None:
    await h.bot.add_cog(h.namespace["Presence"]())
    h.local.remove_speaker(h.speakers[1].user_id)


async def _listening(h: Harness) -> None:
    from discord_voicerecv import WaveSink

    vc: VoiceRecvClient = h.namespace["vc"]
    vc.listen(WaveSink(h.cwd / "context"))
    assert await _until(lambda: vc.receive_stats().get("packets", 0) > 50, 10)


async def _record_channel(h: Harness) -> None:
    await h.namespace["record_channel"](h.namespace["channel"])


async def _forward_on_stream(h: Harness) -> None:
    vc: VoiceRecvClient = h.namespace["vc"]
    vc.listen(h.namespace["sink"])
    await _until(lambda: len(h.namespace["recorders"]) >= 2, 10)
    sink = h.namespace["sink"]
    await _until(lambda: all(stream.has_receiver() for stream in sink.streams.values()), 10)
    await asyncio.sleep(1.0)
    vc.stop_listening()
    await vc.wait_listening_stopped()
    for proc in h.namespace["recorders"]:
        await asyncio.to_thread(proc.wait, 10)


def _ran_pytest(h: Harness) -> bool:
    return re.search(r"\b1 passed\b", h.stdout) is not None


def _shards_ready(h: Harness) -> bool:
    return sorted(s.shard for s in h.local.gateway.sessions.values() if s.shard is not None) == [(0, 2), (1, 2)]


SAMPLES: dict[tuple[str, int], Sample] = {
    # README.md
    ("README.md", 0): Sample(lambda h: "done None" in h.text() and _wav_tracks(h)),
    ("README.md", 1): Sample(lambda h: h.fed >= 48000 * 4, forever=True),
    ("README.md", 2): Sample(lambda h: h.namespace["vc"].voice_privacy_code is not None, before=None),
    ("README.md", 3): Sample(lambda h: h.namespace["bot"].is_ready(), forever=True),
    # docs/cog.md: examples/record_cog.py runs in tests/e2e/test_examples.py
    # docs/dave.md
    ("docs/dave.md", 0): Sample(
        lambda h: len(h.printed) == 4 and h.printed[0] != "None" and "'decrypted'" in h.printed[1], before=_listening
    ),
    # docs/events.md
    ("docs/events.md", 0): Sample(lambda h: "started speaking" in h.text()),
    ("docs/events.md", 1): Sample(lambda h: h.namespace["member"].id == h.speakers[0].user_id),
    ("docs/events.md", 2): Sample(lambda h: "left the call" in h.text(), after=_presence),
    # docs/events.md 3: examples/speaking_log.py runs in tests/e2e/test_events.py
    # docs/index.md
    ("docs/index.md", 0): Sample(lambda h: "done None" in h.text() and _wav_tracks(h)),
    # docs/limits.md
    ("docs/limits.md", 0): Sample(lambda h: "finished StopReason.STOPPED None" in h.text() and _wav_tracks(h)),
    ("docs/limits.md", 1): Sample(lambda h: "StopReason.MAX_DURATION" in h.text() and _wav_tracks(h)),
    # docs/local-discord.md
    ("docs/local-discord.md", 0): Sample(lambda h: _wav_tracks(h), script=True),
    ("docs/local-discord.md", 1): Sample(
        lambda h: h.namespace["reply"]["content"].startswith("Recording"), before=_add_record_cog
    ),
    ("docs/local-discord.md", 2): Sample(
        lambda h: h.namespace["alice"].busy and h.namespace["bob"].user_id not in h.local.voice_channel_members
    ),
    ("docs/local-discord.md", 3): Sample(lambda h: h.namespace["local"] is not h.local),
    ("docs/local-discord.md", 4): Sample(lambda h: h.local.voice.link_stats(h.bot.user.id).delivered > 0),  # type: ignore[union-attr]
    ("docs/local-discord.md", 5): Sample(_ran_pytest, script=True),
    # docs/migration.md
    ("docs/migration.md", 0): Sample(lambda h: any(line.endswith(" 3840") for line in h.printed)),
    ("docs/migration.md", 1): Sample(lambda h: sum(line.endswith(".wav") for line in h.printed) >= 2),
    # docs/recipes/rtp-forward.md
    ("docs/recipes/rtp-forward.md", 0): Sample(lambda h: len(h.files("recordings/*.webm")) >= 2, after=_record_channel),
    ("docs/recipes/rtp-forward.md", 1): Sample(lambda h: len(h.files("streams/*.webm")) >= 2, after=_forward_on_stream),
    # docs/scaling.md
    ("docs/scaling.md", 0): Sample(
        _shards_ready, script=True, forever=True, env={"SHARD_COUNT": "2", "PROCESSES": "1", "PROCESS_INDEX": "0"}
    ),
    # docs/sinks.md
    ("docs/sinks.md", 0): Sample(lambda h: h.namespace["vc"].is_connected()),
    ("docs/sinks.md", 1): Sample(lambda h: "mix.wav" in h.text() and ".wav" in h.printed[0]),
    ("docs/sinks.md", 2): Sample(lambda h: len(h.files("out/*/*.wav")) >= 2),
    ("docs/sinks.md", 3): Sample(lambda h: any(" 3840" in line for line in h.printed)),
    ("docs/sinks.md", 4): Sample(lambda h: len(h.files("out/mix.mp3")) == 1),
    # listen() then stop_listening() at once: the FLAC session is empty, the MP3 one records
    ("docs/sinks.md", 5): Sample(lambda h: len(h.files("out/mix.flac")) == 1 and len(h.files("out/*.mp3")) >= 3),
    ("docs/sinks.md", 6): Sample(lambda h: len(h.files("out/*.opus")) >= 2),
    ("docs/sinks.md", 7): Sample(lambda h: len(h.files("out/*.opus")) >= 2),
    ("docs/sinks.md", 8): Sample(lambda h: "bytes of speech" in h.text(), forever=True),
    ("docs/sinks.md", 9): Sample(lambda h: len(h.files("out/wav/*.wav")) >= 2 and len(h.files("out/opus/*.opus")) >= 2),
    ("docs/sinks.md", 10): Sample(lambda h: sum(" s" in line for line in h.printed) >= 2, before=None),
    # docs/streams.md
    ("docs/streams.md", 0): Sample(lambda h: len(h.printed) >= 50, forever=True),
    ("docs/streams.md", 1): Sample(lambda h: h.fed >= 48000 * 4, forever=True),
    ("docs/streams.md", 2): Sample(lambda h: _stats(h).get("packets", 0) > 50, forever=True),
    ("docs/streams.md", 3): Sample(lambda h: h.namespace["stream"].queued > 0 and _wav_tracks(h)),
    ("docs/streams.md", 4): Sample(lambda h: "stream_dropped" not in h.text() and len(h.printed) == 3),
    # docs/streams.md 5: examples/live_levels.py runs in tests/e2e/test_live_stream.py
}


def _samples() -> Iterator[tuple[str, int, str, list[str]]]:
    """(page, index on the page, code, earlier samples of the page) for every sample, includes left out."""
    for page in [ROOT / "README.md", *PAGES]:
        name = str(page.relative_to(ROOT))
        earlier: list[str] = []
        for index, (_, code) in enumerate(_python_blocks(page)):
            raw = page.read_text(encoding="utf-8")
            if not _is_include(raw, code):
                yield name, index, code, list(earlier)
            earlier.append(code)


def _is_include(page_text: str, code: str) -> bool:
    for match in re.finditer(r"^```python\n(.*?)^```", page_text, re.M | re.S):
        include = SNIPPET.match(match.group(1).strip())
        if include and (ROOT / include.group(1)).read_text(encoding="utf-8") == code:
            return True
    return False


ALL = list(_samples())


def test_every_sample_has_an_entry_and_every_entry_a_sample() -> None:
    assert {(page, index) for page, index, _, _ in ALL} == set(SAMPLES)


def test_included_examples_are_run_by_the_example_tests() -> None:
    tests = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests" / "e2e").glob("test_*.py"))
    for page in PAGES:
        for match in SNIPPET.finditer(page.read_text(encoding="utf-8").replace("```python\n", "")):
            module = Path(match.group(1)).stem
            assert re.search(rf"from {module} import|import {module}\b", tests), f"{match.group(1)} is not run"


def _prepare(code: str) -> str:
    code = _ELLIPSIS_LINE.sub(lambda m: f"{m.group(1)}await __import__('asyncio').sleep({ELIDED})", code)
    code = _SLEEP.sub(lambda m: f"asyncio.sleep({min(float(m.group(1)), CAP)})", code)
    return _MAX_DURATION.sub(lambda m: f"max_duration={min(float(m.group(1)), CAP)}", code)


def _definitions(codes: list[str]) -> str:
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

    def constant(node: ast.stmt) -> bool:
        return isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)

    nodes = [node for code in codes for node in _parse(code).body if isinstance(node, keep) or constant(node)]
    return ast.unparse(ast.Module(body=nodes, type_ignores=[]))


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _kill_leftover_processes(h: Harness) -> None:
    """Processes a failed sample left running (its ffmpeg recorders), so that they hold no port of the next one."""
    values = list(h.namespace.values())
    for value in values:
        for proc in value if isinstance(value, list) else [value]:
            if isinstance(proc, subprocess.Popen) and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
async def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    ensure_discord_opus()
    monkeypatch.chdir(tmp_path)
    async with LocalDiscord() as local:
        use_local_discord(local.url)
        try:
            speakers = [
                local.add_speaker(name="Alice", clip="en_gb_female"),
                local.add_speaker(name="Bob", clip="fr_female"),
            ]
            for speaker in speakers:
                speaker.start(pause=0.3)
            bot = new_client(commands.Bot, command_prefix="!")
            async with running(bot, "doc-samples"):
                h = Harness(local, bot, tmp_path, speakers)
                try:
                    yield h
                finally:
                    _kill_leftover_processes(h)
        finally:
            restore_discord()
    # Tasks that died with an exception nobody retrieved (discord.py's websocket poller when the server goes away)
    # are logged from their finalizer, with a traceback that Python 3.11 formats with ast.parse. Collect them here,
    # not inside a later ast.parse of pytest's: CPython 3.11.7 fails an AST conversion that another one interrupts
    # ("AST constructor recursion depth mismatch").
    gc.collect()


@pytest.mark.parametrize(("page", "index", "code", "earlier"), ALL, ids=[f"{p}:{i}" for p, i, _, _ in ALL])
async def test_sample_runs(harness: Harness, page: str, index: int, code: str, earlier: list[str]) -> None:
    sample = SAMPLES[(page, index)]
    h = harness
    if sample.script:
        await _run_script(h, sample, _prepare(code))
    else:
        await _run_fragment(h, sample, _prepare(code), earlier)
    assert await _until(lambda: sample.check(h), 15), f"{page} sample {index}: check failed; printed:\n{h.text()}"


async def _run_fragment(h: Harness, sample: Sample, code: str, earlier: list[str]) -> None:
    guild = h.bot.get_guild(h.local.guild_id)
    assert guild is not None
    channel = guild.get_channel(h.local.voice_channel_id)
    assert isinstance(channel, discord.VoiceChannel)
    alice, bob = (guild.get_member(s.user_id) for s in h.speakers)
    ns = h.namespace
    ns.update(
        __name__="__doc_sample__",
        asyncio=asyncio,
        print=h.print,
        local=h.local,
        bot=h.bot,
        channel=channel,
        alice=alice,
        bob=bob,
        member=alice,
        speaker=h.speakers[0],
        owner_id=h.speakers[0].user_id,
        recognizer=h,
        feed_recognizer=h.feed,
        transcribe=h.transcribe,
    )
    if ".connect(" not in code:
        ns["vc"] = await channel.connect(cls=VoiceRecvClient)
    if earlier:
        exec(compile(_definitions(earlier), "<earlier samples>", "exec"), ns)
    if sample.before is not None:
        await sample.before(h)
    compiled = compile(code, "<sample>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    try:
        result = eval(compiled, ns)  # top-level await: a coroutine when the sample awaits
        if result is not None:
            task = asyncio.ensure_future(result)
            if sample.forever:
                ok = await _until(lambda: task.done() or sample.check(h), TIMEOUT)
                if task.done():
                    task.result()
                assert ok, "the sample never got where its check looks"
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                await asyncio.wait_for(task, TIMEOUT)
        if sample.after is not None:
            await sample.after(h)
        vc = h.listening_vc()
        if vc is not None and vc.is_listening():
            await asyncio.sleep(ELIDED)
            vc.stop_listening()
            await vc.wait_listening_stopped()
    finally:
        for vc in list(h.bot.voice_clients):
            if isinstance(vc, VoiceRecvClient) and vc.is_listening():
                vc.stop_listening()
                await vc.wait_listening_stopped()


async def _run_script(h: Harness, sample: Sample, code: str) -> None:
    script = h.cwd / "sample.py"
    prelude = textwrap.dedent(
        f"""\
        from discord_voicerecv.testing import use_local_discord as __use
        __use({h.local.url!r})
        """
    )
    if "def test_" in code:
        (h.cwd / "my_bot.py").write_text(
            "from discord_voicerecv.testing.bots import new_client\n\n\ndef make_bot(out):\n    return new_client()\n",
            encoding="utf-8",
        )
        script = h.cwd / "test_sample.py"
        script.write_text(code, encoding="utf-8")
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            str(script),
        ]
    else:
        script.write_text(code if "LocalDiscord(" in code else prelude + code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(h.cwd))), **sample.env}
    env.setdefault("DISCORD_TOKEN", "doc-sample-script")
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=h.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        if sample.forever:
            assert await _until(lambda: sample.check(h), TIMEOUT), "the script never got where its check looks"
        else:
            out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT * 2)
            h.stdout = out.decode(errors="replace")
            assert proc.returncode == 0, h.stdout
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.communicate(), 10)
