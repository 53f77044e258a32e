"""HTTP routes through a real aiohttp client against the daemon's listener (issue: websites).

Every assertion is on the HTTP response a client gets or on the event the function received.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_reload import ConfigFile, apply, base_config, daemon

from router.app import Router

pytestmark = pytest.mark.integration

CODE = Path(__file__).resolve().parents[1] / "http_handlers"


def functions(tmp_path: Path, **env: str) -> dict[str, Any]:
    def fn(handler: str, timeout: int = 5, concurrency: int = 2) -> dict[str, Any]:
        return {"handler": handler, "code_path": str(CODE), "timeout": timeout,
                "reserved_concurrent_executions": concurrency, "environment": {"variables": dict(env)}}
    return {"powertools": fn("web.powertools"), "raw": fn("web.raw", timeout=2, concurrency=1),
            "text": fn("web.text")}


def site(tmp_path: Path) -> ConfigFile:
    data = base_config(tmp_path)
    data["functions"].update(functions(tmp_path, SLOW_SECONDS="1.5"))
    data["http_routes"] = {
        "hello": {"function_name": "powertools", "method": "GET", "path": "/hello/{name}"},
        "echo": {"function_name": "powertools", "method": "POST", "path": "/echo"},
        "raw": {"function_name": "raw", "path": "/raw/{proxy+}"},
        "text": {"function_name": "text", "method": "GET", "path": "/text/{a}/{b}"},
    }
    return ConfigFile(tmp_path / "router.yaml", data)


def url(app: Router, path: str) -> str:
    return f"http://{app.config.http.listen}{path}"


async def test_requests_reach_functions_as_api_gateway_v2_events_and_results_become_responses(
    tmp_path: Path,
) -> None:
    file = site(tmp_path)
    async with daemon(file) as app, aiohttp.ClientSession() as http:
        async with http.get(url(app, "/hello/world%20x?lang=en&lang=fr")) as answer:
            assert answer.status == 200, await answer.text()
            assert answer.headers["content-type"] == "application/json"
            assert await answer.json() == {"message": "hello world x", "lang": "en,fr",
                                           "route": "GET /hello/{name}"}
            assert answer.headers["apigw-requestid"]

        image = bytes(range(256)) * 40
        async with http.post(url(app, "/echo"), data=image, headers={"content-type": "image/png"}) as answer:
            assert answer.status == 201
            assert await answer.read() == image  # the exact bytes, both ways
            assert answer.headers["x-length"] == str(len(base64.b64encode(image)))

        async with http.put(url(app, "/raw/a/b%2Fc?x=1"), data=b'{"k": 1}',
                            headers={"content-type": "application/json", "cookie": "s=1; t=2",
                                     "x-multi": "1"}) as answer:
            assert answer.status == 200
            event = (await answer.json())["event"]
        assert event["version"] == "2.0" and event["routeKey"] == "ANY /raw/{proxy+}"
        assert event["pathParameters"] == {"proxy": "a/b/c"}
        assert event["rawQueryString"] == "x=1" and event["queryStringParameters"] == {"x": "1"}
        assert event["cookies"] == ["s=1", "t=2"] and "cookie" not in event["headers"]
        assert event["body"] == '{"k": 1}' and event["isBase64Encoded"] is False
        context = event["requestContext"]
        assert context["http"]["method"] == "PUT" and context["stage"] == "$default"
        assert context["requestId"] == answer.headers["apigw-requestid"]
        assert context["accountId"] == app.config.account_id

        async with http.get(url(app, "/raw/cookies"), allow_redirects=False) as answer:
            assert answer.status == 302 and answer.headers["location"] == "/next"
            assert answer.headers.getall("set-cookie") == ["a=1; Path=/", "b=2"]
        async with http.get(url(app, "/text/1/2")) as answer:
            assert answer.status == 200 and await answer.text() == 'plain {"a": "1", "b": "2"}'


async def test_errors_limits_and_busy_functions_get_api_gateway_answers(tmp_path: Path) -> None:
    file = site(tmp_path)
    async with daemon(file) as app, aiohttp.ClientSession() as http:
        async with http.get(url(app, "/raw/fail")) as answer:
            assert answer.status == 500
            body = await answer.text()
            assert body == '{"message":"Internal Server Error"}' and "secret" not in body
        async with http.get(url(app, "/nowhere")) as answer:
            assert answer.status == 404 and await answer.json() == {"message": "Not Found"}
        async with http.delete(url(app, "/hello/x")) as answer:  # a route's path, another method
            assert answer.status == 404
        async with http.get(url(app, "/healthz")) as answer:  # router's own paths still win
            assert answer.status == 200
        async with http.post(url(app, "/raw/big"), data=b"x" * (7 * 1024 * 1024)) as answer:
            assert answer.status == 413
        assert app.pool.status()["raw"]["invocations"] == 1  # only /raw/fail ran

        # raw has one environment. With a 1 s integration timeout, a request running past it and one
        # waiting behind it are both answered 503 (never queued without limit); the environment
        # that was running is ended, so the function serves the next request at once.
        app.routes._timeout = 1.0
        running = asyncio.create_task(http.get(url(app, "/raw/slow")))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(http.get(url(app, "/raw/slow")))
        for task in (running, waiting):
            answer = await task
            assert answer.status == 503 and await answer.json() == {"message": "Service Unavailable"}
            answer.release()
        app.routes._timeout = 30.0
        async with http.get(url(app, "/raw/again")) as answer:
            assert answer.status == 200


async def test_routes_change_on_reload(tmp_path: Path) -> None:
    file = site(tmp_path)
    async with daemon(file) as app, aiohttp.ClientSession() as http:
        file.data["http_routes"]["raw"]["path"] = "/moved/{proxy+}"
        del file.data["http_routes"]["text"]
        await apply(app, file)
        async with http.get(url(app, "/raw/x")) as answer:
            assert answer.status == 404 and await answer.json() == {"message": "Not Found"}
        async with http.get(url(app, "/text/1/2")) as answer:
            assert answer.status == 404
        async with http.get(url(app, "/moved/x")) as answer:
            assert answer.status == 200 and (await answer.json())["event"]["routeKey"] == "ANY /moved/{proxy+}"
        assert sorted(app.status()["http_routes"]) == ["echo", "hello", "raw"]


async def test_a_client_that_disconnects_does_not_block_the_environment(tmp_path: Path) -> None:
    file = site(tmp_path)
    async with daemon(file) as app, aiohttp.ClientSession() as http:
        host, port = app.config.http.listen.split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /raw/slow HTTP/1.1\r\nHost: x\r\n\r\n")  # raw has one environment
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()  # gone before the answer
        started = asyncio.get_running_loop().time()
        async with http.get(url(app, "/raw/next")) as answer:
            assert answer.status == 200
        # served once the slow invocation (1.5 s) ended, not after a timeout or never
        assert asyncio.get_running_loop().time() - started < 5
        assert app.pool.status()["raw"]["invocations"] == 2
