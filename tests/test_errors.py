"""The public exception classes: where users catch them and what they derive from."""

from __future__ import annotations

import discord
import pytest

import discord_voicerecv
from discord_voicerecv import errors


def test_sink_error_is_exported_at_top_level() -> None:
    assert discord_voicerecv.SinkError is errors.SinkError
    assert "SinkError" in discord_voicerecv.__all__
    exc = discord_voicerecv.SinkError("out/a.wav", "No space left on device")
    assert isinstance(exc, discord_voicerecv.VoiceRecvError)
    assert exc.path == "out/a.wav"
    assert "out/a.wav" in str(exc)


def test_already_listening_is_caught_as_discord_client_exception() -> None:
    with pytest.raises(discord.ClientException, match="stop_listening"):
        raise discord_voicerecv.AlreadyListening("already listening; call stop_listening() first")
    assert issubclass(discord_voicerecv.AlreadyListening, discord_voicerecv.VoiceRecvError)


def test_every_exported_name_exists() -> None:
    for name in (*discord_voicerecv.__all__, *errors.__all__):
        module = discord_voicerecv if name in discord_voicerecv.__all__ else errors
        assert hasattr(module, name), name
    assert not hasattr(discord_voicerecv, "NotListening")
