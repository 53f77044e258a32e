"""The webhook push source: MinIO/RustFS/Ceph/versitygw webhook targets and SeaweedFS's filer webhook.

`POST /webhooks/s3` takes any S3-style notification body (shape detected from the payload);
`POST /webhooks/seaweedfs` takes SeaweedFS filer events. Senders retry anything but a 2xx, so the
status codes are the contract:

* 200 only after every matching record is durably queued (or the body held nothing to queue);
* 400 for a body that is not a notification, after it was durably dead-lettered with the reason;
* 401 without the right `Authorization: Bearer <http.webhook_token>` (compared in constant time;
  the presented token is never logged);
* 413 for bodies over `http.max_body_bytes`;
* 503 when the queue could not take the records (shutting down, disk trouble): retry later.

MinIO has probed its endpoint with `HEAD` and, before 2020, with an empty `POST`; both are
answered 200 without authentication or queueing, since they carry nothing.
"""

from __future__ import annotations

import hmac
from typing import Any

import structlog
from aiohttp import web

from router.config import Config
from router.events.s3 import Store
from router.intake import Intake
from router.observability.log_limit import LogLimiter
from router.observability.metrics import Metrics
from router.sources.bucket_notifications import NotificationRouter

S3_PATH = "/webhooks/s3"
SEAWEEDFS_PATH = "/webhooks/seaweedfs"
_READ_CHUNK = 64 * 1024


class _TooLarge(Exception):
    pass


class WebhookReceiver:
    def __init__(self, config: Config, router: NotificationRouter, *, metrics: Metrics,
                 intake: Intake | None = None, log: Any = None) -> None:
        self._intake = intake or Intake()
        token = config.http.webhook_token
        self._token = token.get_secret_value().encode("utf-8") if token is not None else None
        self._max_body = config.http.max_body_bytes
        self._router = router
        self._metrics = metrics
        self._log = log or structlog.get_logger("router.webhook")
        self._refusals = LogLimiter(self._log)  # refused pushes: the sender sets their rate

    def register(self, app: web.Application) -> None:
        routes: tuple[tuple[str, Store], ...] = ((S3_PATH, "auto"), (SEAWEEDFS_PATH, "seaweedfs"))
        for path, store in routes:
            app.router.add_route("POST", path, self._handler(store))
            app.router.add_route("HEAD", path, self._probe)

    async def _probe(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    def _handler(self, store: Store) -> Any:
        async def handle(request: web.Request) -> web.Response:
            return await self._receive(request, store)

        return handle

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return False  # no token configured: nobody may push
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        presented = credentials.strip().encode("utf-8", "replace")
        # Compare even for a wrong scheme, so timing says nothing about which part was wrong.
        same = hmac.compare_digest(presented, self._token)
        return same and scheme.lower() == "bearer"

    async def _read(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max_body:
            raise _TooLarge
        body = bytearray()
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            body += chunk
            if len(body) > self._max_body:
                raise _TooLarge
        return bytes(body)

    async def _receive(self, request: web.Request, store: Store) -> web.Response:
        source = "seaweedfs" if store == "seaweedfs" else "webhook"
        if request.content_length == 0 or not request.body_exists:
            return web.json_response({"accepted": 0, "note": "empty body: connectivity check"})
        if not self._authorized(request):
            self._count(source, "unauthorized")
            self._refusals.warning("webhook.unauthorized", path=request.path, remote=request.remote,
                              authorization="missing" if "Authorization" not in request.headers else "wrong")
            return web.json_response({"error": "unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="router"'})
        if self._intake.paused:  # router.intake: this replica is being emptied; another takes it
            self._count(source, "paused")
            return web.json_response({"error": "intake paused on this replica; retry"}, status=503,
                                     headers={"Retry-After": "1"})
        try:
            body = await self._read(request)
        except _TooLarge:
            self._count(source, "too_large")
            self._refusals.warning("webhook.too_large", path=request.path, remote=request.remote,
                              content_length=request.content_length, limit=self._max_body)
            return web.json_response({"error": f"body over {self._max_body} bytes"}, status=413)
        if not body:
            return web.json_response({"accepted": 0, "note": "empty body: connectivity check"})
        try:
            result = await self._router.accept(body, transport="webhook", store=store)
        except Exception as exc:
            self._log.error("webhook.not_queued", path=request.path, error_type=type(exc).__name__,
                            error=str(exc)[:300])
            return web.json_response({"error": "not queued; retry"}, status=503, headers={"Retry-After": "1"})
        if result.outcome == "malformed":
            return web.json_response({"error": "malformed notification", "reason": result.reason}, status=400)
        return web.json_response({
            "outcome": result.outcome, "records": result.records, "queued": result.queued,
            "duplicates": result.duplicates, "unmatched": result.unmatched,
        })

    def _count(self, source: str, outcome: str) -> None:
        self._metrics.notifications.labels(source=source, outcome=outcome).inc()
