"""MQTT app events on a real Mosquitto: messages on an app-event mapping's topic filter invoke the
function asynchronously, with the event an AWS IoT rule `SELECT *` would pass, through the same
durable queue, retries and destinations as bucket notifications."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from stream_daemon import read_topic, wait_until
from test_push_support import metric
from test_reload import ConfigFile, base_config, daemon

from router.devstack import Mosquitto, Tansu

pytestmark = pytest.mark.integration

HANDLER = '''
import json, os

def handler(event, context):
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(event) + "\\n")
    if event.get("fail"):
        raise ValueError("this click is poison")
    return {"ok": True}
'''


def clicks_function(tmp_path: Path) -> dict[str, Any]:
    code = tmp_path / "clicks_code"
    code.mkdir(exist_ok=True)
    (code / "clicks.py").write_text(HANDLER)
    return {"handler": "clicks.handler", "code_path": str(code), "timeout": 5,
            "environment": {"variables": {"RECORD_FILE": str(tmp_path / "clicks.jsonl")}}}


def seen(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "clicks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def publish(broker: Mosquitto, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
    def send() -> None:
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"device-{os.getpid()}",
                             protocol=paho.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            for topic, payload in messages:
                client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
        finally:
            client.loop_stop()
            client.disconnect()
    await asyncio.to_thread(send)


async def test_app_events_are_invoked_with_iot_rule_events_and_failures_reach_the_destination(
    tmp_path: Path, mosquitto: Mosquitto, kafka: Tansu, topic: Any
) -> None:
    dlq = topic()
    data = base_config(tmp_path, kafka, mosquitto)
    data["functions"]["clicks"] = clicks_function(tmp_path)
    file = ConfigFile(tmp_path / "router.yaml", data)
    app_prefix = f"app{os.getpid()}"
    file.mappings["app-clicks"] = {
        "function_name": "clicks", "mqtt_topic": f"{app_prefix}/+/clicks", "topic_key": "topic",
        "maximum_retry_attempts": 0, "retry_delays_seconds": [0.2],
        "destination_config": {"on_failure": {"destination": f"kafka://{dlq}"}},
    }
    file.mappings["big-clicks"] = {
        "function_name": "clicks", "mqtt_topic": f"{app_prefix}/big/#",
        "filter_criteria": {"filters": [{"pattern": '{"n": [{"numeric": [">=", 100]}]}'}]},
    }
    async with daemon(file) as app:
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_until(lambda: mqtt.status()["subscribed"], 15, "the app-event subscriptions")
        await publish(mosquitto, [
            (f"{app_prefix}/phone-1/clicks", b'{"screen": "home", "user": "u1"}'),
            (f"{app_prefix}/phone-2/clicks", b"not json \xff"),
            (f"{app_prefix}/phone-2/clicks", b"[1, 2]"),
            (f"{app_prefix}/phone-2/clicks", b""),
            (f"{app_prefix}/phone-3/taps", b'{"screen": "never"}'),  # another topic: never delivered
            (f"{app_prefix}/phone-1/clicks", b'{"fail": true}'),
            (f"{app_prefix}/big/x", b'{"n": 5}'),  # filtered out
            (f"{app_prefix}/big/x", b'{"n": 500}'),
        ])
        await wait_until(lambda: len(seen(tmp_path)) >= 6, 20, "the app events")
        failed = await read_topic(kafka.bootstrap_servers, dlq, 1, timeout=20)
        await asyncio.sleep(0.5)
        events = seen(tmp_path)
        objects = [e for e in events if "isBase64Encoded" not in e]
        assert {"screen": "home", "user": "u1", "topic": f"{app_prefix}/phone-1/clicks"} in objects
        assert {"n": 500} in objects and {"n": 5} not in objects
        assert not any(e.get("screen") == "never" for e in events)
        raw = sorted(base64.b64decode(e["data"]) for e in events if e.get("isBase64Encoded") is True)
        assert raw == sorted([b"not json \xff", b"[1, 2]", b""])  # never dropped, exact bytes
        assert len(events) == 6  # each message once (the failing one: 0 retries)
        assert failed[0]["requestPayload"] == {"fail": True, "topic": f"{app_prefix}/phone-1/clicks"}
        assert failed[0]["requestContext"]["condition"] == "RetriesExhausted"
        assert mqtt.status()["acknowledged"] == 7  # every message received (taps is not subscribed) was acked
        assert metric(app, "router_filtered_out_records_total", mapping="big-clicks") == 1
        assert app.status()["mappings"]["app-clicks"]["kind"] == "app"


async def test_app_events_published_while_the_daemon_is_stopped_are_delivered_after_it_returns(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    data = base_config(tmp_path, mosquitto=mosquitto)
    data["functions"]["clicks"] = clicks_function(tmp_path)
    file = ConfigFile(tmp_path / "router.yaml", data)
    where = f"offline{os.getpid()}/d1/clicks"
    file.mappings["clicks"] = {"function_name": "clicks", "mqtt_topic": f"offline{os.getpid()}/+/clicks"}
    async with daemon(file) as app:
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_until(lambda: mqtt.status()["subscribed"], 15, "the subscription")
    # stopped (drained, disconnected): the persistent session keeps what is published meanwhile
    await publish(mosquitto, [(where, json.dumps({"n": i}).encode()) for i in range(5)])
    async with daemon(file):
        await wait_until(lambda: len(seen(tmp_path)) >= 5, 20, "the clicks sent while stopped")
        await asyncio.sleep(0.5)
    assert sorted(e["n"] for e in seen(tmp_path)) == [0, 1, 2, 3, 4]


async def publish_v5(broker: Mosquitto, messages: list[tuple[str, bytes, list[tuple[str, str]]]]) -> None:
    """QoS 1 publishes with MQTT v5 user properties; each returns once its PUBACK is in."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def send() -> None:
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"device5-{os.getpid()}",
                             protocol=paho.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            for topic, payload, user in messages:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                if user:
                    properties.UserProperty = user
                client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)
        finally:
            client.loop_stop()
            client.disconnect()
    await asyncio.to_thread(send)


async def test_batches_hold_at_most_batch_size_records_in_order_and_are_never_empty(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    data = base_config(tmp_path, mosquitto=mosquitto)
    data["functions"]["clicks"] = clicks_function(tmp_path)
    file = ConfigFile(tmp_path / "router.yaml", data)
    prefix = f"batch{os.getpid()}"
    file.mappings["batched"] = {"function_name": "clicks", "mqtt_topic": f"{prefix}/+/clicks", "batch_size": 5,
                                "maximum_batching_window_in_seconds": 1}
    sent = [json.dumps({"n": i}).encode() if i % 4 else f"raw {i}".encode() for i in range(12)]
    async with daemon(file) as app:
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_until(lambda: mqtt.status()["subscribed"], 15, "the subscription")
        started = asyncio.get_running_loop().time()
        await publish(mosquitto, [(f"{prefix}/d{i % 3}/clicks", payload) for i, payload in enumerate(sent)])
        await wait_until(lambda: sum(len(e["Records"]) for e in seen(tmp_path)) >= 12, 20, "12 records")
        waited = asyncio.get_running_loop().time() - started
        await asyncio.sleep(1.5)  # nothing more comes: no empty invocation either
    events = seen(tmp_path)
    assert [len(e["Records"]) for e in events][:2] == [5, 5] and all(1 <= len(e["Records"]) <= 5 for e in events)
    records = [r for e in events for r in e["Records"]]
    assert len(records) == 12 and len({r["messageId"] for r in records}) == 12
    got = [base64.b64decode(r["payload"]) if r["isBase64Encoded"] else json.dumps(r["payload"]).encode()
           for r in records]
    assert got == sent  # arrival order, exact bytes for what is not a JSON object
    assert [r["topic"] for r in records] == [f"{prefix}/d{i % 3}/clicks" for i in range(12)]
    assert all(r["receivedAt"].endswith("Z") and len(r["receivedAt"]) == 24 for r in records)
    assert list(records[1]) == ["topic", "payload", "isBase64Encoded", "receivedAt", "messageId"]
    assert waited >= 0.9 or len(events) == 3  # the last two waited for the batching window


async def test_duplicates_are_suppressed_only_by_the_id_the_mapping_names(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    data = base_config(tmp_path, mosquitto=mosquitto)
    data["functions"]["clicks"] = clicks_function(tmp_path)
    file = ConfigFile(tmp_path / "router.yaml", data)
    prefix = f"dedup{os.getpid()}"
    file.mappings["by-property"] = {"function_name": "clicks", "mqtt_topic": f"{prefix}/prop",
                                    "deduplication_id": {"user_property": "msg-id"}}
    file.mappings["by-field"] = {"function_name": "clicks", "mqtt_topic": f"{prefix}/field",
                                 "deduplication_id": {"json_field": "meta.id"}}
    async with daemon(file) as app:
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_until(lambda: mqtt.status()["subscribed"], 15, "the subscriptions")
        await publish_v5(mosquitto, [
            (f"{prefix}/prop", b'{"click": 1}', [("msg-id", "a")]),
            (f"{prefix}/prop", b'{"click": 1}', [("msg-id", "a")]),  # a redelivery: suppressed
            (f"{prefix}/prop", b'{"click": 1}', [("msg-id", "b")]),  # same bytes, another id: delivered
            (f"{prefix}/prop", b'{"click": 2}', []),  # no id: never suppressed
            (f"{prefix}/prop", b'{"click": 2}', []),
            (f"{prefix}/field", b'{"meta": {"id": 7}, "v": 1}', []),
            (f"{prefix}/field", b'{"meta": {"id": 7}, "v": 2}', []),  # same id: suppressed
            (f"{prefix}/field", b'{"v": 3}', []),
        ])
        await wait_until(lambda: len(seen(tmp_path)) >= 6, 20, "the distinct clicks")
        await asyncio.sleep(1.0)
    events = seen(tmp_path)
    assert sorted(json.dumps(e, sort_keys=True) for e in events) == sorted(json.dumps(e, sort_keys=True) for e in [
        {"click": 1}, {"click": 1}, {"click": 2}, {"click": 2}, {"meta": {"id": 7}, "v": 1}, {"v": 3}])
    assert metric(app, "router_duplicate_notifications_total", mapping="by-property") == 1
    assert metric(app, "router_duplicate_notifications_total", mapping="by-field") == 1


async def test_a_sigkill_between_puback_and_invocation_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    from daemon_support import Daemon

    data = base_config(tmp_path, mosquitto=mosquitto)
    data["functions"]["clicks"] = clicks_function(tmp_path)
    where = f"kill{os.getpid()}"
    # Disabled: every message is acknowledged once queued and none is invoked before the kill.
    data["event_source_mappings"]["clicks"] = {"function_name": "clicks", "mqtt_topic": f"{where}/+",
                                               "enabled": False}
    first = Daemon(json.loads(json.dumps(data)), tmp_path).start()
    try:
        await wait_until(lambda: first.get("/status")[1]["brokers"]["mqtt"]["up"], 15, "the subscription")
        await publish(mosquitto, [(f"{where}/d1", json.dumps({"n": i}).encode()) for i in range(5)])  # PUBACKed
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        if first.proc is not None and first.proc.poll() is None:
            first.proc.kill()
    assert seen(tmp_path) == []
    data["event_source_mappings"]["clicks"]["enabled"] = True
    second = Daemon(data, tmp_path).start()
    try:
        await wait_until(lambda: len(seen(tmp_path)) >= 5, 20, "the queued clicks after the restart")
        await asyncio.sleep(0.5)
    finally:
        second.stop()
    assert sorted(e["n"] for e in seen(tmp_path)) == [0, 1, 2, 3, 4]


async def test_a_retained_message_is_delivered_once_to_a_new_subscription_not_on_every_reconnect(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Retain handling 1 (send if the subscription is new), for a plain and for a `$share`
    subscription. The MQTT 5 spec sends shared subscriptions no retained messages; Mosquitto 2 does
    send them to a new one, so on Mosquitto both get the retained message once, on the first start."""
    where = f"retained{os.getpid()}"

    await publish(mosquitto, [(f"{where}/d1/clicks", b'{"last": "state"}')], retain=True)

    for group in (None, f"g{os.getpid()}"):
        folder = tmp_path / f"group-{group}"
        folder.mkdir()
        data = base_config(folder, mosquitto=mosquitto)
        data["functions"]["clicks"] = clicks_function(folder)
        data["mqtt"]["shared_subscription_group"] = group
        data["mqtt"]["client_id"] = f"retain-{group}-{os.getpid()}"  # a session of its own
        file = ConfigFile(folder / "router.yaml", data)
        file.mappings["clicks"] = {"function_name": "clicks", "mqtt_topic": f"{where}/+/clicks"}
        for start in range(2):  # a first start, then a restart on the persistent session (subscription kept)
            async with daemon(file) as app:
                await wait_until(lambda source=app.mqtt: source.status()["subscribed"], 15, "the subscription")
                if start == 0:
                    await wait_until(lambda where=folder: len(seen(where)) >= 1, 15, "the retained message")
                await asyncio.sleep(1.5)
        assert seen(folder) == [{"last": "state"}], group  # once, not again on the reconnect
