"""Invoke (`POST /2015-03-31/functions/{FunctionName}/invocations`), as botocore sends it.

* `RequestResponse` (the default) runs the function in the worker pool and answers 200 with its
  result as the raw body. A function error is still 200, with `X-Amz-Function-Error: Unhandled` and
  Lambda's error object (a 5xx would make boto3 and the CLI retry, running the function again).
* `Event` stores the payload in the durable async queue (lane `invoke:<function>`) and answers 202
  only after it is on disk; the async invoker runs it with the function's `event_invoke_config`
  (retries, maximum event age, destinations), as Lambda's own event queue does.
* `DryRun` checks the function and the payload and answers 204.

The payload must be JSON (an empty body is `{}`), at most 6 MB synchronously and 1 MB as an Event
(413 RequestTooLargeException beyond). `X-Amz-Client-Context` is base64 JSON given to the handler
as `context.client_context`; `X-Amz-Log-Type: Tail` returns the invocation's last 4 KB of log lines
base64 in `X-Amz-Log-Result`. A function at its concurrency limit answers 429
TooManyRequestsException with Lambda's `Reason`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from router.config import Config
from router.delivery.async_invoker import AsyncInvoker
from router.delivery.async_queue import EventTooLarge, QueuedEvent
from router.delivery.event_queue import EventQueue
from router.lambda_api.errors import LambdaApiError
from router.lambda_api.mapping_shapes import function_name
from router.runtime.pool import WorkerPool, is_throttled
from router.runtime.result import UnknownFunction
from router.supervisor import INVOKE_LANE_PREFIX

MAX_SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024
MAX_EVENT_PAYLOAD_BYTES = 1024 * 1024
MAX_CLIENT_CONTEXT_BYTES = 3583
LOG_TAIL_BYTES = 4096
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


def _invalid_content(message: str) -> LambdaApiError:
    return LambdaApiError(400, "InvalidRequestContentException", message)


def _too_large(size: int, limit: int) -> LambdaApiError:
    return LambdaApiError(413, "RequestTooLargeException",
                          f"Request must be smaller than {limit} bytes for the InvokeFunction operation "
                          f"(got {size})")


def parse_payload(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid_content(f"Could not parse request body into json: Could not parse payload into json: "
                               f"{exc}") from None


def client_context(header: str | None) -> dict[str, Any] | None:
    if header is None or header == "":
        return None
    if len(header) > MAX_CLIENT_CONTEXT_BYTES:
        raise _invalid_content(f"Client context must be at most {MAX_CLIENT_CONTEXT_BYTES} bytes")
    try:
        value = json.loads(base64.b64decode(header, validate=True))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise _invalid_content("Client context must be a valid Base64-encoded JSON object.")
    return value


def log_tail(log: str | None) -> str:
    data = (log or "").encode()[-LOG_TAIL_BYTES:]
    return base64.b64encode(data).decode()


class Invoke:
    def __init__(self, config: Config, *, pool: WorkerPool, queue: EventQueue, invoker: AsyncInvoker) -> None:
        self.config = config
        self._pool = pool
        self._queue = queue
        self._invoker = invoker

    async def __call__(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        name = function_name(request.match_info["name"], self.config, qualifier=request.query.get("Qualifier"))
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind not in INVOCATION_TYPES:
            raise LambdaApiError(400, "ValidationException",
                                 f"1 validation error detected: Value '{kind[:64]}' at 'invocationType' failed to "
                                 f"satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, "
                                 f"DryRun]")
        limit = MAX_EVENT_PAYLOAD_BYTES if kind == "Event" else MAX_SYNC_PAYLOAD_BYTES
        if len(body) > limit:
            raise _too_large(len(body), limit)
        event = parse_payload(body)
        context = client_context(request.headers.get("X-Amz-Client-Context"))
        headers = {"x-amzn-RequestId": request_id, "X-Amz-Executed-Version": "$LATEST"}
        if kind == "DryRun":
            return web.Response(status=204, headers=headers)
        if kind == "Event":
            try:
                await self._queue.enqueue([QueuedEvent(mapping=f"{INVOKE_LANE_PREFIX}{name}", function=name,
                                                       event=event, dedup_window=0)], dedup_window=0)
            except EventTooLarge as exc:  # the queue stores less than Lambda accepts (a Kafka queue)
                raise _too_large(exc.size, exc.limit) from None
            self._invoker.wake()
            return web.Response(status=202, headers={"x-amzn-RequestId": request_id})
        tail = request.headers.get("X-Amz-Log-Type") == "Tail"
        try:
            result = await self._pool.invoke(name, body if body.strip() else b"{}", request_id=request_id,
                                             client_context=context, capture_log=tail)
        except UnknownFunction:  # removed by a reload a moment ago
            raise LambdaApiError(404, "ResourceNotFoundException",
                                 f"Function not found: {self.config.function_arn(name)}") from None
        if is_throttled(result):
            raise LambdaApiError(429, "TooManyRequestsException", "Rate Exceeded.",
                                 reason="ReservedFunctionConcurrentInvocationLimitExceeded")
        headers["x-amzn-RequestId"] = result.request_id
        if result.function_error is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if tail:
            headers["X-Amz-Log-Result"] = log_tail(result.log)
        return web.Response(status=200, body=json.dumps(result.payload).encode(), headers=headers,
                            content_type="application/json")
