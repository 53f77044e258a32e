"""HTTP requests as API Gateway HTTP API payload-format 2.0 events, and function results back to HTTP.

A handler written for an HTTP API (plain, or on Powertools' `APIGatewayHttpResolver`) reads the
event AWS builds and returns what API Gateway maps to a response, so both directions copy AWS
field for field (reference 1 and 2):

Request event
* `headers`: names lower-cased, repeats joined with "," (no space); the `Cookie` header is not in
  `headers` but split on ";" into `cookies`. API Gateway adds `x-forwarded-for` (the peer appended
  to any chain a proxy in front already sent), `x-forwarded-proto`, `x-forwarded-port`,
  `x-amzn-trace-id` and always carries `content-length`; router adds the same, keeping values a
  proxy in front of it already set (proto "http" and the Host header's port, else 80, otherwise).
  A trace id router makes up is derived from the request id, so the event is a pure function of
  its inputs.
* `rawPath` and `http.path` are decoded (observed on AWS: `%40`→`@`, `%2F`→`/`); `rawQueryString`
  stays as sent; `queryStringParameters` are decoded, `+` as a space (observed on REST APIs,
  assumed for HTTP APIs), repeated keys joined with ",".
* Keys AWS omits rather than sending empty: `cookies`, `queryStringParameters`, `pathParameters`,
  `stageVariables` (router has no stage variables), `body`.
* `isBase64Encoded` (reference 1.5): text only for `text/*`, `application/json`, `application/xml`
  and `application/javascript` (media type compared case-insensitively, parameters ignored);
  everything else, a missing Content-Type included, is base64 — also with no body, as in AWS's
  own GET sample. A "text" body that is not UTF-8 goes as base64 too (router's choice: it cannot
  be a JSON string without losing bytes).
* `requestContext.time` is CLF (`12/Mar/2024:19:03:58 +0000`, English month), `timeEpoch` in
  milliseconds, stage `$default` (so Powertools strips nothing from the path), `domainName` the
  Host without its port, `domainPrefix` its first label.

Response (reference 2.1, 2.2)
* A dict with a `statusCode` key is a structured response: `headers` (one string per name),
  `cookies` (one Set-Cookie line each), `body` (absent → empty), `isBase64Encoded` (body decoded
  whatever the content type). No content-type header → `application/json`, as SAM does.
  `multiValueHeaders` is a payload-1.0 field and is ignored, as AWS and SAM ignore it.
* Anything else is inferred: 200, `application/json`, the value's JSON text, a string's content
  without quotes; `None` gives `null` (the documented "any JSON value" rule; AWS unconfirmed).
* A structured response API Gateway could not map — `statusCode` not an integer in 100..599,
  headers/cookies/body of the wrong type, a header that is not a valid HTTP field, invalid
  base64 (strict: no whitespace) — becomes 500 `{"message":"Internal Server Error"}`, HTTP APIs'
  text (REST APIs say 502 "Internal server error").
* Content-Length, Transfer-Encoding and Connection from a function are dropped: the server frames
  the body it actually sends (router's choice).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, unquote_plus

from router.routes.route_table import RouteMatch

# API Gateway HTTP API payload quota; a larger request body is answered 413 without invoking.
MAX_BODY_BYTES = 10 * 1024 * 1024
# Lambda's synchronous invocation payload (the whole event, base64 body included); above it the
# invocation is refused and an HTTP API answers 500. Base64 makes a ~4.5 MB binary upload too big.
MAX_EVENT_BYTES = 6 * 1024 * 1024

STAGE = "$default"
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# RFC 9110 field names (token) and values (no CR, LF or NUL).
_FIELD_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")
# Framing is the server's business: it sends the body it has.
_DROPPED_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request, transport-neutral; the HTTP server fills it."""

    method: str
    raw_path: str  # request-line path, still percent-encoded, no query
    raw_query_string: str  # as sent, without "?"
    headers: Sequence[tuple[str, str]]  # as received: any case, repeats allowed
    body: bytes
    source_ip: str  # the TCP peer
    protocol: str  # "HTTP/1.1"
    host: str  # the Host header ("api.example.test:8080")


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def text_content(content_type: str | None) -> bool:
    """Whether a body of this Content-Type travels as text (else base64), reference 1.5."""
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith("text/") or media_type in _TEXT_TYPES


def request_event(
    request: HttpRequest, match: RouteMatch, *, request_id: str, api_id: str, account_id: str, now: float
) -> dict[str, Any]:
    """The payload-2.0 event API Gateway would send for this request and matched route."""
    epoch_ms = round(now * 1000)
    seconds = epoch_ms // 1000
    headers, cookies = _headers(request, request_id, seconds)
    path = unquote(request.raw_path)
    domain = _domain_name(request.host)
    route_key = match.route.route_key
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": request.raw_query_string,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    query = _query_parameters(request.raw_query_string)
    if query:
        event["queryStringParameters"] = query
    if match.path_parameters:
        event["pathParameters"] = dict(match.path_parameters)
    event["requestContext"] = {
        "accountId": account_id,
        "apiId": api_id,
        "domainName": domain,
        "domainPrefix": domain.split(".", 1)[0],
        "http": {
            "method": request.method,
            "path": path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": STAGE,
        "time": _clf_time(seconds),
        "timeEpoch": epoch_ms,
    }
    is_text = text_content(headers.get("content-type"))
    if request.body:
        text = _utf8(request.body) if is_text else None
        if text is None:
            is_text = False
            event["body"] = base64.b64encode(request.body).decode("ascii")
        else:
            event["body"] = text
    event["isBase64Encoded"] = not is_text
    return event


def _headers(request: HttpRequest, request_id: str, seconds: int) -> tuple[dict[str, str], list[str]]:
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
        elif key in headers:
            headers[key] = f"{headers[key]},{value}"
        else:
            headers[key] = value
    headers.setdefault("content-length", str(len(request.body)))
    chain = headers.get("x-forwarded-for")
    headers["x-forwarded-for"] = f"{chain}, {request.source_ip}" if chain else request.source_ip
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-forwarded-port", _host_port(request.host) or "80")
    if "x-amzn-trace-id" not in headers:
        digest = hashlib.sha256(request_id.encode()).hexdigest()[:24]
        headers["x-amzn-trace-id"] = f"Root=1-{seconds:08x}-{digest}"
    return headers, cookies


def _split_host(host: str) -> tuple[str, str]:
    """(name, port) of a Host header; port "" when absent. IPv6 literals keep their brackets."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            rest = host[end + 1 :]
            return host[: end + 1], rest[1:] if rest.startswith(":") else ""
        return host, ""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        return name, port
    return host, ""


def _domain_name(host: str) -> str:
    return _split_host(host)[0]


def _host_port(host: str) -> str:
    return _split_host(host)[1]


def _query_parameters(raw: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in raw.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        key = unquote_plus(name)
        decoded = unquote_plus(value)
        params[key] = f"{params[key]},{decoded}" if key in params else decoded
    return params


def _clf_time(seconds: int) -> str:
    t = datetime.fromtimestamp(seconds, UTC)
    return f"{t.day:02d}/{_MONTHS[t.month - 1]}/{t.year:04d}:{t.hour:02d}:{t.minute:02d}:{t.second:02d} +0000"


def _utf8(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def error_response(status: int, message: str) -> HttpResponse:
    """API Gateway's own answer: `{"message":"Not Found"}` and the like, as application/json."""
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    return HttpResponse(status, [("content-type", "application/json")], body)


class _Malformed(ValueError):
    """A structured response API Gateway could not turn into HTTP."""


def response_from_result(result: Any) -> HttpResponse:
    """The HTTP response API Gateway sends for a function's (JSON-decoded) result."""
    try:
        if isinstance(result, dict) and "statusCode" in result:
            return _structured(result)
        body = _encode(result) if isinstance(result, str) else _encode(_json_text(result))
    except _Malformed:
        return error_response(500, "Internal Server Error")
    return HttpResponse(200, [("content-type", "application/json")], body)


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        raise _Malformed("not JSON") from None


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (\ud800 in the JSON text)
        raise _Malformed("not UTF-8") from None


def _structured(result: dict[str, Any]) -> HttpResponse:
    status = result["statusCode"]
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise _Malformed("statusCode")
    headers: list[tuple[str, str]] = []
    raw_headers = result.get("headers")
    if raw_headers is not None:
        if not isinstance(raw_headers, dict):
            raise _Malformed("headers")
        for name, value in raw_headers.items():
            text = _header_value(value)
            if not isinstance(name, str) or not _FIELD_NAME_RE.fullmatch(name) or _BAD_VALUE_RE.search(text):
                raise _Malformed("header")
            if name.lower() not in _DROPPED_RESPONSE_HEADERS:
                headers.append((name, text))
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("content-type", "application/json"))
    cookies = result.get("cookies")
    if cookies is not None:
        if not isinstance(cookies, list):
            raise _Malformed("cookies")
        for cookie in cookies:
            if not isinstance(cookie, str) or _BAD_VALUE_RE.search(cookie):
                raise _Malformed("cookie")
            headers.append(("set-cookie", cookie))
    body = result.get("body")
    if body is None:
        body = ""
    if not isinstance(body, str):
        raise _Malformed("body")
    encoded = result.get("isBase64Encoded", False)
    if encoded is None:
        encoded = False
    if not isinstance(encoded, bool):
        raise _Malformed("isBase64Encoded")
    if encoded:
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise _Malformed("body is not base64") from None
    else:
        data = _encode(body)
    return HttpResponse(status, headers, data)


def _header_value(value: Any) -> str:
    """A header value as API Gateway would send it: a string as is, a number or boolean as JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise _Malformed("header value")
