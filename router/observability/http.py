"""Admin HTTP endpoints: liveness, readiness, Prometheus metrics and the status document.

Readiness means "assigned and moving", not "the process exists": it reads the same `ProgressBoard`
as the systemd watchdog, so a consumer that silently stopped turns the pod unready and the unit
unwatched at the same time, and the body names what is stuck.

Authentication. When the listen address is not loopback (`require_token`), `/status` and `/metrics`
need `Authorization: Bearer <http.admin_token>` (compared in constant time). `/status` carries error
text from handlers and `/metrics` the topology (mappings, functions, shards, lag), neither of which
belongs to whoever can reach the port. The probes `/healthz` and `/readyz` stay open: the kubelet and
load balancers cannot present a token, and they reveal only "ok"/"unready" plus tracker names.
Prometheus scrapes with the token (`authorization: {credentials_file: ...}` in the scrape job; see
deploy/kubernetes/service.yaml). On loopback no token is asked for: whoever can reach 127.0.0.1
can already read the config file.

The `/status` document (built by the composition root from each part's `status()`; every key but
`mappings` may be missing while a part is not built yet)::

    {
      "mappings": {
        "<mapping name>": {
          "kind": "stream" | "bucket",
          "function": "<function name>",
          "state": "Enabled" | "Disabled" | "Creating" | ...,      # Lambda's ESM State words
          "shards": {                                              # stream mappings: shards owned
            "shardId-000000000003": {
              "checkpoint": "41" | null,                           # last sequence number done
              "high_watermark": "57" | null,                       # next offset the broker will write
              "lag": 15,                                           # records not yet checkpointed
              "iterator_age_seconds": 1.25,                        # age of the last record sent
              "in_flight": 1                                       # batches being processed
            }
          },
          "transport": "mqtt" | "webhook",                         # bucket mappings only
          "queue": {"depth": 3, "oldest_age_seconds": 12.5},       # bucket mappings: async queue
          "last_error": "ValueError: bad record" | null
        }
      },
      "event_invokes": {"<function>": {"depth": 0, ...}},         # lambda_api: Invoke Event queues
      "brokers": {"kafka": {"up": true, "detail": ""}},
      "functions": {"<function name>": {...}},                     # the worker pool's view
      "problems": ["kafka: down: connection refused"]              # board.problems()
    }
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr

from router.config import HttpConfig
from router.intake import Intake
from router.observability.host_check import is_loopback_host
from router.observability.http_limits import LimitedSite
from router.observability.log_limit import LogLimiter
from router.observability.logging import redact
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.observability.readiness import is_ready, readiness

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# How often the loop-lag probe wakes, and how late it may wake before /healthz says the loop is stuck.
LAG_PROBE_INTERVAL = 0.5
MAX_LOOP_LAG_SECONDS = 5.0


class HttpBindError(OSError):
    """The admin port could not be bound; `strerror` is the reason, `str()` the whole line."""

    def __init__(self, err: int, reason: str, address: str) -> None:
        super().__init__(err, reason)
        self.address = address

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.strerror}"


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


class LoopLagProbe:
    """Measures how late the event loop wakes up, so /healthz can fail on a loop that crawls.

    A loop that is fully blocked cannot answer /healthz at all (the probe times out, which is the
    right verdict); this catches the loop that answers, but seconds late, because something keeps
    blocking it.
    """

    def __init__(self, interval: float = LAG_PROBE_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.lag = 0.0
        self.last_beat = clock()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = self.clock()
            await asyncio.sleep(self.interval)
            now = self.clock()
            self.lag = max(0.0, now - before - self.interval)
            self.last_beat = now

    def current_lag(self) -> float:
        """The worst of the last measured lag and the time since the probe last ran (if overdue)."""
        overdue = self.clock() - self.last_beat - self.interval
        return max(self.lag, overdue if self._task is not None else 0.0)

    def start(self) -> None:
        if self._task is None:
            self.last_beat = self.clock()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class AdminEndpoints:
    def __init__(
        self,
        *,
        board: ProgressBoard,
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        liveness: Callable[[], bool],
        paths: Callable[[], set[str]] = set,
        admin_token: SecretStr | None,
        require_token: bool,
        log: Any = None,
        max_loop_lag: float = MAX_LOOP_LAG_SECONDS,
        lag_probe: LoopLagProbe | None = None,
        intake: Intake | None = None,
        set_intake: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.intake = intake or Intake()
        self.set_intake = set_intake
        self.board = board
        self.metrics = metrics
        self.status = status
        self.liveness = liveness
        self.paths = paths
        self.require_token = require_token
        self.max_loop_lag = max_loop_lag
        self.probe = lag_probe or LoopLagProbe()
        self.log = log if log is not None else structlog.get_logger("router.http")
        self.refusals = LogLimiter(self.log)
        self._token = admin_token.get_secret_value().encode() if admin_token is not None else None
        if require_token and not self._token:
            # Config validation refuses this; if it happens anyway, fail closed rather than open.
            self.log.error("http.admin_token_missing", detail="/status and /metrics will answer 401")
        self._last_ready: bool | None = None

    def register(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self._guarded(self.metrics_text))
        app.router.add_get("/status", self._guarded(self.status_json))
        if self.set_intake is not None:
            app.router.add_post("/intake/pause", self._guarded(self.pause_intake))
            app.router.add_post("/intake/resume", self._guarded(self.resume_intake))
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_startup(self, app: web.Application) -> None:
        self.probe.start()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.probe.stop()

    # -- auth -------------------------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        if not self.require_token:
            return True
        if not self._token:
            return False
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Header bytes that are not UTF-8 reach us as surrogate escapes: a wrong token, not a 500.
        return hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), self._token)

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.require_token and not is_loopback_host(request.host):
                self.refusals.warning("http.foreign_host", path=request.path, remote=request.remote)
                return web.json_response(
                    {"status": "forbidden", "detail": "on a loopback listener, address it as localhost or 127.0.0.1"},
                    status=403)
            if not self.authorized(request):
                self.refusals.warning("http.unauthorized", path=request.path, remote=request.remote)
                return web.json_response(
                    {"status": "unauthorized", "detail": "send Authorization: Bearer <http.admin_token>"},
                    status=401, headers={"WWW-Authenticate": 'Bearer realm="router"'},
                )
            return await handler(request)

        return guarded

    # -- handlers ---------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        lag = self.probe.current_lag()
        alive = self._call_liveness()
        body: dict[str, Any] = {"status": "ok", "loop_lag_seconds": round(lag, 3)}
        if not alive:
            body["status"] = "unhealthy"
            body["detail"] = "the worker pool cannot run work"
        elif lag > self.max_loop_lag:
            body["status"] = "unhealthy"
            body["detail"] = f"event loop lagging {lag:.1f}s behind"
        return web.json_response(body, status=200 if body["status"] == "ok" else 503, dumps=_dumps)

    def _call_liveness(self) -> bool:
        try:
            return bool(self.liveness())
        except Exception as exc:  # a broken liveness check must read as "not alive", not as a 500
            self.log.error("http.liveness_failed", error_type=type(exc).__name__, error=str(exc))
            return False

    async def readyz(self, request: web.Request) -> web.Response:
        """Per path (observability/readiness.py): unready only when no configured path can serve.
        Open to anyone, so it names paths and trackers, never error text."""
        by_path = readiness(self.board, self.paths(), detail=False)
        ready = is_ready(by_path) and not self.intake.paused
        if ready != self._last_ready:  # log the transition once, not once per probe
            if ready:
                self.log.info("router.ready")
            else:
                self.log.warning("router.unready", problems=self.board.problems())
            self._last_ready = ready
        body: dict[str, Any] = {"status": "ready" if ready else "unready",
                                "paths": {p: "ready" if r["ready"] else "unready" for p, r in by_path.items()}}
        if self.intake.paused:
            body["intake"] = "paused"  # router.intake: out of the Service while it is emptied
        if not ready:
            body["problems"] = sorted({problem for r in by_path.values() for problem in r["problems"]})
        return web.json_response(body, status=200 if ready else 503, dumps=_dumps)

    async def pause_intake(self, request: web.Request) -> web.Response:
        return await self._set_intake(True, request)

    async def resume_intake(self, request: web.Request) -> web.Response:
        return await self._set_intake(False, request)

    async def _set_intake(self, paused: bool, request: web.Request) -> web.Response:
        assert self.set_intake is not None
        if "Origin" in request.headers:
            # Browsers send Origin with every cross-site POST; `router intake` and curl do not. A
            # page in the operator's browser must not pause a loopback daemon.
            return web.json_response({"status": "forbidden", "detail": "admin actions take no Origin"},
                                     status=403, dumps=_dumps)
        await self.set_intake(paused)
        return web.json_response({"intake": self.intake.state}, dumps=_dumps)

    async def metrics_text(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def status_json(self, request: web.Request) -> web.Response:
        try:
            document = self.status()
        except Exception as exc:
            self.log.error("http.status_failed", error_type=type(exc).__name__, error=str(exc))
            return web.json_response(
                {"status": "error", "error_type": type(exc).__name__}, status=500, dumps=_dumps
            )
        # Handlers' error text and broker details pass the same redactor as log lines.
        return web.json_response(redact(document), dumps=_dumps)


def _ssl_context(http: HttpConfig) -> ssl.SSLContext | None:
    if http.ssl_certfile is None or http.ssl_keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(http.ssl_certfile, http.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise HttpBindError(errno.EINVAL, f"cannot load http.ssl_certfile/ssl_keyfile ({exc})", http.listen) from None
    return context


async def start_http(
    app: web.Application, http: HttpConfig, log: Any = None, *, shutdown_timeout: float = 10.0,
) -> web.AppRunner:
    """Serve `app` on http.listen with its limits (http_limits.py) and TLS if configured; raises
    HttpBindError (an OSError) naming the address when it cannot."""
    context = _ssl_context(http)
    refusals = LogLimiter(log if log is not None else structlog.get_logger("router.http"))
    # shutdown_timeout: how long cleanup() waits for requests in flight (the drain's budget).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           keepalive_timeout=http.keepalive_timeout_seconds)
    await runner.setup()
    host, port = http.host, http.port
    site = LimitedSite(runner, host, port, reuse_address=True, ssl_context=context,
                       max_connections=http.max_connections, header_timeout=http.header_timeout_seconds,
                       on_refused=lambda event, remote: refusals.warning(event, remote=remote))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (another router or another program is listening there)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = "address not available on this host"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges)"
        else:
            reason = exc.strerror or str(exc)
        raise HttpBindError(exc.errno or 0, reason, f"{host}:{port}") from None
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful after binding port 0 in tests and `router dev`)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the HTTP runner has no TCP address")
