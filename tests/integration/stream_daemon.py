"""Support for the stream-mapping integration tests, and a tiny daemon to run in another process.

As a script (`python stream_daemon.py CONFIG.json MAPPING`) it builds Config + WorkerPool +
StreamMappingRunner, prints "started" once the consumer is up, and runs until SIGTERM (drain, exit
0). The multi-replica and SIGKILL tests run it in separate processes; `router run` will replace it.

As a module it gives the tests their config builder, a producer helper and readers for what the
handler recorded (tests/stream_handlers/stream_recorder.py writes one JSON line per invocation).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.config import KafkaConfig
from router.devstack import wait_until as wait_until  # re-exported for the stream tests

HANDLERS = Path(__file__).resolve().parent.parent / "stream_handlers"
REPO = Path(__file__).resolve().parents[2]


def config_data(
    bootstrap: str, topic: str, tmp_path: Path, *, mapping: dict[str, Any] | None = None,
    env: dict[str, str] | None = None, timeout: int = 5, concurrency: int = 4,
    on_failure: str | None = None, s3: dict[str, Any] | None = None,
) -> dict[str, Any]:
    esm: dict[str, Any] = {
        # A group per topic: Tansu keeps a departed member until a later join evicts it, so tests
        # sharing a group would wait for each other's ghosts.
        "function_name": "recorder", "kafka_topic": topic, "consumer_group_id": group_of(topic), "batch_size": 10,
        "retry_base_delay_seconds": 0.05, "retry_max_delay_seconds": 0.2,
        **(mapping or {}),
    }
    if on_failure:
        esm["destination_config"] = {"on_failure": {"destination": on_failure}}
    data: dict[str, Any] = {
        "region": "eu-west-1", "account_id": "123456789012",
        "state_dir": str(tmp_path / "state"),
        "kafka": {"bootstrap_servers": bootstrap, "session_timeout_ms": 6000, "heartbeat_interval_ms": 500,
                  "client": kafka_client()},
        "functions": {"recorder": {
            "handler": "stream_recorder.handler", "code_path": str(HANDLERS), "timeout": timeout,
            "reserved_concurrent_executions": concurrency,
            "environment": {"variables": {"RECORD_FILE": str(tmp_path / "calls.jsonl"), **(env or {})}},
        }},
        "event_source_mappings": {"clicks": esm},
    }
    if s3:
        data["s3"] = s3
    return data


def kafka_client() -> str:
    """The Kafka client backend this test runs on (the kafka_client fixture sets it)."""
    return os.environ.get("ROUTER_TEST_KAFKA_CLIENT") or KafkaConfig().client


def group_of(topic: str) -> str:
    return f"router-{topic}"


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def delivered(tmp_path: Path) -> list[tuple[str, int]]:
    """(shard, offset) of every record delivered, in invocation order, duplicates included."""
    return [(c["shard"], int(s)) for c in calls(tmp_path) for s in c["seqs"]]


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, int | None]],
                  *, partition_of: Callable[[int], int] | None = None, max_request_size: int = 1024 * 1024,
                  timestamp_ms: int | None = None, timestamps: list[int] | None = None) -> None:
    """Send (key, value, partition) triples in order and wait for every ack (`timestamps`: each
    record's CreateTime in ms)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=max_request_size, linger_ms=5,
                                acks="all")
    await producer.start()
    try:
        futures = []
        for i, (key, value, partition) in enumerate(records):
            if partition is None and partition_of is not None:
                partition = partition_of(i)
            stamp = timestamps[i] if timestamps is not None else timestamp_ms
            futures.append(await producer.send(topic, value, key=key, partition=partition, timestamp_ms=stamp))
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The JSON values of the first `expect` records of a topic (all partitions)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return found


async def _serve(config_path: str, name: str) -> int:
    from router.config import load_config_data
    from router.delivery.dead_letter import DeadLetter
    from router.delivery.destinations import DestinationFactory
    from router.observability.logging import configure_logging
    from router.observability.metrics import Metrics
    from router.observability.progress import ProgressBoard
    from router.runtime.pool import WorkerPool
    from router.sources.stream_mapping import StreamMappingRunner

    configure_logging(level="info", fmt="json", stream=sys.stderr)
    text = await asyncio.to_thread(Path(config_path).read_text)
    config = load_config_data(json.loads(text))
    mapping = config.stream_mappings()[name]
    metrics = Metrics()
    board = ProgressBoard(config.stall_timeout_seconds)
    pool = WorkerPool(config, metrics=metrics)
    destinations = DestinationFactory(config, metrics=metrics,
                                      dead_letter=DeadLetter(Path(config.state_dir) / "dead-letter"))
    target = mapping.destination_config.on_failure
    on_failure = destinations.get(target.destination) if target else None
    runner = StreamMappingRunner(name, mapping, config, pool, on_failure, metrics, board)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await pool.start()
    await runner.start()
    print("started", flush=True)
    await stop.wait()
    await runner.stop(config.shutdown_timeout_seconds)
    await pool.close()
    await destinations.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_serve(sys.argv[1], sys.argv[2])))
