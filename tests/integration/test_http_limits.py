"""The listener's limits (issue 19 items 5 and 7), through real sockets against a running daemon:
a slow request head gets 408, connections past the cap 503, idle keep-alives are closed, a
non-UTF-8 Authorization is 401, a foreign Host is refused on loopback, /readyz carries no error
text and fails only when no configured path can be served."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_reload import ConfigFile, base_config, daemon

from router.app import Router
from router.devstack import free_port, wait_until

pytestmark = pytest.mark.integration


def site(tmp_path: Path, **http: Any) -> ConfigFile:
    data = base_config(tmp_path)
    data["http"].update(http)
    data["http_routes"] = {"hello": {"function_name": "push", "method": "GET", "path": "/hello"}}
    return ConfigFile(tmp_path / "router.yaml", data)


async def exchange(app: Router, raw: bytes, *, read_for: float = 5.0) -> bytes:
    """Send `raw` on a fresh connection; what the server answers until it closes (or `read_for`)."""
    host, port = app.config.http.host, app.config.http.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        chunks = []
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


async def test_a_request_head_that_never_ends_gets_408_and_the_connection_closes(tmp_path: Path) -> None:
    async with daemon(site(tmp_path, header_timeout_seconds=1)) as app:
        started = time.monotonic()
        answer = await exchange(app, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ", read_for=6)
        assert status_of(answer) == 408 and time.monotonic() - started < 4
        # A whole request is not affected, and neither is one that arrives slowly but in time.
        ok = await exchange(app, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert status_of(ok) == 200


async def test_connections_past_the_cap_get_503_at_once_and_the_next_one_is_served(tmp_path: Path) -> None:
    async with daemon(site(tmp_path, max_connections=4, header_timeout_seconds=30)) as app:
        host, port = app.config.http.host, app.config.http.port
        held = [await asyncio.open_connection(host, port) for _ in range(4)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        refused = await exchange(app, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status_of(refused) == 503 and time.monotonic() - started < 2
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.3)
        served = await exchange(app, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert status_of(served) == 200


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(tmp_path: Path) -> None:
    async with daemon(site(tmp_path, keepalive_timeout_seconds=1)) as app:
        started = time.monotonic()
        answer = await exchange(app, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", read_for=8)
        assert status_of(answer) == 200
        assert time.monotonic() - started < 5  # closed by the server, not by our read deadline


async def test_a_non_utf8_authorization_header_is_401_not_500(tmp_path: Path) -> None:
    port = free_port()
    file = site(tmp_path, listen=f"0.0.0.0:{port}", admin_token="admin-token-1")
    file.data["lambda_api"] = {"credentials": [{"access_key_id": "k", "secret_access_key": "s"}]}
    file.write()
    async with daemon(file) as app:
        for path, expected in (("/status", 401), ("/metrics", 401), ("/webhooks/s3", 401),
                               ("/2015-03-31/functions/push/invocations", 403)):
            method = b"POST" if path.startswith(("/webhooks", "/2015")) else b"GET"
            answer = await exchange(app, method + b" " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                                    b"Authorization: Bearer \xff\xfe\xc3(\r\nContent-Length: 2\r\n"
                                    b"Connection: close\r\n\r\n{}")
            assert status_of(answer) == expected, (path, answer[:200])


async def test_loopback_endpoints_without_a_token_refuse_a_foreign_host(tmp_path: Path) -> None:
    file = site(tmp_path)
    file.data["lambda_api"] = {}
    file.write()
    async with daemon(file) as app:
        port = app.config.http.port
        for path in ("/status", "/metrics", "/2015-03-31/functions"):
            rebound = await exchange(app, f"GET {path} HTTP/1.1\r\nHost: evil.example:{port}\r\n"
                                     "Connection: close\r\n\r\n".encode())
            assert status_of(rebound) == 403, (path, rebound[:300])
            ours = await exchange(app, f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n"
                                  "Connection: close\r\n\r\n".encode())
            assert status_of(ours) == 200, (path, ours[:300])
        # The probes and the user's own routes answer whatever name they are reached by.
        probe = await exchange(app, b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        assert status_of(probe) == 200
        route = await exchange(app, b"GET /hello HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        assert status_of(route) != 403


def _body(answer: bytes) -> Any:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


async def _wait_readyz(app: Router, status: int) -> bytes:
    deadline = time.monotonic() + 20
    while True:
        answer = await exchange(app, b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        if status_of(answer) == status or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.3)


async def test_readiness_is_per_path_and_readyz_names_no_error_text(tmp_path: Path) -> None:
    dead = free_port()
    file = site(tmp_path)
    file.data["kafka"] = {"bootstrap_servers": f"127.0.0.1:{dead}"}
    file.data["event_source_mappings"] = {"clicks": {"function_name": "recorder", "kafka_topic": "clicks"}}
    file.write()
    async with daemon(file) as app:
        # Kafka is down, but the website does not need it: the replica stays in the Service.
        await wait_until(lambda: not app.status()["paths"]["streams"]["ready"], 20, "kafka seen down")
        answer = await _wait_readyz(app, 200)
        assert status_of(answer) == 200, answer
        body = _body(answer)
        assert body["paths"] == {"streams": "unready", "http_routes": "ready"}
        status = app.status()
        assert status["paths"]["streams"]["ready"] is False
        assert status["paths"]["streams"]["problems"][0].startswith("kafka: down")
        assert status["paths"]["http_routes"] == {"ready": True, "problems": []}
    del file.data["http_routes"]
    file.write()
    async with daemon(file) as app:
        # Streams are all it is configured for: now it is unready, and says why without the error.
        answer = await _wait_readyz(app, 503)
        assert status_of(answer) == 503, answer
        body = _body(answer)
        assert body["paths"] == {"streams": "unready"}
        assert body["problems"] == ["kafka: down"]
        assert str(dead) not in answer.decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_the_listener_serves_tls_from_the_configured_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    async with daemon(site(tmp_path, ssl_certfile=str(cert), ssl_keyfile=str(key))) as app:
        trust = ssl.create_default_context(cafile=str(cert))
        url = f"https://localhost:{app.config.http.port}/healthz"
        async with aiohttp.ClientSession() as http, http.get(url, ssl=trust) as answer:
            assert answer.status == 200 and (await answer.json())["status"] == "ok"
        # Plain HTTP on the TLS port gets no HTTP answer.
        assert status_of(await exchange(app, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", read_for=2)) == 0
