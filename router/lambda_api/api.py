"""The Lambda API's front door on `http.listen`: routes, authentication, limits, errors, one log line.

Every request is read once (bounded: 6 MB and a little for an Invoke, 1 MB for the rest), then
authenticated: with `lambda_api.credentials` configured it must carry a valid SigV4 signature by
one of them (boto3, the AWS CLI and every SDK sign this way); without credentials the API is only
served on a loopback listener, which the config's validation enforces. Then the operation runs;
any `LambdaApiError` becomes Lambda's error response, anything else a 500 ServiceException with
the details in the log, never in the response. Paths under `/2015-03-31/` that are not an
operation here answer UnknownOperationException, so the HTTP routes' catch-all never sees them.

Both the old (`/functions/`, `/event-source-mappings/`) and the current spellings of the list and
create paths are served: botocore dropped the trailing slash in 1.39.11, and older CLIs still send it.

Each request logs `lambda_api.request` with the operation, status, error code, duration, request
id and the access key id that signed it (the key id, never the secret or the Authorization header).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from router.config import Config
from router.delivery.async_invoker import AsyncInvoker
from router.delivery.event_queue import EventQueue
from router.lambda_api.errors import LambdaApiError
from router.lambda_api.functions import Functions
from router.lambda_api.invoke import MAX_SYNC_PAYLOAD_BYTES, Invoke
from router.lambda_api.mappings import EventSourceMappings
from router.lambda_api.reconciler import Reconciler
from router.lambda_api.registry import Registry
from router.lambda_api.sigv4 import SigV4Verifier
from router.observability.host_check import is_loopback_host
from router.observability.log_limit import LogLimiter
from router.runtime.pool import WorkerPool
from router.supervisor import MappingSupervisor

PREFIX = "/2015-03-31"
MAX_REQUEST_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024

Operation = Callable[[web.Request, bytes, str], Awaitable[web.Response]]


class LambdaApi:
    def __init__(self, config: Config, *, pool: WorkerPool, queue: EventQueue, invoker: AsyncInvoker,
                 supervisor: MappingSupervisor, reconciler: Reconciler, registry: Registry,
                 clock: Callable[[], float] = time.time) -> None:
        api = config.lambda_api
        assert api is not None
        self._verifier = (SigV4Verifier({c.access_key_id: c.secret_access_key.get_secret_value()
                                         for c in api.credentials}, clock=clock)
                          if api.credentials else None)
        started = clock()
        self.functions = Functions(config, started=started)
        self.invoke = Invoke(config, pool=pool, queue=queue, invoker=invoker)
        self.mappings = EventSourceMappings(reconciler=reconciler, registry=registry, supervisor=supervisor,
                                            started=started, clock=clock)
        self._log = structlog.get_logger("router.lambda_api")
        self._refusals = LogLimiter(self._log)  # refused requests: whoever sends them sets the rate

    def set_config(self, config: Config) -> None:
        """A reload changed the functions (mappings read the reconciler's config themselves)."""
        self.functions.config = config
        self.invoke.config = config

    def register(self, app: web.Application) -> None:
        routes: list[tuple[str, str, str, Operation]] = [
            ("POST", "/functions/{name}/invocations", "Invoke", self.invoke.__call__),
            ("GET", "/functions", "ListFunctions", self.functions.list),
            ("GET", "/functions/", "ListFunctions", self.functions.list),
            ("GET", "/functions/{name}", "GetFunction", self.functions.get),
            ("GET", "/functions/{name}/configuration", "GetFunctionConfiguration", self.functions.get_configuration),
            ("POST", "/event-source-mappings", "CreateEventSourceMapping", self.mappings.create),
            ("POST", "/event-source-mappings/", "CreateEventSourceMapping", self.mappings.create),
            ("GET", "/event-source-mappings", "ListEventSourceMappings", self.mappings.list),
            ("GET", "/event-source-mappings/", "ListEventSourceMappings", self.mappings.list),
            ("GET", "/event-source-mappings/{uuid}", "GetEventSourceMapping", self.mappings.get),
            ("PUT", "/event-source-mappings/{uuid}", "UpdateEventSourceMapping", self.mappings.update),
            ("DELETE", "/event-source-mappings/{uuid}", "DeleteEventSourceMapping", self.mappings.delete),
        ]
        for method, path, name, operation in routes:
            app.router.add_route(method, PREFIX + path, self._handler(name, operation))
        app.router.add_route("*", PREFIX + "/{tail:.*}", self._handler("Unknown", self._unknown))

    async def _unknown(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        raise LambdaApiError(404, "UnknownOperationException",
                             f"Unknown operation: {request.method} {request.path[:200]}")

    def _handler(self, name: str, operation: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            started = time.monotonic()
            request_id = str(uuid.uuid4())
            access_key: str | None = None
            try:
                limit = MAX_SYNC_PAYLOAD_BYTES + 1 if name == "Invoke" else MAX_REQUEST_BYTES
                body = await _read_body(request, limit)
                if body is None:
                    raise LambdaApiError(413, "RequestTooLargeException",
                                         f"Request must be smaller than {limit - 1 if name == 'Invoke' else limit} "
                                         f"bytes for the {name} operation")
                if self._verifier is None and not is_loopback_host(request.host):
                    # Unsigned is allowed on loopback only; a foreign Host there is DNS rebinding.
                    raise LambdaApiError(403, "AccessDeniedException",
                                         "Unsigned requests are accepted only when addressed to localhost.")
                if self._verifier is not None:
                    access_key = self._verifier.verify(method=request.method, raw_path=request.rel_url.raw_path,
                                                       raw_query=request.rel_url.raw_query_string,
                                                       headers=request.headers, body=body)
                response = await operation(request, body, request_id)
                code = None
            except LambdaApiError as exc:
                response, code = exc.response(request_id), exc.code
            except Exception as exc:  # our fault, not the caller's: details in the log only
                self._log.exception("lambda_api.failed", operation=name, request_id=request_id,
                                    error_type=type(exc).__name__)
                error = LambdaApiError(500, "ServiceException", "The service encountered an internal error.")
                response, code = error.response(request_id), error.code
            log = self._refusals.warning if response.status in (401, 403) else self._log.info
            log("lambda_api.request", operation=name, method=request.method, status=response.status,
                error_code=code, duration_ms=round((time.monotonic() - started) * 1000, 2),
                request_id=response.headers.get("x-amzn-RequestId", request_id),
                access_key_id=access_key, function=request.match_info.get("name"),
                mapping=request.match_info.get("uuid"))
            return response

        return handle


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` (checked before reading a declared length)."""
    if (request.content_length or 0) > limit:
        return None
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
