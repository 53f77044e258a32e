"""`router replay`: what the on-failure destination kept is invoked again, from Kafka and from S3."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_support import Daemon
from stream_daemon import kafka_client
from test_daemon import HANDLERS, ROOT, _produce, _records

from router.devstack import SeaweedFS, Tansu, wait_for

pytestmark = pytest.mark.integration
FIXTURE = ROOT / "tests" / "fixtures" / "minio" / "webhook_body_put.json"


def _replay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", "replay", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.usefixtures("kafka_client")
async def test_failed_stream_batches_and_async_events_replay_from_their_destinations(
    kafka: Tansu, seaweedfs: SeaweedFS, topic: Callable[..., str],
    daemon: Callable[[dict[str, Any]], Daemon], tmp_path: Path,
) -> None:
    source, failed = topic(1), topic(1)
    seaweedfs.create_bucket("replay-failed")
    record_file = tmp_path / "replayed.jsonl"
    config: dict[str, Any] = {
        "functions": {
            "failing": {"handler": "gate.fail", "code_path": str(HANDLERS)},
            "fixed": {"handler": "gate.record", "code_path": str(HANDLERS),
                      "environment": {"variables": {"RECORD_FILE": str(record_file)}}},
        },
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "session_timeout_ms": 6000,
                  "client": kafka_client()},
        "s3": {"endpoint_url": seaweedfs.s3_endpoint, "access_key_id": seaweedfs.access_key,
               "secret_access_key": seaweedfs.secret_key},
        "http": {"webhook_token": "replay-token"},
        "event_source_mappings": {
            "stream": {"function_name": "failing", "kafka_topic": source, "maximum_retry_attempts": 0,
                       "destination_config": {"on_failure": {"destination": f"kafka://{failed}"}}},
            "push": {"function_name": "failing", "maximum_retry_attempts": 0, "retry_delays_seconds": [0.1],
                     "bucket_notifications": {"transport": "webhook", "bucket": "uploads"},
                     "destination_config": {"on_failure": {"destination": "s3://replay-failed/push/"}}},
        },
    }
    d = daemon(config)
    await _produce(kafka, source, [b"one", b"two"])
    request = urllib.request.Request(
        f"http://127.0.0.1:{d.port}/webhooks/s3", data=FIXTURE.read_bytes(), method="POST",
        headers={"Authorization": "Bearer replay-token", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    wait_for(lambda: d.get("/metrics")[1].count("router_on_failure_records_total{mapping=") >= 2
             and 'router_on_failure_records_total{mapping="push"} 1.0' in d.get("/metrics")[1]
             and 'router_on_failure_records_total{mapping="stream"} 1.0' in d.get("/metrics")[1],
             timeout=60, what="both failure records written")
    assert d.stop() == 0

    dry = _replay(d.config_path, f"kafka://{failed}", "--dry-run")
    assert dry.returncode == 0 and "would invoke failing" in dry.stdout and not record_file.exists()

    again = _replay(d.config_path, f"kafka://{failed}", "--function", "fixed")
    assert again.returncode == 0, again.stderr
    replayed = _records(record_file)
    assert len(replayed) == 1
    data = [r["kinesis"]["data"] for r in replayed[0]["event"]["Records"]]
    assert data == ["b25l", "dHdv"]  # base64 of b"one", b"two": the exact batch that failed

    from_s3 = _replay(d.config_path, "s3://replay-failed/push/", "--function", "fixed")
    assert from_s3.returncode == 0, from_s3.stderr
    event = _records(record_file)[-1]["event"]
    assert event["Records"][0]["s3"]["bucket"]["name"] == "uploads"
    assert event["Records"][0]["eventSource"] == "aws:s3"

    still_failing = _replay(d.config_path, "s3://replay-failed/push/")
    assert still_failing.returncode == 1 and "failed\tfailing" in still_failing.stdout
    json.loads(FIXTURE.read_text())  # the fixture itself stays untouched
