"""Point this process's discord.py at a local Discord, and back.

Three things change: the REST base (``discord.http.Route.BASE``), the main gateway
(``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``) and the CA aiohttp trusts by default, so discord.py's
``wss://`` voice websocket accepts the local voice server's certificate. The last one replaces aiohttp's private
module-level default context (``aiohttp.connector._SSL_CONTEXT_VERIFIED``) with a copy that also trusts the local
CA; it is the only private name used here and a test pins it.
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp.connector
import discord.gateway
import discord.http
import yarl

__all__ = ("restore_discord", "use_local_discord", "using_local_discord")

CA_PATH = "/local-discord/ca.pem"
"""Where a local Discord serves its CA certificate (plain HTTP, so a separate process can fetch it)."""

_SSL_ATTRIBUTE = "_SSL_CONTEXT_VERIFIED"
_known_cas: dict[str, bytes] = {}
_saved: dict[str, Any] = {}


def _remember_ca(url: str, pem: bytes) -> None:
    """Called by a LocalDiscord of this process, so ``use_local_discord(url)`` needs no HTTP round trip.

    Fetching from the same process would deadlock when the server runs on the caller's own event loop.
    """
    _known_cas[url.rstrip("/")] = pem


def _forget_ca(url: str) -> None:
    _known_cas.pop(url.rstrip("/"), None)


def _fetch_ca(url: str) -> bytes:
    with urllib.request.urlopen(url + CA_PATH, timeout=10) as response:
        pem: bytes = response.read()
    if b"BEGIN CERTIFICATE" not in pem:
        raise ValueError(f"{url}{CA_PATH} did not return a PEM certificate")
    return pem


def _gateway_url(url: str) -> yarl.URL:
    base = yarl.URL(url)
    scheme = {"http": "ws", "https": "wss"}.get(base.scheme)
    if scheme is None:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return base.with_scheme(scheme).with_path("/gateway")


def _trusting_context(ca_pem: bytes) -> ssl.SSLContext:
    """aiohttp's verified default context (same settings) with the local CA added to the system ones."""
    current: ssl.SSLContext = getattr(aiohttp.connector, _SSL_ATTRIBUTE)
    if _saved:
        current.load_verify_locations(cadata=ca_pem.decode("ascii"))
        return current
    context = ssl.create_default_context()
    context.set_alpn_protocols(("http/1.1",))
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return context


def use_local_discord(url: str, *, ca_pem: bytes | None = None) -> None:
    """Make discord.py in this process talk to the local Discord at ``url``.

    Parameters
    ----------
    url:
        The ``url`` a :class:`~discord_voicerecv.testing.LocalDiscord` exposes (or the ``local-discord`` command
        prints), ``http://127.0.0.1:PORT``.
    ca_pem:
        The local CA certificate. When None it comes from the LocalDiscord of this process with that URL, or is
        fetched from ``url + "/local-discord/ca.pem"``.

    Raises
    ------
    RuntimeError
        aiohttp no longer has the private default SSL context this relies on.
    """
    url = url.rstrip("/")
    if not hasattr(aiohttp.connector, _SSL_ATTRIBUTE):
        raise RuntimeError(
            f"aiohttp.connector.{_SSL_ATTRIBUTE} is gone (aiohttp {aiohttp.__version__}); "
            "use_local_discord cannot make aiohttp trust the local CA"
        )
    gateway = _gateway_url(url)
    if ca_pem is None:
        ca_pem = _known_cas.get(url) or _fetch_ca(url)
    context = _trusting_context(ca_pem)
    if not _saved:
        _saved["base"] = discord.http.Route.BASE
        _saved["gateway"] = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        _saved["ssl"] = getattr(aiohttp.connector, _SSL_ATTRIBUTE)
    setattr(aiohttp.connector, _SSL_ATTRIBUTE, context)
    discord.http.Route.BASE = url + "/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


def restore_discord() -> None:
    """Undo :func:`use_local_discord`: discord.py talks to discord.com again with the system CAs only."""
    if not _saved:
        return
    discord.http.Route.BASE = _saved.pop("base")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = _saved.pop("gateway")
    setattr(aiohttp.connector, _SSL_ATTRIBUTE, _saved.pop("ssl"))


@contextlib.contextmanager
def using_local_discord(url: str, *, ca_pem: bytes | None = None) -> Iterator[None]:
    """:func:`use_local_discord` for the body of a ``with`` block, then :func:`restore_discord`."""
    use_local_discord(url, ca_pem=ca_pem)
    try:
        yield
    finally:
        restore_discord()
