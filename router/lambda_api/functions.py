"""ListFunctions, GetFunction and GetFunctionConfiguration for the configured functions.

Functions come from the config file only (router has no CreateFunction: code is deployed as files).
The documents are Lambda's FunctionConfiguration with what router knows; GetFunction has no `Code`
location, since there is no package to download. Environment variable values are not returned:
they are often `${VAR}` secrets, and the config file is where an operator reads them.
"""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from router.config import Config, FunctionConfig
from router.lambda_api.errors import invalid_parameter
from router.lambda_api.mapping_shapes import function_name

MAX_FUNCTIONS_PER_PAGE = 50


def runtime() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def architecture() -> str:
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def configuration(name: str, fn: FunctionConfig, config: Config, *, last_modified: float) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(last_modified, UTC)
    return {
        "FunctionName": name,
        "FunctionArn": config.function_arn(name),
        "Runtime": runtime(),
        "Role": config.role_arn(name),
        "Handler": fn.handler,
        "CodeSize": 0,
        "Description": fn.description,
        "Timeout": fn.timeout,
        "MemorySize": fn.memory_size,
        "LastModified": f"{stamp:%Y-%m-%dT%H:%M:%S}.{stamp.microsecond // 1000:03d}+0000",
        "CodeSha256": "",
        "Version": "$LATEST",
        "TracingConfig": {"Mode": "PassThrough"},
        "PackageType": "Zip",
        "Architectures": [architecture()],
        "EphemeralStorage": {"Size": 512},
        "State": "Active",
        "LastUpdateStatus": "Successful",
    }


def page_size(request: web.Request, most: int) -> int:
    raw = request.query.get("MaxItems")
    if raw is None:
        return most
    try:
        value = int(raw)
    except ValueError:
        raise invalid_parameter(f"MaxItems: {raw[:32]!r} is not an integer") from None
    if not 1 <= value <= 10_000:
        raise invalid_parameter("MaxItems: must be between 1 and 10000")
    return min(value, most)


def marker(request: web.Request) -> int:
    raw = request.query.get("Marker") or "0"
    if not raw.isdigit():
        raise invalid_parameter("Marker: not a marker this API returned")
    return int(raw)


def page(items: list[Any], request: web.Request, most: int) -> tuple[list[Any], str | None]:
    start, size = marker(request), page_size(request, most)
    chunk = items[start:start + size]
    return chunk, str(start + size) if start + size < len(items) else None


class Functions:
    def __init__(self, config: Config, *, started: float) -> None:
        self.config = config
        self._started = started

    def _document(self, name: str) -> dict[str, Any]:
        return configuration(name, self.config.functions[name], self.config, last_modified=self._started)

    async def list(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        items, next_marker = page(sorted(self.config.functions), request, MAX_FUNCTIONS_PER_PAGE)
        document: dict[str, Any] = {"Functions": [self._document(name) for name in items]}
        if next_marker is not None:
            document["NextMarker"] = next_marker
        return web.json_response(document, headers={"x-amzn-RequestId": request_id})

    async def get(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        name = function_name(request.match_info["name"], self.config, qualifier=request.query.get("Qualifier"))
        fn = self.config.functions[name]
        return web.json_response({
            "Configuration": self._document(name),
            "Concurrency": {"ReservedConcurrentExecutions": fn.reserved_concurrent_executions},
            "Tags": {},
        }, headers={"x-amzn-RequestId": request_id})

    async def get_configuration(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        name = function_name(request.match_info["name"], self.config, qualifier=request.query.get("Qualifier"))
        return web.json_response(self._document(name), headers={"x-amzn-RequestId": request_id})
