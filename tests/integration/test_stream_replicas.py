"""Several daemons, SIGKILL and restarts: shards are shared through the consumer group, nothing is
lost, and what is delivered twice is at most the batch that was in flight when a daemon died.

Each daemon is tests/integration/stream_daemon.py in its own process (the multi-replica case
`router run` will cover). The handler records which replica ran each batch.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from stream_daemon import REPO, calls, config_data, delivered, produce, wait_until
from test_stream_delivery import wait_committed

from router.devstack import Tansu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]

DAEMON = Path(__file__).resolve().parent / "stream_daemon.py"


@asynccontextmanager
async def daemon(tmp_path: Path, data: dict[str, Any], replica: str) -> AsyncIterator[asyncio.subprocess.Process]:
    data = json.loads(json.dumps(data))
    data["functions"]["recorder"]["environment"]["variables"]["REPLICA"] = replica
    path = tmp_path / f"config-{replica}.json"
    path.write_text(json.dumps(data))
    log = (tmp_path / f"daemon-{replica}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(DAEMON), str(path), "clicks", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=log,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"started", (tmp_path / f"daemon-{replica}.log").read_text()[-2000:]
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def by_replica(tmp_path: Path, replica: str) -> list[dict[str, Any]]:
    return [c for c in calls(tmp_path) if c["replica"] == replica]


async def test_replicas_split_shards_and_survive_a_sigkill_mid_batch(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic(partitions=4)
    total = 4 * 30
    await produce(kafka.bootstrap_servers, name, [(f"k{i}".encode(), f"{i}".encode(), i % 4) for i in range(total)])
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"SLEEP": "0.25"}, mapping={"batch_size": 3})
    async with daemon(tmp_path, data, "a") as a:
        await wait_until(lambda: by_replica(tmp_path, "a"), 20, "replica a processing")
        async with daemon(tmp_path, data, "b"):
            await wait_until(lambda: by_replica(tmp_path, "b"), 30, "replica b took over some shards")
            # Both replicas now own shards; kill a while its batches are in flight.
            await asyncio.sleep(0.5)
            os.kill(a.pid, signal.SIGKILL)
            assert await asyncio.wait_for(a.wait(), 10) == -signal.SIGKILL
            killed_at = len(calls(tmp_path))
            await wait_until(lambda: {s for s, _ in delivered(tmp_path)} and
                             set(delivered(tmp_path)) >= {(f"shardId-00000000000{i % 4}", i // 4)
                                                          for i in range(total)},
                             60, "every record delivered")
            await wait_committed(kafka, name, dict.fromkeys(range(4), 30), timeout=30)
    seen = delivered(tmp_path)
    shards_of = {r: {c["shard"] for c in by_replica(tmp_path, r)} for r in ("a", "b")}
    assert shards_of["a"] and shards_of["b"], shards_of
    # Per shard and replica, records arrive strictly in order (a shard never returns to a replica here).
    for replica in ("a", "b"):
        for shard in shards_of[replica]:
            offsets = [int(s) for c in by_replica(tmp_path, replica) if c["shard"] == shard for s in c["seqs"]]
            assert offsets == sorted(set(offsets)), (replica, shard, offsets)
    # b took over the shards a held when it died.
    assert {c["shard"] for c in by_replica(tmp_path, "b")} == {f"shardId-00000000000{p}" for p in range(4)}
    # Duplicates: only records of a's last batch per shard (in flight when it was killed).
    duplicates = {key for key, n in Counter(seen).items() if n > 1}
    last_batch_of_a: set[tuple[str, int]] = set()
    for shard in shards_of["a"]:
        batches = [c for c in calls(tmp_path)[:killed_at] if c["replica"] == "a" and c["shard"] == shard]
        if batches:
            last_batch_of_a |= {(shard, int(s)) for s in batches[-1]["seqs"]}
    assert duplicates <= last_batch_of_a, (sorted(duplicates), sorted(last_batch_of_a))
    assert len(set(seen)) == total


async def test_sigkill_and_restart_loses_nothing(kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic(partitions=2)
    total = 2 * 20
    await produce(kafka.bootstrap_servers, name, [(b"k", f"{i}".encode(), i % 2) for i in range(total)])
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"SLEEP": "0.2"}, mapping={"batch_size": 4})
    async with daemon(tmp_path, data, "first") as first:
        await wait_until(lambda: len(calls(tmp_path)) >= 3, 30, "a few batches")
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
    before = len(set(delivered(tmp_path)))
    assert before < total
    async with daemon(tmp_path, data, "second"):
        await wait_committed(kafka, name, {0: 20, 1: 20}, timeout=60)
    seen = delivered(tmp_path)
    assert set(seen) == {(f"shardId-00000000000{p}", o) for p in range(2) for o in range(20)}
    # At most the two in-flight batches (one per shard) were delivered twice.
    assert len(seen) - total <= 2 * 4


async def test_replicas_on_different_kafka_clients_share_one_group(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path, kafka_client: str) -> None:
    """A deployment moving from one `kafka.client` to the other a pod at a time: a replica on each
    client in one group split the shards (both use the roundrobin assignor), and when one stops
    the other takes its shards over from its commits, with nothing lost or repeated (run once
    with each client as the one that stays)."""
    other = "aiokafka" if kafka_client == "confluent" else "confluent"
    name = topic(partitions=4)
    total = 4 * 30
    await produce(kafka.bootstrap_servers, name, [(f"k{i}".encode(), f"{i}".encode(), i % 4) for i in range(total)])
    old = config_data(kafka.bootstrap_servers, name, tmp_path, env={"SLEEP": "0.2"}, mapping={"batch_size": 3})
    new = json.loads(json.dumps(old))
    new["kafka"]["client"] = other
    async with daemon(tmp_path, old, "old"):
        await wait_until(lambda: by_replica(tmp_path, "old"), 20, "the old replica processing")
        async with daemon(tmp_path, new, "new"):
            await wait_until(lambda: by_replica(tmp_path, "new"), 30, f"the {other} replica took some shards")
        await wait_committed(kafka, name, dict.fromkeys(range(4), 30), timeout=60)
    seen = delivered(tmp_path)
    assert sorted(set(seen)) == sorted((f"shardId-00000000000{i % 4}", i // 4) for i in range(total))
    assert len(seen) == total, sorted(key for key, n in Counter(seen).items() if n > 1)  # graceful hand-overs
    shards_of = {r: {c["shard"] for c in by_replica(tmp_path, r)} for r in ("old", "new")}
    assert shards_of["new"] and shards_of["old"] - shards_of["new"], shards_of  # they split the group
