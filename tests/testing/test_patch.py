"""use_local_discord / restore_discord, the local CA, and the local-discord command from another process."""

from __future__ import annotations

import asyncio
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
        context = aiohttp.connector._SSL_CONTEXT_VERIFIED
        trusted = "".join(ssl.DER_cert_to_PEM_cert(c) for c in context.get_ca_certs(binary_form=True))
        assert "".join(local.ca_pem.decode().split()) in "".join(trusted.split())


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
        assert set(info) == {"url", "guild_id", "voice_channel_id", "text_channel_id"}
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
