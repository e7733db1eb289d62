from __future__ import annotations

import discord

from discord_voicerecv.frames import FRAME_BYTES, VoiceFrame
from discord_voicerecv.sinks import AudioSink, CallbackSink, SinkUser


def test_every_frame_reaches_the_callback_in_order() -> None:
    got: list[tuple[SinkUser, int, int]] = []
    sink = CallbackSink(lambda user, frame: got.append((user, frame.user_id or 0, frame.tick)))
    ann = discord.Object(id=1)
    frames = [VoiceFrame(5, 1, tick, bytes(FRAME_BYTES), b"\xf8\xff\xfe", tick, tick * 960) for tick in range(3)]
    for f in frames:
        sink.write(ann, f)
        sink.advance(f.tick)
    sink.write(None, VoiceFrame(6, None, 3, b"", None, 0, 0))
    sink.cleanup()
    assert got == [(ann, 1, 0), (ann, 1, 1), (ann, 1, 2), (None, 0, 3)]
    assert isinstance(sink, AudioSink)
    assert sink.wants_pcm


def test_opus_only_callbacks_say_so() -> None:
    sink = CallbackSink(lambda user, frame: None, wants_pcm=False)
    assert sink.wants_pcm is False
    assert AudioSink.wants_pcm is True
