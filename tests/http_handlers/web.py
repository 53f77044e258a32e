"""Handlers for the HTTP-route tests, written as users write them for API Gateway HTTP APIs."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

app = APIGatewayHttpResolver()


@app.get("/hello/<name>")
def hello(name: str) -> dict[str, Any]:
    query = app.current_event.query_string_parameters or {}
    return {"message": f"hello {name}", "lang": query.get("lang"), "route": app.current_event.route_key}


@app.post("/echo")
def echo() -> Response[bytes]:
    event = app.current_event
    raw = base64.b64decode(event.body or "") if event.is_base64_encoded else (event.body or "").encode()
    # bytes: Powertools base64-encodes the body and sets isBase64Encoded, router decodes it again
    return Response(status_code=201, content_type="application/octet-stream", body=raw,
                    headers={"x-length": str(len(event.body or ""))})


def powertools(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)


def raw(event: dict[str, Any], context: Any) -> Any:
    """Echoes the event itself (the inferred-format path: a dict without statusCode)."""
    if event.get("rawPath", "").endswith("/fail"):
        raise RuntimeError("secret stack detail")
    if event.get("rawPath", "").endswith("/slow"):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "3")))
    if event.get("rawPath", "").endswith("/cookies"):
        return {"statusCode": 302, "headers": {"location": "/next"}, "cookies": ["a=1; Path=/", "b=2"], "body": ""}
    return {"event": event, "pid": os.getpid()}


def text(event: dict[str, Any], context: Any) -> str:
    return "plain " + json.dumps(event.get("pathParameters"))
