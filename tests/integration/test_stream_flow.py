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

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]


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


async def test_a_full_shard_drains_a_backlog_in_order_through_every_pause(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    """One shard and a small buffer: the only shard is full again and again, so
    fetching stops altogether (the consumer keeps polling the group) and starts again each time
    it makes room. Every record arrives once, in order, and the buffer never overflows."""
    name = topic(partitions=1)
    count = 5000
    await produce(kafka.bootstrap_servers, name, [(b"k", f"{i}".encode(), 0) for i in range(count)])
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"SLEEP": "0.01"},
                       mapping={"batch_size": 100, "shard_buffer_records": 200})
    most_held, seen_paused = 0, False
    async with running(data) as r:
        def drained() -> bool:
            nonlocal most_held, seen_paused
            shard = r.runner.status()["shards"].get("shardId-000000000000")
            if shard is not None:
                most_held = max(most_held, shard["buffered_records"] + shard["in_flight_records"])
                seen_paused |= shard["paused"]
            return len(delivered(tmp_path)) >= count

        await wait_until(drained, 60, "every record delivered", interval=0.01)
    assert [offset for _, offset in delivered(tmp_path)] == list(range(count))
    # It paused, and more got through than it may hold, so it resumed (so quickly, its next
    # records already prefetched, that polling rarely catches it unpaused).
    assert seen_paused and count > 200 + FETCH_MAX_RECORDS
    assert most_held <= 200 + FETCH_MAX_RECORDS


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
