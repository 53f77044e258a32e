"""`router intake pause|resume` on a running daemon: paused, its MQTT share goes to the other
members, webhooks get 503, /readyz takes it out of a Service; resumed, it takes work again."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from test_push_support import (
    bucket_mapping,
    calls,
    config_data,
    make_config,
    minio_notification,
    publish_like_minio,
    running,
    wait_connected,
    wait_until,
)

from router import cli
from router.devstack import Mosquitto, free_port

pytestmark = pytest.mark.integration


async def http(port: int, path: str, *, method: str = "GET", body: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """urllib on a thread: the daemon under test answers on this test's event loop."""
    return await asyncio.to_thread(_http, port, path, method, body, headers)


def _http(port: int, path: str, method: str, body: bytes | None, headers: dict[str, str] | None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def webhook(port: int, key: str) -> int:
    status, _ = await http(port, "/webhooks/s3", method="POST", body=minio_notification("docs", key),
                     headers={"Authorization": "Bearer push-test-token", "Content-Type": "application/json"})
    return status


async def test_a_paused_replica_takes_no_new_work_and_resumes(
        mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"minio/intake-{uuid.uuid4().hex[:8]}"
    port = free_port()
    data = config_data(tmp_path, {"photos": bucket_mapping("photos", topic=topic),
                                  "docs": bucket_mapping("docs", transport="webhook")},
                       broker=mosquitto, http_port=port)
    keys = lambda: {c["key"] for c in calls(tmp_path)}  # noqa: E731
    async with running(make_config(data)) as app:
        await wait_connected(app)
        await publish_like_minio(mosquitto, topic, [minio_notification("photos", "before.jpg")])
        await wait_until(lambda: "before.jpg" in keys(), 20, "the notification before the pause")

        assert await asyncio.to_thread(cli.main, ["intake", "pause", "--url", f"http://127.0.0.1:{port}"]) == 0
        assert "intake paused" in capsys.readouterr().out
        assert (await http(port, "/status"))[1]["intake"] == "paused"
        status, ready = await http(port, "/readyz")
        assert (status, ready["intake"]) == (503, "paused")
        assert await webhook(port, "while-paused.pdf") == 503

        # Another member of the share group (the replicas that stay) now gets every message.
        async with aiomqtt.Client(mosquitto.host, mosquitto.port,
                                  identifier=f"other-{uuid.uuid4().hex[:6]}") as other:
            await other.subscribe(f"$share/router/{topic}", qos=1)
            await publish_like_minio(mosquitto, topic, [minio_notification("photos", f"p{i}.jpg") for i in range(4)])
            received = [await asyncio.wait_for(anext(aiter(other.messages)), 10) for _ in range(4)]
            assert len(received) == 4
            await asyncio.sleep(1.0)
            assert not {f"p{i}.jpg" for i in range(4)} & keys()
            await other.unsubscribe(f"$share/router/{topic}")

        # A browser page must not be able to flip it.
        origin = {"Origin": "http://evil.example"}
        assert (await http(port, "/intake/resume", method="POST", headers=origin))[0] == 403
        assert await asyncio.to_thread(cli.main, ["intake", "resume", "--url", f"http://127.0.0.1:{port}"]) == 0
        assert "intake running" in capsys.readouterr().out
        await wait_until(lambda: app.mqtt is not None and app.mqtt.status()["subscribed"], 10, "resubscribed")
        assert (await http(port, "/readyz"))[0] == 200
        await publish_like_minio(mosquitto, topic, [minio_notification("photos", "after.jpg")])
        assert await webhook(port, "after.pdf") == 200
        await wait_until(lambda: {"after.jpg", "after.pdf"} <= keys(), 20, "work after the resume")
