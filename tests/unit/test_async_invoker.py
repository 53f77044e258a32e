"""The dispatch loop against a scripted pool and in-memory destinations: retries, ages, conditions,
concurrency bounds, fairness and parking records for a destination that is down.

The real worker pool and real brokers are exercised in tests/integration/test_async_queue.py and
test_destinations.py; here the pool is a script so timing-sensitive rules can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from router.config import Config, load_config_data
from router.delivery.async_delivery import AsyncDelivery
from router.delivery.async_invoker import AsyncInvoker
from router.delivery.async_queue import AsyncQueue, QueuedEvent
from router.delivery.destination import Destination, DestinationError
from router.delivery.destinations import DestinationFactory
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.runtime.result import InvocationResult


@dataclass
class MemoryDestination:
    uri: str
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    down: bool = False
    attempts: int = 0

    async def send(self, record: Mapping[str, Any], *, key: str) -> None:
        self.attempts += 1
        if self.down:
            raise DestinationError(f"{self.uri}: down")
        self.records.append((key, dict(record)))


class MemoryDestinations(DestinationFactory):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.made: dict[str, MemoryDestination] = {}

    def get(self, uri: str) -> Destination:
        return self.made.setdefault(uri, MemoryDestination(uri))


Handler = Callable[[str, Any], Awaitable[InvocationResult]]


class ScriptedPool:
    """Runs `handler` per invocation and records concurrency per function."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, Any]] = []
        self.request_ids: list[str | None] = []
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.counter = 0
        self.current = ""

    async def invoke(
        self, function: str, event: Any, *, request_id: str | None = None,
        invocation_type: Literal["RequestResponse", "Event"] = "RequestResponse",
    ) -> InvocationResult:
        assert invocation_type == "Event"
        if isinstance(event, bytes):  # pre-encoded JSON, as the real pool takes it
            event = json.loads(event)
        self.calls.append((function, event))
        self.request_ids.append(request_id)
        self.counter += 1
        self.current = request_id or f"req-{self.counter}"
        self.running[function] = self.running.get(function, 0) + 1
        self.peak[function] = max(self.peak.get(function, 0), self.running[function])
        try:
            return await self.handler(function, event)
        finally:
            self.running[function] -= 1


def rid(pool: ScriptedPool) -> str:
    return pool.current


def ok(pool: ScriptedPool, payload: Any = None) -> InvocationResult:
    return InvocationResult(request_id=rid(pool), payload=payload)


def failed(pool: ScriptedPool, error_type: str = "ValueError") -> InvocationResult:
    request_id = rid(pool)
    return InvocationResult(
        request_id=request_id, function_error="Unhandled", error_type=error_type,
        payload={"errorMessage": "boom", "errorType": error_type, "requestId": request_id, "stackTrace": []},
    )


def make_config(tmp_path: Path, mappings: dict[str, dict[str, Any]], functions: dict[str, int] | None = None) -> Config:
    functions = functions or {"fn": 2}
    return load_config_data({
        "state_dir": str(tmp_path),
        "s3": {"endpoint_url": "http://127.0.0.1:1"},
        "http": {"webhook_token": "t"},
        "functions": {name: {"handler": "mod.handler", "reserved_concurrent_executions": n}
                      for name, n in functions.items()},
        "event_source_mappings": {
            name: {
                "function_name": "fn",
                "bucket_notifications": {"transport": "webhook", "bucket": name},
                "retry_delays_seconds": [0.05],
                **spec,
            }
            for name, spec in mappings.items()
        },
    })


@dataclass
class Harness:
    config: Config
    queue: AsyncQueue
    pool: ScriptedPool
    destinations: MemoryDestinations
    metrics: Metrics
    board: ProgressBoard
    invoker: AsyncInvoker

    async def enqueue(self, mapping: str, n: int, function: str = "fn") -> None:
        events = [QueuedEvent(mapping, function, {"Records": [{"n": i}]}) for i in range(n)]
        await self.queue.enqueue(events, dedup_window=0)
        self.invoker.wake()

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def build(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def factory(
        mappings: dict[str, dict[str, Any]], handler: Handler, *, functions: dict[str, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Harness:
        config = make_config(tmp_path, mappings, functions)
        queue = AsyncQueue(tmp_path / "q.sqlite3")
        await queue.open()
        pool = ScriptedPool(handler)
        metrics = Metrics()
        board = ProgressBoard(60)
        destinations = MemoryDestinations(config)
        delivery = AsyncDelivery(queue, destinations, metrics=metrics, clock=clock,
                                 function_arn=lambda function: config.function_arn(function, "$LATEST"))
        concurrency = {name: fn.reserved_concurrent_executions for name, fn in config.functions.items()}
        invoker = AsyncInvoker(queue, pool, delivery, concurrency=concurrency.__getitem__, metrics=metrics,
                               board=board, clock=clock)
        queue.metrics = metrics
        for name, mapping in config.bucket_mappings().items():
            invoker.set_lane(name, mapping.function_name, mapping, enabled=mapping.enabled)
        await invoker.start()
        harness = Harness(config, queue, pool, destinations, metrics, board, invoker)
        made.append(harness)
        return harness

    yield factory
    for harness in made:  # tests stop and close themselves; this only catches a failed one
        await harness.invoker.stop(0)
        await harness.queue.close()


FAIL = {"on_failure": {"destination": "s3://failed/photos/"}}
BOTH = {"on_failure": {"destination": "s3://failed/photos/"}, "on_success": {"destination": "s3://ok/"}}


async def test_failing_function_is_invoked_retries_plus_one_times_then_recorded(build: Any) -> None:
    h: Harness = await build({"m": {"maximum_retry_attempts": 2, "destination_config": FAIL}},
                             lambda f, e: _fail(h))
    await h.enqueue("m", 1)
    dest = h.destinations.made.setdefault("s3://failed/photos/", MemoryDestination("s3://failed/photos/"))
    await until(lambda: len(dest.records) == 1)
    await h.invoker.stop(1)
    assert len(h.pool.calls) == 3
    key, record = dest.records[0]
    assert key.startswith("aws/lambda/") and "/fn/" in key
    ctx = record["requestContext"]
    assert ctx["condition"] == "RetriesExhausted" and ctx["approximateInvokeCount"] == 3
    assert ctx["functionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn:$LATEST"
    assert ctx["requestId"] == h.pool.request_ids[0]
    assert len(set(h.pool.request_ids)) == 1 and h.pool.request_ids[0] is not None  # one id for all attempts
    assert record["requestPayload"] == {"Records": [{"n": 0}]}
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert h.sample("router_retries_total", mapping="m") == 2
    assert h.sample("router_on_failure_records_total", mapping="m") == 1
    assert h.sample("router_async_events_dropped_total", mapping="m", condition="RetriesExhausted") == 1
    assert await h.queue.stats() == {}
    await h.queue.close()


async def _fail(h: Harness) -> InvocationResult:
    return failed(h.pool)


async def _ok(h: Harness, payload: Any = None) -> InvocationResult:
    return ok(h.pool, payload)


async def test_event_age_look_ahead_gives_up_after_the_first_failure(build: Any) -> None:
    spec = {"maximum_event_age_in_seconds": 60, "retry_delays_seconds": [60, 120], "destination_config": FAIL}
    h: Harness = await build({"m": spec}, lambda f, e: _fail(h))
    await h.enqueue("m", 1)
    dest = h.destinations.made.setdefault("s3://failed/photos/", MemoryDestination("s3://failed/photos/"))
    await until(lambda: len(dest.records) == 1)
    await h.invoker.stop(1)
    assert len(h.pool.calls) == 1
    ctx = dest.records[0][1]["requestContext"]
    assert (ctx["condition"], ctx["approximateInvokeCount"]) == ("EventAgeExceeded", 1)
    await h.queue.close()


async def test_event_that_expired_in_the_queue_is_not_invoked(build: Any) -> None:
    # The invoker's clock runs 61 s ahead of the queue's: every queued event is past a 60 s maximum age.
    h: Harness = await build({"m": {"maximum_event_age_in_seconds": 60, "destination_config": FAIL}},
                             lambda f, e: _ok(h), clock=lambda: time.time() + 61)
    await h.enqueue("m", 2)
    dest = h.destinations.made.setdefault("s3://failed/photos/", MemoryDestination("s3://failed/photos/"))
    await until(lambda: len(dest.records) == 2)
    await h.invoker.stop(1)
    assert h.pool.calls == []
    record = dest.records[0][1]
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record
    await h.queue.close()


async def test_success_goes_to_on_success_with_the_return_value(build: Any) -> None:
    h: Harness = await build({"m": {"destination_config": BOTH}}, lambda f, e: _ok(h, {"thumb": "a.jpg"}))
    await h.enqueue("m", 1)
    dest = h.destinations.made.setdefault("s3://ok/", MemoryDestination("s3://ok/"))
    await until(lambda: len(dest.records) == 1)
    await h.invoker.stop(1)
    record = dest.records[0][1]
    assert record["requestContext"]["condition"] == "Success"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {"thumb": "a.jpg"}
    assert h.sample("router_on_success_records_total", mapping="m") == 1
    await h.queue.close()


async def test_failure_without_destination_is_dropped_and_counted(build: Any) -> None:
    h: Harness = await build({"m": {"maximum_retry_attempts": 0}}, lambda f, e: _fail(h))
    await h.enqueue("m", 1)
    await until(lambda: h.sample("router_async_events_dropped_total", mapping="m", condition="RetriesExhausted") == 1)
    await until(lambda: h.board.tracker("async:m").last_progress > 0 and not h.invoker._tasks)
    await h.invoker.stop(1)
    assert len(h.pool.calls) == 1
    assert await h.queue.stats() == {}
    await h.queue.close()


async def test_zero_reserved_concurrency_goes_straight_to_on_failure(build: Any) -> None:
    h: Harness = await build({"m": {"destination_config": FAIL}}, lambda f, e: _ok(h), functions={"fn": 0})
    await h.enqueue("m", 3)
    dest = h.destinations.made.setdefault("s3://failed/photos/", MemoryDestination("s3://failed/photos/"))
    await until(lambda: len(dest.records) == 3)
    await h.invoker.stop(1)
    assert h.pool.calls == []
    record = dest.records[0][1]
    assert record["requestContext"]["condition"] == "ZeroReservedConcurrency"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record
    await h.queue.close()


async def gated_backlog(build: Any) -> tuple[Harness, asyncio.Event]:
    """Ten events for a function of reserved concurrency 2 whose invocations wait for the gate;
    returns once the first two are running."""
    gate = asyncio.Event()

    async def slow(f: str, e: Any) -> InvocationResult:
        await gate.wait()
        return ok(h.pool)

    h: Harness = await build({"m": {}}, slow, functions={"fn": 2})
    await h.enqueue("m", 10)
    await until(lambda: len(h.pool.calls) == 2)
    return h, gate


async def test_concurrency_never_exceeds_reserved_and_backlog_stays_queued(build: Any) -> None:
    h, gate = await gated_backlog(build)
    await asyncio.sleep(0.1)
    assert len(h.pool.calls) == 2  # the other 8 wait in the queue, not in the pool
    assert h.invoker.status()["mappings"]["m"]["in_flight"] == 2
    gate.set()
    await until(lambda: len(h.pool.calls) == 10)
    await h.invoker.stop(1)
    assert h.pool.peak["fn"] == 2
    await h.queue.close()


async def test_a_slow_mapping_does_not_starve_another_function(build: Any, tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def handler(f: str, e: Any) -> InvocationResult:
        if f == "slow":
            await gate.wait()
        return ok(h.pool)

    config_mappings = {"a": {"function_name": "slow"}, "b": {"function_name": "fast"}}
    h: Harness = await build(config_mappings, handler, functions={"slow": 1, "fast": 1})
    await h.enqueue("a", 20, function="slow")
    await h.enqueue("b", 20, function="fast")
    await until(lambda: sum(1 for f, _ in h.pool.calls if f == "fast") == 20)
    assert sum(1 for f, _ in h.pool.calls if f == "slow") == 1
    gate.set()
    await until(lambda: len(h.pool.calls) == 40)
    await h.invoker.stop(1)
    await h.queue.close()


async def test_mappings_sharing_a_function_are_served_fairly(build: Any) -> None:
    order: list[str] = []

    async def handler(f: str, e: Any) -> InvocationResult:
        order.append(e["Records"][0]["m"])
        await asyncio.sleep(0.001)
        return ok(h.pool)

    h: Harness = await build({"a": {}, "b": {}}, handler, functions={"fn": 1})
    await h.invoker.stop(1)  # fill both lanes before dispatching
    await h.queue.enqueue([QueuedEvent("a", "fn", {"Records": [{"m": "a"}]}) for _ in range(30)], dedup_window=0)
    await h.queue.enqueue([QueuedEvent("b", "fn", {"Records": [{"m": "b"}]}) for _ in range(5)], dedup_window=0)
    await h.invoker.start()
    await until(lambda: len(order) == 35)
    await h.invoker.stop(1)
    # b's five events are interleaved with a's, not stuck behind all thirty
    assert order[:10].count("b") >= 4
    await h.queue.close()


async def test_destination_down_parks_the_record_and_delivers_it_later(build: Any) -> None:
    h: Harness = await build({"m": {"maximum_retry_attempts": 0, "destination_config": FAIL}},
                             lambda f, e: _fail(h))
    dest = h.destinations.made.setdefault("s3://failed/photos/", MemoryDestination("s3://failed/photos/"))
    dest.down = True
    await h.enqueue("m", 3)
    await until(lambda: h.sample("router_destination_delivery_failures_total", mapping="m") >= 2)
    stats = (await h.queue.stats())["m"]
    assert stats.depth == 3
    await h.invoker._refresh_stats(force=True)
    assert h.board.tracker("async:m").pending  # records waiting for a destination are work not moving
    dest.down = False
    await until(lambda: len(dest.records) == 3, timeout=10)
    await h.invoker.stop(1)
    assert len(h.pool.calls) == 3  # the function did not run again for the parked records
    assert len({key for key, _ in dest.records}) == 3
    assert await h.queue.stats() == {}
    await h.queue.close()


async def test_pool_errors_retry_without_using_attempts(build: Any) -> None:
    calls = 0

    async def flaky(f: str, e: Any) -> InvocationResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("pool is restarting")
        return failed(h.pool)

    h: Harness = await build({"m": {"maximum_retry_attempts": 0, "destination_config": FAIL}}, flaky)
    await h.enqueue("m", 1)
    dest = h.destinations.made.setdefault("s3://failed/photos/", MemoryDestination("s3://failed/photos/"))
    await until(lambda: len(dest.records) == 1, timeout=5)
    await h.invoker.stop(1)
    assert calls == 2
    assert dest.records[0][1]["requestContext"]["approximateInvokeCount"] == 1
    await h.queue.close()


async def test_stop_requeues_in_flight_events_and_status_reports_depth(build: Any, tmp_path: Path) -> None:
    never = asyncio.Event()

    async def hang(f: str, e: Any) -> InvocationResult:
        await never.wait()
        return ok(h.pool)

    h: Harness = await build({"m": {}}, hang, functions={"fn": 1})
    await h.enqueue("m", 2)
    await until(lambda: len(h.pool.calls) == 1)
    await h.invoker._refresh_stats(force=True)
    status = h.invoker.status()["mappings"]["m"]
    assert status["depth"] == 2 and status["in_flight"] == 1
    assert h.board.tracker("async:m").pending
    assert h.sample("router_async_queue_depth", mapping="m") == 2
    await h.invoker.stop(0.05)
    # both events are still queued and claimable again
    assert len((await h.queue.claim("m", "invoke", 5)).events) == 2
    await h.queue.close()


async def test_a_retry_scheduled_ahead_is_not_a_stall_but_a_waiting_record_is(build: Any) -> None:
    spec = {"retry_delays_seconds": [30], "destination_config": FAIL}
    h: Harness = await build({"m": spec}, lambda f, e: _fail(h))
    await h.enqueue("m", 1)
    await until(lambda: len(h.pool.calls) == 1 and not h.invoker._tasks)
    await h.invoker._refresh_stats(force=True)
    tracker = h.board.tracker("async:m")
    assert not tracker.pending
    assert h.invoker.status()["mappings"]["m"]["retries_scheduled"] == 1
    await h.invoker.stop(1)
    await h.queue.close()


async def test_events_claimed_ahead_are_bounded_and_given_back_on_stop(build: Any) -> None:
    h, gate = await gated_backlog(build)
    await asyncio.sleep(0.05)
    # two running, at most two more claimed ahead in memory; the rest is still claimable in the queue
    left = await h.queue.claim("m", "invoke", 10)
    assert len(left.events) == 6
    for event in left.events:
        await h.queue.release(event.id)
    await h.invoker.stop(0.05)
    assert len((await h.queue.claim("m", "invoke", 10)).events) == 10  # nothing was lost in memory
    gate.set()
    await h.queue.close()


# -- lanes that change while the invoker runs (the mapping supervisor's side) ---------------------


async def test_a_disabled_lane_keeps_its_events_and_enabling_resumes_them(build: Any) -> None:
    h: Harness = await build({"m": {}}, lambda f, e: _ok(h))
    mapping = h.config.bucket_mappings()["m"]
    h.invoker.set_lane("m", "fn", mapping, enabled=False)
    await h.enqueue("m", 3)
    await asyncio.sleep(0.2)
    assert h.pool.calls == []
    await h.invoker._refresh_stats(force=True)
    assert h.invoker.status()["mappings"]["m"]["state"] == "Disabled"
    assert h.invoker.status()["mappings"]["m"]["depth"] == 3
    assert not h.board.tracker("async:m").pending  # a disabled backlog is not a stall
    h.invoker.set_lane("m", "fn", mapping, enabled=True)
    await until(lambda: len(h.pool.calls) == 3)
    await h.invoker.stop(1)
    assert sorted(e["Records"][0]["n"] for _, e in h.pool.calls) == [0, 1, 2]
    await h.queue.close()


async def test_a_retired_lane_sends_every_remaining_event_to_on_failure_uninvoked(build: Any) -> None:
    fail_once = {"n": 0}

    async def handler(f: str, e: Any) -> InvocationResult:
        fail_once["n"] += 1
        return failed(h.pool)

    spec = {"maximum_retry_attempts": 2, "retry_delays_seconds": [300], "destination_config": FAIL}
    h: Harness = await build({"m": spec}, handler)
    await h.enqueue("m", 1)
    await until(lambda: len(h.pool.calls) == 1 and not h.invoker._tasks)  # one retry now due in 300 s
    h.invoker.set_lane("m", "fn", h.config.bucket_mappings()["m"], enabled=False)
    await h.enqueue("m", 2)
    h.invoker.retire_lane("m")
    assert "async:m" not in {t.name for t in h.board.trackers()}  # cannot make the daemon unready
    dest = h.destinations.made.setdefault("s3://failed/photos/", MemoryDestination("s3://failed/photos/"))
    await until(lambda: len(dest.records) == 3)
    assert len(h.pool.calls) == 1  # nothing was invoked after the mapping was deleted
    contexts = sorted((r["requestContext"]["approximateInvokeCount"], r["requestContext"]["condition"])
                      for _, r in dest.records)
    assert contexts == [(0, "EventSourceMappingDeleted"), (0, "EventSourceMappingDeleted"),
                        (1, "EventSourceMappingDeleted")]
    invoked = next(r for _, r in dest.records if r["requestContext"]["approximateInvokeCount"] == 1)
    assert invoked["responsePayload"]["errorType"] == "ValueError"  # what its one attempt gave
    assert await h.queue.stats() == {}
    await until(lambda: "m" not in h.invoker.status()["mappings"], timeout=5)  # forgotten once empty
    assert h.sample("router_on_failure_records_total", mapping="m") == 0  # its series went with it
    await h.invoker.stop(1)
    await h.queue.close()


async def test_a_retired_lane_without_destination_keeps_its_events_until_the_mapping_returns(build: Any) -> None:
    h: Harness = await build({"m": {}}, lambda f, e: _ok(h))
    mapping = h.config.bucket_mappings()["m"]
    h.invoker.set_lane("m", "fn", mapping, enabled=False)
    await h.enqueue("m", 2)
    h.invoker.retire_lane("m")
    await until(lambda: h.invoker.status()["mappings"].get("m", {}).get("state", "").startswith("not dispatched"),
                timeout=5)
    assert h.invoker.status()["mappings"]["m"]["depth"] == 2
    assert h.pool.calls == []
    h.invoker.set_lane("m", "fn", mapping)  # the mapping is back: its events run
    await until(lambda: len(h.pool.calls) == 2)
    await h.invoker.stop(1)
    await h.queue.close()


async def test_a_lane_added_while_running_is_dispatched(build: Any) -> None:
    h: Harness = await build({"m": {}}, lambda f, e: _ok(h))
    await h.enqueue("late", 2)  # queued before its lane exists: kept, not run
    await asyncio.sleep(0.2)
    assert h.pool.calls == []
    h.invoker.set_lane("late", "fn", h.config.bucket_mappings()["m"])
    await until(lambda: len(h.pool.calls) == 2)
    await h.invoker.stop(1)
    await h.queue.close()
