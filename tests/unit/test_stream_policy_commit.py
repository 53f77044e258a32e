"""Commits: fenced commits never move a checkpoint, and concurrent flushes share requests. Flow
control: a full shard is paused in the consumer, and a fetch loop waiting for room notices a
rebalance at once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError

from router.config import load_config_data
from router.delivery.checkpoint import ShardCheckpoint
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.sources.kafka import Committer, KafkaStreamSource, ShardStart


class FakeConsumer:
    def __init__(self, partitions: set[int], error: Exception | None = None) -> None:
        self._assigned = {TopicPartition("t", p) for p in partitions}
        self.error = error
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return self._assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.error is not None:
            raise self.error
        self.commits.append(dict(offsets))

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)


class Owner:
    def __init__(self) -> None:
        self.cps: dict[int, ShardCheckpoint] = {0: ShardCheckpoint(0), 1: ShardCheckpoint(0)}

    async def shards_assigned(self, starts: Mapping[int, ShardStart]) -> None: ...

    async def drain(self, partitions: set[int], timeout: float | None) -> None: ...

    def release(self, partitions: set[int]) -> None: ...

    def records(self, partition: int, records: list[Any]) -> bool:
        return True

    def checkpoints(self) -> Mapping[int, ShardCheckpoint]:
        return self.cps

    def high_watermarks(self, offsets: Mapping[int, int]) -> None: ...


def source(owner: Owner, consumer: FakeConsumer) -> KafkaStreamSource:
    config = load_config_data({
        "functions": {"f": {"handler": "m.handler"}}, "kafka": {},
        "event_source_mappings": {"m": {"function_name": "f", "kafka_topic": "t"}},
    }, {})
    src = KafkaStreamSource("m", config.stream_mappings()["m"], config, owner, metrics=Metrics(),
                            board=ProgressBoard(300))
    src._consumer = consumer  # type: ignore[assignment]
    return src


def finish(cp: ShardCheckpoint, upto: int) -> None:
    cp.track_many(list(range(cp.next_offset, upto)))
    cp.done(range(upto))


async def test_commit_covers_only_assigned_shards_and_marks_them() -> None:
    owner = Owner()
    consumer = FakeConsumer({0})  # shard 1 was revoked meanwhile
    src = source(owner, consumer)
    finish(owner.cps[0], 5)
    finish(owner.cps[1], 7)
    await src.committer.flush()
    assert consumer.commits == [{TopicPartition("t", 0): 5}]
    assert owner.cps[0].committed == 5 and owner.cps[1].committed == 0


async def test_a_fenced_commit_never_moves_the_checkpoint() -> None:
    for error in (CommitFailedError("rebalanced"), IllegalStateError("not assigned"), KafkaConnectionError("down")):
        owner = Owner()
        src = source(owner, FakeConsumer({0, 1}, error))
        finish(owner.cps[0], 3)
        await src.committer.flush()
        assert owner.cps[0].committed == 0 and owner.cps[0].dirty
        assert src.last_error is not None and "commit" in src.last_error


async def test_concurrent_flushes_share_commits() -> None:
    calls: list[dict[int, int]] = []
    gate = asyncio.Event()
    cps = {p: ShardCheckpoint(0) for p in range(8)}

    async def commit(offsets: dict[int, int]) -> set[int]:
        calls.append(dict(offsets))
        await gate.wait()
        return set(offsets)

    committer = Committer(commit, lambda: cps)
    finish(cps[0], 1)
    first = asyncio.create_task(committer.flush(timeout=5))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for p in range(1, 8):  # seven shards finish while the first commit is in flight
        finish(cps[p], 2)
    waiting = [asyncio.create_task(committer.flush(timeout=5)) for _ in range(7)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, *waiting)
    assert len(calls) == 2
    assert calls[1] == {p: 2 for p in range(1, 8)}
    assert all(not cp.dirty for cp in cps.values())


async def test_a_fetch_loop_waiting_for_room_wakes_on_room_and_on_a_rebalance() -> None:
    consumer = FakeConsumer({0, 1})
    src = source(Owner(), consumer)
    src.pause(0)
    src.pause(1)
    assert consumer.paused == {TopicPartition("t", 0), TopicPartition("t", 1)}  # not fetched any more
    waiting = asyncio.create_task(src._wait_for_room(consumer))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not waiting.done()
    src.resume(1)
    await asyncio.wait_for(waiting, 1)
    assert consumer.paused == {TopicPartition("t", 0)}

    src.pause(1)
    waiting = asyncio.create_task(src._wait_for_room(consumer))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    consumer._assigned = set()  # both shards revoked while every shard was full
    await src._revoked({0, 1})
    await asyncio.wait_for(waiting, 1)  # not after the 30 s keep-alive


async def test_a_commit_request_returns_at_once_and_the_commit_follows() -> None:
    gate = asyncio.Event()
    calls: list[dict[int, int]] = []

    async def commit(offsets: dict[int, int]) -> set[int]:
        calls.append(dict(offsets))
        await gate.wait()
        return set(offsets)

    cps = {0: ShardCheckpoint(0)}
    committer = Committer(commit, lambda: cps)
    finish(cps[0], 3)
    committer.request()  # a shard asking after a batch: no waiting for the broker
    await asyncio.sleep(0.01)
    assert calls == [{0: 3}] and cps[0].committed == 0  # sent, not yet acknowledged
    finish(cps[0], 5)
    committer.request()
    committer.request()  # asked twice while one is in flight: one more commit, not two
    gate.set()
    for _ in range(100):
        if cps[0].committed == 5:
            break
        await asyncio.sleep(0.01)
    assert calls == [{0: 3}, {0: 5}] and cps[0].committed == 5
