"""No accepted notification is lost: not while the router is down, not when it is SIGKILLed."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest
from test_push_support import (
    REPO,
    ROUTER_BIN,
    bucket_mapping,
    calls,
    config_data,
    make_config,
    minio_notification,
    publish_like_minio,
    running,
    wait_connected,
    wait_until,
)

from router.devstack import Mosquitto, free_port

pytestmark = pytest.mark.integration


async def test_notifications_published_while_the_router_is_stopped_are_all_invoked(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topic = f"minio/down-{uuid.uuid4().hex[:8]}"
    # The default $share group: Mosquitto queues for the offline member's persistent session.
    config = make_config(config_data(tmp_path, {"photos": bucket_mapping("photos", topic=topic)},
                                     broker=mosquitto, client_id=f"durable-{uuid.uuid4().hex[:6]}"))
    async with running(config) as app:
        await wait_connected(app)  # the broker now holds our session and subscription

    keys = [f"while-down/{i:03d} photo.jpg" for i in range(100)]
    await publish_like_minio(mosquitto, topic, [minio_notification("photos", k) for k in keys])

    async with running(config) as app:
        await wait_until(lambda: len(calls(tmp_path)) >= 100, 60, "all 100 notifications to be invoked")
        assert app.mqtt is not None and app.mqtt.status()["received"] == 100
    invoked = sorted(c["event"]["Records"][0]["s3"]["object"]["key"] for c in calls(tmp_path))
    assert invoked == sorted(k.replace(" ", "+") for k in keys)


class Daemon:
    """`router run` in its own process group, so the test can SIGKILL all of it."""

    def __init__(self, config_path: Path, log_path: Path, port: int) -> None:
        self.config_path, self.log_path, self.port = config_path, log_path, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        self.proc = subprocess.Popen(
            [str(ROUTER_BIN), "run", "--config", str(self.config_path), "--log-format", "json"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"router exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


async def test_sigkill_while_events_are_queued_and_retrying_loses_none(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topic = f"minio/kill-{uuid.uuid4().hex[:8]}"
    port = free_port()
    (tmp_path / "fail-first").mkdir()
    data = config_data(
        tmp_path, {"photos": bucket_mapping("photos", topic=topic, retry_delays_seconds=[1.0, 1.0])},
        broker=mosquitto, http_port=port, concurrency=2, client_id=f"killed-{uuid.uuid4().hex[:6]}",
        env={"FAIL_FIRST_DIR": str(tmp_path / "fail-first"), "SLEEP_SECONDS": "0.05"},
    )
    config_path = tmp_path / "router.yaml"
    config_path.write_text(json.dumps(data))
    daemon = Daemon(config_path, tmp_path / "router.log", port)
    keys = [f"kill/{i:02d}.jpg" for i in range(40)]
    try:
        daemon.start()
        await wait_until(daemon.ready, 30, "router run to be ready", interval=0.1)
        await publish_like_minio(mosquitto, topic, [minio_notification("photos", k) for k in keys])
        # Some first attempts have failed (their retries are scheduled), most events still wait.
        await wait_until(lambda: len(calls(tmp_path)) >= 8, 30, "the first attempts")
        daemon.kill()
        at_kill = collections.Counter(c["key"] for c in calls(tmp_path))
        retrying = [k for k in keys if at_kill[k] == 1]  # failed once, retry scheduled
        waiting = [k for k in keys if at_kill[k] == 0]  # queued (or not yet acknowledged)
        assert retrying and waiting, at_kill

        daemon.start()
        attempts: collections.Counter[str] = collections.Counter()

        def all_succeeded() -> bool:
            attempts.clear()
            attempts.update(c["key"] for c in calls(tmp_path))
            # Each key's first attempt fails; a second attempt means it ran to success.
            return all(attempts[k] >= 2 for k in keys)

        await wait_until(all_succeeded, 90, "every event to be retried to success after the restart")
        await asyncio.sleep(0.5)
        assert set(attempts) == set(keys)
        assert all(count <= 4 for count in attempts.values()), attempts  # duplicates bounded
    finally:
        daemon.terminate()
