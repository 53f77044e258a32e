"""The SQLite queue on a real file: durability across reopen, dedup windows, claims, group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.delivery.async_queue import (
    AsyncQueue,
    ClaimRequest,
    LastResponse,
    PendingDelivery,
    QueueClosed,
    QueuedEvent,
)
from router.observability.metrics import Metrics


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def queue(tmp_path: Path, clock: Clock) -> AsyncIterator[AsyncQueue]:
    q = AsyncQueue(tmp_path / "q.sqlite3", clock=clock, metrics=Metrics())
    await q.open()
    yield q
    await q.close()


def ev(n: int, mapping: str = "m", dedup: str | None = None) -> QueuedEvent:
    return QueuedEvent(mapping=mapping, function="fn", event={"Records": [{"n": n}]}, dedup_key=dedup)


def counter(metrics: Metrics, name: str, mapping: str) -> float:
    value = metrics.registry.get_sample_value(f"router_{name}_total", {"mapping": mapping})
    return value or 0.0


async def test_enqueue_then_claim_returns_events_in_order(queue: AsyncQueue) -> None:
    result = await queue.enqueue([ev(1), ev(2), ev(3)], dedup_window=60)
    assert (result.accepted, result.duplicates) == (3, 0)
    claim = await queue.claim("m", "invoke", 2)
    assert [e.event["Records"][0]["n"] for e in claim.events] == [1, 2]
    assert all(e.invoke_count == 0 and e.stage == "invoke" for e in claim.events)
    assert len({e.request_id for e in claim.events}) == 2
    # claimed events are not handed out twice; the third is next
    again = await queue.claim("m", "invoke", 5)
    assert [e.event["Records"][0]["n"] for e in again.events] == [3]
    assert again.next_due is None


async def test_events_survive_close_and_claims_do_not(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "q.sqlite3"
    first = AsyncQueue(path, clock=clock)
    await first.open()
    await first.enqueue([ev(1), ev(2)], dedup_window=60)
    claimed = await first.claim("m", "invoke", 2)
    assert len(claimed.events) == 2
    await first.close()  # as if the daemon died with both in flight

    second = AsyncQueue(path, clock=clock)
    await second.open()
    try:
        again = await second.claim("m", "invoke", 10)
        assert sorted(e.event["Records"][0]["n"] for e in again.events) == [1, 2]
        assert [e.request_id for e in again.events] == [e.request_id for e in claimed.events]
    finally:
        await second.close()


async def test_duplicates_within_the_window_are_dropped_and_counted(queue: AsyncQueue, clock: Clock) -> None:
    assert (await queue.enqueue([ev(1, dedup="k1")], dedup_window=60)).accepted == 1
    clock.now += 30
    second = await queue.enqueue([ev(1, dedup="k1"), ev(2, dedup="k2")], dedup_window=60)
    assert (second.accepted, second.duplicates) == (1, 1)
    # the same key within one call is a duplicate of itself
    third = await queue.enqueue([ev(3, dedup="k3"), ev(3, dedup="k3")], dedup_window=60)
    assert (third.accepted, third.duplicates) == (1, 1)
    # another mapping may see the same record
    assert (await queue.enqueue([ev(1, mapping="other", dedup="k1")], dedup_window=60)).accepted == 1
    # after the window the key is accepted again
    clock.now += 61
    assert (await queue.enqueue([ev(1, dedup="k1")], dedup_window=60)).accepted == 1
    assert queue.metrics is not None
    assert counter(queue.metrics, "duplicate_notifications", "m") == 2
    assert counter(queue.metrics, "async_events_received", "m") == 4
    assert counter(queue.metrics, "async_events_received", "other") == 1


async def test_dedup_survives_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "q.sqlite3"
    q = AsyncQueue(path, clock=clock)
    await q.open()
    await q.enqueue([ev(1, dedup="k")], dedup_window=3600)
    await q.close()
    q = AsyncQueue(path, clock=clock)
    await q.open()
    try:
        assert (await q.enqueue([ev(1, dedup="k")], dedup_window=3600)).duplicates == 1
        assert await q.prune_dedup(clock.now + 1) == 1
        assert (await q.enqueue([ev(1, dedup="k")], dedup_window=3600)).accepted == 1
    finally:
        await q.close()


async def test_reschedule_keeps_the_event_until_due(queue: AsyncQueue, clock: Clock) -> None:
    await queue.enqueue([ev(1)], dedup_window=0)
    (event,) = (await queue.claim("m", "invoke", 1)).events
    response = LastResponse("req-1", {"errorType": "ValueError"}, "Unhandled", "ValueError")
    await queue.reschedule(event.id, due_at=clock.now + 60, invoke_count=1, system_errors=0,
                           last_response=response, last_error="ValueError")
    early = await queue.claim("m", "invoke", 1)
    assert early.events == [] and early.next_due == clock.now + 60
    stats = (await queue.stats())["m"]
    assert (stats.depth, stats.retries_scheduled, stats.due) == (1, 1, 0)
    clock.now += 60
    assert (await queue.stats())["m"].due == 1
    (due,) = (await queue.claim("m", "invoke", 1)).events
    assert due.invoke_count == 1 and due.last_response == response
    await queue.complete(due.id)
    assert await queue.stats() == {}


async def test_parked_delivery_moves_to_the_deliver_lane(queue: AsyncQueue, clock: Clock) -> None:
    await queue.enqueue([ev(1)], dedup_window=0)
    (event,) = (await queue.claim("m", "invoke", 1)).events
    delivery = PendingDelivery("s3://b/p/", "aws/lambda/x", "on_failure", "RetriesExhausted", {"version": "1.0"})
    await queue.park_delivery(event.id, delivery=delivery, due_at=clock.now + 1, delivery_attempts=1,
                              invoke_count=3, last_error="down")
    assert (await queue.claim("m", "invoke", 5)).events == []
    clock.now += 1
    (parked,) = (await queue.claim("m", "deliver", 5)).events
    assert parked.delivery == delivery and parked.invoke_count == 3 and parked.delivery_attempts == 1
    assert (await queue.stats())["m"].awaiting_delivery == 1


async def test_release_makes_a_claimed_event_due_again(queue: AsyncQueue) -> None:
    await queue.enqueue([ev(1)], dedup_window=0)
    (event,) = (await queue.claim("m", "invoke", 1)).events
    assert (await queue.claim("m", "invoke", 1)).events == []
    await queue.release(event.id)
    assert [e.id for e in (await queue.claim("m", "invoke", 1)).events] == [event.id]


async def test_concurrent_enqueues_are_group_committed_and_all_durable(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "q.sqlite3"
    q = AsyncQueue(path, clock=clock)
    await q.open()
    results = await asyncio.gather(*(q.enqueue([ev(i)], dedup_window=0) for i in range(200)))
    await q.close()
    assert sum(r.accepted for r in results) == 200
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 200
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_failing_write_does_not_take_its_batch_neighbours_down(queue: AsyncQueue) -> None:
    def boom(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO dedup (mapping, dedup_key, accepted_at) VALUES ('half-written', 'k', 0)")
        raise RuntimeError("half way")

    bad = asyncio.ensure_future(queue._write(boom))
    good = asyncio.ensure_future(queue.enqueue([ev(1)], dedup_window=0))
    with pytest.raises(RuntimeError):
        await bad
    assert (await good).accepted == 1
    assert set((await queue.stats()).keys()) == {"m"}
    # the failed write's own insert was rolled back with it
    assert (await queue.enqueue([ev(2, mapping="half-written", dedup="k")], dedup_window=3600)).accepted == 1


async def test_closed_queue_refuses_work(tmp_path: Path) -> None:
    q = AsyncQueue(tmp_path / "q.sqlite3")
    with pytest.raises(QueueClosed):
        await q.enqueue([ev(1)], dedup_window=0)


async def test_claim_many_serves_lanes_in_order_within_a_shared_budget(queue: AsyncQueue) -> None:
    await queue.enqueue([ev(i, mapping="a") for i in range(5)] + [ev(i, mapping="b") for i in range(5)],
                        dedup_window=0)
    requests = [ClaimRequest("b", "invoke", 2, "fn"), ClaimRequest("a", "invoke", 2, "fn"),
                ClaimRequest("a", "deliver", 5, "deliver:a")]
    b, a, parked = await queue.claim_many(requests, {"fn": 3, "deliver:a": 5})
    # b first takes its share of 2, a gets only the one slot left of the function's 3
    assert [e.event["Records"][0]["n"] for e in b.events] == [0, 1]
    assert [e.event["Records"][0]["n"] for e in a.events] == [0]
    assert a.next_due is not None  # a still has due work: the dispatcher comes back for it
    assert parked.events == [] and parked.next_due is None


async def test_settlements_are_grouped_and_visible_to_the_next_claim(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "q.sqlite3"
    q = AsyncQueue(path, clock=clock)
    await q.open()
    await q.enqueue([ev(i) for i in range(50)], dedup_window=0)
    claimed = (await q.claim("m", "invoke", 50)).events
    done = [asyncio.ensure_future(q.complete(e.id)) for e in claimed[:40]]
    retry = [asyncio.ensure_future(q.reschedule(e.id, due_at=clock.now + 5, invoke_count=1, system_errors=0,
                                                last_response=None, last_error="x")) for e in claimed[40:]]
    await asyncio.sleep(0)  # the settlements wait for company; the claim takes them along
    again = await q.claim("m", "invoke", 50)
    assert again.events == [] and again.next_due == clock.now + 5
    await asyncio.gather(*done, *retry)
    await q.close()
    # what was settled survives a restart, and the rescheduled events keep their new state
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT invoke_count, due_at FROM events").fetchall()
    assert rows == [(1, clock.now + 5)] * 10


async def test_a_lone_settlement_is_committed_without_waiting_for_a_claim(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "q.sqlite3"
    q = AsyncQueue(path, clock=clock)
    await q.open()
    try:
        await q.enqueue([ev(1)], dedup_window=0)
        (event,) = (await q.claim("m", "invoke", 1)).events
        await asyncio.wait_for(q.complete(event.id), 1.0)
        with sqlite3.connect(path) as conn:  # another reader sees the delete: it is committed
            assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    finally:
        await q.close()


async def test_accepted_events_are_announced_once_committed_before_enqueue_returns(queue: AsyncQueue) -> None:
    seen: list[int] = []

    def committed() -> None:  # runs before the fsync: the rows are already visible to a claim
        seen.append(len(seen))

    queue.on_committed = committed
    await asyncio.gather(*(queue.enqueue([ev(i)], dedup_window=0) for i in range(20)))
    assert 1 <= len(seen) < 20  # group-committed: one announcement per batch, not per event


async def test_a_failed_wal_fsync_refuses_every_later_acknowledgement(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "q.sqlite3"
    q = AsyncQueue(path, clock=clock)
    await q.open()
    wal_fd, q._wal_fd = q._wal_fd, 1 << 30  # no such descriptor: fsync fails (EBADF) like a bad disk
    with pytest.raises(QueueClosed):
        await q.enqueue([ev(1)], dedup_window=0)
    with pytest.raises(QueueClosed):  # not retried: a later fsync could falsely report success
        await q.enqueue([ev(2)], dedup_window=0)
    q._wal_fd = wal_fd
    await q.close()
    await q.open()  # a restart recovers from what is on disk
    try:
        assert (await q.enqueue([ev(3)], dedup_window=0)).accepted == 1
    finally:
        await q.close()


async def test_collect_makes_one_batch_event_of_full_or_old_enough_runs_in_one_transaction(
        queue: AsyncQueue, clock: Clock, tmp_path: Path) -> None:
    records = [QueuedEvent("app", "fn", {"n": i}, stage="collect") for i in range(7)]
    await queue.enqueue(records, dedup_window=0)
    assert (await queue.claim("app", "invoke", 10)).events == []  # collecting records are never invoked
    assert await queue.collecting() == {"app": "fn"}
    full = await queue.collect("app", "fn", limit=3, window=10)
    assert full.batched == 1
    assert (await queue.collect("app", "fn", limit=3, window=10)).batched == 1
    partial = await queue.collect("app", "fn", limit=3, window=10)
    assert partial.batched == 0 and partial.due_at == clock.now + 10  # one left: waits for the window
    clock.now += 10
    assert (await queue.collect("app", "fn", limit=3, window=10)).batched == 1
    assert (await queue.collect("app", "fn", limit=3, window=10)) .due_at is None
    claim = await queue.claim("app", "invoke", 10)
    assert [e.event for e in claim.events] == [
        {"Records": [{"n": 0}, {"n": 1}, {"n": 2}]}, {"Records": [{"n": 3}, {"n": 4}, {"n": 5}]},
        {"Records": [{"n": 6}]}]
    assert claim.events[2].accepted_at == clock.now - 10  # the event's age counts from its oldest record
    await queue.close()
    reopened = AsyncQueue(tmp_path / "q.sqlite3", clock=clock)
    await reopened.open()
    try:
        assert await reopened.collecting() == {}
        assert len((await reopened.claim("app", "invoke", 10)).events) == 3  # durable
    finally:
        await reopened.close()
    await queue.open()


async def test_an_event_may_bring_its_own_dedup_window(queue: AsyncQueue, clock: Clock) -> None:
    await queue.enqueue([QueuedEvent("a", "fn", {"n": 1}, "id-1", dedup_window=60)], dedup_window=0)
    clock.now += 30
    again = await queue.enqueue([QueuedEvent("a", "fn", {"n": 1}, "id-1", dedup_window=60)], dedup_window=0)
    assert again.duplicates == 1
