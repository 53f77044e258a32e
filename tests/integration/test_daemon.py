"""`router run` as an operator sees it: JSON logs without secrets, readiness that means "moving",
a SIGTERM drain that finishes and checkpoints the in-flight batch, and `router status`.

Each test starts the real daemon as a subprocess on real brokers.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from daemon_support import Daemon
from stream_daemon import kafka_client

from router.devstack import Mosquitto, Tansu, wait_for

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = ROOT / "tests" / "daemon_handlers"
POOL_HANDLERS = ROOT / "tests" / "handlers"

pytestmark = pytest.mark.integration


async def _produce(kafka: Tansu, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k", partition=0)
    finally:
        await producer.stop()


async def _committed(kafka: Tansu, group: str, topic: str) -> int | None:
    reader = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        offset: int | None = await reader.committed(TopicPartition(topic, 0))
        return offset
    finally:
        await reader.stop()


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _stream_config(kafka: Tansu, topic: str, handler: str, env: dict[str, str], **mapping: Any) -> dict[str, Any]:
    return {
        "functions": {"f": {"handler": handler, "code_path": str(HANDLERS), "timeout": 1,
                            "environment": {"variables": env}}},
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "session_timeout_ms": 6000,
                  "client": kafka_client()},
        "event_source_mappings": {"m": {"function_name": "f", "kafka_topic": topic, **mapping}},
        "shutdown_timeout_seconds": 20,
    }


@pytest.mark.usefixtures("kafka_client")
async def test_sigterm_mid_batch_finishes_and_checkpoints_it_then_exits_zero(
    kafka: Tansu, topic: Callable[..., str], daemon: Callable[[dict[str, Any]], Daemon], tmp_path: Path
) -> None:
    name = topic(1)
    record_file = tmp_path / "records.jsonl"
    config = _stream_config(kafka, name, "gate.slow", {"RECORD_FILE": str(record_file), "SLEEP": "2"},
                            batch_size=10)
    config["functions"]["f"]["timeout"] = 10
    d = daemon(config)
    await _produce(kafka, name, [f"v{i}".encode() for i in range(5)])
    wait_for(lambda: any(r["phase"] == "start" for r in _records(record_file)), timeout=30, what="batch start")
    assert d.stop(signal.SIGTERM) == 0
    phases = [(r["phase"], r["seqs"]) for r in _records(record_file)]
    assert phases == [("start", ["0", "1", "2", "3", "4"]), ("end", ["0", "1", "2", "3", "4"])]
    assert await _committed(kafka, "router-m", name) == 5  # everything the batch covered is checkpointed
    events = [line["event"] for line in d.log_lines()]
    assert "router.stopping" in events and events[-1] == "router.stopped"


@pytest.mark.usefixtures("kafka_client")
async def test_readyz_names_a_stalled_shard_and_recovers_when_it_moves(
    kafka: Tansu, topic: Callable[..., str], daemon: Callable[[dict[str, Any]], Daemon], tmp_path: Path
) -> None:
    name = topic(1)
    gate, record_file = tmp_path / "gate", tmp_path / "records.jsonl"
    gate.touch()
    config = _stream_config(kafka, name, "gate.gated", {"RECORD_FILE": str(record_file), "GATE": str(gate)},
                            retry_base_delay_seconds=0.1, retry_max_delay_seconds=0.2)
    config["stall_timeout_seconds"] = 1.5
    d = daemon(config)
    wait_for(lambda: d.get("/readyz")[0] == 200, timeout=30, what="ready before any work")
    await _produce(kafka, name, [b"a", b"b"])
    wait_for(lambda: d.get("/readyz")[0] == 503, timeout=30, what="/readyz 503 on the stalled shard")
    _, body = d.get("/readyz")
    assert any("stream:m:shardId-000000000000" in problem for problem in body["problems"]), body
    gate.unlink()  # the handler stops hanging: the next retry succeeds and the checkpoint moves
    wait_for(lambda: d.get("/readyz")[0] == 200, timeout=30, what="/readyz back to 200")
    assert _records(record_file)[-1]["seqs"] == ["0", "1"]
    assert d.stop() == 0
    timeouts = [line for line in d.log_lines() if line.get("error_type") == "Sandbox.Timedout"]
    assert timeouts and all(line.get("function") == "f" for line in timeouts)


def test_readyz_is_503_while_the_mqtt_broker_is_down(
    fresh_mosquitto: Mosquitto, daemon: Callable[[dict[str, Any]], Daemon]
) -> None:
    config = {
        "functions": {"f": {"handler": "gate.slow", "code_path": str(HANDLERS)}},
        "mqtt": {"host": fresh_mosquitto.host, "port": fresh_mosquitto.port, "client_id": "router-readyz-test"},
        "event_source_mappings": {"b": {"function_name": "f", "bucket_notifications": {
            "transport": "mqtt", "topic": "minio/events", "bucket": "photos"}}},
    }
    d = daemon(config)
    wait_for(lambda: d.get("/readyz")[0] == 200, timeout=30, what="ready with the broker up")
    fresh_mosquitto.stop()
    wait_for(lambda: d.get("/readyz")[0] == 503, timeout=30, what="unready with the broker down")
    assert any(p.startswith("mqtt") for p in d.get("/readyz")[1]["problems"])
    assert d.get("/healthz")[0] == 200  # alive: a broker outage is not a reason to be killed
    fresh_mosquitto.start()
    wait_for(lambda: d.get("/readyz")[0] == 200, timeout=60, what="ready again after the broker returns")
    assert d.stop() == 0


def test_json_logs_carry_stable_keys_and_never_a_secret(
    fresh_mosquitto: Mosquitto, daemon: Callable[[dict[str, Any]], Daemon], tmp_path: Path
) -> None:
    secrets = {"mqtt": "mqtt-pw-9f8e7d", "webhook": "hook-token-1a2b3c", "admin": "admin-token-4d5e6f",
               "s3": "s3-secret-7g8h9i", "env": "fn-env-secret-0j1k"}
    config = {
        "functions": {"f": {"handler": "gate.slow", "code_path": str(HANDLERS),
                            "environment": {"variables": {"API_PASSWORD": secrets["env"]}}}},
        "mqtt": {"host": fresh_mosquitto.host, "port": fresh_mosquitto.port, "client_id": "router-secrets-test",
                 "username": "router", "password": secrets["mqtt"]},
        "http": {"webhook_token": secrets["webhook"], "admin_token": secrets["admin"]},
        "s3": {"endpoint_url": "http://127.0.0.1:1", "access_key_id": "ak", "secret_access_key": secrets["s3"]},
        "event_source_mappings": {
            "b": {"function_name": "f", "bucket_notifications": {"transport": "webhook", "bucket": "photos"},
                  "destination_config": {"on_failure": {"destination": "s3://failed/"}}},
        },
    }
    d = daemon(config)
    for token in ("wrong-token", secrets["webhook"]):
        request = urllib.request.Request(
            f"http://127.0.0.1:{d.port}/webhooks/s3", data=b'{"Records": []}', method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=5).close()
    status, body = d.get("/status")
    assert status == 200 and body["mappings"]["b"]["kind"] == "bucket"
    assert body["mappings"]["b"]["queue"]["depth"] == 0  # the shape `router status` renders
    assert d.stop() == 0
    text = d.log_path.read_text() + d.err_path.read_text()
    for value in secrets.values():
        assert value not in text
    lines = d.log_lines()
    assert lines and all({"timestamp", "level", "event"} <= line.keys() for line in lines)
    assert all(line["timestamp"].endswith("Z") or line["timestamp"].endswith("+00:00") for line in lines)


def test_startup_failures_are_one_clear_line(tmp_path: Path) -> None:
    blocker = __import__("socket").socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        config = tmp_path / "r.yaml"
        config.write_text(yaml.safe_dump({"http": {"listen": f"127.0.0.1:{port}"}, "state_dir": str(tmp_path / "s")}))
        done = subprocess.run([sys.executable, "-m", "router.cli", "run", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1].startswith(f"router: http.listen 127.0.0.1:{port}")
    finally:
        blocker.close()
    unwritable = tmp_path / "file-not-dir"
    unwritable.write_text("")
    config.write_text(yaml.safe_dump({"state_dir": str(unwritable / "state"), "http": {"listen": "127.0.0.1:0"}}))
    done = subprocess.run([sys.executable, "-m", "router.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "state_dir" in done.stderr.strip().splitlines()[-1]
    config.write_text("functions: {f: {handler: x}}")
    done = subprocess.run([sys.executable, "-m", "router.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "functions.f.handler" in done.stderr


async def test_a_queue_that_cannot_open_is_one_line_and_unwinds_what_started(tmp_path: Path) -> None:
    from router.app import StartupError, build, start
    from router.config import load_config_data
    from router.devstack import free_port

    state = tmp_path / "state"
    (state / "async-queue.sqlite3").mkdir(parents=True)  # SQLite cannot open a directory
    port = free_port()
    app = await build(load_config_data({"state_dir": str(state), "http": {"listen": f"127.0.0.1:{port}"}}))
    with pytest.raises(StartupError) as failure:
        await start(app)
    assert str(failure.value).startswith(f"state_dir {state}: cannot open the async queue async-queue.sqlite3")
    assert "\n" not in str(failure.value)
    # the HTTP port that was bound first is free again, and the pool is closed
    probe = __import__("socket").socket()
    try:
        probe.bind(("127.0.0.1", port))
    finally:
        probe.close()
    assert app.pool._closed


@pytest.mark.usefixtures("kafka_client")
def test_router_status_renders_the_running_daemon(
    kafka: Tansu, topic: Callable[..., str], daemon: Callable[[dict[str, Any]], Daemon], tmp_path: Path
) -> None:
    name = topic(2)
    d = daemon(_stream_config(kafka, name, "gate.slow", {"RECORD_FILE": str(tmp_path / "r"), "SLEEP": "0"}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shards = d.get("/status")[1]["mappings"]["m"].get("shards") or {}
        if len(shards) == 2:
            break
        time.sleep(0.3)
    table = subprocess.run([sys.executable, "-m", "router.cli", "status", "--url", f"http://127.0.0.1:{d.port}"],
                           capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert "shardId-000000000000" in table.stdout and "shardId-000000000001" in table.stdout
    assert d.stop() == 0


@pytest.mark.usefixtures("kafka_client")
async def test_stall_exit_seconds_makes_a_stuck_daemon_exit_for_its_supervisor(
    kafka: Tansu, topic: Callable[..., str], daemon: Callable[[dict[str, Any]], Daemon], tmp_path: Path
) -> None:
    name = topic(1)
    gate = tmp_path / "gate"
    gate.touch()  # never removed: the shard can never move
    config = _stream_config(kafka, name, "gate.gated", {"RECORD_FILE": str(tmp_path / "r"), "GATE": str(gate)},
                            retry_base_delay_seconds=0.1, retry_max_delay_seconds=0.2)
    config["stall_timeout_seconds"] = 2
    config["stall_exit_seconds"] = 4
    d = daemon(config)
    await _produce(kafka, name, [b"stuck"])
    assert d.proc is not None
    assert d.proc.wait(timeout=60) == 3
    assert any(line["event"] == "router.stalled_exit" for line in d.log_lines())


@pytest.mark.usefixtures("kafka_client")
async def test_a_second_signal_exits_at_once_without_checkpointing_the_unfinished_batch(
    kafka: Tansu, topic: Callable[..., str], daemon: Callable[[dict[str, Any]], Daemon], tmp_path: Path
) -> None:
    name = topic(1)
    record_file = tmp_path / "records.jsonl"
    config = _stream_config(kafka, name, "gate.slow", {"RECORD_FILE": str(record_file), "SLEEP": "20"})
    config["functions"]["f"]["timeout"] = 60
    config["shutdown_timeout_seconds"] = 60
    d = daemon(config)
    await _produce(kafka, name, [b"x", b"y"])
    wait_for(lambda: any(r["phase"] == "start" for r in _records(record_file)), timeout=30, what="batch start")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the drain is waiting for the 20 s batch
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=10) == 130
    assert time.monotonic() - started < 5
    assert [r["phase"] for r in _records(record_file)] == ["start"]
    assert await _committed(kafka, "router-m", name) is None  # at-least-once: nothing checkpointed early


def test_the_drain_has_one_budget_however_many_kinds_of_work_are_in_flight(
    daemon: Callable[[dict[str, Any]], Daemon], tmp_path: Path
) -> None:
    # A website request and an async event both run for 30 s; the drain has 2 s in all. Each part
    # used to get the whole timeout in turn (aiohttp waited up to 60 s for the request first).
    markers = tmp_path / "markers"
    markers.mkdir()
    config = {
        "functions": {"slow": {"handler": "basic.slow_marked", "code_path": str(POOL_HANDLERS), "timeout": 60,
                               "reserved_concurrent_executions": 4,
                               "environment": {"variables": {"MARKER_DIR": str(markers), "SLEEP": "30"}}}},
        "http_routes": {"slow": {"function_name": "slow", "method": "GET", "path": "/slow"}},
        "lambda_api": {},
        "shutdown_timeout_seconds": 2,
    }
    d = daemon(config)
    base = f"http://127.0.0.1:{d.port}"
    website = threading.Thread(target=lambda: _quiet_get(f"{base}/slow"), daemon=True)
    website.start()
    event = urllib.request.Request(f"{base}/2015-03-31/functions/slow/invocations", data=b"{}", method="POST",
                                   headers={"X-Amz-Invocation-Type": "Event"})
    with urllib.request.urlopen(event, timeout=10) as answer:
        assert answer.status == 202
    wait_for(lambda: len(list(markers.iterdir())) == 2, timeout=30, what="both invocations running")
    started = time.monotonic()
    code = d.stop(signal.SIGTERM, timeout=60)
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 2 + 8, f"the drain took {elapsed:.1f}s"  # the budget plus the finishing steps
    events = [line["event"] for line in d.log_lines()]
    assert "async.stop_abandoned" in events  # the event stays queued for the next start
    assert events[-1] == "router.stopped"


def _quiet_get(url: str) -> None:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(url, timeout=60).read()
