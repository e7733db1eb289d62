"""Exception classes raised by discord-voicerecv."""

from __future__ import annotations

from discord import ClientException

__all__ = (
    "AlreadyListening",
    "CaptureFormatError",
    "DecryptionFailed",
    "FFmpegNotFound",
    "MalformedPacket",
    "OpusError",
    "OpusNotAvailable",
    "SinkError",
    "UnsupportedMode",
    "VoiceRecvError",
)


class VoiceRecvError(Exception):
    """Base class of every error this library raises."""


class MalformedPacket(VoiceRecvError, ValueError):
    """A datagram is too short or its header does not add up.

    ``reason`` is a short machine-friendly tag (``"short"``, ``"version"``, ``"extension"``, ``"padding"``...) used
    as the drop counter name.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"malformed packet ({reason}){': ' + detail if detail else ''}")
        self.reason = reason


class DecryptionFailed(VoiceRecvError, ValueError):
    """A packet failed transport authentication: wrong key, wrong mode, or tampered bytes."""


class UnsupportedMode(VoiceRecvError, ValueError):
    """The voice server chose an encryption mode this library does not implement."""

    def __init__(self, mode: str) -> None:
        super().__init__(
            f"unsupported voice encryption mode {mode!r}; supported modes are listed in "
            "discord_voicerecv.protocol.transport.SUPPORTED_MODES"
        )
        self.mode = mode


class OpusNotAvailable(VoiceRecvError, RuntimeError):
    """No libopus could be loaded. Install ``opuslib-next-bundled`` or a system libopus."""


class OpusError(VoiceRecvError, RuntimeError):
    """libopus returned an error code (corrupt packet, bad arguments)."""

    def __init__(self, code: int, where: str) -> None:
        super().__init__(f"libopus error {code} in {where}")
        self.code = code


class AlreadyListening(VoiceRecvError, ClientException):
    """``listen()`` was called while a sink is already attached. Call ``stop_listening()`` first.

    A :class:`discord.ClientException`, as discord.py raises for ``play()`` while already playing audio.
    """


class E2EEDecryptError(VoiceRecvError, ValueError):
    """A frame failed DAVE end-to-end decryption and is dropped (never decoded).

    ``reason`` tags the drop counter: ``"auth"`` (tampered or wrong key), ``"plaintext"`` (an unencrypted frame
    outside a passthrough window), ``"session"`` (the DAVE session raised something else).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"DAVE decryption failed ({reason}){': ' + detail if detail else ''}")
        self.reason = reason


class SinkError(VoiceRecvError):
    """A sink could not write its output, e.g. a full disk or a directory it may not write to.

    ``path`` is the file involved; the underlying :class:`OSError` is the ``__cause__``.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"sink could not write {path}: {detail}")
        self.path = path


class MalformedMlsMessage(VoiceRecvError, ValueError):
    """DAVE/MLS handshake bytes (key package, commit, welcome) do not parse as RFC 9420 structures.

    ``reason`` names the field that did not add up (``"version"``, ``"wire_format"``, ``"trailing"``...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"malformed MLS message ({reason}){': ' + detail if detail else ''}")
        self.reason = reason


class CaptureFormatError(VoiceRecvError, ValueError):
    """A capture file (rtpdump, pcap, pcapng) is not in a format we read, or is cut short."""


class FFmpegNotFound(VoiceRecvError, RuntimeError):
    """No ffmpeg executable was found for a sink that encodes through FFmpeg.

    Install it with ``pip install discord-voicerecv[ffmpeg]`` (a bundled build) or from your system's packages, or
    pass its path (``ffmpeg=``) or set the ``FFMPEG_BINARY`` environment variable.
    """
