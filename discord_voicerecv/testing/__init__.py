"""A faithful local Discord for testing discord.py bots offline, on loopback.

Real, unmodified discord.py bots log in to :class:`LocalDiscord` after :func:`use_local_discord`: REST, the main
gateway, a TLS voice gateway and a UDP media relay with simulated speakers, DAVE included. Every distinct token is
its own bot user.

Examples
--------
::

    from discord_voicerecv.testing import LocalDiscord, use_local_discord

    async with LocalDiscord(speakers=2) as local:
        use_local_discord(local.url)
        ...  # start bots with any token; local.send_message(local.text_channel_id, "!join")

From another process: run ``discord-voicerecv local-discord`` and pass the ``url`` it prints to
``use_local_discord`` (the CA certificate is fetched from that URL).
"""

from __future__ import annotations

from .link import LinkConditions, LinkStats
from .patch import restore_discord, use_local_discord, using_local_discord
from .server import LocalDiscord
from .speakers import SimulatedSpeaker
from .state import LocalUser
from .tls import LocalCertificate, generate_certificate
from .voice import VoiceServer

__all__ = (
    "LinkConditions",
    "LinkStats",
    "LocalCertificate",
    "LocalDiscord",
    "LocalUser",
    "SimulatedSpeaker",
    "VoiceServer",
    "generate_certificate",
    "restore_discord",
    "use_local_discord",
    "using_local_discord",
)
