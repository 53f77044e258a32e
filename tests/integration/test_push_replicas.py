"""Two `router run` replicas sharing the push queue on Kafka: the pod that dies takes nothing with it.

Both replicas subscribe to one MQTT shared subscription and receive webhooks (a sender that fails
against one replica tries the other, as a load balancer would). Each key's first attempt fails, so
every event has a retry scheduled by whichever replica ran it first. Mid-load one replica is
SIGKILLed and its state_dir deleted; the survivor must finish what the dead one accepted, including
the retries it scheduled, and suppress a notification the dead one accepted when it arrives again.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiomqtt
import pytest
from test_push_durability import Daemon
from test_push_support import bucket_mapping, calls, config_data, minio_notification, wait_until

from router.devstack import Mosquitto, Tansu, free_port

pytestmark = pytest.mark.integration

TOKEN = "push-test-token"


def post(port: int, payload: bytes) -> bool:
    """A webhook delivery as MinIO makes it; True when the replica accepted it (200)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/s3", data=payload, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def metric_total(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def replica_config(tmp_path: Path, name: str, *, mosquitto: Mosquitto, kafka: Tansu, queue: str, topic: str,
                   client_id: str) -> tuple[Daemon, Path]:
    port = free_port()
    data = config_data(
        tmp_path, {
            "photos": bucket_mapping("photos", topic=topic, retry_delays_seconds=[1.0, 1.0]),
            "docs": bucket_mapping("docs", transport="webhook", retry_delays_seconds=[1.0, 1.0]),
        },
        broker=mosquitto, http_port=port, concurrency=2, client_id=client_id,
        env={"FAIL_FIRST_DIR": str(tmp_path / "fail-first"), "REPLICA": name, "SLEEP_SECONDS": "0.02"},
        code_path=tmp_path / "code",
    )
    state = tmp_path / f"state-{name}"
    data["state_dir"] = str(state)
    data["async_queue"] = queue
    data["kafka"] = {"bootstrap_servers": kafka.bootstrap_servers, "session_timeout_ms": 3000}
    path = tmp_path / f"router-{name}.yaml"
    path.write_text(json.dumps(data))
    return Daemon(path, tmp_path / f"router-{name}.log", port), state


def by_key(tmp_path: Path) -> collections.Counter[str]:
    return collections.Counter(c["key"] for c in calls(tmp_path))


def replicas_of(tmp_path: Path, key: str) -> list[str]:
    return [c["replica"] for c in calls(tmp_path) if c["key"] == key]


RECORDER_WITH_REPLICA = '''
import hashlib, json, os, time
from pathlib import Path


def record(event, context):
    key = event["Records"][0]["s3"]["object"]["key"]
    line = {"t": time.time(), "key": key, "replica": os.environ["REPLICA"], "request_id": context.aws_request_id}
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\\n")
    time.sleep(float(os.environ.get("SLEEP_SECONDS") or 0))
    marker = Path(os.environ["FAIL_FIRST_DIR"]) / hashlib.sha256(key.encode()).hexdigest()
    if not marker.exists():
        marker.touch()
        raise RuntimeError("the first attempt at each key fails")
    return {"ok": True}
'''


async def test_a_sigkilled_replica_loses_nothing_it_accepted(
    mosquitto: Mosquitto, kafka: Tansu, tmp_path: Path
) -> None:
    (tmp_path / "fail-first").mkdir()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "recorder.py").write_text(RECORDER_WITH_REPLICA)
    queue = f"kafka://push-{uuid.uuid4().hex[:8]}"
    topic = f"minio/replicas-{uuid.uuid4().hex[:8]}"
    ids = {name: f"replica-{name}-{uuid.uuid4().hex[:6]}" for name in "ab"}
    a, a_state = replica_config(tmp_path, "a", mosquitto=mosquitto, kafka=kafka, queue=queue, topic=topic,
                                client_id=ids["a"])
    b, _ = replica_config(tmp_path, "b", mosquitto=mosquitto, kafka=kafka, queue=queue, topic=topic,
                          client_id=ids["b"])
    accepted_webhooks: list[str] = []
    published: list[str] = []
    alive = {"a": True}
    try:
        a.start()
        b.start()
        await wait_until(lambda: a.ready() and b.ready(), 40, "both replicas ready", interval=0.2)

        async def webhook_load(count: int, start: int) -> None:
            for i in range(start, start + count):
                key = f"w/{i:03d}.pdf"
                payload = minio_notification("docs", key, sequencer=10_000 + i)
                first, second = (a.port, b.port) if i % 2 and alive["a"] else (b.port, a.port)
                if await asyncio.to_thread(post, first, payload) or await asyncio.to_thread(post, second, payload):
                    accepted_webhooks.append(key)
                await asyncio.sleep(0.1)

        async def mqtt_load(count: int, start: int) -> None:
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"{time.time_ns():x}",
                                      protocol=aiomqtt.ProtocolVersion.V311, clean_session=True) as client:
                for i in range(start, start + count):
                    key = f"m/{i:03d}.jpg"
                    await client.publish(topic, minio_notification("photos", key, sequencer=20_000 + i), qos=1)
                    published.append(key)
                    await asyncio.sleep(0.05)

        # A notification the replica that will die accepts and finishes well before it dies.
        early = minio_notification("docs", "w/early.pdf", sequencer=1)
        assert await asyncio.to_thread(post, a.port, early)
        await wait_until(lambda: by_key(tmp_path)["w/early.pdf"] >= 2, 30, "the early notification's retry")

        await asyncio.gather(webhook_load(30, 0), mqtt_load(60, 0))
        # Both replicas ran first attempts; a's retries are scheduled (1 s) when it dies.
        await wait_until(lambda: "a" in {c["replica"] for c in calls(tmp_path)[-20:]}, 20, "replica a working")
        load = asyncio.gather(webhook_load(30, 30), mqtt_load(60, 60))
        await asyncio.sleep(1.0)
        a.kill()
        alive["a"] = False
        shutil.rmtree(a_state)  # the pod is gone, and its disk with it
        at_kill = by_key(tmp_path)
        retried_by_a = [k for k, n in at_kill.items() if n == 1 and replicas_of(tmp_path, k) == ["a"]]
        await load

        # The early notification arrives again, now at the survivor: inside the window, a duplicate.
        assert await asyncio.to_thread(post, b.port, early)
        accepted_webhooks.append("w/early.pdf")

        def webhooks_finished() -> bool:
            counts = by_key(tmp_path)
            return all(counts[k] >= 2 for k in accepted_webhooks)

        await wait_until(webhooks_finished, 60, "every accepted webhook event to succeed on the survivor",
                         interval=0.2)
        assert retried_by_a, at_kill  # the kill did catch retries that replica a had scheduled
        for key in retried_by_a:
            assert replicas_of(tmp_path, key)[1:].count("b") >= 1, (key, replicas_of(tmp_path, key))

        # MQTT messages the broker had sent to a but a never acknowledged wait in a's session: a
        # replacement pod with the same identity (a StatefulSet's, here a fresh state_dir) gets them.
        a2, _ = replica_config(tmp_path, "a2", mosquitto=mosquitto, kafka=kafka, queue=queue, topic=topic,
                               client_id=ids["a"])
        try:
            a2.start()
            await wait_until(lambda: all(by_key(tmp_path)[k] >= 2 for k in published), 60,
                             "every published notification to succeed", interval=0.2)
            await asyncio.sleep(2.0)
            counts = by_key(tmp_path)
            assert counts["w/early.pdf"] == 2, replicas_of(tmp_path, "w/early.pdf")  # suppressed
            assert metric_total(b.port, "router_duplicate_notifications_total") >= 1
            extra = {k: n - 2 for k, n in counts.items() if n > 2}
            print(f"accepted {len(accepted_webhooks)} webhooks, published {len(published)} MQTT; "
                  f"retries scheduled by the killed replica: {len(retried_by_a)}; "
                  f"events run more than once beyond their retry: {len(extra)} ({sum(extra.values())} extra runs)")
            assert set(counts) == set(accepted_webhooks) | set(published)
        finally:
            a2.terminate()
    finally:
        a.terminate()
        b.terminate()
