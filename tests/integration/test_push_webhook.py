"""Webhook notifications (MinIO, Ceph-style, SeaweedFS bodies) over real HTTP into real workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aws_lambda_powertools.utilities.parser.models import S3Model
from test_push_support import FIXTURES, bucket_mapping, calls, config_data, make_config, metric, running, wait_until

from router.devstack import free_port

pytestmark = pytest.mark.integration

TOKEN = "push-test-token"
GOOD = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def ceph_body() -> bytes:
    record = {
        "eventVersion": "2.2", "eventSource": "ceph:s3", "awsRegion": "default",
        "eventTime": "2025-06-14T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "rgw-user"}, "requestParameters": {"sourceIPAddress": "10.1.2.3"},
        "responseElements": {"x-amz-request-id": "req", "x-amz-id-2": "host"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "rgw-notif",
               "bucket": {"name": "media", "ownerIdentity": {"principalId": "rgw-user"}, "arn": "arn:aws:s3:::media",
                          "id": "b1"},
               "object": {"key": "clips/raw name+1.mp4", "size": 10, "eTag": "abc", "sequencer": "0F",
                          "metadata": [], "tags": []}},
        "eventId": "e1", "opaqueData": "",
    }
    return json.dumps({"Records": [record]}).encode()


async def test_webhook_contract_for_good_and_bad_bodies(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    data = config_data(tmp_path, {
        "uploads": bucket_mapping("uploads", transport="webhook"),
        "photos": bucket_mapping("photos", transport="webhook"),
        "media": bucket_mapping("media", transport="webhook"),
    }, http_port=port)
    data["http"]["max_body_bytes"] = 2048
    config = make_config(data)
    base = f"http://127.0.0.1:{port}"
    minio_body = (FIXTURES / "minio" / "webhook_body_put.json").read_bytes()

    async with running(config) as app, aiohttp.ClientSession() as http:

        async def post(path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
            async with http.post(base + path, data=body, headers=GOOD if headers is None else headers) as answer:
                text = await answer.text()
                return answer.status, (json.loads(text) if text else None)

        # MinIO's connectivity checks, old and new
        for path in ("/webhooks/s3", "/webhooks/seaweedfs"):
            async with http.head(base + path) as answer:
                assert answer.status == 200
        assert (await post("/webhooks/s3", b"", headers={}))[0] == 200

        # authentication
        assert (await post("/webhooks/s3", minio_body, headers={}))[0] == 401
        assert (await post("/webhooks/s3", minio_body, headers={"Authorization": "Bearer wrong-token"}))[0] == 401
        assert (await post("/webhooks/seaweedfs", minio_body, headers={"Authorization": f"Basic {TOKEN}"}))[0] == 401
        assert metric(app, "router_notifications_total", source="webhook", outcome="unauthorized") == 2
        assert metric(app, "router_notifications_total", source="seaweedfs", outcome="unauthorized") == 1

        # size limit, declared and streamed
        assert (await post("/webhooks/s3", b"{" + b" " * 4096 + b"}"))[0] == 413

        async def chunks() -> Any:
            for _ in range(8):
                yield b" " * 512

        assert (await post("/webhooks/s3", chunks()))[0] == 413
        assert metric(app, "router_notifications_total", source="webhook", outcome="too_large") == 2

        # malformed: 400 and dead-lettered
        status, body = await post("/webhooks/s3", b"<xml>not json</xml>")
        assert status == 400 and "not JSON" in body["reason"]
        status, body = await post("/webhooks/s3", b'{"Event": "s3:ObjectCreated:Put"}')
        assert status == 400 and body["reason"] == "JSON object without Records"
        assert len(list((tmp_path / "state" / "dead-letter" / "webhook").glob("*.json"))) == 2

        # unknown bucket: counted, dropped, 200 so the sender does not retry forever
        kafka_body = (FIXTURES / "minio" / "kafka_value_put.json").read_bytes()
        status, body = await post("/webhooks/s3", kafka_body)
        assert (status, body["outcome"], body["unmatched"]) == (200, "unmatched", 1)

        # the good ones, after all of the above: the receiver keeps serving
        status, body = await post("/webhooks/s3", minio_body)
        assert (status, body["queued"]) == (200, 1)
        status, body = await post("/webhooks/s3", minio_body)  # a sender's retry
        assert (status, body["queued"], body["duplicates"]) == (200, 0, 1)
        status, body = await post("/webhooks/seaweedfs", (FIXTURES / "seaweedfs" / "webhook_create_object.json")
                                  .read_bytes())
        assert (status, body["queued"]) == (200, 1)
        status, body = await post("/webhooks/s3", ceph_body())
        assert (status, body["queued"]) == (200, 1)

        await wait_until(lambda: len(calls(tmp_path)) >= 3, 30, "three invocations")
        assert metric(app, "router_notifications_total", source="webhook", outcome="malformed") == 2
        assert metric(app, "router_notifications_total", source="webhook", outcome="accepted") == 3

        # the queue gone (as during shutdown): 503, so the sender retries later
        assert app.queue is not None
        await app.queue.close()
        assert (await post("/webhooks/s3", minio_body))[0] == 503

    keys = sorted(c["key"] for c in calls(tmp_path))
    assert keys == ["clips/raw+name%2B1.mp4", "invoices/2025/06/INV-0042+%28final%29.pdf", "x/y+z.jpg"]
    for call in calls(tmp_path):
        S3Model.model_validate(call["event"])
    output = capfd.readouterr()
    assert TOKEN not in output.out + output.err
    assert "wrong-token" not in output.out + output.err
