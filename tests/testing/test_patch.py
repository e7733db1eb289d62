"""use_local_discord / restore_discord, the local CA, and the local-discord command from another process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp.connector
import discord
import discord.gateway
import discord.http
import pytest
import yarl
from aiohttp import web

from discord_voicerecv.testing import (
    LocalCertificate,
    LocalDiscord,
    generate_certificate,
    restore_discord,
    use_local_discord,
    using_local_discord,
)
from discord_voicerecv.testing import patch as patch_module

ROOT = Path(__file__).resolve().parents[2]
DISCORD_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY = yarl.URL("wss://gateway.discord.gg/")


@pytest.fixture(autouse=True)
def _restored() -> object:
    yield None
    restore_discord()


@pytest.fixture(scope="module")
def certificate() -> LocalCertificate:
    return generate_certificate()


@pytest.fixture
async def tls_server(certificate: LocalCertificate) -> AsyncIterator[int]:
    """An HTTPS server on 127.0.0.1 presenting the local certificate; yields its port."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=certificate.server_context())
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def test_aiohttp_still_has_the_private_default_context() -> None:
    # use_local_discord swaps this name; if aiohttp renames it, this fails first and loudly.
    assert isinstance(getattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", None), ssl.SSLContext)


def test_discord_py_still_has_the_patched_names() -> None:
    assert discord.http.Route.BASE == DISCORD_BASE
    assert discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY == DISCORD_GATEWAY


def test_use_and_restore(certificate: LocalCertificate) -> None:
    original = aiohttp.connector._SSL_CONTEXT_VERIFIED
    use_local_discord("http://127.0.0.1:5000/", ca_pem=certificate.ca_pem)
    assert discord.http.Route.BASE == "http://127.0.0.1:5000/api/v10"
    assert discord.http.Route("GET", "/users/@me").url == "http://127.0.0.1:5000/api/v10/users/@me"
    assert yarl.URL("ws://127.0.0.1:5000/gateway") == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    assert aiohttp.connector._SSL_CONTEXT_VERIFIED is not original
    restore_discord()
    assert discord.http.Route.BASE == DISCORD_BASE
    assert discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY == DISCORD_GATEWAY
    assert aiohttp.connector._SSL_CONTEXT_VERIFIED is original
    restore_discord()  # a second restore is harmless
    assert discord.http.Route.BASE == DISCORD_BASE


def test_context_manager_and_https_urls(certificate: LocalCertificate) -> None:
    with using_local_discord("https://localhost:8443", ca_pem=certificate.ca_pem):
        assert yarl.URL("wss://localhost:8443/gateway") == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    assert discord.http.Route.BASE == DISCORD_BASE
    with pytest.raises(ValueError, match="http"):
        use_local_discord("ftp://127.0.0.1", ca_pem=certificate.ca_pem)
    assert discord.http.Route.BASE == DISCORD_BASE


async def test_aiohttp_trusts_the_local_ca_only_while_patched(certificate: LocalCertificate, tls_server: int) -> None:
    original = aiohttp.connector._SSL_CONTEXT_VERIFIED
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"https://127.0.0.1:{tls_server}/")
    use_local_discord("http://127.0.0.1:1", ca_pem=certificate.ca_pem)
    async with aiohttp.ClientSession() as http:
        for host in ("127.0.0.1", "localhost"):
            async with http.get(f"https://{host}:{tls_server}/") as response:
                assert await response.text() == "ok"
    restore_discord()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"https://127.0.0.1:{tls_server}/")
    assert certificate.ca_pem.decode() not in "".join(
        ssl.DER_cert_to_PEM_cert(c) for c in original.get_ca_certs(binary_form=True)
    )


@pytest.mark.e2e
async def test_ca_pem_is_fetched_from_the_url_when_not_in_this_process() -> None:
    async with LocalDiscord() as local:
        patch_module._forget_ca(local.url)  # as if the server ran in another process
        await asyncio.to_thread(use_local_discord, local.url)
        assert await asyncio.to_thread(patch_module._fetch_ca, local.url) == local.ca_pem
        context = aiohttp.connector._SSL_CONTEXT_VERIFIED._local[yarl.URL(local.url).host]
        trusted = "".join(ssl.DER_cert_to_PEM_cert(c) for c in context.get_ca_certs(binary_form=True))
        assert "".join(trusted.split()) == "".join(local.ca_pem.decode().split())


def test_only_loopback_urls_unless_a_test_host_is_opted_in(certificate: LocalCertificate) -> None:
    for url in ("http://discord.com", "http://192.168.1.20:5000", "http://10.0.0.1", "https://example.test"):
        with pytest.raises(ValueError, match="loopback"):
            use_local_discord(url, ca_pem=certificate.ca_pem)
        assert discord.http.Route.BASE == DISCORD_BASE
    for url in ("http://127.0.0.1:5000", "http://127.8.9.10:1", "http://[::1]:5000", "http://localhost:1"):
        use_local_discord(url, ca_pem=certificate.ca_pem)
        restore_discord()
    use_local_discord("http://192.168.1.20:5000", ca_pem=certificate.ca_pem, allow_remote=True)
    assert discord.http.Route.BASE == "http://192.168.1.20:5000/api/v10"


async def tls_server_with(certificate: LocalCertificate) -> tuple[web.AppRunner, int]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=certificate.server_context()).start()
    return runner, int(runner.addresses[0][1])


async def test_the_local_ca_vouches_for_the_local_host_only() -> None:
    # A "local Discord" whose CA claims discord.com: trusted for 127.0.0.1, never for the name it claims.
    impostor = generate_certificate(("discord.com",))
    runner, port = await tls_server_with(impostor)
    try:
        use_local_discord("http://127.0.0.1:1", ca_pem=impostor.ca_pem)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://127.0.0.1:{port}/", server_hostname="discord.com")
    finally:
        await runner.cleanup()


async def test_restore_brings_back_the_very_objects_after_several_uses(certificate: LocalCertificate) -> None:
    original = aiohttp.connector._SSL_CONTEXT_VERIFIED
    original_cas = original.get_ca_certs(binary_form=True)
    other = generate_certificate()
    use_local_discord("http://127.0.0.1:1", ca_pem=certificate.ca_pem)
    use_local_discord("http://127.0.0.1:2", ca_pem=other.ca_pem)  # two local Discords on one host: both trusted
    runner, port = await tls_server_with(other)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"https://127.0.0.1:{port}/") as response:
            assert await response.text() == "ok"
    finally:
        await runner.cleanup()
    restore_discord()
    assert aiohttp.connector._SSL_CONTEXT_VERIFIED is original
    assert discord.http.Route.BASE == DISCORD_BASE
    assert original.get_ca_certs(binary_form=True) == original_cas


def test_the_local_ca_is_name_constrained_to_its_hosts() -> None:
    import socket
    import threading

    from cryptography.hazmat.primitives import serialization

    from discord_voicerecv.testing import tls

    start, end = tls._validity(1)
    ca_key, ca_cert = tls._make_ca(("127.0.0.1", "localhost"), start, end)
    key, leaf = tls._make_leaf(ca_key, ca_cert, ("evil.example",), start, end)  # the CA's key signs another name
    pem = serialization.Encoding.PEM
    forged = LocalCertificate(
        ca_pem=ca_cert.public_bytes(pem),
        cert_pem=leaf.public_bytes(pem) + ca_cert.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        hosts=("evil.example",),
    )
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve() -> None:
            conn, _ = listener.accept()
            with (
                contextlib.suppress(ssl.SSLError, OSError),
                forged.server_context().wrap_socket(conn, server_side=True),
            ):
                pass

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(listener.getsockname()) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)subtree|constraint"),
        ):
            forged.client_context().wrap_socket(raw, server_hostname="evil.example")
        thread.join(2)


def test_certificate_covers_loopback_and_passes_strict_checks(certificate: LocalCertificate) -> None:
    import socket
    import threading

    server = certificate.server_context()
    client = certificate.client_context()
    client.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
    for name, expect_ok in (("127.0.0.1", True), ("localhost", True), ("example.com", False)):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()

            def serve(sock: socket.socket = listener) -> None:
                conn, _ = sock.accept()
                try:
                    with server.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"hi")
                except (ssl.SSLError, OSError):
                    pass

            thread = threading.Thread(target=serve)
            thread.start()
            with socket.create_connection(listener.getsockname()) as raw:
                if expect_ok:
                    with client.wrap_socket(raw, server_hostname=name) as tls:
                        assert tls.recv(2) == b"hi"
                else:
                    with pytest.raises(ssl.SSLCertVerificationError):
                        client.wrap_socket(raw, server_hostname=name)
            thread.join(2)
    assert certificate.hosts == ("127.0.0.1", "localhost")


@pytest.mark.e2e
async def test_local_discord_command_serves_bots_of_another_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys; from discord_voicerecv.testing.cli import main; sys.exit(main(sys.argv[1:]))"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--speakers",
        "1",
        "--no-dave",
        "--loss",
        "1",
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        info = json.loads(line)
        assert set(info) == {"url", "guild_id", "voice_channel_id", "text_channel_id", "speakers", "guilds"}
        await asyncio.to_thread(use_local_discord, info["url"])  # fetches the CA over HTTP

        intents = discord.Intents.default()
        client = discord.Client(intents=intents, guild_ready_timeout=0.05)
        ready = asyncio.Event()
        client.on_ready = ready.set  # type: ignore[attr-defined]
        task = asyncio.create_task(client.start("cross-process"))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            guild = client.get_guild(info["guild_id"])
            assert guild is not None
            channel = guild.get_channel(info["voice_channel_id"])
            assert isinstance(channel, discord.VoiceChannel)
            assert [m.name for m in channel.members] == ["Speaker 1"]
            vc: discord.VoiceClient = await channel.connect(timeout=10)  # wss:// voice gateway with the fetched CA
            assert vc.is_connected()
            await vc.disconnect()
        finally:
            await client.close()
            await asyncio.wait_for(task, 5)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0


@pytest.mark.parametrize("argv", [["--loss", "150"], ["--jitter", "-1"], ["--reorder", "x"]])
def test_local_discord_command_rejects_bad_link_options(argv: list[str]) -> None:
    from discord_voicerecv.testing.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


async def test_blocking_sockets_get_the_same_scoped_trust(certificate: LocalCertificate, tls_server: int) -> None:
    import socket

    use_local_discord("http://127.0.0.1:1", ca_pem=certificate.ca_pem)
    scoped = aiohttp.connector._SSL_CONTEXT_VERIFIED

    def handshake(name: str) -> str:
        with (
            socket.create_connection(("127.0.0.1", tls_server)) as raw,
            scoped.wrap_socket(raw, server_hostname=name) as tls,
        ):
            return str(tls.version())

    assert (await asyncio.to_thread(handshake, "127.0.0.1")).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(handshake, "example.com")  # another name: aiohttp's own context, no local CA
