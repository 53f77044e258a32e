"""The shard processor with a fake worker pool: batching (size, window, 6 MB), lanes, flow
control, AT_TIMESTAMP skipping, throttles and stopping. No broker, no processes: milliseconds."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from router.config import load_config_data
from router.delivery.shard import ShardProcessor
from router.events.kinesis import MAX_INVOCATION_PAYLOAD_BYTES
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.runtime import errors, kinesis_batch
from router.runtime.protocol import PackedEvent
from router.runtime.result import InvocationResult


class Fetched(NamedTuple):  # what a source hands over: (offset, key, value, timestamp ms)
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_700_000_000_000


@dataclass
class FakePool:
    """Runs no handler: records each batch; `gates` hold batches containing a given data value."""

    calls: list[list[str]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    gates: dict[bytes, asyncio.Event] = field(default_factory=dict)
    fail: bool = False
    throttle_first: int = 0

    async def invoke(self, function: str, packed: PackedEvent, *, invocation_type: str) -> InvocationResult:
        if self.throttle_first:
            self.throttle_first -= 1
            return InvocationResult("t", {"errorType": errors.THROTTLED}, "Unhandled", errors.THROTTLED)
        event = kinesis_batch.decode(packed.body)
        self.sizes.append(len(json.dumps(event, separators=(",", ":"))))  # the event's size as Lambda counts it
        self.calls.append([r["kinesis"]["sequenceNumber"] for r in event["Records"]])
        for record in event["Records"]:
            gate = self.gates.get(base64.b64decode(record["kinesis"]["data"]))
            if gate is not None:
                await gate.wait()
        if self.fail:
            return InvocationResult("e", {"errorMessage": "x"}, "Unhandled", "ValueError")
        return InvocationResult("ok", None)


class FakeDestination:
    uri = "kafka://failed"

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def send(self, record: Any, *, key: str) -> None:
        self.records.append(record)


@dataclass
class Shard:
    shard: ShardProcessor
    pool: FakePool
    destination: FakeDestination
    events: list[str]

    def add(self, *records: Fetched) -> None:
        self.shard.add(list(records))

    async def settle(self, position: int) -> None:
        await until(lambda: self.shard.checkpoint.position >= position)


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


def make(pool: FakePool | None = None, skip_before: float | None = None, **mapping: Any) -> Shard:
    config = load_config_data({
        "functions": {"f": {"handler": "m.handler"}}, "kafka": {},
        "event_source_mappings": {"m": {"function_name": "f", "kafka_topic": "t", "retry_base_delay_seconds": 0.01,
                                        "retry_max_delay_seconds": 0.02, **mapping}},
    }, {})
    pool = pool or FakePool()
    destination = FakeDestination()
    events: list[str] = []

    def commit() -> None:
        events.append("commit")

    shard = ShardProcessor(
        name="m", mapping=config.stream_mappings()["m"], config=config, partition=2, start=0, pool=pool,  # type: ignore[arg-type]
        on_failure=destination, metrics=Metrics(), board=ProgressBoard(300), commit=commit,
        pause=lambda: events.append("pause"), resume=lambda: events.append("resume"), skip_before=skip_before,
    )
    shard.start()
    return Shard(shard, pool, destination, events)


def records(start: int, stop: int, key: bytes | None = b"k", value: bytes = b"v") -> list[Fetched]:
    return [Fetched(o, key, value) for o in range(start, stop)]


async def test_batches_close_at_batch_size_in_order() -> None:
    s = make(batch_size=10)
    s.add(*records(0, 25))
    await s.settle(25)
    assert [len(c) for c in s.pool.calls] == [10, 10, 5]
    assert [seq for c in s.pool.calls for seq in c] == [str(i) for i in range(25)]
    assert s.events.count("commit") == 3
    await s.shard.stop(1)


async def test_offsets_seen_before_are_ignored() -> None:
    s = make()
    s.add(*records(0, 3))
    s.add(*records(1, 5))  # a re-fetch overlapping what we hold
    await s.settle(5)
    assert [seq for c in s.pool.calls for seq in c] == ["0", "1", "2", "3", "4"]
    await s.shard.stop(1)


async def test_six_megabyte_cap_and_an_oversized_record_is_discarded_without_invoking() -> None:
    s = make(batch_size=100)
    mb = b"x" * (1024 * 1024)
    s.add(*records(0, 9, value=mb))
    await s.settle(9)
    assert all(size <= MAX_INVOCATION_PAYLOAD_BYTES for size in s.pool.sizes)
    assert [len(c) for c in s.pool.calls] == [4, 4, 1]  # 1.33 MB of base64 each: four fit, five do not
    s.add(Fetched(9, b"k", b"y" * (5 * 1024 * 1024)), Fetched(10, b"k", b"after"))
    await s.settle(11)
    assert s.pool.calls[-1] == ["10"]
    [failure] = s.destination.records
    assert failure["requestContext"]["condition"] == "MaximumPayloadSizeExceeded"
    assert failure["requestContext"]["approximateInvokeCount"] == 0
    assert failure["KinesisBatchInfo"]["startSequenceNumber"] == "9" and "payload" not in failure
    await s.shard.stop(1)


async def test_batching_window_gathers_records_arriving_within_it() -> None:
    s = make(batch_size=100, maximum_batching_window_in_seconds=0.3)
    s.add(*records(0, 1))
    await asyncio.sleep(0.1)
    s.add(*records(1, 3))
    await s.settle(3)
    assert s.pool.calls == [["0", "1", "2"]]
    await s.shard.stop(1)


async def test_lanes_keep_key_order_and_a_blocked_key_holds_only_the_checkpoint() -> None:
    gate = asyncio.Event()
    pool = FakePool(gates={b"block": gate})
    s = make(pool, parallelization_factor=4, batch_size=2)
    keys = [b"a", b"b", b"c", b"d", b"e", b"f"]
    batch = [Fetched(0, b"a", b"block")] + [Fetched(i, keys[i % 6], b"v") for i in range(1, 30)]
    s.add(*batch)
    await until(lambda: sum(len(c) for c in pool.calls) >= 20)
    assert s.shard.checkpoint.position == 0  # record 0 (key a) is still in flight
    gate.set()
    await s.settle(30)
    per_key: dict[str, list[int]] = {}
    for call in pool.calls:
        for seq in call:
            per_key.setdefault(keys[int(seq) % 6].decode() if seq != "0" else "a", []).append(int(seq))
    assert all(seqs == sorted(seqs) for seqs in per_key.values())
    assert sorted(int(seq) for c in pool.calls for seq in c) == list(range(30))
    await s.shard.stop(1)


async def test_full_buffer_pauses_and_resumes_at_three_quarters() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    s = make(FakePool(gates={b"first": first, b"second": second}), shard_buffer_records=12, batch_size=5)
    s.add(Fetched(0, b"k", b"first"), *records(1, 5), Fetched(5, b"k", b"second"), *records(6, 13))
    assert s.events == ["pause"]
    assert s.shard.status()["paused"] is True
    first.set()  # 13 held -> 8 once the first batch is done: at most 3/4 of 12, so fetching resumes
    await until(lambda: "resume" in s.events)
    assert len(s.pool.calls) == 2 and not second.is_set()  # while the second batch is still running
    assert s.shard.status()["paused"] is False
    second.set()
    await s.settle(13)
    await s.shard.stop(1)


async def test_at_timestamp_skips_leading_older_records_but_not_later_ones() -> None:
    s = make(skip_before=1_700_000_000.0)
    old, new = 1_699_999_999_000, 1_700_000_000_500
    s.add(Fetched(0, b"k", b"v", old), Fetched(1, b"k", b"v", old), Fetched(2, b"k", b"v", new),
          Fetched(3, b"k", b"v", old))
    await s.settle(4)
    assert [seq for c in s.pool.calls for seq in c] == ["2", "3"]
    await s.shard.stop(1)


async def test_throttles_are_retried_without_spending_retry_attempts() -> None:
    s = make(FakePool(throttle_first=3), maximum_retry_attempts=0)
    s.add(*records(0, 2))
    await s.settle(2)
    assert s.pool.calls == [["0", "1"]] and not s.destination.records
    await s.shard.stop(1)


async def test_stop_abandons_a_retrying_batch_at_once_and_keeps_the_checkpoint() -> None:
    s = make(FakePool(fail=True))
    s.add(*records(0, 3))
    await until(lambda: len(s.pool.calls) >= 2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await s.shard.stop(5)
    assert loop.time() - started < 0.5
    assert s.shard.checkpoint.position == 0 and not s.destination.records
    s.add(*records(3, 5))  # a stopped shard takes nothing
    assert s.shard.checkpoint.next_offset == 3
