"""Hostile payloads over a real Mosquitto and the real webhook listeners: the daemon stays up, every
payload is acknowledged (PUBACK) or answered without a 5xx, each one is dead-lettered, dropped or
delivered, and valid notifications sent after them are invoked. The unit fuzz test runs the full
10,000 through the same router; this sends a slice of them over the sockets."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import pytest
from hostile_payloads import fixture, hostile_payloads
from test_push_support import (
    bucket_mapping,
    calls,
    config_data,
    make_config,
    metric,
    minio_notification,
    publish_like_minio,
    running,
    wait_connected,
    wait_until,
)

from router.devstack import Mosquitto, free_port

pytestmark = pytest.mark.integration

MQTT_COUNT = 1500
WEBHOOK_COUNT = 500
OUTCOMES = ("accepted", "malformed", "ignored", "unmatched", "too_large")


async def test_hostile_payloads_over_mqtt_and_webhooks_never_stall_intake(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topic = f"minio/fuzz-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = make_config(config_data(tmp_path, {
        "photos": bucket_mapping("photos", topic=topic),
        "hooked": bucket_mapping("hooked", transport="webhook"),
    }, broker=mosquitto, http_port=port))
    payloads = hostile_payloads(seed=99, count=MQTT_COUNT + WEBHOOK_COUNT)
    headers = {"Authorization": "Bearer push-test-token", "Content-Type": "application/json"}
    base = f"http://127.0.0.1:{port}"

    async with running(config) as app, aiohttp.ClientSession() as http:
        await wait_connected(app)
        await publish_like_minio(mosquitto, topic, payloads[:MQTT_COUNT])
        statuses: dict[int, int] = {}
        for n, body in enumerate(payloads[MQTT_COUNT:]):
            path = "/webhooks/seaweedfs" if n % 3 == 0 else "/webhooks/s3"
            async with http.post(base + path, data=body, headers=headers) as answer:
                await answer.read()
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
        assert set(statuses) <= {200, 400, 413}, statuses
        assert statuses.get(400, 0) > WEBHOOK_COUNT / 4

        # valid notifications after all of it, on both transports
        await publish_like_minio(mosquitto, topic, [minio_notification("photos", "after/the fuzz.jpg")])
        async with http.post(base + "/webhooks/s3", data=minio_notification("hooked", "after/hook.jpg"),
                             headers=headers) as answer:
            assert answer.status == 200 and (await answer.json())["queued"] == 1
        async with http.post(base + "/webhooks/seaweedfs", data=fixture("webhook_create_object.json"),
                             headers=headers) as answer:
            assert answer.status == 200

        def keys() -> set[str]:
            return {c["key"] for c in calls(tmp_path)}

        await wait_until(lambda: {"after/the+fuzz.jpg", "after/hook.jpg"} <= keys(), 60,
                         "the valid notifications to be invoked")
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_until(lambda: mqtt.status()["acknowledged"] == MQTT_COUNT + 1, 30, "every MQTT payload acked")
        counted = sum(metric(app, "router_notifications_total", source="mqtt", outcome=o) for o in OUTCOMES)
        assert counted == MQTT_COUNT + 1
        assert metric(app, "router_notifications_total", source="mqtt", outcome="malformed") > MQTT_COUNT / 4
    dead = list((tmp_path / "state" / "dead-letter").glob("*/*.json"))
    assert len(dead) > (MQTT_COUNT + WEBHOOK_COUNT) / 5
