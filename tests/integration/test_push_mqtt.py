"""MinIO-style MQTT notifications through a real Mosquitto into real worker processes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from aws_lambda_powertools.utilities.parser.models import S3Model
from test_push_support import (
    bucket_mapping,
    calls,
    config_data,
    make_config,
    metric,
    minio_fixtures,
    minio_notification,
    publish_like_minio,
    running,
    wait_connected,
    wait_until,
)

from router.devstack import Mosquitto

pytestmark = pytest.mark.integration


def unique_topic() -> str:
    return f"minio/events-{uuid.uuid4().hex[:8]}"


async def test_every_minio_fixture_reaches_the_handler_as_the_event_aws_would_send(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topic = unique_topic()
    fixtures = {path.name: json.loads(path.read_bytes()) for path in minio_fixtures()}
    buckets = sorted({f["Records"][0]["s3"]["bucket"]["name"] for f in fixtures.values()})
    mappings = {f"to-{b}": bucket_mapping(b, topic=topic) for b in buckets}
    config = make_config(config_data(tmp_path, mappings, broker=mosquitto))

    async with running(config) as app:
        await wait_connected(app)
        await publish_like_minio(mosquitto, topic, (p.read_bytes() for p in minio_fixtures()))
        await wait_until(lambda: len(calls(tmp_path)) >= len(fixtures), 30, "every fixture to be invoked")
        assert app.mqtt is not None and app.mqtt.status()["acknowledged"] == len(fixtures)

    seen = calls(tmp_path)
    assert len(seen) == len(fixtures)
    by_object = {}
    for call in seen:
        S3Model.model_validate(call["event"])
        [record] = call["event"]["Records"]
        assert record["eventSource"] == "aws:s3" and record["eventVersion"] == "2.1"
        assert record["awsRegion"] == "eu-west-1"
        by_object[(record["s3"]["bucket"]["name"], record["s3"]["object"]["key"], record["eventName"])] = record
    for envelope in fixtures.values():
        bucket, _, raw_key = envelope["Key"].partition("/")
        name = envelope["EventName"].removeprefix("s3:").replace("ObjectRemoved:NoOP", "ObjectRemoved:Delete")
        record = by_object[(bucket, quote_plus(raw_key, safe="/"), name)]
        assert record["s3"]["configurationId"] == f"to-{bucket}"
        assert "source" not in record and "contentType" not in record["s3"]["object"]
    # keys with spaces, '+', unicode and '/' arrive form-encoded exactly as AWS sends them
    assert ("photos", "albums/summer+2024/caf%C3%A9+%2B+friends+%C3%BC.jpg", "ObjectCreated:Put") in by_object
    assert by_object[("photos", "incoming/.keep", "ObjectCreated:Put")]["s3"]["object"]["size"] == 0


async def test_bad_payloads_are_dead_lettered_acknowledged_and_the_source_keeps_serving(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topic = unique_topic()
    config = make_config(config_data(tmp_path, {"photos": bucket_mapping("photos", topic=topic)}, broker=mosquitto))
    good = minio_notification("photos", "ok/after bad.jpg")
    payloads = [b"\x89PNG not json", b'{"hello": "no records"}', minio_notification("elsewhere", "x.jpg"),
                good, good]

    async with running(config) as app:
        await wait_connected(app)
        await publish_like_minio(mosquitto, topic, payloads)
        await wait_until(lambda: calls(tmp_path), 20, "the good notification to be invoked")
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_until(lambda: mqtt.status()["acknowledged"] == len(payloads), 10, "every payload acked")
        assert metric(app, "router_notifications_total", source="mqtt", outcome="malformed") == 2
        assert metric(app, "router_notifications_total", source="mqtt", outcome="unmatched") == 1
        assert metric(app, "router_notifications_total", source="mqtt", outcome="accepted") == 2
        assert metric(app, "router_duplicate_notifications_total", mapping="photos") == 1

    assert [c["key"] for c in calls(tmp_path)] == ["ok/after+bad.jpg"]
    dead = sorted((tmp_path / "state" / "dead-letter" / "mqtt").glob("*.json"))
    reasons = {json.loads(p.read_text())["reason"] for p in dead}
    assert len(dead) == 2 and any("not JSON" in r for r in reasons) and "JSON object without Records" in reasons
    kept = {(p.parent / json.loads(p.read_text())["payload_file"]).read_bytes() for p in dead}
    assert kept == {payloads[0], payloads[1]}


async def test_broker_restart_reconnects_and_delivers_what_was_published_meanwhile(
    fresh_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # Without a $share group: Mosquitto restores plain subscriptions of persistent sessions from
    # its database after a restart, but not shared ones (those come back when the router
    # re-subscribes on reconnect; see the README's push-path notes).
    topic = unique_topic()
    config = make_config(config_data(tmp_path, {"photos": bucket_mapping("photos", topic=topic)},
                                     broker=fresh_mosquitto, group=None))
    async with running(config) as app:
        await wait_connected(app)
        await publish_like_minio(fresh_mosquitto, topic, [minio_notification("photos", f"before/{i}.jpg")
                                                          for i in range(5)])
        await wait_until(lambda: len(calls(tmp_path)) >= 5, 20, "the first five")
        assert app.mqtt is not None
        mqtt = app.mqtt

        fresh_mosquitto.restart()
        # Published as soon as the broker is back, most likely before the router has reconnected:
        # the persistent session holds them.
        await publish_like_minio(fresh_mosquitto, topic, [minio_notification("photos", f"after/{i}.jpg")
                                                          for i in range(5)])
        await wait_until(lambda: mqtt.status()["connects"] >= 2 and mqtt.status()["connected"], 20,
                         "the reconnect")
        await wait_until(lambda: len(calls(tmp_path)) >= 10, 20, "the five published around the restart")
        assert metric(app, "router_broker_connected", broker="mqtt") == 1
        assert not app.board.problems()

    keys = sorted(c["key"] for c in calls(tmp_path))
    assert keys == sorted([f"before/{i}.jpg" for i in range(5)] + [f"after/{i}.jpg" for i in range(5)])


async def test_shared_subscription_splits_notifications_between_replicas(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topic = unique_topic()
    group = f"g{uuid.uuid4().hex[:6]}"
    replicas = [tmp_path / "a", tmp_path / "b"]
    configs = [
        make_config(config_data(path, {"photos": bucket_mapping("photos", topic=topic)}, broker=mosquitto,
                                client_id=f"replica-{i}-{group}", group=group, concurrency=1))
        for i, path in enumerate(replicas)
    ]
    async with running(configs[0]) as first, running(configs[1]) as second:
        await wait_connected(first)
        await wait_connected(second)
        await publish_like_minio(mosquitto, topic, [minio_notification("photos", f"s/{i}.jpg") for i in range(20)])
        await wait_until(lambda: sum(len(calls(p)) for p in replicas) >= 20, 30, "all twenty")

    per_replica = [sorted(c["key"] for c in calls(p)) for p in replicas]
    assert all(per_replica), "both replicas take a share"
    assert sorted(per_replica[0] + per_replica[1]) == sorted(f"s/{i}.jpg" for i in range(20))


async def test_puback_is_withheld_until_the_records_are_durably_queued(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topic = unique_topic()
    config = make_config(config_data(tmp_path, {"photos": bucket_mapping("photos", topic=topic)}, broker=mosquitto,
                                     client_id=f"withheld-{uuid.uuid4().hex[:6]}"))
    keys = [f"withheld/{i}.jpg" for i in range(3)]
    async with running(config) as app:
        await wait_connected(app)
        assert app.queue is not None and app.mqtt is not None
        mqtt = app.mqtt
        await app.queue.close()  # the queue cannot take anything (as with a failing disk)
        await publish_like_minio(mosquitto, topic, [minio_notification("photos", k) for k in keys])
        await wait_until(lambda: mqtt.status()["accept_errors"] >= 1, 10, "the failed accept")
        assert mqtt.status()["received"] == 3
        assert mqtt.status()["acknowledged"] == 0
    assert calls(tmp_path) == []

    # Nothing was acknowledged, so the broker redelivers all three to the same session.
    async with running(config) as app:
        await wait_until(lambda: len(calls(tmp_path)) >= 3, 20, "the redelivered notifications")
        assert app.mqtt is not None and app.mqtt.status()["redelivered"] == 3
    assert sorted(c["key"] for c in calls(tmp_path)) == keys
