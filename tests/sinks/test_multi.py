from __future__ import annotations

from discord_voicerecv.frames import FRAME_BYTES, VoiceFrame
from discord_voicerecv.sinks import AudioSink, CallbackSink, MultiSink, SinkUser


class Recorder(AudioSink):
    def __init__(self, name: str, log: list[str], *, fail: bool = False, wants_pcm: bool = True) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.wants_pcm = wants_pcm

    def write(self, user: SinkUser, frame: VoiceFrame) -> None:
        self.log.append(f"{self.name}.write{frame.tick}")
        if self.fail:
            raise RuntimeError("broken sink")

    def advance(self, tick: int) -> None:
        self.log.append(f"{self.name}.advance{tick}")

    def cleanup(self) -> None:
        self.log.append(f"{self.name}.cleanup")


def frame(tick: int) -> VoiceFrame:
    return VoiceFrame(1, 1, tick, bytes(FRAME_BYTES), None, tick, 0)


def test_fans_out_in_order() -> None:
    log: list[str] = []
    sink = MultiSink(Recorder("a", log), Recorder("b", log))
    sink.write(None, frame(0))
    sink.advance(0)
    sink.cleanup()
    sink.cleanup()
    assert log == ["a.write0", "b.write0", "a.advance0", "b.advance0", "a.cleanup", "b.cleanup"]


def test_a_failing_child_is_detached_and_cleaned_up_while_the_rest_go_on() -> None:
    log: list[str] = []
    broken = Recorder("x", log, fail=True)
    sink = MultiSink(broken, Recorder("b", log))
    sink.write(None, frame(0))
    sink.advance(0)
    sink.write(None, frame(1))
    sink.cleanup()
    assert log == ["x.write0", "x.cleanup", "b.write0", "b.advance0", "b.write1", "b.cleanup"]
    assert [s for s, _ in sink.failures] == [broken]
    assert len(sink.sinks) == 1


def test_wants_pcm_when_any_child_does() -> None:
    opus_only = CallbackSink(lambda u, f: None, wants_pcm=False)
    assert not MultiSink(opus_only).wants_pcm
    assert MultiSink(opus_only, CallbackSink(lambda u, f: None)).wants_pcm
    assert not MultiSink().wants_pcm
