"""The asynchronous invocation queue end to end: real worker processes run the handlers in
tests/async_handlers, destination records land in a real SeaweedFS bucket (or Tansu / Mosquitto),
and the queue is a real SQLite file that outlives the daemon, including a SIGKILL.

Invocations are counted from inside the handler (one JSON line per call in RECORD_FILE).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from gate_support import Gate
from test_destinations import first_message

from router.app import build_async_invoker, build_queue
from router.config import Config, load_config_data
from router.delivery.async_invoker import AsyncInvoker
from router.delivery.async_queue import QueuedEvent
from router.delivery.destinations import DestinationFactory
from router.delivery.event_queue import EventQueue
from router.devstack import Mosquitto, SeaweedFS, Tansu, wait_until
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.runtime.pool import WorkerPool

pytestmark = pytest.mark.integration

HANDLERS = Path(__file__).resolve().parent.parent / "async_handlers"
REPO = Path(__file__).resolve().parents[2]


def make_config(
    tmp_path: Path, seaweedfs: SeaweedFS, handler: str, mapping: dict[str, Any], *,
    extra: dict[str, Any] | None = None, concurrency: int = 1,
) -> Config:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "s3": {"endpoint_url": seaweedfs.s3_endpoint, "access_key_id": seaweedfs.access_key,
               "secret_access_key": seaweedfs.secret_key},
        "http": {"webhook_token": "t"},
        "functions": {"thumbnail": {
            "handler": f"async_recorder.{handler}", "code_path": str(HANDLERS), "timeout": 30,
            "reserved_concurrent_executions": concurrency,
            "environment": {"variables": {"RECORD_FILE": str(tmp_path / "calls.jsonl"),
                                          "SLOW_FLAG": str(tmp_path / "slow.flag")}},
        }},
        "event_source_mappings": {"photos": {
            "function_name": "thumbnail",
            "bucket_notifications": {"transport": "webhook", "bucket": "photos"},
            "retry_delays_seconds": [0.2, 0.4],
            **mapping,
        }},
    }
    data.update(extra or {})
    return load_config_data(data)


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def event(n: int) -> dict[str, Any]:
    return {"Records": [{"n": n, "eventSource": "aws:s3", "s3": {"object": {"key": f"uploads/{n}.jpg"}}}]}


@pytest.fixture(params=["sqlite", "kafka"])
def queue_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config for each queue engine: the SQLite file in state_dir, or topics on the session Tansu
    (one name per test, kept across the test's restarts)."""
    if request.param == "sqlite":
        return {}
    kafka: Tansu = request.getfixturevalue("kafka")
    return {"kafka": {"bootstrap_servers": kafka.bootstrap_servers, "session_timeout_ms": 3000},
            "async_queue": f"kafka://q-{uuid.uuid4().hex[:10]}"}


class Stack:
    def __init__(self, config: Config, queue: EventQueue, invoker: AsyncInvoker, metrics: Metrics) -> None:
        self.config, self.queue, self.invoker, self.metrics = config, queue, invoker, metrics

    async def enqueue(self, *events: QueuedEvent, window: float = 3600) -> Any:
        result = await self.queue.enqueue(list(events), dedup_window=window)
        self.invoker.wake()
        return result

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def running(config: Config, *, start_invoker: bool = True) -> AsyncIterator[Stack]:
    metrics = Metrics()
    pool = WorkerPool(config, metrics=metrics)
    queue = build_queue(config, config.state_dir, metrics)
    destinations = DestinationFactory(config, metrics=metrics, timeout=3)
    invoker = build_async_invoker(config, queue, pool, destinations, metrics=metrics, board=ProgressBoard(60))
    await pool.start()
    await queue.open()
    if start_invoker:
        await invoker.start()
    try:
        yield Stack(config, queue, invoker, metrics)
    finally:
        await invoker.stop(2)
        await queue.close()
        await pool.close()
        await destinations.close()


def list_keys(seaweedfs: SeaweedFS, bucket: str, prefix: str = "") -> list[str]:
    answer = seaweedfs.s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in answer.get("Contents", [])]


async def records_in(seaweedfs: SeaweedFS, bucket: str, prefix: str, count: int) -> list[dict[str, Any]]:
    bucket, prefix = split(bucket, prefix)
    keys = await wait_until(lambda: (k := list_keys(seaweedfs, bucket, prefix)) and len(k) >= count and k,
                       what=f"{count} record(s) in s3://{bucket}/{prefix}")
    client = seaweedfs.s3_client()
    return [json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys]


# One bucket for every test here and in test_destinations.py, each test under its own prefix: the
# session SeaweedFS (volume.max=20, 7 volumes grown per bucket) takes writes into only a few buckets.
SHARED_BUCKET = "router-async-tests"


@pytest.fixture
def bucket(seaweedfs: SeaweedFS) -> str:
    """`s3://<bucket>` plus this test's own prefix, as `bucket/prefix` (no trailing slash)."""
    seaweedfs.create_bucket(SHARED_BUCKET)
    return f"{SHARED_BUCKET}/async-{uuid.uuid4().hex[:10]}"


def split(bucket: str, prefix: str) -> tuple[str, str]:
    name, _, base = bucket.partition("/")
    return name, f"{base}/{prefix}"


async def test_failing_handler_runs_retries_plus_one_times_then_lands_in_s3(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, queue_config: dict[str, Any]) -> None:
    config = make_config(tmp_path, seaweedfs, "fail", {
        "maximum_retry_attempts": 2,
        "destination_config": {"on_failure": {"destination": f"s3://{bucket}/photos/"}},
    }, extra=queue_config)
    async with running(config) as stack:
        await stack.enqueue(QueuedEvent("photos", "thumbnail", event(1)))
        (record,) = await records_in(seaweedfs, bucket, "photos/aws/lambda/", 1)
        await wait_until(lambda: stack.sample("router_on_failure_records_total", mapping="photos") == 1)
        assert stack.sample("router_retries_total", mapping="photos") == 2
    made = calls(tmp_path)
    assert len(made) == 3  # maximum_retry_attempts + 1, counted inside the handler
    assert len({c["request_id"] for c in made}) == 1  # one request id across retries, as on Lambda
    context = record["requestContext"]
    assert context["condition"] == "RetriesExhausted"
    assert context["approximateInvokeCount"] == 3
    assert context["requestId"] == made[0]["request_id"]
    assert context["functionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:thumbnail:$LATEST"
    assert record["version"] == "1.0" and record["timestamp"].endswith("Z")
    assert record["requestPayload"] == event(1)
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST",
                                         "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert record["responsePayload"]["errorMessage"] == "thumbnail could not be made"


async def test_event_age_look_ahead_sends_event_age_exceeded_after_one_attempt(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, queue_config: dict[str, Any]) -> None:
    config = make_config(tmp_path, seaweedfs, "fail", {
        "maximum_event_age_in_seconds": 60, "retry_delays_seconds": [60, 120],
        "destination_config": {"on_failure": {"destination": f"s3://{bucket}/"}},
    }, extra=queue_config)
    async with running(config) as stack:
        started = time.monotonic()
        await stack.enqueue(QueuedEvent("photos", "thumbnail", event(2)))
        (record,) = await records_in(seaweedfs, bucket, "aws/lambda/", 1)
        assert time.monotonic() - started < 30  # did not wait for the 60 s retry
    assert len(calls(tmp_path)) == 1
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responseContext"]["functionError"] == "Unhandled"


async def test_success_record_goes_to_on_success(tmp_path: Path, seaweedfs: SeaweedFS, bucket: str) -> None:
    config = make_config(tmp_path, seaweedfs, "succeed", {
        "destination_config": {"on_success": {"destination": f"s3://{bucket}/ok/"},
                               "on_failure": {"destination": f"s3://{bucket}/failed/"}},
    })
    async with running(config) as stack:
        await stack.enqueue(QueuedEvent("photos", "thumbnail", event(3)))
        (record,) = await records_in(seaweedfs, bucket, "ok/", 1)
        assert stack.sample("router_on_success_records_total", mapping="photos") == 1
    assert list_keys(seaweedfs, *split(bucket, "failed/")) == []
    assert len(calls(tmp_path)) == 1
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {"processed": 3}


async def test_duplicate_notification_within_the_window_is_invoked_once(
    tmp_path: Path, seaweedfs: SeaweedFS, queue_config: dict[str, Any]) -> None:
    config = make_config(tmp_path, seaweedfs, "succeed", {}, extra=queue_config)
    key = "photos|uploads/7.jpg|etag-7|0000000000000007|ObjectCreated:Put"
    async with running(config) as stack:
        first = await stack.enqueue(QueuedEvent("photos", "thumbnail", event(7), dedup_key=key))
        await wait_until(lambda: len(calls(tmp_path)) == 1)
        second = await stack.enqueue(QueuedEvent("photos", "thumbnail", event(7), dedup_key=key))
        other = await stack.enqueue(QueuedEvent("photos", "thumbnail", event(8), dedup_key=key + "-other"))
        await wait_until(lambda: len(calls(tmp_path)) == 2)
        await asyncio.sleep(0.5)
        assert stack.sample("router_duplicate_notifications_total", mapping="photos") == 1
        assert stack.sample("router_async_events_received_total", mapping="photos") == 2
    if not queue_config:  # SQLite decides at once; on Kafka the partition's owner does, when it reads
        assert (first.accepted, second.accepted, second.duplicates, other.accepted) == (1, 0, 1, 1)
    assert sorted(c["event"]["Records"][0]["n"] for c in calls(tmp_path)) == [7, 8]


async def test_queued_events_survive_a_restart(
    tmp_path: Path, seaweedfs: SeaweedFS, queue_config: dict[str, Any]
) -> None:
    config = make_config(tmp_path, seaweedfs, "succeed", {}, extra=queue_config)
    async with running(config, start_invoker=False) as stack:  # accepted, never dispatched
        await stack.enqueue(*(QueuedEvent("photos", "thumbnail", event(n)) for n in range(5)))
    assert calls(tmp_path) == []
    async with running(config) as stack:
        await wait_until(lambda: len(calls(tmp_path)) == 5)
        await wait_until(lambda: stack.invoker.status()["mappings"]["photos"]["depth"] == 0)
    assert sorted(c["event"]["Records"][0]["n"] for c in calls(tmp_path)) == [0, 1, 2, 3, 4]


async def test_a_retry_scheduled_before_a_restart_resumes_after_it(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, queue_config: dict[str, Any]) -> None:
    config = make_config(tmp_path, seaweedfs, "fail", {
        "maximum_retry_attempts": 1, "retry_delays_seconds": [1.5],
        "destination_config": {"on_failure": {"destination": f"s3://{bucket}/"}},
    }, extra=queue_config)
    async with running(config) as stack:
        await stack.enqueue(QueuedEvent("photos", "thumbnail", event(4)))
        await wait_until(lambda: len(calls(tmp_path)) == 1)
        await wait_until(lambda: stack.invoker.status()["mappings"]["photos"]["in_flight"] == 0)
    async with running(config):
        (record,) = await records_in(seaweedfs, bucket, "aws/lambda/", 1)
    assert len(calls(tmp_path)) == 2
    assert record["requestContext"]["approximateInvokeCount"] == 2


DAEMON = """
import asyncio, json, sys
from router.app import build_async_invoker
from router.config import load_config_data
from router.delivery.async_queue import AsyncQueue, QueuedEvent
from router.delivery.destinations import DestinationFactory
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.runtime.pool import WorkerPool

async def main():
    config = load_config_data(json.loads(sys.argv[1]))
    metrics = Metrics()
    pool = WorkerPool(config, metrics=metrics)
    queue = AsyncQueue(config.state_dir / "async-queue.sqlite3", metrics=metrics)
    invoker = build_async_invoker(config, queue, pool, DestinationFactory(config), metrics=metrics,
                                  board=ProgressBoard(60))
    await pool.start()
    await queue.open()
    await queue.enqueue([QueuedEvent("photos", "thumbnail", {"Records": [{"n": 9}]})], dedup_window=0)
    await invoker.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_sigkill_while_in_flight_reinvokes_after_restart(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    config = make_config(tmp_path, seaweedfs, "slow_when_flagged", {})
    flag = tmp_path / "slow.flag"
    flag.touch()
    settings = config.model_dump(mode="json", exclude_none=True)
    settings["s3"] = {"endpoint_url": seaweedfs.s3_endpoint}  # secrets are masked in a dump; not needed here
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DAEMON, json.dumps(settings),
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: len(calls(tmp_path)) == 1, what="the handler started in the first daemon")
        os.kill(daemon.pid, signal.SIGKILL)
        assert await asyncio.wait_for(daemon.wait(), 10) == -signal.SIGKILL
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
    flag.unlink()
    async with running(config) as stack:
        await wait_until(lambda: len(calls(tmp_path)) == 2, what="the re-invocation after restart")
        await wait_until(lambda: stack.invoker.status()["mappings"]["photos"]["depth"] == 0)
    first, second = calls(tmp_path)
    assert first["event"] == second["event"] == {"Records": [{"n": 9}]}
    assert first["request_id"] == second["request_id"]


async def test_destination_down_keeps_the_event_and_delivers_when_back(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, queue_config: dict[str, Any]) -> None:
    gate = Gate("127.0.0.1", seaweedfs.s3_port)
    config = make_config(tmp_path, seaweedfs, "fail", {
        "maximum_retry_attempts": 0,
        "destination_config": {"on_failure": {"destination": f"s3://{bucket}/"}},
    }, extra={**queue_config, "s3": {"endpoint_url": gate.endpoint, "access_key_id": seaweedfs.access_key,
                                     "secret_access_key": seaweedfs.secret_key}})
    async with running(config) as stack:
        await stack.enqueue(QueuedEvent("photos", "thumbnail", event(5)), QueuedEvent("photos", "thumbnail", event(6)))
        await wait_until(lambda: stack.sample("router_destination_delivery_failures_total", mapping="photos") >= 2,
                    what="failed deliveries while the endpoint is closed")
        for _ in range(100):  # on Kafka a parked record is on its way to the delayed topic a moment
            await stack.invoker._refresh_stats(force=True)
            status = stack.invoker.status()["mappings"]["photos"]
            if status["depth"] == 2 and status["awaiting_destination"] >= 1:
                break
            await asyncio.sleep(0.05)
        assert status["depth"] == 2 and status["awaiting_destination"] >= 1
        await gate.open()
        try:
            records = await records_in(seaweedfs, bucket, "aws/lambda/", 2)
            await wait_until(lambda: stack.invoker.status()["mappings"]["photos"]["depth"] == 0)
        finally:
            await gate.close()
    assert len(calls(tmp_path)) == 2  # the function was not run again for the parked records
    assert sorted(r["requestPayload"]["Records"][0]["n"] for r in records) == [5, 6]


async def test_kafka_on_failure_and_mqtt_on_success_deliver_the_record(
    tmp_path: Path, seaweedfs: SeaweedFS, kafka: Tansu, topic: Any, mosquitto: Mosquitto
) -> None:
    failures = topic()
    mqtt_topic = f"router/ok/{uuid.uuid4().hex[:8]}"
    extra = {"kafka": {"bootstrap_servers": kafka.bootstrap_servers},
             "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": f"t-{uuid.uuid4().hex[:6]}"}}
    mapping = {"maximum_retry_attempts": 0, "destination_config": {
        "on_failure": {"destination": f"kafka://{failures}"}, "on_success": {"destination": f"mqtt://{mqtt_topic}"}}}
    fail_config = make_config(tmp_path, seaweedfs, "fail", mapping, extra=extra)
    async with running(fail_config) as stack:
        await stack.enqueue(QueuedEvent("photos", "thumbnail", event(10)))
        await wait_until(lambda: stack.sample("router_on_failure_records_total", mapping="photos") == 1)
    key, raw = await first_message(kafka.bootstrap_servers, failures)
    failure = json.loads(raw)
    assert failure["requestContext"]["condition"] == "RetriesExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 1
    assert failure["requestPayload"] == event(10)
    assert key is not None and key.startswith(b"aws/lambda/")

    ok_config = make_config(tmp_path, seaweedfs, "succeed", mapping, extra=extra)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as subscriber:
        await subscriber.subscribe(mqtt_topic, qos=1)
        async with running(ok_config) as stack:
            await stack.enqueue(QueuedEvent("photos", "thumbnail", event(11)))
            received = await asyncio.wait_for(anext(aiter(subscriber.messages)), 20)
    assert isinstance(received.payload, bytes)
    success = json.loads(received.payload)
    assert success["requestContext"]["condition"] == "Success"
    assert success["responsePayload"] == {"processed": 11}
