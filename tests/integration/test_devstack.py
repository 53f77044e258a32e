"""The local brokers really behave as the rest of the suite assumes.

Each test exercises the broker property other tests build on: QoS 1 delivery and persistent
sessions (also across a broker restart) in Mosquitto, produce/consume and consumer-group commits in
Tansu, S3 round trips and the filer webhook in SeaweedFS.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
import pytest
from aiohttp import web
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from router import devstack
from router.devstack import DevstackError, Mosquitto, SeaweedFS, Tansu, free_port, wait_for

pytestmark = pytest.mark.integration

# Tansu keeps a member that left until its session expires, so the second consumer of a group waits
# about two session timeouts to join: a short session keeps this test at ~7 s instead of ~14 s.
GROUP_OPTIONS: dict[str, Any] = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


def _client_id(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


async def _collect(client: aiomqtt.Client, count: int, timeout: float = 10.0) -> list[bytes]:
    received: list[bytes] = []

    async def read() -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            received.append(message.payload)
            if len(received) == count:
                return

    await asyncio.wait_for(read(), timeout)
    return received


async def _publish(broker: Mosquitto, topic: str, payloads: list[bytes]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=_client_id("pub")) as publisher:
        for payload in payloads:
            await publisher.publish(topic, payload, qos=1)


# -- Mosquitto -------------------------------------------------------------------------------------

async def test_mosquitto_qos1_publish_subscribe(mosquitto: Mosquitto) -> None:
    topic = f"devstack/{uuid.uuid4().hex}"
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}" and mosquitto.port != 1883
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=_client_id("sub")) as subscriber:
        await subscriber.subscribe(topic, qos=1)
        await _publish(mosquitto, topic, [b"one", b"two", b"three"])
        assert await _collect(subscriber, 3) == [b"one", b"two", b"three"]


async def test_persistent_session_keeps_messages_while_subscriber_is_away(mosquitto: Mosquitto) -> None:
    topic, identifier = f"devstack/{uuid.uuid4().hex}", _client_id("persistent")
    options: dict[str, Any] = {"identifier": identifier, "clean_session": False,
                               "protocol": aiomqtt.ProtocolVersion.V311}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, **options) as subscriber:
        await subscriber.subscribe(topic, qos=1)
    await _publish(mosquitto, topic, [f"away-{i}".encode() for i in range(5)])
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, **options) as subscriber:
        assert await _collect(subscriber, 5) == [f"away-{i}".encode() for i in range(5)]


async def test_mqtt5_session_survives_broker_restart(fresh_mosquitto: Mosquitto) -> None:
    broker, topic = fresh_mosquitto, f"devstack/{uuid.uuid4().hex}"
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    options: dict[str, Any] = {"identifier": _client_id("v5"), "protocol": aiomqtt.ProtocolVersion.V5,
                               "clean_start": False, "properties": properties}
    async with aiomqtt.Client(broker.host, broker.port, **options) as subscriber:
        await subscriber.subscribe(topic, qos=1)
    await _publish(broker, topic, [b"before-restart"])
    port, pid = broker.port, broker.pid
    broker.restart()
    assert broker.port == port and broker.pid != pid and broker.running
    await _publish(broker, topic, [b"after-restart"])
    async with aiomqtt.Client(broker.host, broker.port, **options) as subscriber:
        assert await _collect(subscriber, 2) == [b"before-restart", b"after-restart"]


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mqtt")
    broker.start()
    pid = broker.pid
    assert pid is not None and os.getpgid(pid) == pid, "runs as the leader of its own process group"
    broker.stop()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # signal 0 probes: the group no longer exists
    assert not devstack.tcp_open(broker.host, broker.port)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _run_owner(tmp_path: Path, start: str, end: str) -> int:
    script = (
        "import os, signal, threading\n"
        "from pathlib import Path\n"
        "from router.devstack import Mosquitto\n"
        f"broker = Mosquitto(Path({str(tmp_path / 'owned')!r}))\n"
        f"{start}\n"
        "print('PID', broker.pid, flush=True)\n"
        f"{end}\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30, check=False)
    words = done.stdout.split()
    return int(words[words.index(b"PID") + 1])


def test_broker_dies_with_its_killed_owner(tmp_path: Path) -> None:
    pid = _run_owner(tmp_path, "broker.start()", "os.kill(os.getpid(), signal.SIGKILL)")
    wait_for(lambda: _gone(pid), 5, what="mosquitto to die with its SIGKILLed owner")


def test_broker_is_stopped_when_its_owner_exits_without_stop(tmp_path: Path) -> None:
    # Started from a thread, so only the exit-time finalizer (not PDEATHSIG) can stop it.
    pid = _run_owner(tmp_path, "t = threading.Thread(target=broker.start); t.start(); t.join()", "")
    wait_for(lambda: _gone(pid), 5, what="mosquitto to be stopped at its owner's exit")


def test_missing_mosquitto_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(devstack, "MOSQUITTO_BIN", str(tmp_path / "no-such-mosquitto"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevstackError, match="apt-get install -y mosquitto"):
        Mosquitto(tmp_path)


def test_failed_start_reports_the_log_tail(tmp_path: Path) -> None:
    busy = Mosquitto(tmp_path / "busy")
    with busy:
        clash = Mosquitto(tmp_path / "clash")
        clash._ports_fixed = True  # a restart on a port someone else took: no new port is picked
        clash.port = busy.port
        with pytest.raises(DevstackError, match="mosquitto did not start") as caught:
            clash.start(timeout=5)
        assert "Address already in use" in str(caught.value)
        assert not clash.running


def test_wait_for_times_out_with_what_it_waited_for() -> None:
    with pytest.raises(DevstackError, match="the moon"):
        wait_for(lambda: False, 0.2, interval=0.05, what="the moon")
    wait_for(lambda: True, 0.1)


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname()[1] == port


# -- Tansu (Kafka) -----------------------------------------------------------------------------------

async def test_kafka_produce_consume_in_order_per_partition(kafka: Tansu, topic: Callable[..., str]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    name = topic(partitions=2)  # the sync factory works inside a running loop
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(name, f"{i}".encode(), partition=i % 2)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(name, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        seen: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
        while sum(map(len, seen.values())) < 20:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                seen[tp.partition] += [(r.offset, int(r.value)) for r in records]
    finally:
        await consumer.stop()
    assert seen[0] == [(n, 2 * n) for n in range(10)]
    assert seen[1] == [(n, 2 * n + 1) for n in range(10)]


async def test_kafka_group_commit_is_resumed_by_a_new_consumer(kafka: Tansu, topic: Callable[..., str]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    name = await asyncio.to_thread(topic, 1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for i in range(10):
            await producer.send(name, f"r{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    async def consume(count: int, commit: bool) -> list[bytes]:
        consumer = AIOKafkaConsumer(name, bootstrap_servers=kafka.bootstrap_servers, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False, **GROUP_OPTIONS)
        await consumer.start()
        try:
            values: list[bytes] = []
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=1000, max_records=count - len(values))
                for records in batch.values():
                    values += [r.value for r in records]
            if commit:
                tp = TopicPartition(name, 0)
                await consumer.commit({tp: 4})  # records 0..3 are done; resume at offset 4
                assert await consumer.committed(tp) == 4
            return values
        finally:
            await consumer.stop()

    assert (await consume(4, commit=True)) == [b"r0", b"r1", b"r2", b"r3"]
    assert (await consume(6, commit=False)) == [f"r{i}".encode() for i in range(4, 10)]


async def test_acreate_topic_is_idempotent(kafka: Tansu) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    name = f"idem-{uuid.uuid4().hex[:8]}"
    await kafka.acreate_topic(name, 3)
    await kafka.acreate_topic(name, 3)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([name])
    finally:
        await admin.close()
    assert sorted(p["partition"] for p in described["partitions"]) == [0, 1, 2]


def test_tansu_restart_keeps_the_port_and_loses_memory_storage(tmp_path: Path) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    async def topics(bootstrap: str) -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    with Tansu(tmp_path / "tansu") as broker:
        broker.create_topic("before-restart", 1)
        assert "before-restart" in asyncio.run(topics(broker.bootstrap_servers))
        port = broker.port
        broker.restart()
        assert broker.port == port
        assert "before-restart" not in asyncio.run(topics(broker.bootstrap_servers))


# -- SeaweedFS (S3) ---------------------------------------------------------------------------------

async def test_s3_put_get_through_aiobotocore(seaweedfs: SeaweedFS) -> None:
    from aiobotocore.session import get_session

    bucket = f"devstack-{uuid.uuid4().hex[:8]}"
    seaweedfs.create_bucket(bucket)
    seaweedfs.create_bucket(bucket)  # idempotent
    body = os.urandom(70_000)
    session = get_session()
    async with session.create_client(
            "s3", endpoint_url=seaweedfs.s3_endpoint, aws_access_key_id=seaweedfs.access_key,
            aws_secret_access_key=seaweedfs.secret_key, region_name="us-east-1") as s3:
        await s3.put_object(Bucket=bucket, Key="dir/with space/ü.bin", Body=body)
        answer = await s3.get_object(Bucket=bucket, Key="dir/with space/ü.bin")
        async with answer["Body"] as stream:
            assert await stream.read() == body
        listing = await s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listing["Contents"]] == ["dir/with space/ü.bin"]


async def test_filer_webhook_posts_s3_puts(seaweedfs_webhook: Callable[..., SeaweedFS]) -> None:
    received: list[tuple[str, dict[str, Any]]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization", ""), json.loads(await request.read())))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        store = await asyncio.to_thread(seaweedfs_webhook, f"http://127.0.0.1:{port}/hook", "hook-token")
        await asyncio.to_thread(store.create_bucket, "hooked")
        await asyncio.to_thread(store.s3_client().put_object, Bucket="hooked", Key="in/x y.txt", Body=b"hello")

        def created() -> list[tuple[str, dict[str, Any]]]:
            return [(auth, body) for auth, body in received
                    if body.get("event_type") == "create" and body.get("key") == "/buckets/hooked/in/x y.txt"]

        for _ in range(150):
            if created():
                break
            await asyncio.sleep(0.1)
        [(auth, body)] = created()
    finally:
        await runner.cleanup()
    assert auth == "Bearer hook-token"
    assert body["message"]["new_entry"]["attributes"]["file_size"] == 5
