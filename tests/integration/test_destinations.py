"""Destinations against real brokers: the record lands in SeaweedFS, Tansu and Mosquitto, a broker
that is down fails the send promptly, and the same destination works again once it is back."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiokafka import AIOKafkaConsumer
from gate_support import Gate

from router.config import Config, load_config_data
from router.delivery.async_record import Condition, async_destination_record
from router.delivery.dead_letter import DeadLetter
from router.delivery.destination import DestinationError, async_record_key, encode_record
from router.delivery.destinations import DestinationFactory
from router.devstack import Mosquitto, SeaweedFS, Tansu, free_port
from router.observability.metrics import Metrics

pytestmark = pytest.mark.integration


def a_record(n: int = 1) -> dict[str, Any]:
    return async_destination_record(
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:thumbnail:$LATEST",
        condition=Condition.RETRIES_EXHAUSTED, request_id=str(uuid.uuid4()), approximate_invoke_count=3,
        request_payload={"Records": [{"s3": {"object": {"key": f"uploads/photo+{n}.jpg"}}}]}, invoked=True,
        response_payload={"errorMessage": "boom", "errorType": "ValueError", "stackTrace": []},
        function_error="Unhandled",
    )


def config_for(
    *, s3_endpoint: str | None = None, kafka: str | None = None, mqtt_port: int | None = None,
    client_id: str = "router-test",
) -> Config:
    data: dict[str, Any] = {}
    if s3_endpoint is not None:
        data["s3"] = {"endpoint_url": s3_endpoint, "access_key_id": SeaweedFS.access_key,
                      "secret_access_key": SeaweedFS.secret_key}
    if kafka is not None:
        data["kafka"] = {"bootstrap_servers": kafka}
    if mqtt_port is not None:
        data["mqtt"] = {"host": "127.0.0.1", "port": mqtt_port, "client_id": client_id}
    return load_config_data(data)


@pytest.fixture
async def gate(seaweedfs: SeaweedFS) -> AsyncIterator[Gate]:
    g = Gate("127.0.0.1", seaweedfs.s3_port)
    await g.open()
    yield g
    await g.close()


# One bucket for all of these tests, each under its own prefix: the session SeaweedFS (volume.max=20,
# 7 volumes grown per bucket) can only take writes into two or three distinct buckets in a whole run.
SHARED_BUCKET = "router-async-tests"


def new_prefix(seaweedfs: SeaweedFS) -> tuple[str, str]:
    seaweedfs.create_bucket(SHARED_BUCKET)
    return SHARED_BUCKET, f"destinations-{uuid.uuid4().hex[:10]}/"


async def read_object(seaweedfs: SeaweedFS, bucket: str, key: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        body = seaweedfs.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        parsed: dict[str, Any] = json.loads(body)
        return parsed

    return await asyncio.to_thread(get)


async def test_s3_destination_puts_the_record_under_the_prefix(seaweedfs: SeaweedFS) -> None:
    bucket, prefix = new_prefix(seaweedfs)
    factory = DestinationFactory(config_for(s3_endpoint=seaweedfs.s3_endpoint), metrics=Metrics(), timeout=5)
    try:
        destination = factory.get(f"s3://{bucket}/{prefix}failed/photos")  # no trailing slash: one is added
        assert factory.get(f"s3://{bucket}/{prefix}failed/photos") is destination
        record, key = a_record(), async_record_key("photos-to-thumbnails", "thumbnail", datetime.now(UTC))
        await destination.send(record, key=key)
        stored = await read_object(seaweedfs, bucket, f"{prefix}failed/photos/{key}")
    finally:
        await factory.close()
    assert stored == record
    assert stored["requestContext"]["condition"] == "RetriesExhausted"


async def first_message(bootstrap: str, name: str) -> tuple[bytes | None, bytes]:
    """Key and value of a topic's first record."""
    consumer = AIOKafkaConsumer(name, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await consumer.stop()
    assert message.value is not None
    return message.key, message.value


async def test_kafka_destination_produces_the_record_with_its_key(kafka: Tansu, topic: Any) -> None:
    name = topic()
    factory = DestinationFactory(config_for(kafka=kafka.bootstrap_servers), timeout=10)
    record = a_record(2)
    try:
        await factory.get(f"kafka://{name}").send(record, key="aws/lambda/k1")
    finally:
        await factory.close()
    key, raw = await first_message(kafka.bootstrap_servers, name)
    assert key == b"aws/lambda/k1"
    assert b" " not in raw[:40]  # compact JSON
    value = json.loads(raw)
    assert value == record
    assert value["requestContext"]["approximateInvokeCount"] == 3
    assert value["responseContext"]["functionError"] == "Unhandled"


async def test_mqtt_destination_publishes_qos1_on_its_own_client_id(mosquitto: Mosquitto) -> None:
    topic = f"router/failures/{uuid.uuid4().hex[:8]}"
    metrics = Metrics()
    factory = DestinationFactory(config_for(mqtt_port=mosquitto.port, client_id="router-x"), metrics=metrics,
                                 timeout=5)
    record = a_record(3)
    # Connected under the daemon's own client id: the destination's "-dest" id must not kick it off.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="router-x") as subscriber:
        await subscriber.subscribe(topic, qos=1)
        try:
            await factory.get(f"mqtt://{topic}").send(record, key="ignored")
            message = await asyncio.wait_for(anext(aiter(subscriber.messages)), 10)
            await factory.get(f"mqtt://{topic}").send(record, key="ignored")  # still connected, reused
            again = await asyncio.wait_for(anext(aiter(subscriber.messages)), 10)
        finally:
            await factory.close()
    assert message.qos == 1 and again.qos == 1
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload) == record
    assert metrics.registry.get_sample_value("router_broker_connected", {"broker": "mqtt-destination"}) == 0


async def test_down_brokers_fail_the_send_promptly() -> None:
    dead = free_port()
    config = config_for(s3_endpoint=f"http://127.0.0.1:{dead}", kafka=f"127.0.0.1:{dead}", mqtt_port=dead)
    factory = DestinationFactory(config, timeout=2)
    try:
        for uri in ("s3://bucket/prefix/", "kafka://topic", "mqtt://topic"):
            started = time.monotonic()
            with pytest.raises(DestinationError):
                await factory.get(uri).send(a_record(), key="k")
            assert time.monotonic() - started < 5, uri
    finally:
        await factory.close()


async def test_s3_destination_reconnects_after_the_endpoint_comes_back(seaweedfs: SeaweedFS, gate: Gate) -> None:
    bucket, prefix = new_prefix(seaweedfs)
    factory = DestinationFactory(config_for(s3_endpoint=gate.endpoint), timeout=3)
    destination = factory.get(f"s3://{bucket}/{prefix}")
    try:
        await destination.send(a_record(1), key="before")
        await gate.close()
        started = time.monotonic()
        with pytest.raises(DestinationError):
            await destination.send(a_record(2), key="during")
        assert time.monotonic() - started < 5
        await gate.open()
        await destination.send(a_record(3), key="after")
    finally:
        await factory.close()
    assert (await read_object(seaweedfs, bucket, f"{prefix}after"))["requestPayload"]["Records"][0]["s3"]["object"][
        "key"] == "uploads/photo+3.jpg"


# -- records a destination can never take (issue 19 item 3) ---------------------------------------


async def test_a_record_larger_than_kafka_takes_goes_without_its_payload_and_is_kept_whole(
    kafka: Tansu, topic: Any, tmp_path: Path,
) -> None:
    name = topic()
    data = {"kafka": {"bootstrap_servers": kafka.bootstrap_servers, "max_request_size": 65536}}
    record = a_record(3)
    record["requestPayload"]["Records"][0]["blob"] = "b" * 200_000  # a 200 KB event, as a stream batch's
    plain = DestinationFactory(load_config_data(data), timeout=10)
    try:  # the producer refuses it before sending: permanent, however often it is retried
        with pytest.raises(DestinationError) as refused:
            await plain.get(f"kafka://{name}").send(record, key="k")
        assert refused.value.permanent
    finally:
        await plain.close()
    dead_letter = DeadLetter(tmp_path / "dead-letter")
    factory = DestinationFactory(load_config_data(data), timeout=10, dead_letter=dead_letter)
    try:
        await factory.get(f"kafka://{name}").send(record, key="aws/lambda/big")
    finally:
        await factory.close()
    key, raw = await first_message(kafka.bootstrap_servers, name)
    sent = json.loads(raw)
    assert key == b"aws/lambda/big"
    assert "requestPayload" not in sent and "responsePayload" not in sent
    assert sent["requestContext"] == record["requestContext"]  # still Lambda's record, minus payloads
    omitted = sent["payloadOmitted"]
    assert omitted["size"] == len(encode_record(record))
    limit = factory.get(f"kafka://{name}").inner.max_record_bytes  # type: ignore[attr-defined]
    assert limit is not None and limit < 65536  # the request's own overhead is left room for
    assert omitted["reason"] == f"record of {omitted['size']} bytes is larger than kafka://{name} takes ({limit} bytes)"
    kept = tmp_path / "dead-letter" / omitted["deadLetter"]
    assert json.loads(kept.read_bytes()) == record  # the whole record, payload and all
    meta = json.loads(kept.with_suffix(".json").read_text())
    assert meta["source"] == "on-failure" and meta["topic"] == f"kafka://{name}"


async def test_a_permanent_refusal_is_dead_lettered_and_a_transient_one_is_raised(
    seaweedfs: SeaweedFS, tmp_path: Path,
) -> None:
    # Credentials the store rejects: 403 on every attempt until an operator changes the config.
    config = load_config_data({"s3": {"endpoint_url": seaweedfs.s3_endpoint, "access_key_id": SeaweedFS.access_key,
                                      "secret_access_key": "not-the-secret"}})
    bucket, prefix = new_prefix(seaweedfs)
    missing = f"s3://{bucket}/{prefix}failed/"
    record = a_record(4)
    plain = DestinationFactory(config, timeout=5)
    try:
        with pytest.raises(DestinationError) as refused:
            await plain.get(missing).send(record, key="k1")
        assert refused.value.permanent and "SignatureDoesNotMatch" in str(refused.value)
    finally:
        await plain.close()
    dead_letter = DeadLetter(tmp_path / "dead-letter")
    factory = DestinationFactory(config, timeout=5, dead_letter=dead_letter)
    try:
        await factory.get(missing).send(record, key="k1")  # returns: kept, not retried for ever
    finally:
        await factory.close()
    [kept] = (tmp_path / "dead-letter" / "on-failure").glob("*.payload")
    assert json.loads(kept.read_bytes()) == record
    assert "SignatureDoesNotMatch" in json.loads(kept.with_suffix(".json").read_text())["reason"]
    dead = free_port()
    down = DestinationFactory(config_for(s3_endpoint=f"http://127.0.0.1:{dead}"), timeout=2, dead_letter=dead_letter)
    try:  # a store that is down is the caller's to retry: raised, nothing dead-lettered
        with pytest.raises(DestinationError) as transient:
            await down.get("s3://bucket/prefix/").send(a_record(5), key="k2")
        assert not transient.value.permanent
    finally:
        await down.close()
    assert len(list((tmp_path / "dead-letter" / "on-failure").glob("*.payload"))) == 1
