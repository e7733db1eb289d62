"""Point this process's discord.py at a local Discord, and back.

Three things change: the REST base (``discord.http.Route.BASE``), the main gateway
(``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``) and the context aiohttp verifies TLS with by default, so
discord.py's ``wss://`` voice websocket accepts the local voice server's certificate. That context
(aiohttp's private ``aiohttp.connector._SSL_CONTEXT_VERIFIED``, the only private name used here and pinned by a
test) is replaced by one that hands each connection to the right trust: for the local Discord's host name, a context
trusting only the local CA; for every other host, aiohttp's own context, untouched. The local CA therefore vouches
for the local Discord and nothing else, and only loopback URLs are accepted unless a test host is opted in.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
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
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
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
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url + CA_PATH, timeout=10) as response:
        pem: bytes = response.read()
    if b"BEGIN CERTIFICATE" not in pem:
        raise ValueError(f"{url}{CA_PATH} did not return a PEM certificate")
    return pem


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine's loopback."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ScopedTrust(ssl.SSLContext):
    """A client context that verifies each connection with the context for its server name.

    asyncio (and so aiohttp) opens TLS through :meth:`wrap_bio`; the local Discord's host names get a context
    trusting only its CA, every other name the context aiohttp had before. The object's own settings trust no CA,
    so any path that bypasses the hand-over fails closed.
    """

    _local: dict[str, ssl.SSLContext]
    _default: ssl.SSLContext

    def _pick(self, server_hostname: str | bytes | None) -> ssl.SSLContext:
        if isinstance(server_hostname, bytes):
            server_hostname = server_hostname.decode("ascii", "replace")
        return self._local.get(_host_key(server_hostname or ""), self._default)

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        context = self._pick(server_hostname)
        return context.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname, session=session
        )

    def wrap_socket(  # type: ignore[override]
        self,
        sock: socket.socket,
        server_side: bool = False,
        *,
        server_hostname: str | bytes | None = None,
        **kwargs: Any,
    ) -> ssl.SSLSocket:
        context = self._pick(server_hostname)
        return context.wrap_socket(sock, server_side=server_side, server_hostname=server_hostname, **kwargs)


def _host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _scoped(default: ssl.SSLContext) -> _ScopedTrust:
    scoped = _ScopedTrust(ssl.PROTOCOL_TLS_CLIENT)
    scoped._local = {}
    scoped._default = default
    return scoped


def _trust_only(ca_pem: bytes) -> ssl.SSLContext:
    """A client context for the local Discord's host: only its CA (or CAs, when several ran here), names checked."""
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    context.set_alpn_protocols(("http/1.1",))
    return context


def _gateway_url(url: str) -> yarl.URL:
    base = yarl.URL(url)
    scheme = {"http": "ws", "https": "wss"}.get(base.scheme)
    if scheme is None:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return base.with_scheme(scheme).with_path("/gateway")


def use_local_discord(url: str, *, ca_pem: bytes | None = None, allow_remote: bool = False) -> None:
    """Make discord.py in this process talk to the local Discord at ``url``.

    Parameters
    ----------
    url:
        The ``url`` a :class:`~discord_voicerecv.testing.LocalDiscord` exposes (or the ``local-discord`` command
        prints), ``http://127.0.0.1:PORT``.
    ca_pem:
        The local CA certificate. When None it comes from the LocalDiscord of this process with that URL, or is
        fetched from ``url + "/local-discord/ca.pem"``. It is trusted for ``url``'s host only.
    allow_remote:
        Accept a ``url`` that is not loopback (a test host on your network). Its CA is fetched over plain HTTP,
        so anyone on the path could substitute theirs; it still vouches for that one host name only.

    Raises
    ------
    ValueError
        ``url`` is not http(s), or not loopback and ``allow_remote`` is off.
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
    host = _host_key(gateway.host or "")
    loopback = _is_loopback(host)
    if not allow_remote and not loopback:
        raise ValueError(f"{url} is not a loopback address; for a local Discord elsewhere pass allow_remote=True")
    if ca_pem is None:
        ca_pem = _known_cas.get(url) or _fetch_ca(url)
    if not _saved:
        _saved["base"] = discord.http.Route.BASE
        _saved["gateway"] = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        _saved["ssl"] = getattr(aiohttp.connector, _SSL_ATTRIBUTE)
        setattr(aiohttp.connector, _SSL_ATTRIBUTE, _scoped(_saved["ssl"]))
    scoped: _ScopedTrust = getattr(aiohttp.connector, _SSL_ATTRIBUTE)
    # A loopback server is reachable under every loopback name; nothing else is.
    for name in dict.fromkeys((host, *_LOOPBACK_NAMES) if loopback else (host,)):
        existing = scoped._local.get(name)
        if existing is None:
            scoped._local[name] = _trust_only(ca_pem)
        else:
            existing.load_verify_locations(cadata=ca_pem.decode("ascii"))  # another local Discord on that host
    discord.http.Route.BASE = url + "/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


def restore_discord() -> None:
    """Undo :func:`use_local_discord`: the names it changed get back the very objects they held before."""
    if not _saved:
        return
    discord.http.Route.BASE = _saved.pop("base")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = _saved.pop("gateway")
    setattr(aiohttp.connector, _SSL_ATTRIBUTE, _saved.pop("ssl"))


@contextlib.contextmanager
def using_local_discord(url: str, *, ca_pem: bytes | None = None, allow_remote: bool = False) -> Iterator[None]:
    """:func:`use_local_discord` for the body of a ``with`` block, then :func:`restore_discord`."""
    use_local_discord(url, ca_pem=ca_pem, allow_remote=allow_remote)
    try:
        yield
    finally:
        restore_discord()
