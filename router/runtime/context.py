"""The `context` argument of `handler(event, context)`, attribute for attribute as awslambdaric builds it.

Handlers written for Lambda (and libraries such as aws-lambda-powertools) read these attributes
without checking them, so types matter as much as values: `memory_limit_in_mb` is a str,
`identity` is never None, `client_context` is None unless a synchronous caller sent one, and the
remaining time counts down from the same deadline the daemon enforces.

Imported inside worker processes before the handler: standard library only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

FUNCTION_VERSION = "$LATEST"


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, cognito_identity_id: str | None = None, cognito_identity_pool_id: str | None = None) -> None:
        self.cognito_identity_id = cognito_identity_id
        self.cognito_identity_pool_id = cognito_identity_pool_id

    def __repr__(self) -> str:
        return (
            f"CognitoIdentity([cognito_identity_id={self.cognito_identity_id},"
            f"cognito_identity_pool_id={self.cognito_identity_pool_id}])"
        )


class Client:
    """The mobile app that made the call (ClientContext.client)."""

    __slots__ = ("app_package_name", "app_title", "app_version_code", "app_version_name", "installation_id")

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.installation_id: Any = data.get("installation_id")
        self.app_title: Any = data.get("app_title")
        self.app_version_name: Any = data.get("app_version_name")
        self.app_version_code: Any = data.get("app_version_code")
        self.app_package_name: Any = data.get("app_package_name")

    def __repr__(self) -> str:
        return (
            f"Client([installation_id={self.installation_id},app_title={self.app_title},"
            f"app_version_name={self.app_version_name},app_version_code={self.app_version_code},"
            f"app_package_name={self.app_package_name}])"
        )


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, data: Mapping[str, Any]) -> None:
        client = data.get("client")
        # As awslambdaric: a client object only when the caller sent one.
        self.client: Client | None = Client(client) if isinstance(client, Mapping) else None
        self.custom: Any = data.get("custom")
        self.env: Any = data.get("env")

    def __repr__(self) -> str:
        return f"ClientContext([custom={self.custom},env={self.env},client={self.client}])"


def make_client_context(data: Mapping[str, Any] | None) -> ClientContext | None:
    return None if data is None else ClientContext(data)


def new_log_stream_name(now: datetime | None = None) -> str:
    """One per execution environment, in Lambda's `YYYY/MM/DD/[$LATEST]<32 hex>` shape."""
    day = (now or datetime.now(UTC)).strftime("%Y/%m/%d")
    return f"{day}/[{FUNCTION_VERSION}]{uuid.uuid4().hex}"


class LambdaContext:
    """What the handler sees. Built fresh for every invocation by the worker."""

    def __init__(
        self,
        *,
        aws_request_id: str,
        deadline_ms: int,
        invoked_function_arn: str,
        function_name: str,
        memory_limit_in_mb: str,
        log_group_name: str,
        log_stream_name: str,
        function_version: str = FUNCTION_VERSION,
        client_context: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
        tenant_id: str | None = None,
        log_sink: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.aws_request_id = aws_request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = function_name
        self.function_version = function_version
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.client_context = make_client_context(client_context)
        ids = identity or {}
        self.identity = CognitoIdentity(ids.get("cognitoIdentityId"), ids.get("cognitoIdentityPoolId"))
        self.tenant_id = tenant_id
        self._deadline_ms = deadline_ms
        self._log_sink = log_sink
        self._clock = clock

    def get_remaining_time_in_millis(self) -> int:
        remaining = self._deadline_ms - int(self._clock() * 1000)
        return remaining if remaining > 0 else 0

    def log(self, msg: Any) -> None:
        """Write to the function's log as is, without a level prefix (awslambdaric's behaviour)."""
        text = str(msg)
        if self._log_sink is not None:
            self._log_sink(text)
        else:
            print(text, end="")

    def __repr__(self) -> str:
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},log_group_name={self.log_group_name},"
            f"log_stream_name={self.log_stream_name},function_name={self.function_name},"
            f"memory_limit_in_mb={self.memory_limit_in_mb},function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},client_context={self.client_context},"
            f"identity={self.identity},tenant_id={self.tenant_id}])"
        )


def report_line(request_id: str, *, duration_ms: float, billed_duration_ms: int, memory_size_mb: int,
                max_memory_used_mb: int, init_duration_ms: float | None = None, error_type: str | None = None) -> str:
    """Lambda's REPORT line, the last of every invocation in its log stream."""
    line = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: {billed_duration_ms} ms"
            f"\tMemory Size: {memory_size_mb} MB\tMax Memory Used: {max_memory_used_mb} MB")
    if init_duration_ms is not None:
        line += f"\tInit Duration: {init_duration_ms:.2f} ms"
    if error_type:
        line += f"\tStatus: error\tError Type: {error_type}"
    return line
