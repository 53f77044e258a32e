"""Filter criteria on real brokers: Tansu streams and Mosquitto bucket notifications.

Outcomes asserted: exactly which records each function received (bytes and sequence numbers as in
the topic), where each group's checkpoint ended (a filtered tail and a fully filtered shard commit
to the end), what the filtered-out counter says, and that a filtered notification is acknowledged
to the broker but never invoked.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stream_daemon import HANDLERS, committed, produce, wait_until
from test_push_support import metric, minio_notification, publish_like_minio
from test_reload import ConfigFile, base_config, daemon, push_calls

from router.devstack import Mosquitto, Tansu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]


def recorder(tmp_path: Path, name: str) -> dict[str, Any]:
    return {"handler": "stream_recorder.handler", "code_path": str(HANDLERS), "timeout": 10,
            "environment": {"variables": {"RECORD_FILE": str(tmp_path / f"{name}.jsonl")}}}


def received(tmp_path: Path, name: str) -> list[tuple[int, bytes]]:
    path = tmp_path / f"{name}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [(int(seq), raw.encode("latin-1")) for line in lines
            for seq, raw in zip(line["seqs"], line["data"], strict=True)]


def filtered(topic: str, name: str, *patterns: str) -> dict[str, Any]:
    return {"function_name": name, "kafka_topic": topic, "consumer_group_id": f"router-{topic}-{name}",
            "batch_size": 10, "filter_criteria": {"filters": [{"pattern": p} for p in patterns]}}


async def test_two_mappings_on_one_topic_get_exactly_their_records_and_commit_to_the_end(
    tmp_path: Path, kafka: Tansu, topic: Callable[..., str]
) -> None:
    source, quiet = topic(), topic()
    data = base_config(tmp_path, kafka)
    data["functions"].update(clicks=recorder(tmp_path, "clicks"), europe=recorder(tmp_path, "europe"),
                             nothing=recorder(tmp_path, "nothing"))
    file = ConfigFile(tmp_path / "router.yaml", data)
    clicks = filtered(source, "clicks", '{"data": {"type": ["click"], "n": [{"numeric": [">", 10]}]}}')
    europe = filtered(source, "europe", '{"partitionKey": [{"prefix": "eu-"}]}')
    nothing = filtered(quiet, "nothing", '{"data": {"type": ["never"]}}')
    file.mappings.update(clicks=clicks, europe=europe, nothing=nothing)

    records: list[tuple[bytes | None, bytes | None, int | None]] = []
    for i in range(60):
        # Odd spacing on purpose: what the function gets must be these bytes, not a re-encoding.
        kind = b"click" if i % 2 else b"view"
        value = b"not json %d" % i if i % 3 == 0 else b'{"type":  "%s", "n": %d}' % (kind, i)
        records.append(((b"eu-%d" if i % 4 == 0 else b"us-%d") % i, value, 0))
    records += [(b"us-tail-%d" % i, b'{"type": "view", "n": 1}', 0) for i in range(7)]  # matches nothing
    want_clicks = [(i, v) for i, (_, v, _) in enumerate(records)
                   if v and v.startswith(b"{") and json.loads(v)["type"] == "click" and json.loads(v)["n"] > 10]
    want_europe = [(i, v) for i, (k, v, _) in enumerate(records) if k and k.startswith(b"eu-")]
    assert want_clicks and want_europe

    async with daemon(file) as app:
        await produce(kafka.bootstrap_servers, source, records)
        await produce(kafka.bootstrap_servers, quiet, [(b"k", b'{"type": "view"}', 0)] * 25)
        end = len(records)
        for mapping in (clicks, europe):
            await wait_until_committed(kafka, mapping["consumer_group_id"], source, end)
        await wait_until_committed(kafka, nothing["consumer_group_id"], quiet, 25)
        assert received(tmp_path, "clicks") == want_clicks
        assert received(tmp_path, "europe") == want_europe
        assert received(tmp_path, "nothing") == []  # a fully filtered shard: no invocation at all
        assert metric(app, "router_filtered_out_records_total", mapping="clicks") == end - len(want_clicks)
        assert metric(app, "router_filtered_out_records_total", mapping="nothing") == 25


async def wait_until_committed(kafka: Tansu, group: str, topic: str, offset: int, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = (await committed(kafka.bootstrap_servers, group, topic, 1))[0]
        if last == offset:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{group} committed {last!r}, want {offset}")


async def test_a_filtered_bucket_notification_is_acknowledged_and_not_invoked(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    file = ConfigFile(tmp_path / "router.yaml", base_config(tmp_path, mosquitto=mosquitto))
    where = f"filters/{os.getpid()}"
    file.mappings["photos"] = {
        "function_name": "push", "retry_delays_seconds": [0.5],
        "bucket_notifications": {"topic": where, "bucket": "photos", "events": ["s3:*"]},
        "filter_criteria": {"filters": [{"pattern": '{"s3": {"object": {"key": [{"suffix": ".jpg"}]}}}'}]},
    }
    async with daemon(file) as app:
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_until(lambda: mqtt.status()["subscribed"], 15, "the subscription")
        await publish_like_minio(mosquitto, where, [minio_notification("photos", "notes.txt"),
                                                    minio_notification("photos", "cat.jpg")])
        await wait_until(lambda: len(push_calls(tmp_path)) >= 1, 20, "the matching notification")
        await wait_until(lambda: mqtt.status()["acknowledged"] == 2, 10, "both notifications acknowledged")
        await asyncio.sleep(1)
        assert [c["key"] for c in push_calls(tmp_path)] == ["cat.jpg"]
        assert metric(app, "router_filtered_out_records_total", mapping="photos") == 1
        assert app.invoker.status()["mappings"]["photos"]["depth"] == 0
