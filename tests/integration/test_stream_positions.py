"""Starting positions apply only when the group has no checkpoint; afterwards the checkpoint wins.
(TRIM_HORIZON, the default, is what every other stream test starts from.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from stream_daemon import calls, config_data, delivered, produce, wait_until
from test_stream_delivery import running, wait_committed

from router.devstack import Tansu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]


async def test_latest_skips_the_backlog_and_is_kept_across_restarts(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic(partitions=2)
    await produce(kafka.bootstrap_servers, name, [(b"k", b"old", i % 2) for i in range(6)])
    data = config_data(kafka.bootstrap_servers, name, tmp_path, mapping={"starting_position": "LATEST"})
    async with running(data) as r:
        await wait_until(lambda: len(r.runner.status()["shards_owned"]) == 2, 20, "shards assigned")
        # LATEST is established (committed) at once, before any new record arrives.
        await wait_committed(kafka, name, {0: 3, 1: 3})
        await produce(kafka.bootstrap_servers, name, [(b"k", b"new", i % 2) for i in range(4)])
        await wait_committed(kafka, name, {0: 5, 1: 5})
    assert sorted(d for c in calls(tmp_path) for d in c["data"]) == ["new"] * 4
    # Stopped: what arrives now is picked up after a restart, from the checkpoint, not from "latest".
    await produce(kafka.bootstrap_servers, name, [(b"k", b"while-down", 0)])
    async with running(data):
        await wait_committed(kafka, name, {0: 6, 1: 5})
    assert sorted(d for c in calls(tmp_path) for d in c["data"]) == ["new"] * 4 + ["while-down"]


async def test_at_timestamp_starts_at_the_first_record_at_or_after_it(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic(partitions=1)
    base = int(time.time() * 1000) - 100_000
    for i in range(10):
        await produce(kafka.bootstrap_servers, name, [(b"k", f"t{i}".encode(), 0)], timestamp_ms=base + i * 10_000)
    data = config_data(kafka.bootstrap_servers, name, tmp_path,
                       mapping={"starting_position": "AT_TIMESTAMP",
                                "starting_position_timestamp": (base + 45_000) / 1000})
    async with running(data):
        await wait_until(lambda: len(delivered(tmp_path)) >= 5, 20, "records from the timestamp on")
        await wait_committed(kafka, name, {0: 10})
    assert [o for _, o in delivered(tmp_path)] == [5, 6, 7, 8, 9]
