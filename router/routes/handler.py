"""HTTP routes: a request on `http.listen` invokes a function synchronously, as an API Gateway HTTP
API with a Lambda proxy integration (payload 2.0) does, and the function's result is the response.

One catch-all aiohttp route hands every request that router's own endpoints did not claim to this
handler, which matches it against the live `RouteTable`; the table is replaced whole when the
routes change (a reload), so aiohttp's router, frozen once the server runs, never needs to change.

What the client sees, as API Gateway answers (reference 2.3, 2.4):

* no route for the method and path: 404 `{"message":"Not Found"}` (HTTP APIs do not say 405);
* a body over the payload quota, or an event over Lambda's 6 MB invocation limit: 413
  `{"message":"Request Entity Too Large"}`, before any invocation;
* a function error, a timeout or a result API Gateway could not map: 500
  `{"message":"Internal Server Error"}`, never a stack trace (HTTP APIs say 500; the 502 of REST
  APIs is not what an HTTP API client gets);
* no answer within the integration timeout (30 s, API Gateway's own hard limit), including time
  spent waiting for a free execution environment when all of the function's are busy: 503
  `{"message":"Service Unavailable"}`. A request still waiting is taken out of the function's
  queue then, so a burst cannot queue without limit behind a stream backlog, and an invocation
  already running is abandoned: its environment frees itself when the function returns.

A client that disconnects does not cancel the invocation (aiohttp does not cancel handlers), so the
environment finishes and is reused. Every response carries `apigw-requestid`, the event's
`requestContext.requestId`, and each request is one `http.request` log line.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from router.config import Config, HttpRoute
from router.events.apigw import (
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    HttpRequest,
    HttpResponse,
    error_response,
    request_event,
    response_from_result,
)
from router.observability.metrics import Metrics
from router.routes.route_table import RouteTable
from router.runtime.pool import WorkerPool
from router.runtime.result import UnknownFunction

INTEGRATION_TIMEOUT_SECONDS = 30.0
_READ_CHUNK = 256 * 1024


class HttpRoutes:
    def __init__(
        self,
        config: Config,
        pool: WorkerPool,
        *,
        metrics: Metrics,
        log: Any = None,
        clock: Any = time.time,
        timeout: float = INTEGRATION_TIMEOUT_SECONDS,
    ) -> None:
        self._config = config
        self._pool = pool
        self._metrics = metrics
        self._log = log or structlog.get_logger("router.http")
        self._clock = clock
        self._timeout = timeout
        self._api_id = "router"
        self._routes: dict[str, HttpRoute] = {}
        self._table = RouteTable([])
        self.set_routes(config.http_routes)

    def set_routes(self, routes: Mapping[str, HttpRoute]) -> None:
        """Serve exactly `routes` from the next request on (validated already, as a whole)."""
        self._table = RouteTable(route.route(name) for name, route in routes.items())
        self._routes = dict(routes)

    def register(self, app: web.Application) -> None:
        """Add the catch-all; call it after every endpoint of router's own, which then win."""
        app.router.add_route("*", "/{path:.*}", self.handle)

    def status(self) -> dict[str, Any]:
        return {name: {"route_key": route.route(name).route_key, "function": route.function_name}
                for name, route in sorted(self._routes.items())}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        route_name: str | None = None
        function: str | None = None
        response = await self._respond(request, request_id)
        if isinstance(response, tuple):
            response, route_name, function = response
        answer = web.Response(status=response.status, body=response.body)
        for name, value in response.headers:
            answer.headers.add(name, value)
        answer.headers["apigw-requestid"] = request_id
        duration_ms = round((time.monotonic() - started) * 1000, 2)
        self._metrics.http_requests.labels(route=route_name or "-", status=str(response.status)).inc()
        self._log.info("http.request", method=request.method, path=request.path, status=response.status,
                       duration_ms=duration_ms, request_id=request_id, route=route_name, function=function)
        return answer

    async def _respond(self, request: web.Request, request_id: str) -> HttpResponse | tuple[HttpResponse, str, str]:
        match = self._table.match(request.method, request.rel_url.raw_path)
        if match is None:
            return error_response(404, "Not Found")
        route = self._routes.get(match.route.name)
        if route is None:  # replaced between the match and now
            return error_response(404, "Not Found")
        name, function = match.route.name, route.function_name
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return error_response(413, "Request Entity Too Large"), name, function
        body = await _read_body(request, MAX_BODY_BYTES)
        if body is None:
            return error_response(413, "Request Entity Too Large"), name, function
        peer = request.remote or ""
        http_request = HttpRequest(
            method=request.method, raw_path=request.rel_url.raw_path,
            raw_query_string=request.rel_url.raw_query_string,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=body, source_ip=peer, protocol=f"HTTP/{request.version.major}.{request.version.minor}",
            host=request.host,
        )
        event = request_event(http_request, match, request_id=request_id, api_id=self._api_id,
                              account_id=self._config.account_id, now=self._clock())
        payload = json.dumps(event, separators=(",", ":")).encode()
        if len(payload) > MAX_EVENT_BYTES:
            return error_response(413, "Request Entity Too Large"), name, function
        try:
            result = await asyncio.wait_for(self._pool.invoke(function, payload, request_id=request_id),
                                            self._timeout)
        except TimeoutError:
            self._log.warning("http.timeout", route=name, function=function, request_id=request_id,
                              timeout_seconds=self._timeout)
            return error_response(503, "Service Unavailable"), name, function
        except UnknownFunction:  # the function was removed by a reload a moment ago
            return error_response(500, "Internal Server Error"), name, function
        except Exception as exc:  # the pool could not run it (closing, broken): not the client's fault
            self._log.error("http.invoke_failed", route=name, function=function, request_id=request_id,
                            error_type=type(exc).__name__, error=str(exc)[:300])
            return error_response(503, "Service Unavailable"), name, function
        if not result.ok:
            return error_response(500, "Internal Server Error"), name, function
        return response_from_result(result.payload), name, function


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` (a chunked upload has no Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
