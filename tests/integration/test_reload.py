"""Config reload on real brokers: the mapping supervisor applies only what changed.

The daemon runs in process (`router.app`), its config is a YAML file the test rewrites, and
`reload(app, load)` is what SIGHUP runs; `test_sighup_reloads_router_run` sends the real signal to
a real `router run`. Assertions are outcomes: which records the handler saw, how often, what the
group committed, what reached a destination, what /status and /metrics say.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from stream_daemon import HANDLERS, calls, committed, delivered, kafka_client, produce, read_topic, wait_until
from test_push_support import minio_notification, publish_like_minio, write_recorder

from router.app import Router, build, reload, start, stop
from router.config import Config, load_config
from router.devstack import Mosquitto, Tansu, free_port, wait_for

pytestmark = pytest.mark.integration

TOKEN = "reload-test-token"
REPO = Path(__file__).resolve().parents[2]


class ConfigFile:
    """The daemon's config file, rewritten by the test between reloads."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.write()

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.data))

    def load(self) -> Config:
        return load_config(self.path, env={})

    @property
    def mappings(self) -> dict[str, Any]:
        mappings: dict[str, Any] = self.data["event_source_mappings"]
        return mappings


def base_config(tmp_path: Path, kafka: Tansu | None = None, mosquitto: Mosquitto | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "shutdown_timeout_seconds": 10,
        "http": {"listen": f"127.0.0.1:{free_port()}", "webhook_token": TOKEN},
        "functions": {
            "recorder": {
                "handler": "stream_recorder.handler", "code_path": str(HANDLERS), "timeout": 10,
                "reserved_concurrent_executions": 4,
                "environment": {"variables": {"RECORD_FILE": str(tmp_path / "calls.jsonl")}},
            },
            "push": {
                "handler": "recorder.record", "code_path": str(write_recorder(tmp_path / "code")), "timeout": 10,
                "reserved_concurrent_executions": 2,
                "environment": {"variables": {"RECORD_FILE": str(tmp_path / "push.jsonl")}},
            },
        },
        "event_source_mappings": {},
    }
    if kafka is not None:
        data["kafka"] = {"bootstrap_servers": kafka.bootstrap_servers, "session_timeout_ms": 6000,
                         "heartbeat_interval_ms": 500, "client": kafka_client()}
    if mosquitto is not None:
        data["mqtt"] = {"host": mosquitto.host, "port": mosquitto.port, "client_id": f"reload-{os.getpid()}",
                        "keepalive": 5}
    return data


def stream(topic: str, **extra: Any) -> dict[str, Any]:
    return {"function_name": "recorder", "kafka_topic": topic, "consumer_group_id": f"router-{topic}",
            "batch_size": 10, "retry_base_delay_seconds": 0.05, "retry_max_delay_seconds": 0.2, **extra}


def webhook_bucket(bucket: str, **extra: Any) -> dict[str, Any]:
    return {"function_name": "push", "retry_delays_seconds": [0.5],
            "bucket_notifications": {"transport": "webhook", "bucket": bucket, "events": ["s3:*"]}, **extra}


@asynccontextmanager
async def daemon(file: ConfigFile) -> AsyncIterator[Router]:
    file.write()
    app = await build(file.load())
    try:
        await start(app)
        yield app
    finally:
        await stop(app)


async def apply(app: Router, file: ConfigFile) -> None:
    file.write()
    assert await reload(app, file.load)


def records(n: int, prefix: str = "r") -> list[tuple[bytes | None, bytes | None, int | None]]:
    return [(f"k{i}".encode(), f"{prefix}{i}".encode(), 0) for i in range(n)]


async def group_offset(kafka: Tansu, topic: str) -> int | None:
    return (await committed(kafka.bootstrap_servers, f"router-{topic}", topic, 1))[0]


def push_calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "push.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def post_notifications(app: Router, bucket: str, keys: list[str]) -> None:
    url = f"http://{app.config.http.listen}/webhooks/s3"
    async with aiohttp.ClientSession() as http:
        for key in keys:
            body = minio_notification(bucket, key)
            async with http.post(url, data=body, headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
                assert answer.status == 200, await answer.text()


@pytest.mark.usefixtures("kafka_client")
async def test_stream_mappings_are_added_changed_disabled_and_enabled_live(
    tmp_path: Path, kafka: Tansu, topic: Callable[..., str]
) -> None:
    first, second = topic(), topic()
    file = ConfigFile(tmp_path / "router.yaml", base_config(tmp_path, kafka))
    file.mappings["first"] = stream(first)
    async with daemon(file) as app:
        await produce(kafka.bootstrap_servers, first, records(30))
        await wait_until(lambda: len(delivered(tmp_path)) == 30, 30, "first's records")
        runner = app.supervisor._streams["first"]

        # add a mapping: it runs, and the unchanged one keeps its consumer
        file.mappings["second"] = stream(second)
        await apply(app, file)
        assert app.supervisor._streams["first"] is runner
        await produce(kafka.bootstrap_servers, second, records(20, "s"))
        await wait_until(lambda: sum(1 for c in calls(tmp_path) if c["data"][0].startswith("s")) >= 1, 30,
                         "second's records")
        await wait_until(lambda: len(delivered(tmp_path)) == 50, 30, "all of second's records")

        # change the batch size while records flow: nothing lost, new batches obey the new size
        producing = asyncio.create_task(produce(kafka.bootstrap_servers, first, records(300, "b")))
        await asyncio.sleep(0.05)
        file.mappings["first"]["batch_size"] = 3
        await apply(app, file)
        await producing
        assert app.supervisor._streams["first"] is not runner
        await wait_until(lambda: await_count(tmp_path, first_prefix="b") >= 300, 60, "the batch-size run")
        seen = Counter(d for c in calls(tmp_path) for d in c["data"] if d.startswith("b"))
        assert set(seen) == {f"b{i}" for i in range(300)}  # every record delivered
        duplicates = sum(n - 1 for n in seen.values())
        assert duplicates <= 10  # at most the batch in flight at the switch, delivered again
        await produce(kafka.bootstrap_servers, first, records(30, "c"))
        await wait_until(lambda: await_count(tmp_path, first_prefix="c") >= 30, 30, "records after the change")
        after = [len(c["seqs"]) for c in calls(tmp_path) if c["data"][0].startswith("c")]
        assert max(after) == 3 and sum(after) == 30  # the new runner's batches, each record once
        await wait_until_async(lambda: group_offset(kafka, first), 360, "first's checkpoint at the end")

        # disable: nothing more is consumed, the checkpoint stays; enable: resume from it
        file.mappings["first"]["enabled"] = False
        await apply(app, file)
        assert "first" not in app.supervisor._streams
        assert app.status()["mappings"]["first"]["state"] == "Disabled"
        before = len(calls(tmp_path))
        await produce(kafka.bootstrap_servers, first, records(15, "d"))
        await asyncio.sleep(2)
        assert len(calls(tmp_path)) == before
        assert await group_offset(kafka, first) == 360
        file.mappings["first"]["enabled"] = True
        await apply(app, file)
        await wait_until(lambda: await_count(tmp_path, first_prefix="d") >= 15, 30, "records written while disabled")
        resumed = [int(s) for c in calls(tmp_path)[before:] for s in c["seqs"]]
        assert min(resumed) == 360 and sorted(set(resumed)) == list(range(360, 375))
        await wait_until_async(lambda: group_offset(kafka, first), 375, "the checkpoint after re-enabling")

        # delete: its series leave /metrics, the other mapping runs on
        del file.mappings["first"]
        await apply(app, file)
        assert "first" not in app.status()["mappings"]
        rendered = app.metrics.render().decode()
        assert 'mapping="first"' not in rendered and 'mapping="second"' in rendered
        assert not app.board.problems()


def await_count(tmp_path: Path, *, first_prefix: str) -> int:
    return len({d for c in calls(tmp_path) for d in c["data"] if d.startswith(first_prefix)})


async def wait_until_async(probe: Callable[[], Any], want: Any, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await probe()
        if last == want:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: {last!r}, want {want!r}")


async def test_a_deleted_push_mapping_sends_its_queued_events_to_its_on_failure_destination(
    tmp_path: Path, kafka: Tansu, topic: Callable[..., str]
) -> None:
    failures = topic()
    data = base_config(tmp_path, kafka)
    file = ConfigFile(tmp_path / "router.yaml", data)
    file.mappings["photos"] = webhook_bucket("photos", enabled=False,
                                             destination_config={"on_failure": {"destination": f"kafka://{failures}"}})
    file.mappings["kept"] = webhook_bucket("kept", enabled=False)
    async with daemon(file) as app:
        # disabled: accepted and queued, not invoked
        await post_notifications(app, "photos", ["a.jpg", "b.jpg", "c.jpg"])
        await post_notifications(app, "kept", ["x.jpg", "y.jpg"])
        await app.invoker._refresh_stats(force=True)
        assert app.status()["mappings"]["photos"]["queue"]["depth"] == 3
        assert push_calls(tmp_path) == []

        del file.mappings["photos"]
        del file.mappings["kept"]
        await apply(app, file)
        found = await read_topic(kafka.bootstrap_servers, failures, 3, timeout=20)
        assert sorted(r["requestPayload"]["Records"][0]["s3"]["object"]["key"] for r in found) == \
            ["a.jpg", "b.jpg", "c.jpg"]
        assert {r["requestContext"]["condition"] for r in found} == {"EventSourceMappingDeleted"}
        assert {r["requestContext"]["approximateInvokeCount"] for r in found} == {0}
        assert push_calls(tmp_path) == []

        # without a destination the events stay, reported, and run when the mapping returns
        await wait_until(lambda: app.invoker.status()["mappings"].get("kept", {}).get("depth") == 2
                         and "photos" not in app.invoker.status()["mappings"], 10, "kept's events reported")
        status = app.status()["mappings"]["kept"]
        assert status["queue"]["depth"] == 2 and status["state"].startswith("not dispatched")
        assert not app.board.problems()  # a deleted mapping never makes the daemon unready
        file.mappings["kept"] = webhook_bucket("kept")
        await apply(app, file)
        await wait_until(lambda: len(push_calls(tmp_path)) == 2, 20, "kept's events after it returned")
        assert sorted(c["key"] for c in push_calls(tmp_path)) == ["x.jpg", "y.jpg"]


async def test_mqtt_subscriptions_follow_the_mappings_without_reconnecting(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    data = base_config(tmp_path, mosquitto=mosquitto)
    file = ConfigFile(tmp_path / "router.yaml", data)
    file.mappings["old"] = {"function_name": "push", "retry_delays_seconds": [0.5],
                            "bucket_notifications": {"topic": f"reload/{os.getpid()}/old", "bucket": "old",
                                                     "events": ["s3:*"]}}
    async with daemon(file) as app:
        assert app.mqtt is not None
        mqtt = app.mqtt
        await wait_until(lambda: mqtt.status()["subscribed"], 15, "the first subscription")
        file.mappings["new"] = {"function_name": "push", "retry_delays_seconds": [0.5],
                                "bucket_notifications": {"topic": f"reload/{os.getpid()}/new", "bucket": "new",
                                                         "events": ["s3:*"]}}
        del file.mappings["old"]
        await apply(app, file)
        await wait_until(lambda: mqtt.status()["subscribed"], 15, "the new subscription")
        await publish_like_minio(mosquitto, f"reload/{os.getpid()}/new", [minio_notification("new", "n.jpg")])
        await publish_like_minio(mosquitto, f"reload/{os.getpid()}/old", [minio_notification("old", "o.jpg")])
        await wait_until(lambda: len(push_calls(tmp_path)) >= 1, 20, "the notification on the new topic")
        await asyncio.sleep(1)
        assert [c["key"] for c in push_calls(tmp_path)] == ["n.jpg"]
        assert mqtt.status()["connects"] == 1


@pytest.mark.usefixtures("kafka_client")
async def test_functions_change_live_and_unknown_functions_refuse_the_file(
    tmp_path: Path, kafka: Tansu, topic: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    name = topic()
    file = ConfigFile(tmp_path / "router.yaml", base_config(tmp_path, kafka))
    file.mappings["clicks"] = stream(name)
    async with daemon(file) as app:
        await produce(kafka.bootstrap_servers, name, records(5))
        await wait_until(lambda: len(delivered(tmp_path)) == 5, 30, "the first records")
        first_pids = {c["pid"] for c in calls(tmp_path)}

        # a changed function: its next invocations run in new environments with the new settings
        file.data["functions"]["recorder"]["environment"]["variables"]["REPLICA"] = "v2"
        await apply(app, file)
        await produce(kafka.bootstrap_servers, name, records(5, "v"))
        await wait_until(lambda: len(delivered(tmp_path)) == 10, 30, "records after the change")
        after = [c for c in calls(tmp_path) if c["data"][0].startswith("v")]
        assert {c["replica"] for c in after} == {"v2"}
        assert not {c["pid"] for c in after} & first_pids

        # a file that does not validate changes nothing and names each problem's field
        file.mappings["broken"] = stream(name, batch_size=0, function_name="nope")
        file.write()
        assert not await reload(app, file.load)
        assert "broken" not in app.status()["mappings"]
        assert "clicks" in app.supervisor._streams


@pytest.mark.usefixtures("kafka_client")
def test_sighup_reloads_router_run(tmp_path: Path, kafka: Tansu, topic: Callable[..., str]) -> None:
    first, second = topic(), topic()
    data = base_config(tmp_path, kafka)
    data["event_source_mappings"]["first"] = stream(first)
    file = ConfigFile(tmp_path / "router.yaml", data)
    log_path = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "run", "--config", str(file.path), "--log-format", "json"],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    try:
        listen = data["http"]["listen"]

        def status() -> dict[str, Any] | None:
            import urllib.request

            try:
                with urllib.request.urlopen(f"http://{listen}/status", timeout=2) as answer:
                    document: dict[str, Any] = json.loads(answer.read())
                    return document
            except OSError:
                return None

        wait_for(lambda: status() is not None, 30, what="router run to serve /status")
        # a mapping added, and a section that only a restart can change
        file.mappings["second"] = stream(second)
        file.data["http"]["max_body_bytes"] = 4096
        file.write()
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "second" in (status() or {}).get("mappings", {}), 30, what="the new mapping")
        asyncio.run(produce(kafka.bootstrap_servers, second, records(7)))
        wait_for(lambda: len(delivered(tmp_path)) == 7, 30, what="the new mapping's records")

        # an invalid file: nothing changes, each problem is logged with its path
        file.path.write_text("functions: [not, a, mapping]\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload.refused" in log_path.read_text(), 30, what="the refusal")
        assert set((status() or {})["mappings"]) == {"first", "second"}
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        events = {line["event"] for line in lines}
        assert {"reload.requested", "reload.applied", "reload.needs_restart", "reload.invalid"} <= events
        assert [line["section"] for line in lines if line["event"] == "reload.needs_restart"] == ["http"]
        assert any(line["event"] == "reload.invalid" and line["problem"].startswith("functions:") for line in lines)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
