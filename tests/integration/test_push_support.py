"""Support for the push-path integration tests (this module holds no tests of its own).

The tests run the real daemon (`router.app`: sources, durable queue, invoker, worker pool, HTTP
server) against real brokers, in process for speed, or as `router run` in a subprocess when it
must be SIGKILLed. Invocations are counted from inside the handler: `recorder.record`, written to
the test's own code directory, appends one JSON line per call to RECORD_FILE.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiomqtt

from router.app import Router, build, start, stop
from router.config import Config, load_config_data
from router.devstack import Mosquitto, wait_until

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
ROUTER_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "router"

RECORDER = '''
"""Test handler: records every invocation; can fail each key's first attempt, or be slow."""
import hashlib, json, os, time
from pathlib import Path


def record(event, context):
    started = time.time()
    key = event["Records"][0]["s3"]["object"]["key"]
    line = {"t": started, "request_id": context.aws_request_id, "pid": os.getpid(), "key": key,
            "event": event}
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\\n")
    if os.environ.get("SLEEP_SECONDS"):
        time.sleep(float(os.environ["SLEEP_SECONDS"]))
    fail_dir = os.environ.get("FAIL_FIRST_DIR")
    if fail_dir:
        marker = Path(fail_dir) / hashlib.sha256(key.encode()).hexdigest()
        if not marker.exists():
            marker.touch()
            raise RuntimeError("the first attempt at each key fails")
    return {"ok": True}
'''


def write_recorder(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "recorder.py").write_text(RECORDER)
    return directory


def config_data(
    tmp_path: Path,
    mappings: dict[str, Any],
    *,
    broker: Mosquitto | None = None,
    http_port: int | None = None,
    client_id: str | None = None,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    handler: str = "recorder.record",
    code_path: Path | None = None,
    group: str | None = "router",
    timeout: int = 10,
) -> dict[str, Any]:
    code = code_path or write_recorder(tmp_path / "code")
    data: dict[str, Any] = {
        "region": "eu-west-1",
        "state_dir": str(tmp_path / "state"),
        "shutdown_timeout_seconds": 5,
        "functions": {"fn": {
            "handler": handler, "code_path": str(code), "timeout": timeout,
            "reserved_concurrent_executions": concurrency,
            "environment": {"variables": {"RECORD_FILE": str(tmp_path / "calls.jsonl"), **(env or {})}},
        }},
        "http": {"listen": f"127.0.0.1:{http_port or 0}", "webhook_token": "push-test-token"},
        "event_source_mappings": mappings,
    }
    if broker is not None:
        data["mqtt"] = {"host": broker.host, "port": broker.port,
                        "client_id": client_id or f"router-{uuid.uuid4().hex[:8]}",
                        "shared_subscription_group": group, "keepalive": 5}
    return data


def make_config(data: dict[str, Any]) -> Config:
    return load_config_data(data)


def bucket_mapping(bucket: str, *, transport: str = "mqtt", topic: str | None = None,
                   events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"transport": transport, "bucket": bucket, "events": events or ["s3:*"]}
    if transport == "mqtt":
        rule["topic"] = topic
    return {"function_name": "fn", "bucket_notifications": rule, "retry_delays_seconds": [0.5, 0.5], **extra}


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Router]:
    """The daemon, built and started from `config`, stopped (drained) on exit."""
    app = await build(config)
    try:
        await start(app)
        yield app
    finally:
        await stop(app)


async def wait_connected(app: Router, timeout: float = 15) -> None:
    assert app.mqtt is not None
    mqtt = app.mqtt
    await wait_until(lambda: mqtt.status()["subscribed"], timeout, "the MQTT source to subscribe")


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def minio_fixtures() -> list[Path]:
    return sorted((FIXTURES / "minio").glob("*.json"))


def minio_notification(bucket: str, key: str, *, size: int = 1024, sequencer: int | None = None,
                       event: str = "s3:ObjectCreated:Put", published_at: float | None = None) -> bytes:
    """A notification as MinIO's MQTT target publishes it (see tests/fixtures/minio)."""
    moment = published_at if published_at is not None else time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"
    seq = sequencer if sequencer is not None else time.time_ns()
    record = {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": stamp,
        "eventName": event, "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "172.18.0.1"},
        "responseElements": {"x-amz-id-2": "dd9025ba", "x-amz-request-id": f"{seq:X}",
                             "x-minio-deployment-id": "4b8d2f0e", "x-minio-origin-endpoint": "http://minio:9000"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key), "size": size, "eTag": "0" * 32, "contentType": "image/jpeg",
                          "userMetadata": {"content-type": "image/jpeg"}, "sequencer": f"{seq:016X}"}},
        "source": {"host": "172.18.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"},
    }
    envelope = {"EventName": event, "Key": f"{bucket}/{key}", "Records": [record]}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def publish_like_minio(broker: Mosquitto, topic: str, payloads: Iterable[bytes]) -> None:
    """MQTT 3.1.1, clean session, a hex-nanotime client id, QoS 1, retain false: MinIO's target."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"{time.time_ns():x}",
                              protocol=aiomqtt.ProtocolVersion.V311, clean_session=True) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1, retain=False)


def metric(app: Router, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0
