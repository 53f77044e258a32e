"""API Gateway HTTP API payload-2.0 events and the mapping of function results back to HTTP."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from router.events.apigw import (
    MAX_BODY_BYTES,
    HttpRequest,
    HttpResponse,
    error_response,
    request_event,
    response_from_result,
    text_content,
)
from router.routes.route_table import Route, RouteMatch, RouteTable

# Reference §1.6: the complete example, validated there against Powertools 3.37.0.
REFERENCE_EVENT: dict[str, Any] = {
    "version": "2.0",
    "routeKey": "POST /photos/{album}/{proxy+}",
    "rawPath": "/photos/holiday/2024/cat.jpg",
    "rawQueryString": "size=small&tag=cat&tag=pet&q=a%20b",
    "cookies": ["session=abc123", "theme=dark"],
    "headers": {
        "accept": "application/json",
        "content-length": "24",
        "content-type": "application/json",
        "host": "api.example.test:8080",
        "user-agent": "curl/8.5.0",
        "x-amzn-trace-id": "Root=1-65f0a6be-0123456789abcdef01234567",
        "x-custom": "one,two",
        "x-forwarded-for": "198.51.100.7",
        "x-forwarded-port": "8080",
        "x-forwarded-proto": "http",
    },
    "queryStringParameters": {"size": "small", "tag": "cat,pet", "q": "a b"},
    "pathParameters": {"album": "holiday", "proxy": "2024/cat.jpg"},
    "requestContext": {
        "accountId": "000000000000",
        "apiId": "router",
        "domainName": "api.example.test",
        "domainPrefix": "api",
        "http": {
            "method": "POST",
            "path": "/photos/holiday/2024/cat.jpg",
            "protocol": "HTTP/1.1",
            "sourceIp": "198.51.100.7",
            "userAgent": "curl/8.5.0",
        },
        "requestId": "Ux3sKhtxoAMEVlQ=",
        "routeKey": "POST /photos/{album}/{proxy+}",
        "stage": "$default",
        "time": "12/Mar/2024:19:03:58 +0000",
        "timeEpoch": 1710270238123,
    },
    "body": '{"caption":"sleepy cat"}',
    "isBase64Encoded": False,
}

NOW = 1710270238.123
TABLE = RouteTable(
    [
        Route("photos", "POST", "/photos/{album}/{proxy+}"),
        Route("hello", "GET", "/hello/{name}"),
        Route("upload", "POST", "/upload"),
        Route("fallback", "ANY", "$default"),
    ]
)


def _request(
    method: str = "GET",
    path: str = "/hello/world",
    query: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str = "api.example.test:8080",
) -> HttpRequest:
    return HttpRequest(
        method=method,
        raw_path=path,
        raw_query_string=query,
        headers=[("Host", host), *(headers or [])],
        body=body,
        source_ip="198.51.100.7",
        protocol="HTTP/1.1",
        host=host,
    )


def _event(request: HttpRequest, *, request_id: str = "Ux3sKhtxoAMEVlQ=", now: float = NOW) -> dict[str, Any]:
    match = TABLE.match(request.method, request.raw_path)
    assert match is not None
    return request_event(request, match, request_id=request_id, api_id="router", account_id="000000000000", now=now)


def _reference_request() -> HttpRequest:
    return _request(
        "POST",
        "/photos/holiday/2024/cat.jpg",
        "size=small&tag=cat&tag=pet&q=a%20b",
        [
            ("User-Agent", "curl/8.5.0"),
            ("Accept", "application/json"),
            ("Cookie", "session=abc123; theme=dark"),
            ("X-Custom", "one"),
            ("Content-Type", "application/json"),
            ("X-Custom", "two"),
            ("Content-Length", "24"),
            # A trace id the caller (or a proxy in front) sent is kept as it is.
            ("X-Amzn-Trace-Id", "Root=1-65f0a6be-0123456789abcdef01234567"),
        ],
        b'{"caption":"sleepy cat"}',
    )


def test_reference_example_field_for_field() -> None:
    event = _event(_reference_request())
    assert event == REFERENCE_EVENT
    assert list(event) == list(REFERENCE_EVENT)  # AWS's key order, for people reading logs


def test_request_without_body_query_cookies_or_variables_omits_those_keys() -> None:
    event = _event(_request("GET", "/nothing", headers=[("User-Agent", "ua")], host="localhost"))
    assert event["routeKey"] == "$default"
    assert event["requestContext"]["routeKey"] == "$default"
    for key in ("cookies", "queryStringParameters", "pathParameters", "stageVariables", "body"):
        assert key not in event
    assert event["rawQueryString"] == ""
    # AWS's own GET sample: no body, no content type, isBase64Encoded true.
    assert event["isBase64Encoded"] is True
    assert event["headers"]["content-length"] == "0"
    assert event["headers"]["x-forwarded-port"] == "80"
    assert event["requestContext"]["domainName"] == "localhost"
    assert event["requestContext"]["domainPrefix"] == "localhost"


def test_headers_lower_cased_repeats_comma_joined_cookie_headers_split() -> None:
    event = _event(
        _request(
            headers=[
                ("X-Tag", "a"),
                ("x-tag", "b, c"),
                ("X-TAG", "d"),
                ("Cookie", "a=1; b=2"),
                ("cookie", "c=3;d=4; "),
            ]
        )
    )
    assert event["headers"]["x-tag"] == "a,b, c,d"
    assert "cookie" not in event["headers"]
    assert event["cookies"] == ["a=1", "b=2", "c=3", "d=4"]
    assert all(name == name.lower() for name in event["headers"])


def test_gateway_headers_extend_what_a_proxy_in_front_sent() -> None:
    event = _event(
        _request(
            headers=[
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Port", "443"),
                ("User-Agent", "ua"),
            ]
        )
    )
    assert event["headers"]["x-forwarded-for"] == "203.0.113.9, 198.51.100.7"
    assert event["headers"]["x-forwarded-proto"] == "https"
    assert event["headers"]["x-forwarded-port"] == "443"
    assert event["requestContext"]["http"]["sourceIp"] == "198.51.100.7"
    assert event["requestContext"]["http"]["userAgent"] == "ua"


def test_trace_id_made_up_from_the_request_id_and_time() -> None:
    first = _event(_request(), request_id="AAAAAAAAAAAAAA0=")["headers"]["x-amzn-trace-id"]
    again = _event(_request(), request_id="AAAAAAAAAAAAAA0=")["headers"]["x-amzn-trace-id"]
    other = _event(_request(), request_id="BBBBBBBBBBBBBB0=")["headers"]["x-amzn-trace-id"]
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24}", first)
    assert first == again and first != other
    assert first.startswith(f"Root=1-{int(NOW):08x}-")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("a=1&a=2", {"a": "1,2"}),
        ("q=a%20b&r=a+b&s=a%2Bb", {"q": "a b", "r": "a b", "s": "a+b"}),
        ("flag&empty=", {"flag": "", "empty": ""}),
        ("x=%C3%A9t%C3%A9&&y=1", {"x": "\u00e9t\u00e9", "y": "1"}),
        ("k%20ey=v=w", {"k ey": "v=w"}),
    ],
)
def test_query_string_parameters(query: str, expected: dict[str, str]) -> None:
    event = _event(_request(query=query))
    assert event["queryStringParameters"] == expected
    assert event["rawQueryString"] == query  # still encoded, as sent


def test_path_and_path_parameters_are_decoded() -> None:
    event = _event(_request(path="/hello/J%C3%B6rg%40home"))
    assert event["rawPath"] == "/hello/J\u00f6rg@home"
    assert event["requestContext"]["http"]["path"] == "/hello/J\u00f6rg@home"
    assert event["pathParameters"] == {"name": "J\u00f6rg@home"}
    assert event["routeKey"] == "GET /hello/{name}"


@pytest.mark.parametrize(
    ("content_type", "is_text"),
    [
        ("text/plain", True),
        ("text/html; charset=utf-8", True),
        ("TEXT/CSV", True),
        ("application/json", True),
        ("Application/JSON; charset=UTF-8", True),
        ("application/xml", True),
        ("application/javascript", True),
        (None, False),
        ("", False),
        ("application/octet-stream", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("image/png", False),
        ("application/problem+json", False),  # suffix types: not on the observed allow-list
    ],
)
def test_text_content(content_type: str | None, is_text: bool) -> None:
    assert text_content(content_type) is is_text


def test_binary_body_round_trips_as_base64_exactly() -> None:
    payload = bytes(range(256)) * 3
    event = _event(_request("POST", "/upload", headers=[("Content-Type", "image/png")], body=payload))
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"], validate=True) == payload
    assert event["headers"]["content-length"] == str(len(payload))


@pytest.mark.parametrize(
    "headers",
    [
        [],  # no content type at all
        [("Content-Type", "application/x-www-form-urlencoded")],
        [("Content-Type", "text/plain")],  # text type, but not UTF-8: base64 keeps every byte
    ],
)
def test_bodies_sent_as_base64(headers: list[tuple[str, str]]) -> None:
    payload = b"a=1&b=\xff\xfe"
    event = _event(_request("POST", "/upload", headers=headers, body=payload))
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_text_body_as_text() -> None:
    event = _event(
        _request("POST", "/upload", headers=[("Content-Type", "text/plain; charset=utf-8")], body="h\u00e9".encode())
    )
    assert event["isBase64Encoded"] is False
    assert event["body"] == "h\u00e9"


@pytest.mark.parametrize(
    ("now", "time", "epoch_ms"),
    [
        (0.0, "01/Jan/1970:00:00:00 +0000", 0),
        (1583348638.390, "04/Mar/2020:19:03:58 +0000", 1583348638390),
        (1710270238.9996, "12/Mar/2024:19:03:59 +0000", 1710270239000),  # time and timeEpoch agree
        (1735689599.0, "31/Dec/2024:23:59:59 +0000", 1735689599000),
    ],
)
def test_request_time(now: float, time: str, epoch_ms: int) -> None:
    context = _event(_request(), now=now)["requestContext"]
    assert context["time"] == time
    assert context["timeEpoch"] == epoch_ms


@pytest.mark.parametrize(
    ("host", "domain", "prefix", "port"),
    [
        ("api.example.test", "api.example.test", "api", "80"),
        ("api.example.test:8080", "api.example.test", "api", "8080"),
        ("127.0.0.1:9000", "127.0.0.1", "127", "9000"),
        ("[::1]:9000", "[::1]", "[::1]", "9000"),
    ],
)
def test_domain_name_and_prefix(host: str, domain: str, prefix: str, port: str) -> None:
    event = _event(_request(host=host))
    assert event["requestContext"]["domainName"] == domain
    assert event["requestContext"]["domainPrefix"] == prefix
    assert event["headers"]["host"] == host
    assert event["headers"]["x-forwarded-port"] == port


def test_event_is_json() -> None:
    event = _event(_reference_request())
    assert json.loads(json.dumps(event)) == event


def test_body_limit_is_the_http_api_payload_quota() -> None:
    assert MAX_BODY_BYTES == 10 * 1024 * 1024


# -- Powertools: the event model and a resolver-based handler, as Lambda users write them --------


def _powertools_events() -> list[dict[str, Any]]:
    return [
        _event(_reference_request()),
        _event(_request("GET", "/nothing", host="localhost")),
        _event(_request("POST", "/upload", headers=[("Content-Type", "image/png")], body=bytes(range(256)))),
        _event(_request(query="a=1&a=2", headers=[("Cookie", "a=1")])),
    ]


def test_events_validate_with_powertools_model() -> None:
    pytest.importorskip("pydantic")
    models = pytest.importorskip("aws_lambda_powertools.utilities.parser.models")
    for event in _powertools_events():
        model = models.APIGatewayProxyEventV2Model.model_validate(event)
        assert model.rawPath == event["rawPath"]
        assert model.requestContext.http.method == event["requestContext"]["http"]["method"]
        assert model.isBase64Encoded is event["isBase64Encoded"]


class _Context:
    function_name = "hello"
    aws_request_id = "Ux3sKhtxoAMEVlQ="


def _resolver_handler() -> Any:
    event_handler = pytest.importorskip("aws_lambda_powertools.event_handler")
    from aws_lambda_powertools.shared.cookies import Cookie

    app = event_handler.APIGatewayHttpResolver()

    @app.get("/hello/<name>")
    def hello(name: str) -> dict[str, Any]:
        return {"message": f"hello {name}", "q": app.current_event.get_query_string_value("q")}

    @app.post("/upload")
    def upload() -> Any:
        data = base64.b64decode(app.current_event.body or "")
        return event_handler.Response(status_code=201, content_type="application/octet-stream", body=data[::-1])

    @app.get("/cookies")
    def cookies() -> Any:
        return event_handler.Response(
            status_code=200,
            content_type="text/plain",
            body=",".join(app.current_event.cookies or []),
            cookies=[Cookie(name="a", value="1"), Cookie(name="b", value="2")],
        )

    def handler(event: dict[str, Any], context: Any) -> Any:
        return app.resolve(event, context)

    return handler


def test_powertools_resolver_handler_response_maps_to_http() -> None:
    handler = _resolver_handler()
    event = _event(_request(path="/hello/J%C3%B6rg", query="q=a%20b"))
    # The result travels to the daemon as JSON, as from a worker.
    result = json.loads(json.dumps(handler(event, _Context())))
    response = response_from_result(result)
    assert response.status == 200
    assert json.loads(response.body) == {"message": "hello J\u00f6rg", "q": "a b"}
    assert ("Content-Type", "application/json") in response.headers


def test_powertools_binary_request_and_response_round_trip() -> None:
    handler = _resolver_handler()
    payload = bytes(range(256))
    table = RouteTable([Route("upload", "POST", "/upload")])
    request = _request("POST", "/upload", headers=[("Content-Type", "application/octet-stream")], body=payload)
    match = table.match("POST", "/upload")
    assert match is not None
    event = request_event(match=match, request=request, request_id="x", api_id="router", account_id="0", now=NOW)
    result = json.loads(json.dumps(handler(event, _Context())))
    assert result["isBase64Encoded"] is True
    response = response_from_result(result)
    assert response.status == 201
    assert response.body == payload[::-1]
    assert ("Content-Type", "application/octet-stream") in response.headers


def test_powertools_cookies_in_and_out() -> None:
    handler = _resolver_handler()
    table = RouteTable([Route("cookies", "GET", "/cookies")])
    request = _request(path="/cookies", headers=[("Cookie", "session=abc; theme=dark")])
    match = table.match("GET", "/cookies")
    assert match is not None
    event = request_event(request, match, request_id="x", api_id="router", account_id="0", now=NOW)
    response = response_from_result(json.loads(json.dumps(handler(event, _Context()))))
    assert response.body == b"session=abc,theme=dark"
    assert [value for name, value in response.headers if name == "set-cookie"] == ["a=1; Secure", "b=2; Secure"]


def test_powertools_unknown_route_is_its_own_404() -> None:
    handler = _resolver_handler()
    result = handler(_event(_request(path="/hello/x/y")), _Context())  # $default route here
    assert response_from_result(result).status == 404


# -- §2: function results to HTTP -----------------------------------------------------------------


def _header(response: HttpResponse, name: str) -> list[str]:
    return [value for key, value in response.headers if key.lower() == name]


@pytest.mark.parametrize(
    ("result", "body"),
    [
        ({"message": "hi"}, b'{"message": "hi"}'),
        ("hi", b"hi"),  # a string's content, no JSON quotes
        ("h\u00e9", "h\u00e9".encode()),
        ([1, 2], b"[1, 2]"),
        (42, b"42"),
        (True, b"true"),
        (None, b"null"),
        ({"body": "x", "headers": {"X-A": "1"}}, b'{"body": "x", "headers": {"X-A": "1"}}'),  # no statusCode
        ({"StatusCode": 201}, b'{"StatusCode": 201}'),  # the key is case-sensitive
    ],
)
def test_inferred_responses(result: Any, body: bytes) -> None:
    response = response_from_result(result)
    assert response == HttpResponse(200, [("content-type", "application/json")], body)


def test_structured_response_status_body_and_default_content_type() -> None:
    response = response_from_result({"statusCode": 201, "body": "ok"})
    assert response == HttpResponse(201, [("content-type", "application/json")], b"ok")


def test_structured_response_without_body_is_empty() -> None:
    assert response_from_result({"statusCode": 204}) == HttpResponse(204, [("content-type", "application/json")], b"")
    assert response_from_result({"statusCode": 200, "body": None}).body == b""


def test_powertools_shaped_response() -> None:
    # Reference §2.2: what APIGatewayHttpResolver emits.
    response = response_from_result(
        {
            "statusCode": 201,
            "body": "ok",
            "isBase64Encoded": False,
            "headers": {"X-Multi": "1, 2", "Content-Type": "text/plain"},
            "cookies": ["a=1; Secure", "b=2; Secure"],
        }
    )
    assert response.status == 201
    assert response.body == b"ok"
    assert response.headers == [
        ("X-Multi", "1, 2"),
        ("Content-Type", "text/plain"),
        ("set-cookie", "a=1; Secure"),
        ("set-cookie", "b=2; Secure"),
    ]


def test_header_values_numbers_and_booleans_as_text() -> None:
    response = response_from_result({"statusCode": 200, "headers": {"X-Count": 3, "X-Ok": True, "X-Ratio": 0.5}})
    assert _header(response, "x-count") == ["3"]
    assert _header(response, "x-ok") == ["true"]
    assert _header(response, "x-ratio") == ["0.5"]


def test_base64_body_decoded_whatever_the_content_type() -> None:
    payload = bytes(range(256))
    for content_type in ("image/png", "text/plain", "application/json"):
        response = response_from_result(
            {
                "statusCode": 200,
                "headers": {"content-type": content_type},
                "body": base64.b64encode(payload).decode(),
                "isBase64Encoded": True,
            }
        )
        assert response.body == payload
        assert _header(response, "content-type") == [content_type]


def test_multi_value_headers_are_a_payload_1_0_field_and_ignored() -> None:
    response = response_from_result({"statusCode": 200, "body": "x", "multiValueHeaders": {"X-A": ["1", "2"]}})
    assert _header(response, "x-a") == []
    assert response.headers == [("content-type", "application/json")]


def test_framing_headers_from_the_function_are_dropped() -> None:
    response = response_from_result(
        {
            "statusCode": 200,
            "body": "four",
            "headers": {"Content-Length": "99", "Transfer-Encoding": "chunked", "Connection": "close", "X-A": "1"},
        }
    )
    assert response.headers == [("X-A", "1"), ("content-type", "application/json")]


@pytest.mark.parametrize(
    "result",
    [
        {"statusCode": "200"},
        {"statusCode": 200.0},
        {"statusCode": True},
        {"statusCode": None},
        {"statusCode": 99},
        {"statusCode": 600},
        {"statusCode": 200, "headers": ["X-A: 1"]},
        {"statusCode": 200, "headers": {"X-A": {"nested": 1}}},
        {"statusCode": 200, "headers": {"X-A": None}},
        {"statusCode": 200, "headers": {"X-A": "1\r\nSet-Cookie: evil=1"}},
        {"statusCode": 200, "headers": {"Bad Name": "1"}},
        {"statusCode": 200, "headers": {"": "1"}},
        {"statusCode": 200, "cookies": "a=1"},
        {"statusCode": 200, "cookies": [1]},
        {"statusCode": 200, "cookies": ["a=1\nb=2"]},
        {"statusCode": 200, "body": {"a": 1}},
        {"statusCode": 200, "body": 5},
        {"statusCode": 200, "body": "x", "isBase64Encoded": "true"},
        {"statusCode": 200, "body": "abc", "isBase64Encoded": True},  # bad padding
        {"statusCode": 200, "body": "YW Jj", "isBase64Encoded": True},  # not the alphabet
        {"statusCode": 200, "body": "\u00e9\u00e9\u00e9\u00e9", "isBase64Encoded": True},
        {"statusCode": 200, "body": "\ud800"},  # lone surrogate: not UTF-8
    ],
)
def test_malformed_structured_response_is_500(result: dict[str, Any]) -> None:
    assert response_from_result(result) == HttpResponse(
        500, [("content-type", "application/json")], b'{"message":"Internal Server Error"}'
    )


@pytest.mark.parametrize(
    ("status", "message", "body"),
    [
        (500, "Internal Server Error", b'{"message":"Internal Server Error"}'),
        (404, "Not Found", b'{"message":"Not Found"}'),
        (413, "Request Entity Too Large", b'{"message":"Request Entity Too Large"}'),
        (503, "Service Unavailable", b'{"message":"Service Unavailable"}'),
        (429, "Too Many Requests", b'{"message":"Too Many Requests"}'),
    ],
)
def test_error_responses(status: int, message: str, body: bytes) -> None:
    assert error_response(status, message) == HttpResponse(status, [("content-type", "application/json")], body)


def test_route_match_path_parameters_are_copied_into_the_event() -> None:
    match = RouteMatch(Route("hello", "GET", "/hello/{name}"), {"name": "a"})
    event = request_event(_request(), match, request_id="x", api_id="router", account_id="0", now=NOW)
    event["pathParameters"]["name"] = "changed"
    assert match.path_parameters == {"name": "a"}
