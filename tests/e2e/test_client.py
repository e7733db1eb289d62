"""VoiceRecvClient's own behaviour on a real connection: keepalives, listen/stop rules, stats, what a recording
starts with, stopping without blocking the bot's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import discord
import pytest

from discord_voicerecv import AlreadyListening, CallbackSink, VoiceFrame, VoiceRecvClient, WaveSink
from discord_voicerecv.errors import SinkError
from discord_voicerecv.sinks import AudioSink, FFmpegSink
from discord_voicerecv.sinks.base import SinkUser
from discord_voicerecv.sinks.limits import StopReason
from discord_voicerecv.testing import LocalDiscord
from discord_voicerecv.testing.bots import new_client, running

FRAME = 0.020
"""One RTP frame / one slot of the timeline."""


async def _join(client: discord.Client, local: LocalDiscord) -> VoiceRecvClient:
    channel = client.get_channel(local.voice_channel_id)
    assert isinstance(channel, discord.VoiceChannel)
    return await channel.connect(cls=VoiceRecvClient)


async def test_keepalives_flow_only_while_listening(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    async with running(client, "keepalive-bot"):
        vc = await _join(client, local)
        vc.keepalive_interval = interval = 0.1
        stats = local.voice.relay_stats
        before = stats.keepalives
        await asyncio.sleep(3.5 * interval)
        assert stats.keepalives == before, "no keepalives before listen()"
        loop = asyncio.get_running_loop()
        started = loop.time()
        vc.listen(WaveSink(tmp_path))
        await _until(lambda: stats.keepalives >= before + 4)
        during, elapsed = stats.keepalives - before, loop.time() - started
        vc.stop_listening()
        await vc.wait_listening_stopped()
        await asyncio.sleep(3 * interval)  # one already on the wire may still reach the relay
        stopped_at = stats.keepalives
        await asyncio.sleep(3.5 * interval)
        assert stats.keepalives == stopped_at, "keepalives stop with stop_listening()"
    # Repeated, and never faster than the interval (a loaded machine only makes them later).
    assert during <= elapsed / interval + 1, f"{during} keepalives in {elapsed:.2f} s"


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_listen_twice_raises_and_stop_is_idempotent(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    ended: list[BaseException | None] = []
    async with running(client, "twice-bot"):
        vc = await _join(client, local)
        assert not vc.is_listening()
        vc.listen(WaveSink(tmp_path / "a"), after=ended.append)
        assert vc.is_listening()
        with pytest.raises(AlreadyListening):
            vc.listen(WaveSink(tmp_path / "b"))
        vc.stop_listening()
        await vc.wait_listening_stopped()
        vc.stop_listening()
        await vc.wait_listening_stopped()
        assert not vc.is_listening()
        assert ended == [None]
        vc.listen(WaveSink(tmp_path / "c"))
        assert vc.is_listening()
        await vc.disconnect()
        assert not vc.is_listening(), "disconnect stops listening"
    assert (tmp_path / "c" / "mix.wav").exists()


async def test_frames_name_members_and_stats_count_them(local: LocalDiscord) -> None:
    speaker = local.add_speaker(clip="fr_female")
    seen: dict[int, SinkUser] = {}
    frames: list[VoiceFrame] = []

    def collect(user: SinkUser, frame: VoiceFrame) -> None:
        if frame.user_id is not None:
            seen[frame.user_id] = user
        frames.append(frame)

    client = new_client()
    async with running(client, "names-bot"):
        vc = await _join(client, local)
        await local.voice.wait_dave_settled(timeout=10)
        vc.listen(CallbackSink(collect))
        speaker.speak()
        await speaker.wait_idle()
        await asyncio.sleep(0.3)
        vc.stop_listening()
        await vc.wait_listening_stopped()
        stats = vc.receive_stats()
    member = seen[speaker.user_id]
    assert isinstance(member, discord.Member) and member.name == speaker.name
    ticks = [f.tick for f in frames if f.user_id == speaker.user_id]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    assert stats["decoded"] == len(ticks) - stats["fec"] - stats["plc"]
    assert all(len(f.pcm) == 3840 for f in frames)


async def test_listen_requires_a_connection(local: LocalDiscord, tmp_path: Path) -> None:
    client = new_client()
    async with running(client, "offline-bot"):
        vc = await _join(client, local)
        await vc.disconnect()
        with pytest.raises(discord.ClientException):
            vc.listen(WaveSink(tmp_path))


class _Collect(AudioSink):
    """Keeps every frame it is given."""

    def __init__(self) -> None:
        self.frames: list[VoiceFrame] = []

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.frames.append(frame)

    def advance(self, tick: int) -> None:
        pass


class _SlowCleanupSink(_Collect):
    """A sink whose cleanup (finishing its files) blocks until :attr:`release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.cleaned = False

    def cleanup(self) -> None:
        self.entered.set()
        self.release.wait(20)
        self.cleaned = True


def _release_later(sink: _SlowCleanupSink) -> threading.Timer:
    """Old code joins the sink's thread on the loop: this frees it so such a test fails instead of hanging."""
    timer = threading.Timer(10, sink.release.set)
    timer.daemon = True
    timer.start()
    return timer


async def test_listening_restarted_later_records_nothing_from_before(local: LocalDiscord) -> None:
    """Speech while not listening piles up in the socket's kernel buffer; a later listen() (here a restart through
    listen_stream()) must not record it."""
    speaker = local.add_speaker(tone_seconds=1.0)
    client = new_client()
    async with running(client, "backlog-bot"):
        vc = await _join(client, local)
        first = _Collect()
        vc.listen(first)
        await asyncio.sleep(0.2)
        vc.stop_listening()
        await vc.wait_listening_stopped()
        await speaker.speak()
        sent = len(speaker.audio_frames())
        await asyncio.sleep(1.0)
        streamed: list[int | None] = []
        async with vc.listen_stream() as stream:
            reading = asyncio.create_task(_drain(stream, streamed))
            await asyncio.sleep(2.0)
        await reading
        await vc.wait_listening_stopped()
        stats = vc.receive_stats()
    assert sent >= 45, "the speaker spoke for a second while nobody listened"
    assert streamed == [] and stats["decoded"] == 0, f"{len(streamed)} frames from before listen_stream() recorded"


async def _drain(stream: object, into: list[int | None]) -> None:
    async for frame in stream:  # type: ignore[attr-defined]
        into.append(frame.user_id)


async def test_a_speaker_talking_at_listen_is_placed_where_they_are(local: LocalDiscord) -> None:
    """A speaker talking for a second before listen(): their first recorded frame sits at its own send time.

    A frame is placed in the slot its arrival falls in, so its slot start is at most one slot before it was sent;
    on loopback it arrives within two slots of sending (reader thread wake-up on a loaded machine). Processing the
    backlog instead places it a second late.
    """
    speaker = local.add_speaker(clip="fr_female")
    sink = _Collect()
    client = new_client()
    async with running(client, "placement-bot"):
        vc = await _join(client, local)
        loop = asyncio.get_running_loop()
        speaker.start()
        await asyncio.sleep(1.0)
        before = loop.time()
        vc.listen(sink)
        after = loop.time()
        await asyncio.sleep(1.0)
        vc.stop_listening()
        speaker.stop()
        await vc.wait_listening_stopped()
    sent_at = {frame.sequence: frame.sent_at for frame in speaker.sent if not frame.silence}
    heard = sorted((f for f in sink.frames if f.user_id == speaker.user_id and not f.concealed), key=lambda f: f.tick)
    assert len(heard) >= 40
    first = heard[0]
    placed = first.tick * FRAME
    earliest = sent_at[first.sequence] - after - FRAME
    latest = sent_at[first.sequence] - before + 2 * FRAME
    assert earliest <= placed <= latest, f"placed at {placed:.3f} s, sent at {sent_at[first.sequence] - before:.3f} s"


async def test_stop_listening_returns_while_the_sink_is_still_finishing(local: LocalDiscord) -> None:
    sink = _SlowCleanupSink()
    calls: list[tuple[BaseException | None, bool]] = []
    client = new_client()
    async with running(client, "slow-stop-bot"):
        vc = await _join(client, local)
        vc.listen(sink, after=lambda error: calls.append((error, sink.cleaned)))
        await asyncio.sleep(0.2)
        _release_later(sink)
        vc.stop_listening()
        assert not sink.release.is_set(), "stop_listening() waited for the sink"
        assert not vc.is_listening() and vc.stop_reason is StopReason.STOPPED
        assert await asyncio.to_thread(sink.entered.wait, 10), "the sink is finished off the event loop"
        assert calls == [], "after runs only once the files are final"
        waiting = asyncio.create_task(vc.wait_listening_stopped())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        sink.release.set()
        await asyncio.wait_for(waiting, 10)
        assert calls == [(None, True)]


async def test_disconnect_does_not_block_the_loop_while_the_sink_finishes(local: LocalDiscord) -> None:
    sink = _SlowCleanupSink()
    client = new_client()
    async with running(client, "slow-disconnect-bot"):
        vc = await _join(client, local)
        vc.listen(sink)
        await asyncio.sleep(0.2)
        _release_later(sink)
        disconnecting = asyncio.create_task(vc.disconnect())
        assert await asyncio.to_thread(sink.entered.wait, 10)
        assert not sink.release.is_set(), "the loop ran while the sink was finishing"
        assert not disconnecting.done(), "disconnect() returns once the files are final"
        sink.release.set()
        await asyncio.wait_for(disconnecting, 10)
        assert sink.cleaned and vc.stop_reason is StopReason.DISCONNECTED


async def test_after_can_stop_and_listen_again(local: LocalDiscord) -> None:
    """discord.py's ``play(after=...)`` idiom: after calls back into the client (it used to deadlock)."""
    second = _Collect()
    second_done: list[BaseException | None] = []

    def after(error: BaseException | None) -> None:
        vc.stop_listening()
        vc.listen(second, after=second_done.append)

    client = new_client()
    async with running(client, "after-bot"):
        vc = await _join(client, local)
        vc.keepalive_interval = 0.1
        vc.listen(_Collect(), after=after)
        await asyncio.sleep(0.2)
        vc.stop_listening()
        await asyncio.wait_for(vc.wait_listening_stopped(), 10)
        assert vc.is_listening(), "listen() from after started a new session"
        before = local.voice.relay_stats.keepalives
        await asyncio.sleep(0.45)
        assert local.voice.relay_stats.keepalives > before, "the new session's keepalive task runs on the loop"
        vc.stop_listening()
        await asyncio.wait_for(vc.wait_listening_stopped(), 10)
    assert second_done == [None]


async def test_waiting_for_a_stopped_session_does_not_wait_for_the_one_its_after_started(
    local: LocalDiscord,
) -> None:
    """The follow-up session may already be listening when the caller starts waiting (its predecessor finished
    first): the wait covers what was stopped, not the new session that keeps listening."""
    follow_up_started = threading.Event()

    def after(error: BaseException | None) -> None:
        vc.listen(_Collect())
        follow_up_started.set()

    client = new_client()
    async with running(client, "after-wait-bot"):
        vc = await _join(client, local)
        vc.listen(_Collect(), after=after)
        await asyncio.sleep(0.1)
        vc.stop_listening()
        assert await asyncio.to_thread(follow_up_started.wait, 10)
        await asyncio.wait_for(vc.wait_listening_stopped(), 10)
        assert vc.is_listening()
        vc.stop_listening()
        await asyncio.wait_for(vc.wait_listening_stopped(), 10)
        assert not vc.is_listening()


async def test_coroutine_after_is_awaited_on_the_bots_loop(local: LocalDiscord) -> None:
    done = asyncio.Event()
    seen: list[tuple[BaseException | None, bool]] = []

    async def after(error: BaseException | None) -> None:
        seen.append((error, asyncio.get_running_loop() is vc.loop))
        done.set()

    client = new_client()
    async with running(client, "coro-after-bot"):
        vc = await _join(client, local)
        vc.listen(_Collect(), after=after)
        await asyncio.sleep(0.1)
        vc.stop_listening()
        await asyncio.wait_for(done.wait(), 10)
    assert seen == [(None, True)]


async def test_listen_refuses_a_non_sink_and_a_format_ffmpeg_cannot_write(
    local: LocalDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import discord_voicerecv.sinks.ffmpeg as ffmpeg_module

    monkeypatch.setattr(ffmpeg_module, "_probes", {})  # no answer known yet in this process
    client = new_client()
    async with running(client, "refuse-bot"):
        vc = await _join(client, local)
        with pytest.raises(TypeError, match="AudioSink"):
            vc.listen("out")  # type: ignore[arg-type]
        for name, fmt, extra, reason in (
            ("wat", "wat", (), "cannot write this format"),
            ("enc", "mka", ("-c:a", "no_such_encoder"), "no_such_encoder"),
        ):
            # The first time, listen() does not wait for ffmpeg's answer on the loop: the session ends with the
            # error before its first slot and leaves no file. Once the answer is known, listen() refuses at once.
            errors: list[BaseException | None] = []
            vc.listen(FFmpegSink(tmp_path / name, fmt, extra_args=extra), after=errors.append)
            await asyncio.wait_for(vc.wait_listening_stopped(), 20)
            assert len(errors) == 1 and isinstance(errors[0], SinkError) and reason in str(errors[0]), errors
            assert list((tmp_path / name).iterdir()) == []
            again = FFmpegSink(tmp_path / f"{name}-again", fmt, extra_args=extra)
            with pytest.raises(SinkError, match=reason):
                vc.listen(again)
            assert not (tmp_path / f"{name}-again").exists()
            assert not vc.is_listening()
        mp3 = FFmpegSink(tmp_path / "mp3", "mp3")
        vc.listen(mp3)
        assert vc.is_listening()
        vc.stop_listening()
        await vc.wait_listening_stopped()
    assert mp3.mix_path is not None and mp3.mix_path.stat().st_size > 0


async def test_a_receiver_that_cannot_start_leaves_no_file(
    local: LocalDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine without libopus: listen() raises before the sink opens, so no folder or empty mix.wav appears."""
    import discord_voicerecv.client as client_module
    from discord_voicerecv.errors import OpusNotAvailable

    def no_libopus(*args: object, **kwargs: object) -> None:
        raise OpusNotAvailable("could not load libopus")

    client = new_client()
    async with running(client, "no-opus-bot"):
        vc = await _join(client, local)
        with monkeypatch.context() as patch:
            patch.setattr(client_module, "Receiver", no_libopus)
            with pytest.raises(OpusNotAvailable):
                vc.listen(WaveSink(tmp_path / "out"))
        assert not (tmp_path / "out").exists()
        assert not vc.is_listening()
        vc.listen(WaveSink(tmp_path / "out"))
        vc.stop_listening()
        await vc.wait_listening_stopped()
    assert (tmp_path / "out" / "mix.wav").stat().st_size > 0


async def test_listen_off_the_loop_misses_no_speaker_mapped_meanwhile(
    local: LocalDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """listen() from ``after`` runs on a sink thread while the loop keeps handling op5/op12: an SSRC mapped while
    listen() reads the known ones reaches the new receiver, and the mapping table may grow meanwhile."""
    import discord_voicerecv.client as client_module

    mapped: list[tuple[int, int]] = []

    class Spy(client_module.Receiver):  # type: ignore[misc, name-defined]
        def map_ssrc(self, ssrc: int, user_id: int) -> None:
            mapped.append((ssrc, user_id))
            if ssrc == 5001:
                vc._map(5002, 72)  # op12 handled on the loop just then
            super().map_ssrc(ssrc, user_id)

        def start(self, *, threaded: bool = True) -> None:
            vc._map(5003, 73)  # op5 handled on the loop just then
            super().start(threaded=threaded)

    client = new_client()
    async with running(client, "mapping-bot"):
        vc = await _join(client, local)
        vc._map(5001, 71)
        monkeypatch.setattr(client_module, "Receiver", Spy)
        await asyncio.to_thread(vc.listen, _Collect())
        vc.stop_listening()
        await vc.wait_listening_stopped()
    assert {(5001, 71), (5002, 72), (5003, 73)} <= set(mapped)
