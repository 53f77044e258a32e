"""Powertools handlers, unmodified, run by the daemon on real brokers: a Kinesis BatchProcessor whose
partial failures router honours on Tansu, and an S3Event handler fed by SeaweedFS's filer webhook.
(The HTTP side, APIGatewayHttpResolver, runs in tests/integration/test_http_routes.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stream_daemon import kafka_client, produce
from test_push_support import make_config, running, wait_until

from router.devstack import SeaweedFS, Tansu, free_port

pytestmark = pytest.mark.integration

HANDLERS = Path(__file__).resolve().parents[1] / "powertools_handlers"
TOKEN = "powertools-webhook-token"


def seen(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "seen.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def function(handler: str, tmp_path: Path) -> dict[str, Any]:
    return {"handler": f"handlers.{handler}", "code_path": str(HANDLERS), "timeout": 10,
            "environment": {"variables": {"RECORD_FILE": str(tmp_path / "seen.jsonl"),
                                          "POWERTOOLS_SERVICE_NAME": "router-test"}}}


@pytest.mark.usefixtures("kafka_client")
async def test_batch_processor_partial_failures_are_retried_from_the_failed_record(
        tmp_path: Path, kafka: Tansu, topic: Callable[..., str]) -> None:
    stream = topic(1)
    await produce(kafka.bootstrap_servers, stream, [(None, v.encode(), 0) for v in ("a", "b", "fail-c", "d")])
    config = make_config({
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "session_timeout_ms": 6000,
                  "heartbeat_interval_ms": 500, "client": kafka_client()},
        "functions": {"batch": function("kinesis_batch", tmp_path)},
        "event_source_mappings": {"clicks": {
            "function_name": "batch", "kafka_topic": stream, "starting_position": "TRIM_HORIZON", "batch_size": 10,
            "function_response_types": ["ReportBatchItemFailures"], "retry_base_delay_seconds": 0.05,
            "retry_max_delay_seconds": 0.2, "consumer_group_id": f"router-{stream}",
        }},
    })
    async with running(config) as app:
        await wait_until(lambda: len(seen(tmp_path)) >= 6, 40, "the batch and its retry")
        await wait_until(lambda: app.supervisor.status()["clicks"]["shards"]["shardId-000000000000"]["checkpoint"]
                         == "3", 20, "checkpoint after the last record")
        await asyncio.sleep(1)
    attempts = [(line["data"], line["failed"]) for line in seen(tmp_path)]
    # BatchProcessor runs every record and reports fail-c; router retries from fail-c, not from a.
    assert attempts == [("a", False), ("b", False), ("fail-c", True), ("d", False), ("fail-c", False), ("d", False)]


async def test_s3event_handler_reads_what_seaweedfs_reported(
        seaweedfs_webhook: Callable[..., SeaweedFS], tmp_path: Path) -> None:
    port = free_port()
    store = await asyncio.to_thread(seaweedfs_webhook, f"http://127.0.0.1:{port}/webhooks/seaweedfs", TOKEN)
    await asyncio.to_thread(store.create_bucket, "docs")
    config = make_config({
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": f"127.0.0.1:{port}", "webhook_token": TOKEN},
        "functions": {"objects": function("s3_objects", tmp_path)},
        "event_source_mappings": {"docs": {
            "function_name": "objects", "retry_delays_seconds": [1, 1],
            "bucket_notifications": {"transport": "webhook", "bucket": "docs", "events": ["s3:ObjectCreated:*"]},
        }},
    })
    body = b"quarterly numbers"
    async with running(config):
        s3 = store.s3_client()
        await asyncio.to_thread(s3.put_object, Bucket="docs", Key="2025/q2 café + more.txt", Body=body)
        await wait_until(lambda: len(seen(tmp_path)) >= 1, 40, "the S3Event handler ran")
    (line,) = seen(tmp_path)
    assert line == {"bucket": "docs", "key": "2025/q2 café + more.txt", "size": len(body),
                    "event": "ObjectCreated:Put"}
