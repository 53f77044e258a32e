"""The admin endpoints on a real aiohttp server bound to a real port, and `router status` against it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from router.cli import main as router_main
from router.config import HttpConfig
from router.observability.http import AdminEndpoints, HttpBindError, LoopLagProbe, bound_port, start_http
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests"

STATUS: dict[str, Any] = {
    "mappings": {
        "clicks-to-metrics": {
            "kind": "stream", "function": "metrics", "state": "Enabled",
            "shards": {
                "shardId-000000000001": {"checkpoint": "99", "high_watermark": "100", "lag": 0,
                                         "iterator_age_seconds": 0.4, "in_flight": 0},
                "shardId-000000000000": {"checkpoint": "41", "high_watermark": "57", "lag": 15,
                                         "iterator_age_seconds": 3725.0, "in_flight": 1},
            },
            "last_error": "ValueError: bad record in batch",
        },
        "photos-to-thumbnail": {
            "kind": "bucket", "function": "thumbnail", "state": "Enabled", "transport": "mqtt",
            "queue": {"depth": 3, "oldest_age_seconds": 12.5}, "last_error": None,
        },
    },
    "brokers": {"kafka": {"up": True, "detail": ""}, "mqtt": {"up": False, "detail": "connection refused"}},
    "functions": {"metrics": {"workers": 1}},
    "problems": ["mqtt: down: connection refused"],
}


@dataclass
class FakeClock:
    now: float = 5000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Admin:
    url: str
    board: ProgressBoard
    clock: FakeClock
    metrics: Metrics
    alive: list[bool] = field(default_factory=lambda: [True])


async def serve(require_token: bool, token: str | None = TOKEN) -> tuple[Admin, web.AppRunner]:
    clock = FakeClock()
    board = ProgressBoard(stall_timeout=300, clock=clock)
    metrics = Metrics()
    admin = Admin("", board, clock, metrics)
    endpoints = AdminEndpoints(
        board=board, metrics=metrics, status=lambda: STATUS, liveness=lambda: admin.alive[0],
        admin_token=SecretStr(token) if token else None, require_token=require_token,
        paths=lambda: {"streams"},
    )
    app = web.Application()
    endpoints.register(app)
    runner = await start_http(app, HttpConfig(listen="127.0.0.1:0"))
    admin.url = f"http://127.0.0.1:{bound_port(runner)}"
    return admin, runner


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    served, runner = await serve(require_token=False)
    yield served
    await runner.cleanup()


@pytest.fixture
async def guarded() -> AsyncIterator[Admin]:
    served, runner = await serve(require_token=True)
    yield served
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_healthz_follows_liveness(admin: Admin, http: aiohttp.ClientSession) -> None:
    status, body = await get(http, admin.url + "/healthz")
    assert (status, body["status"]) == (200, "ok")
    admin.alive[0] = False
    status, body = await get(http, admin.url + "/healthz")
    assert (status, body["status"]) == (503, "unhealthy")
    admin.alive[0] = True
    assert (await get(http, admin.url + "/healthz"))[0] == 200


async def test_healthz_fails_when_the_loop_lags() -> None:
    clock = FakeClock()
    probe = LoopLagProbe(interval=0.05, clock=clock)
    endpoints = AdminEndpoints(
        board=ProgressBoard(300), metrics=Metrics(), status=dict, liveness=lambda: True,
        admin_token=None, require_token=False, max_loop_lag=5.0, lag_probe=probe,
    )
    app = web.Application()
    endpoints.register(app)
    runner = await start_http(app, HttpConfig(listen="127.0.0.1:0"))
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{bound_port(runner)}/healthz"
            assert (await get(session, url))[0] == 200
            clock.now += 30  # the probe has not run for 30 s of (fake) time: the loop is stuck
            status, body = await get(session, url)
            assert status == 503 and "lagging" in body["detail"]
            await asyncio.sleep(0.3)  # the probe runs again and catches up
            assert (await get(session, url))[0] == 200
    finally:
        await runner.cleanup()


async def test_readyz_unready_on_stalled_shard_and_back(admin: Admin, http: aiohttp.ClientSession) -> None:
    ready = (200, {"status": "ready", "paths": {"streams": "ready"}})
    assert await get(http, admin.url + "/readyz") == ready
    shard = admin.board.tracker("stream:clicks-to-metrics:shardId-000000000000")
    shard.set_pending(True)
    admin.clock.now += 299
    assert (await get(http, admin.url + "/readyz"))[0] == 200
    admin.clock.now += 2
    status, body = await get(http, admin.url + "/readyz")
    assert status == 503
    assert body == {"status": "unready", "paths": {"streams": "unready"}, "problems": [
        "stream:clicks-to-metrics:shardId-000000000000: no progress for 301s with work pending"]}
    shard.advanced()  # a checkpoint moved
    assert await get(http, admin.url + "/readyz") == ready


async def test_readyz_unready_while_a_broker_is_down(admin: Admin, http: aiohttp.ClientSession) -> None:
    kafka = admin.board.tracker("kafka")
    kafka.set_up(False, "connection refused")
    status, body = await get(http, admin.url + "/readyz")
    # Open to anyone: the tracker, not the broker's error text.
    assert status == 503 and body["problems"] == ["kafka: down"]
    kafka.set_up(True)
    assert (await get(http, admin.url + "/readyz"))[0] == 200


async def test_metrics_scrape_parses(admin: Admin, http: aiohttp.ClientSession) -> None:
    admin.metrics.offset_lag.labels(mapping="clicks", shard="shardId-000000000000").set(15)
    admin.metrics.invocations.labels(function="metrics", outcome="success").inc(3)
    async with http.get(admin.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("router_offset_lag", (("mapping", "clicks"), ("shard", "shardId-000000000000")))] == 15
    assert samples[("router_invocations_total", (("function", "metrics"), ("outcome", "success")))] == 3


async def test_status_is_open_on_loopback(admin: Admin, http: aiohttp.ClientSession) -> None:
    assert await get(http, admin.url + "/status") == (200, STATUS)


async def test_admin_token_required_off_loopback(guarded: Admin, http: aiohttp.ClientSession) -> None:
    for path in ("/status", "/metrics"):
        status, body = await get(http, guarded.url + path)
        assert status == 401 and body["status"] == "unauthorized", path
        assert (await get(http, guarded.url + path, token="wrong-token"))[0] == 401
        assert (await get(http, guarded.url + path, token=TOKEN))[0] == 200
    async with http.get(guarded.url + "/status", headers={"Authorization": f"Basic {TOKEN}"}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # The probes stay open for the kubelet, which cannot present a token.
    assert (await get(http, guarded.url + "/healthz"))[0] == 200
    assert (await get(http, guarded.url + "/readyz"))[0] == 200


async def test_missing_token_fails_closed(http: aiohttp.ClientSession) -> None:
    served, runner = await serve(require_token=True, token=None)
    try:
        assert (await get(http, served.url + "/status", token="anything"))[0] == 401
    finally:
        await runner.cleanup()


async def status_from(http: aiohttp.ClientSession, status: Callable[[], dict[str, Any]]) -> tuple[int, Any]:
    """GET /status of loopback endpoints whose status document comes from `status`."""
    endpoints = AdminEndpoints(board=ProgressBoard(300), metrics=Metrics(), status=status,
                               liveness=lambda: True, admin_token=None, require_token=False)
    app = web.Application()
    endpoints.register(app)
    runner = await start_http(app, HttpConfig(listen="127.0.0.1:0"))
    try:
        return await get(http, f"http://127.0.0.1:{bound_port(runner)}/status")
    finally:
        await runner.cleanup()


async def test_status_failure_is_a_500_not_a_crash(http: aiohttp.ClientSession) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("half-built")

    status, body = await status_from(http, broken)
    assert status == 500 and body["error_type"] == "RuntimeError"


async def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HttpBindError) as caught:
            await start_http(web.Application(), HttpConfig(listen=f"127.0.0.1:{port}"))
    assert isinstance(caught.value, OSError)
    assert str(caught.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use "
        "(another router or another program is listening there)")


# -- router status ---------------------------------------------------------------------------------


async def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the synchronous CLI in a thread so this loop keeps serving the server it asks."""
    code = await asyncio.to_thread(router_main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _row(out: str, starts: str) -> list[str]:
    return next(line for line in out.splitlines() if line.startswith(starts)).split()


async def test_router_status_renders_a_table(
    guarded: Admin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", TOKEN)
    monkeypatch.delenv("ROUTER_CONFIG", raising=False)
    code, out, err = await run_cli(["status", "--url", guarded.url], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "brokers: kafka up, mqtt DOWN (connection refused)"
    assert lines[1] == "UNREADY: mqtt: down: connection refused"
    header = next(line for line in lines if line.startswith("MAPPING  "))
    for column in ("SHARD", "CHECKPOINT", "LAG", "ITERATOR AGE", "IN FLIGHT", "LAST ERROR"):
        assert column in header
    # Shards in partition order; the mapping's name only on its first row.
    assert _row(out, "clicks-to-metrics")[:8] == [
        "clicks-to-metrics", "metrics", "Enabled", "shardId-000000000000", "41", "15", "1h02m", "1"]
    assert "ValueError: bad record in batch" in next(line for line in lines if "000000000000" in line)
    assert _row(out, "  ")[0:5] == ["shardId-000000000001", "99", "0", "0.4s", "0"]
    assert _row(out, "photos-to-thumbnail") == [
        "photos-to-thumbnail", "thumbnail", "Enabled", "mqtt", "3", "12.5s", "-"]


async def test_router_status_json_and_default_url_from_config(
    admin: Admin, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTER_ADMIN_TOKEN", raising=False)
    port = admin.url.rpartition(":")[2]
    config = tmp_path / "router.yaml"
    config.write_text(f"http:\n  listen: 0.0.0.0:{port}\n  admin_token: {TOKEN}\n")
    code, out, _ = await run_cli(["status", "--config", str(config), "--json"], capsys)
    assert code == 0 and json.loads(out) == STATUS


async def test_router_status_token_from_config_and_refusals(
    guarded: Admin, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTER_ADMIN_TOKEN", raising=False)
    port = guarded.url.rpartition(":")[2]
    config = tmp_path / "router.yaml"
    config.write_text(f"http:\n  listen: 127.0.0.1:{port}\n  admin_token: {TOKEN}\n")
    code, out, _ = await run_cli(["status", "--config", str(config)], capsys)
    assert code == 0 and "photos-to-thumbnail" in out

    code, _, err = await run_cli(["status", "--url", guarded.url + "/status"], capsys)
    assert code == 1 and "401 unauthorized" in err and "ROUTER_ADMIN_TOKEN" in err

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free = unused.getsockname()[1]
    code, _, err = await run_cli(["status", "--url", f"127.0.0.1:{free}", "--timeout", "2"], capsys)
    assert code == 1 and "cannot connect" in err and "is the daemon running?" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("http:\n  listen: nowhere\n")
    code, _, err = await run_cli(["status", "--config", str(bad)], capsys)
    assert code == 2 and "http.listen" in err


async def test_router_console_script_end_to_end(admin: Admin) -> None:
    """The installed `router` entry point, as an operator types it."""
    script = Path(sys.executable).with_name("router")
    env = {k: v for k, v in os.environ.items() if k not in ("ROUTER_CONFIG", "ROUTER_ADMIN_TOKEN")}
    proc = await asyncio.to_thread(
        subprocess.run, [str(script), "status", "--url", admin.url],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "clicks-to-metrics" in proc.stdout and "shardId-000000000000" in proc.stdout


async def test_status_passes_the_log_redactor(http: aiohttp.ClientSession) -> None:
    error = "cannot reach kafka://router:hunter2@kafka:9092 (sasl_password=hunter2)"
    leaky = {"mappings": {"m": {"last_error": error}},
             "brokers": {"mqtt": {"up": False, "detail": "CONNACK refused: Authorization Bearer abcd1234efgh"}},
             "functions": {"f": {"environment": {"API_TOKEN": "tok-123456"}}}}
    status, body = await status_from(http, lambda: leaky)
    assert status == 200
    text = json.dumps(body)
    for secret in ("hunter2", "abcd1234efgh", "tok-123456"):
        assert secret not in text
    assert body["mappings"]["m"]["last_error"].startswith("cannot reach kafka://router:")  # still useful
