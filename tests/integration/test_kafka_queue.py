"""The Kafka queue's own rules, on a real Tansu, through its interface (no invoker): what it commits,
what it skips, what a restart runs again."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from test_push_support import config_data, make_config, running, wait_connected, wait_until

from router.config import KafkaConfig
from router.delivery.async_queue import QueuedEvent, StoredEvent
from router.delivery.kafka_queue import HEADER, KafkaQueue
from router.devstack import Mosquitto, Tansu

pytestmark = pytest.mark.integration


@asynccontextmanager
async def opened(kafka: Tansu, topic: str) -> AsyncIterator[KafkaQueue]:
    queue = KafkaQueue(KafkaConfig(bootstrap_servers=kafka.bootstrap_servers, session_timeout_ms=3000), topic,
                       partitions=1)
    await queue.open()
    try:
        yield queue
    finally:
        await queue.close()


async def claim_all(queue: KafkaQueue, mapping: str, count: int, timeout: float = 30) -> list[StoredEvent]:
    """Claim until `count` events of `mapping` arrived (they are fetched in the background)."""
    found: list[StoredEvent] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(found) < count:
        assert loop.time() < deadline, f"only {len(found)} of {count} events became claimable"
        found += (await queue.claim(mapping, "invoke", count - len(found))).events
        await asyncio.sleep(0.05)
    return found


async def committed(kafka: Tansu, queue: KafkaQueue) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=queue.group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(queue.topic, 0))
        return offset
    finally:
        await consumer.stop()


async def test_records_that_are_not_queue_events_are_skipped_and_committed_past(kafka: Tansu) -> None:
    topic = f"kq-poison-{uuid.uuid4().hex[:8]}"
    async with opened(kafka, topic) as queue:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            good = {"mapping": "m", "function": "f", "request_id": "r", "accepted_at": 1.0, "due_at": 1.0,
                    "stage": "invoke", "invoke_count": 0, "system_errors": 0}
            for headers in ([], [(HEADER, b"not json")], [(HEADER, json.dumps({**good, "invoke_count": "x"}).encode())],
                            [(HEADER, json.dumps({**good, "stage": "bogus"}).encode())]):
                await producer.send_and_wait(topic, b'{"n": 0}', headers=headers)
        finally:
            await producer.stop()
        await queue.enqueue([QueuedEvent("m", "f", {"n": 1})], dedup_window=0)
        (event,) = await claim_all(queue, "m", 1)
        assert event.event == {"n": 1} and event.function == "f" and event.invoke_count == 0
        await queue.complete(event.id)
        for _ in range(100):
            if await committed(kafka, queue) == 5:
                break
            await asyncio.sleep(0.1)
        assert await committed(kafka, queue) == 5  # past the four it could not read, and the event


async def test_the_commit_stops_at_the_oldest_unfinished_event_and_a_restart_runs_from_there(
        kafka: Tansu) -> None:
    topic = f"kq-commit-{uuid.uuid4().hex[:8]}"
    async with opened(kafka, topic) as queue:
        await queue.enqueue([QueuedEvent("m", "f", {"n": n}) for n in range(4)], dedup_window=0)
        events = sorted(await claim_all(queue, "m", 4), key=lambda e: e.event["n"])
        for event in (events[0], events[2], events[3]):  # 1 is still running when the replica goes
            await queue.complete(event.id)
        for _ in range(100):
            if await committed(kafka, queue) == 1:
                break
            await asyncio.sleep(0.1)
        assert await committed(kafka, queue) == 1
    async with opened(kafka, topic) as queue:
        again = await claim_all(queue, "m", 3, timeout=60)
        # The unfinished one, and those finished after it (at least once): never the one before it.
        assert sorted(e.event["n"] for e in again) == [1, 2, 3]
        await asyncio.sleep(1.0)
        assert (await queue.claim("m", "invoke", 10)).events == []


async def test_an_app_event_larger_than_the_queue_stores_is_dead_lettered_and_the_rest_go_on(
        kafka: Tansu, mosquitto: Mosquitto, tmp_path: Path) -> None:
    topic = f"devices/{uuid.uuid4().hex[:8]}/clicks"
    data = config_data(tmp_path, {"clicks": {"function_name": "fn", "mqtt_topic": topic}}, broker=mosquitto)
    data["async_queue"] = f"kafka://kq-big-{uuid.uuid4().hex[:8]}"
    # The smallest produce request Kafka's clients allow: an event of ~57 KB is the most it stores.
    data["kafka"] = {"bootstrap_servers": kafka.bootstrap_servers, "session_timeout_ms": 3000,
                     "max_request_size": 65536}
    async with running(make_config(data)) as app:
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_connected(app)
        big = json.dumps({"blob": "x" * 100_000}).encode()
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(topic, json.dumps({"n": 1}).encode(), qos=1)
            await client.publish(topic, big, qos=1)
            await client.publish(topic, json.dumps({"n": 2}).encode(), qos=1)
        await wait_until(lambda: mqtt.status()["acknowledged"] == 3, 20, "all three acknowledged")
        await wait_until(lambda: app.pool.status()["fn"]["invocations"] == 2, 30, "the two small ones invoked")
        kept = [p for p in (tmp_path / "state" / "dead-letter").rglob("*.payload")]
        assert [p.read_bytes() for p in kept] == [big]
        (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "state" / "dead-letter").rglob("*.json")]
        assert "larger than the queue stores" in meta["reason"], meta
