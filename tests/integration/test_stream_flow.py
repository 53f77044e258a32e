"""Flow control and broker outages: a blocked shard blocks only itself, memory stays bounded, and a
broker that goes away and comes back is reconnected to without the runner giving up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from stream_daemon import calls, config_data, delivered, produce, wait_until
from test_stream_delivery import running

from router.devstack import Tansu
from router.sources.kafka import FETCH_MAX_RECORDS

pytestmark = pytest.mark.integration


async def test_a_blocked_shard_pauses_and_never_stalls_the_others(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic(partitions=2)
    # Shard 0: a poison record first (retried forever), then a backlog far larger than its buffer.
    backlog = 3000
    await produce(kafka.bootstrap_servers, name, [(b"k", b"poison", 0)])
    await produce(kafka.bootstrap_servers, name, [(b"k", b"x" * 1000, 0)] * backlog)
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"MODE": "poison", "POISON": "poison"},
                       mapping={"batch_size": 50, "shard_buffer_records": 100})
    async with running(data) as r:
        await wait_until(lambda: len(r.runner.status()["shards_owned"]) == 2, 20, "shards assigned")
        await produce(kafka.bootstrap_servers, name, [(b"k", f"{i}".encode(), 1) for i in range(200)])
        await wait_until(lambda: sum(1 for s, _ in delivered(tmp_path) if s.endswith("1")) >= 200, 20,
                         "shard 1 delivered everything while shard 0 is blocked")
        await wait_until(lambda: r.runner.status()["shards"]["shardId-000000000000"]["paused"], 10, "shard 0 paused")
        await asyncio.sleep(1.0)  # a paused shard fetches no more
        shard0 = r.runner.status()["shards"]["shardId-000000000000"]
        held = shard0["buffered_records"] + shard0["in_flight_records"]
        # Bounded: the buffer limit plus at most what one fetch hands over.
        assert held <= 100 + FETCH_MAX_RECORDS < backlog, shard0
        assert shard0["checkpoint"] is None
        assert r.runner.status()["shards"]["shardId-000000000001"]["checkpoint"] == "199"
        tracker = r.board.tracker("stream:clicks:shardId-000000000000")
        assert tracker.pending
    # Only ever the poison batch was invoked on shard 0, again and again.
    assert {tuple(c["seqs"][:1]) for c in calls(tmp_path) if c["shard"].endswith("0")} == {("0",)}


async def test_broker_outage_is_reported_and_survived(tmp_path: Path) -> None:
    # A broker of its own: the session broker is shared and must not go down.
    with Tansu(tmp_path / "tansu") as broker:
        name = "outage"
        await broker.acreate_topic(name, 1)
        await produce(broker.bootstrap_servers, name, [(b"k", b"before", 0)])
        async with running(config_data(broker.bootstrap_servers, name, tmp_path)) as r:
            await wait_until(lambda: len(calls(tmp_path)) == 1, 20, "first record")
            kafka = r.board.tracker("kafka")
            await wait_until(lambda: kafka.up and r.metric("router_broker_connected", broker="kafka") == 1, 10,
                             "broker reported up")
            await asyncio.to_thread(broker.stop)
            await wait_until(lambda: not kafka.up, 20, "broker reported down")
            assert r.metric("router_broker_connected", broker="kafka") == 0
            assert any(p.startswith("kafka: down") for p in r.board.problems())
            broker.start()  # Tansu keeps memory storage: the topic and offsets are gone; recreate
            await broker.acreate_topic(name, 1)
            await wait_until(lambda: kafka.up, 30, "broker reported up again")
            await produce(broker.bootstrap_servers, name, [(b"k", b"after", 0)])
            await wait_until(lambda: any("after" in c["data"] for c in calls(tmp_path)), 60,
                             "a record produced after the outage")
            assert r.runner.status()["state"] == "Enabled"
