"""Tumbling windows: assignment (epoch-aligned, time never going back inside a window), the
event's fields, and the shard processor's window lane with a fake pool: batches never span windows,
state is carried from successful answers only, the final invocation (records or none), the
checkpoint held at the window's first record, and early termination over 1 MB of state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest

from router.config import ConfigError, load_config_data
from router.delivery.shard import ShardProcessor
from router.delivery.tumbling_window import Window, WindowAssigner, iso_utc, window_event, window_state
from router.events.kinesis import StreamRecord
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.runtime.result import InvocationResult

T0 = 1_700_000_103.0


class Fetched(NamedTuple):  # what a source hands over: (offset, key, value, timestamp ms)
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def fetched(offset: int, at: float, value: bytes = b'{"type":"click"}') -> Fetched:
    return Fetched(offset, b"k", value, int(at * 1000))


def stream_record(offset: int, arrival: float) -> StreamRecord:
    return StreamRecord(offset=offset, partition_key="k", value=b"", arrival=arrival, size=1)


def test_windows_are_epoch_aligned_and_time_never_goes_back_inside_one() -> None:
    assigner = WindowAssigner(10)
    assigner.assign([stream_record(0, 1005.5), stream_record(1, 1003.0), stream_record(2, 1000.1)])
    assert [(w.start, w.end, w.first_offset, w.last_offset, w.waiting) for w in assigner.windows] == [
        (1000, 1010, 0, 2, 3)]
    # A record stamped before the open window's start joins it (its clock went back).
    assigner.assign([stream_record(3, 990.0)])
    assert len(assigner.windows) == 1 and assigner.windows[0].last_offset == 3
    # At or after the end: the window of its own timestamp, skipping empty ones.
    assigner.assign([stream_record(4, 1010.0), stream_record(5, 1047.0)], kept={5})
    assert [(w.start, w.first_offset, w.last_offset, w.waiting) for w in assigner.windows] == [
        (1000, 0, 3, 4), (1010, 4, 4, 0), (1040, 5, 5, 1)]
    assert assigner.close().start == 1000
    assert assigner.current is not None and assigner.current.start == 1010


def test_a_closed_window_is_not_reopened_by_a_late_record_it_starts_its_own() -> None:
    assigner = WindowAssigner(10)
    assigner.assign([stream_record(0, 1001.0)])
    assigner.close()
    assigner.assign([stream_record(1, 1002.0)])  # late: same bounds, a new window from this record
    window = assigner.current
    assert window is not None and (window.start, window.first_offset) == (1000, 1)


def test_event_fields_in_aws_order_and_iso_bounds() -> None:
    window = Window(start=1596128400.0, end=1596128700.0, first_offset=0, last_offset=0, state={"1": 282})
    event = window_event([], window, shard_id="shardId-000000000006", stream_arn="arn:x", final=True)
    assert list(event) == ["Records", "window", "state", "shardId", "eventSourceARN", "isFinalInvokeForWindow",
                           "isWindowTerminatedEarly"]
    assert event["window"] == {"start": "2020-07-30T17:00:00Z", "end": "2020-07-30T17:05:00Z"}
    assert event["state"] == {"1": 282} and event["isFinalInvokeForWindow"] is True
    assert event["isWindowTerminatedEarly"] is False
    assert iso_utc(0) == "1970-01-01T00:00:00Z"


def test_only_an_object_state_is_a_state() -> None:
    assert window_state({"state": {"a": 1}, "batchItemFailures": []}) == {"a": 1}
    for answer in (None, {}, {"state": None}, {"state": [1]}, "state", {"State": {}}):
        assert window_state(answer) is None


def config(**mapping: Any) -> Any:
    return load_config_data({
        "functions": {"f": {"handler": "m.handler"}}, "kafka": {},
        "event_source_mappings": {"m": {"function_name": "f", "kafka_topic": "t", **mapping}},
    }, {})


def test_validation_bounds_and_no_parallel_lanes_with_a_window() -> None:
    assert config(tumbling_window_in_seconds=900).stream_mappings()["m"].tumbling_window_in_seconds == 900
    with pytest.raises(ConfigError, match="tumbling_window_in_seconds"):
        config(tumbling_window_in_seconds=901)
    with pytest.raises(ConfigError, match="parallelization_factor"):
        config(tumbling_window_in_seconds=60, parallelization_factor=2)


@dataclass
class WindowPool:
    """Counts records into state like a windowed handler; `answers` overrides the next answers."""

    events: list[dict[str, Any]] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)

    async def invoke(self, function: str, event: Any, *, invocation_type: str) -> InvocationResult:
        self.events.append(json.loads(json.dumps(event)))
        if self.answers:
            return InvocationResult("r", self.answers.pop(0))
        state = dict(event["state"])
        state["n"] = state.get("n", 0) + len(event["Records"])
        return InvocationResult("r", {"state": state})


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


def make(pool: WindowPool, clock: Clock, **mapping: Any) -> tuple[ShardProcessor, list[str]]:
    cfg = config(tumbling_window_in_seconds=10, retry_base_delay_seconds=0.01, retry_max_delay_seconds=0.02,
                 **mapping)
    commits: list[str] = []
    shard = ShardProcessor(
        name="m", mapping=cfg.stream_mappings()["m"], config=cfg, partition=0, start=0, pool=pool,  # type: ignore[arg-type]
        on_failure=None, metrics=Metrics(), board=ProgressBoard(300), commit=lambda: commits.append("c"),
        pause=lambda: None, resume=lambda: None, wall_clock=clock,
    )
    shard.start()
    return shard, commits


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


def sequences(event: dict[str, Any]) -> list[int]:
    return [int(r["kinesis"]["sequenceNumber"]) for r in event["Records"]]


async def test_batches_stay_in_their_window_state_is_carried_and_the_checkpoint_waits_for_the_final() -> None:
    pool, clock = WindowPool(), Clock()
    shard, _ = make(pool, clock, batch_size=2)
    start = T0 - T0 % 10
    shard.add([fetched(i, start + 1 + i * 0.1) for i in range(3)])  # one window, three records
    await until(lambda: sum(len(e["Records"]) for e in pool.events) == 3)
    assert [sequences(e) for e in pool.events] == [[0, 1], [2]]
    assert [e["state"] for e in pool.events] == [{}, {"n": 2}]
    assert not any(e["isFinalInvokeForWindow"] for e in pool.events)
    assert shard.checkpoint.position == 0  # held at the window's first record
    shard.add([fetched(3, start + 10.5)])  # the next window's first record closes the first
    await until(lambda: shard.checkpoint.position == 3)
    final = pool.events[2]
    assert final["isFinalInvokeForWindow"] is True and final["Records"] == [] and final["state"] == {"n": 3}
    assert final["window"]["start"] == iso_utc(start)
    await until(lambda: len(pool.events) == 4)
    assert sequences(pool.events[3]) == [3] and pool.events[3]["state"] == {}
    assert pool.events[3]["window"]["start"] == iso_utc(start + 10)
    assert shard.status()["window"]["records"] == 1
    await shard.stop(1)


async def test_the_clock_ends_a_window_when_no_record_comes_and_the_last_records_ride_the_final() -> None:
    pool, clock = WindowPool(), Clock()
    shard, _ = make(pool, clock, batch_size=10, maximum_batching_window_in_seconds=0.3)
    start = T0 - T0 % 10
    clock.now = start + 11.5  # already past the end and its grace when the records come
    shard.add([fetched(i, start + 2) for i in range(4)])
    await until(lambda: shard.checkpoint.position == 4)
    assert len(pool.events) == 1 and sequences(pool.events[0]) == [0, 1, 2, 3]
    assert pool.events[0]["isFinalInvokeForWindow"] is True
    assert shard.status().get("window") is None
    await shard.stop(1)


async def test_final_with_no_records_once_the_clock_passes_the_end() -> None:
    pool, clock = WindowPool(), Clock()
    shard, _ = make(pool, clock)
    start = T0 - T0 % 10
    clock.now = start + 1
    shard.add([fetched(0, start + 1)])
    await until(lambda: len(pool.events) == 1)
    assert pool.events[0]["isFinalInvokeForWindow"] is False
    clock.now = start + 11.1
    await until(lambda: shard.checkpoint.position == 1)
    assert pool.events[1]["isFinalInvokeForWindow"] is True and pool.events[1]["state"] == {"n": 1}
    await shard.stop(1)


async def test_an_answer_without_state_fails_and_is_retried_with_the_same_input_state() -> None:
    pool, clock = WindowPool(), Clock()
    shard, _ = make(pool, clock)
    start = T0 - T0 % 10
    clock.now = start + 1
    shard.add([fetched(0, start + 1)])
    await until(lambda: len(pool.events) == 1)
    pool.answers = [{"nostate": 1}, {"state": {"n": 99}}]
    shard.add([fetched(1, start + 2)])
    await until(lambda: len(pool.events) == 3)
    assert [sequences(e) for e in pool.events[1:3]] == [[1], [1]]
    assert [e["state"] for e in pool.events[1:3]] == [{"n": 1}, {"n": 1}]  # the failed answer did not count
    clock.now = start + 11.1
    await until(lambda: shard.checkpoint.position == 2)
    assert pool.events[3]["isFinalInvokeForWindow"] is True and pool.events[3]["state"] == {"n": 99}
    await shard.stop(1)


async def test_state_over_one_megabyte_ends_the_window_early_and_it_goes_on_fresh() -> None:
    pool, clock = WindowPool(), Clock()
    shard, _ = make(pool, clock)
    start = T0 - T0 % 10
    clock.now = start + 1
    big = {"blob": "x" * (1024 * 1024)}
    pool.answers = [{"state": big}]
    shard.add([fetched(0, start + 1)])
    await until(lambda: len(pool.events) == 2)
    early = pool.events[1]
    assert early["isFinalInvokeForWindow"] is True and early["isWindowTerminatedEarly"] is True
    assert early["state"] == big and early["Records"] == []
    await until(lambda: shard.checkpoint.position == 1)
    shard.add([fetched(1, start + 2)])
    await until(lambda: len(pool.events) == 3)
    assert pool.events[2]["state"] == {} and pool.events[2]["isWindowTerminatedEarly"] is False
    assert pool.events[2]["window"]["start"] == iso_utc(start)
    await shard.stop(1)


async def test_filtered_records_move_with_the_window_and_a_fully_filtered_window_is_not_invoked() -> None:
    pool, clock = WindowPool(), Clock()
    shard, _ = make(pool, clock, filter_criteria={"filters": [{"pattern": '{"data": {"type": ["view"]}}'}]})
    start = T0 - T0 % 10
    clock.now = start + 1
    shard.add([fetched(0, start + 1), fetched(1, start + 2)])  # clicks: filtered out
    shard.add([fetched(2, start + 12, b'{"type":"view"}')])
    await until(lambda: len(pool.events) == 1)
    assert sequences(pool.events[0]) == [2]
    await until(lambda: shard.checkpoint.position == 2)  # the filtered window closed with no invocation
    await shard.stop(1)
