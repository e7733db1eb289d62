"""Session descriptions (RFC 8866) for plain RTP Opus streams that ffmpeg, GStreamer or VLC can open as is."""

from __future__ import annotations

import ipaddress

__all__ = ("opus_sdp",)


def opus_sdp(
    address: str,
    port: int,
    *,
    payload_type: int = 111,
    session_name: str = "discord-voicerecv",
    session_id: int = 0,
    ptime_ms: int = 20,
) -> str:
    """Describe one Opus audio stream (48 kHz, 2 channels, RFC 7587) sent as plain RTP to ``address:port``.

    RTCP is implied on ``port + 1``. The text uses CRLF line ends, as RFC 8866 asks; ffmpeg reads it with
    ``ffmpeg -protocol_whitelist file,udp,rtp -i stream.sdp``.

    Raises
    ------
    ValueError
        When ``address`` is not an IP address, ``port`` is not an even port number, or the payload type is not
        a dynamic one (96-127).
    """
    ip = ipaddress.ip_address(address)
    if not 0 < port < 65_535 or port % 2:
        raise ValueError(f"RTP port must be even and leave room for RTCP on port + 1, not {port}")
    if not 96 <= payload_type <= 127:
        raise ValueError(f"Opus needs a dynamic payload type (96-127), not {payload_type}")
    family = "IP6" if ip.version == 6 else "IP4"
    name = "".join(ch if ch.isprintable() else " " for ch in session_name).strip() or "-"
    connection = f"{family} {ip.compressed}"
    if ip.version == 4 and ip.is_multicast:
        connection += "/16"
    lines = (
        "v=0",
        f"o=- {session_id} 1 IN {family} {ip.compressed}",
        f"s={name}",
        f"c=IN {connection}",
        "t=0 0",
        "a=tool:discord-voicerecv",
        f"m=audio {port} RTP/AVP {payload_type}",
        f"a=rtpmap:{payload_type} opus/48000/2",
        f"a=fmtp:{payload_type} minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1",
        f"a=ptime:{ptime_ms}",
        "a=recvonly",
    )
    return "\r\n".join(lines) + "\r\n"
