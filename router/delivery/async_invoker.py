"""The dispatch loop of the asynchronous invocation queue: how S3 invokes Lambda, on our own queue.

One coroutine claims due events and starts one task per event; the task invokes the function in
the worker pool, then either reschedules the event (function error with retries left), or decides
its outcome and writes the destination record, and only then removes the event from the queue.

Why this shape:
* Concurrency per function is bounded here by `reserved_concurrent_executions`, not only in the
  pool, so a backlog waits in the durable queue (visible in metrics, surviving restarts) instead of
  piling up in memory in front of the workers.
* Mappings are visited round-robin and each claims at most its share of its function's free
  slots per round, so a busy or slow mapping cannot starve another; a slow function only uses its
  own slots. One round is one round trip to the queue: every ready lane's claim travels together
  (and carries the settlements of finished attempts with it), so the drain rate is not bounded by
  one SQLite round trip per event.
* Each function may have up to its reserved concurrency of events claimed ahead, in memory, beyond
  those running (`_Lane.ready`): a freed slot starts the next one at once instead of waiting for a
  round trip to the queue. Claims are not persisted, so these are due again after any restart;
  `stop` gives them back. The bound keeps the backlog in the durable queue, not in memory.
* A destination that is down never loses an event: the record is parked in the queue (the function
  is not run again) and written later with backoff. While a mapping's destination is failing, new
  records are parked at once instead of each waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from router.config import BucketMapping, Config
from router.delivery.async_policy import (
    GiveUp,
    RetryAt,
    after_function_error,
    after_system_error,
    age_exceeded,
    delivery_retry_delay,
)
from router.delivery.async_queue import (
    AsyncQueue,
    Claim,
    ClaimRequest,
    LastResponse,
    MappingStats,
    PendingDelivery,
    QueueClosed,
    StoredEvent,
)
from router.delivery.async_record import Condition, async_destination_record
from router.delivery.destinations import DestinationFactory, async_record_key
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard, Tracker
from router.runtime.result import InvocationResult

# Parked destination records written concurrently per mapping (they do not use function slots).
DELIVERY_CONCURRENCY = 8
# How often depth/age gauges and status are refreshed from the queue, at most.
STATS_INTERVAL = 1.0
# How often dedup keys older than every mapping's window are forgotten.
PRUNE_INTERVAL = 600.0
# Errors the pool reports that are not the function's: retried without consuming attempts.
_THROTTLE_ERRORS = frozenset({"TooManyRequestsException"})


class InvokesFunctions(Protocol):
    """What the invoker needs from the worker pool."""

    async def invoke(
        self,
        function: str,
        event: Any,
        *,
        request_id: str | None = ...,
        invocation_type: Literal["RequestResponse", "Event"] = ...,
    ) -> InvocationResult: ...


@dataclass
class _Lane:
    """Dispatch state of one bucket mapping."""

    name: str
    mapping: BucketMapping
    tracker: Tracker
    in_flight: int = 0
    # Claimed ahead, not yet started (see the module docstring); oldest first.
    ready: deque[StoredEvent] = field(default_factory=deque)
    deliveries: int = 0
    # Next known due time per stage; `dirty` means "look again, something may have arrived".
    next_invoke: float | None = None
    next_deliver: float | None = None
    invoke_dirty: bool = True
    deliver_dirty: bool = True
    delivery_failures: int = 0
    delivery_blocked_until: float = 0.0
    last_error: str | None = None
    stats: MappingStats = field(default_factory=lambda: MappingStats(0, None, 0, 0))

    @property
    def function(self) -> str:
        return self.mapping.function_name


class AsyncInvoker:
    def __init__(
        self,
        config: Config,
        queue: AsyncQueue,
        pool: InvokesFunctions,
        destinations: DestinationFactory,
        *,
        metrics: Metrics,
        board: ProgressBoard,
        log: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._queue = queue
        self._pool = pool
        self._destinations = destinations
        self._metrics = metrics
        self._board = board
        self._log = log or structlog.get_logger("router.async")
        self._clock = clock
        # The invoker owns the queue's observability: enqueue counts received and duplicate events.
        if queue.metrics is None:
            queue.metrics = metrics
        # Look for new events as soon as they are committed, not only after their fsync.
        if queue.on_committed is None:
            queue.on_committed = self.wake
        self._lanes: dict[str, _Lane] = {
            name: _Lane(name, mapping, board.tracker(f"async:{name}", kind="work"))
            for name, mapping in config.bucket_mappings().items()
            if mapping.enabled
        }
        self._function_in_flight: dict[str, int] = {}
        self._sharers: dict[str, int] = {}
        self._lanes_of: dict[str, list[_Lane]] = {}
        self._next_ready: dict[str, int] = {}
        for lane in self._lanes.values():
            self._sharers[lane.function] = self._sharers.get(lane.function, 0) + 1
            self._lanes_of.setdefault(lane.function, []).append(lane)
        self._round = 0
        self._wake_event = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._abandoned: list[int] = []
        self._stopping = False
        self._stats_at = -math.inf
        self._pruned_at = -math.inf
        self._orphans: dict[str, MappingStats] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._dispatcher is not None:
            return
        self._stopping = False
        await self._refresh_stats(force=True)
        for name, stats in self._orphans.items():
            self._log.warning(
                "async.orphaned_events", mapping=name, depth=stats.depth,
                reason="mapping is not configured or not enabled; its events wait until it is",
            )
        self._dispatcher = asyncio.create_task(self._run(), name="async-invoker")

    def wake(self) -> None:
        """New events were queued: look at once instead of at the next timer."""
        for lane in self._lanes.values():
            lane.invoke_dirty = True
        self._wake_event.set()

    async def stop(self, timeout: float) -> None:
        """Stop claiming, let in-flight events finish for up to `timeout` seconds, then abandon the
        rest: their events stay in the queue and run again after the next start."""
        self._stopping = True
        self._wake_event.set()
        if self._dispatcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=max(timeout, 0.0))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                self._log.warning("async.stop_abandoned", events=len(pending), outcome="requeued")
        self._abandon_ready()
        abandoned, self._abandoned = self._abandoned, []
        for event_id in abandoned:
            with contextlib.suppress(QueueClosed):
                await self._queue.release(event_id)

    # -- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._wake_event.clear()
            try:
                await self._dispatch()
                await self._refresh_stats()
                await self._prune()
            except QueueClosed:
                self._log.warning("async.queue_closed")
                return
            except Exception as exc:  # the loop must outlive any one bad step
                self._log.exception("async.dispatch_failed", error_type=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            if self._stopping:
                return
            delay = self._sleep_for()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_event.wait(), delay)

    def _free_slots(self, function: str) -> int:
        limit = self._config.functions[function].reserved_concurrent_executions
        return limit - self._function_in_flight.get(function, 0)

    def _claim_room(self, function: str) -> int:
        """Events a function may still claim: free slots plus room in its claimed-ahead buffer."""
        limit = self._config.functions[function].reserved_concurrent_executions
        return 2 * limit - self._function_in_flight.get(function, 0) - self._claimed_ahead(function)

    def _claimed_ahead(self, function: str) -> int:
        return sum(len(lane.ready) for lane in self._lanes_of.get(function, ()))

    def _start_ready(self, function: str) -> None:
        """Start claimed-ahead events while the function has free slots, taking lanes in turn."""
        lanes = self._lanes_of.get(function, [])
        while not self._stopping and self._free_slots(function) > 0:
            turn = self._next_ready.get(function, 0)
            for i in range(len(lanes)):
                index = (turn + i) % len(lanes)
                if lanes[index].ready:
                    break
            else:
                return  # nothing claimed ahead
            self._next_ready[function] = index + 1
            lane = lanes[index]
            event = lane.ready.popleft()
            lane.in_flight += 1
            self._function_in_flight[function] = self._function_in_flight.get(function, 0) + 1
            self._spawn(self._attempt(lane, event), event)

    async def _dispatch(self) -> None:
        lanes = list(self._lanes.values())
        if not lanes:
            return
        progress = True
        while progress and not self._stopping:
            start = self._round % len(lanes)
            self._round += 1
            progress = await self._dispatch_round(lanes[start:] + lanes[:start], self._clock())

    def _lane_ready(self, next_due: float | None, dirty: bool, now: float) -> bool:
        return dirty or (next_due is not None and next_due <= now)

    async def _dispatch_round(self, lanes: list[_Lane], now: float) -> bool:
        """One claim for every ready lane, in this round's order; True when anything was started."""
        requests: list[ClaimRequest] = []
        budgets: dict[str, int] = {}
        owners: list[_Lane] = []
        for lane in lanes:
            if self._lane_ready(lane.next_invoke, lane.invoke_dirty, now):
                if self._zero_concurrency(lane):
                    # Refusals are destination writes: bounded per lane like deliveries.
                    budget, free = f"refuse:{lane.name}", DELIVERY_CONCURRENCY - lane.deliveries
                    share = free
                else:
                    budget, free = f"fn:{lane.function}", self._claim_room(lane.function)
                    share = max(1, free // self._sharers[lane.function])
                if free > 0:
                    budgets[budget] = free
                    requests.append(ClaimRequest(lane.name, "invoke", min(free, share), budget))
                    owners.append(lane)
            if self._lane_ready(lane.next_deliver, lane.deliver_dirty, now) and now >= lane.delivery_blocked_until:
                limit = self._delivery_limit(lane)
                if limit > 0:
                    budget = f"deliver:{lane.name}"
                    budgets[budget] = limit
                    requests.append(ClaimRequest(lane.name, "deliver", limit, budget))
                    owners.append(lane)
        if not requests:
            return False
        claims = await self._queue.claim_many(requests, budgets)
        progress = False
        for request, lane, claim in zip(requests, owners, claims, strict=True):
            if request.stage == "invoke":
                self._start_invocations(lane, request.limit, claim)
            else:
                self._start_deliveries(lane, request.limit, claim)
            progress |= bool(claim.events)
        for function in {lane.function for lane in owners}:
            self._start_ready(function)
        if self._stopping:
            self._abandon_ready()
        return progress

    def _zero_concurrency(self, lane: _Lane) -> bool:
        return self._config.functions[lane.function].reserved_concurrent_executions == 0

    def _start_invocations(self, lane: _Lane, limit: int, claim: Claim) -> None:
        lane.next_invoke, lane.invoke_dirty = claim.next_due, False
        zero_concurrency = self._zero_concurrency(lane)
        for event in claim.events:
            if zero_concurrency:
                lane.deliveries += 1
                self._spawn(self._refuse(lane, event), event)
            else:
                lane.ready.append(event)
        if claim.events and len(claim.events) == limit:
            lane.invoke_dirty = True  # there may be more due right now

    def _start_deliveries(self, lane: _Lane, limit: int, claim: Claim) -> None:
        lane.next_deliver, lane.deliver_dirty = claim.next_due, False
        for event in claim.events:
            lane.deliveries += 1
            self._spawn(self._redeliver(lane, event), event)
        if claim.events and len(claim.events) == limit:
            lane.deliver_dirty = True

    def _spawn(self, work: Any, event: StoredEvent) -> None:
        task: asyncio.Task[None] = asyncio.create_task(self._guard(work, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Any, event: StoredEvent) -> None:
        try:
            await work
        except asyncio.CancelledError:
            self._abandoned.append(event.id)
            raise
        except QueueClosed:
            pass  # shutting down; the event is still in the queue and runs after the next start
        except Exception as exc:  # never let one event's surprise end the daemon; it runs again later
            self._log.exception("async.event_failed", mapping=event.mapping, request_id=event.request_id,
                                error_type=type(exc).__name__)
            await asyncio.sleep(1.0)  # whatever broke (the disk, a bug) gets a moment before the rerun
            try:
                await self._queue.release(event.id)
            except Exception:
                self._abandoned.append(event.id)
            lane = self._lanes.get(event.mapping)
            if lane is not None:
                lane.invoke_dirty = lane.deliver_dirty = True
        finally:
            self._wake_event.set()

    def _invoke_capacity(self, lane: _Lane) -> bool:
        if self._config.functions[lane.function].reserved_concurrent_executions == 0:
            return lane.deliveries < DELIVERY_CONCURRENCY
        return self._claim_room(lane.function) > 0

    def _abandon_ready(self) -> None:
        """Claimed-ahead events go back to the queue when the invoker stops (released in `stop`)."""
        for lane in self._lanes.values():
            while lane.ready:
                self._abandoned.append(lane.ready.popleft().id)

    def _delivery_limit(self, lane: _Lane) -> int:
        """Parked records to claim now; while the destination is failing, probe with one at a time."""
        if lane.delivery_failures:
            return 1 - lane.deliveries
        return DELIVERY_CONCURRENCY - lane.deliveries

    def _sleep_for(self) -> float:
        """Until the earliest moment a lane with free capacity has due work (at most STATS_INTERVAL).
        Lanes at capacity are woken by the completion that frees a slot, not by a timer."""
        now = self._clock()
        wake_at = now + STATS_INTERVAL
        for lane in self._lanes.values():
            if self._invoke_capacity(lane):
                if lane.invoke_dirty:
                    return 0.0
                if lane.next_invoke is not None:
                    wake_at = min(wake_at, lane.next_invoke)
            if self._delivery_limit(lane) > 0 and (lane.deliver_dirty or lane.next_deliver is not None):
                due = now if lane.deliver_dirty else (lane.next_deliver or now)
                wake_at = min(wake_at, max(due, lane.delivery_blocked_until))
        return max(0.0, wake_at - now)

    # -- one event ---------------------------------------------------------------------------------

    def _release_slot(self, lane: _Lane) -> None:
        lane.in_flight -= 1
        self._function_in_flight[lane.function] -= 1
        self._start_ready(lane.function)
        self._wake_event.set()

    async def _attempt(self, lane: _Lane, event: StoredEvent) -> None:
        mapping = lane.mapping
        try:
            now = self._clock()
            if age_exceeded(mapping, accepted_at=event.accepted_at, at=now):
                # It waited in the queue (backlog, downtime) past its maximum age: not invoked again.
                finish: tuple[Condition, LastResponse | None, int] | None = (
                    Condition.EVENT_AGE_EXCEEDED, event.last_response, event.invoke_count)
            else:
                finish = await self._invoke(lane, event)
        finally:
            self._release_slot(lane)
        if finish is not None:
            condition, response, invoke_count = finish
            await self._finish(lane, event, condition, response, invoke_count)

    async def _invoke(
        self, lane: _Lane, event: StoredEvent
    ) -> tuple[Condition, LastResponse | None, int] | None:
        """One attempt. Returns the final outcome, or None when the event was rescheduled."""
        mapping = lane.mapping
        attempt = event.invoke_count + 1
        started = time.monotonic()
        try:
            # One request id for every attempt of the event, as Lambda keeps it across async retries.
            # The stored JSON goes to the worker as it is: no decode and re-encode per event.
            result = await self._pool.invoke(
                lane.function, event.event_json.encode(), request_id=event.request_id, invocation_type="Event")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await self._system_error(lane, event, f"{type(exc).__name__}: {exc}", type(exc).__name__)
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        if not result.ok and result.error_type in _THROTTLE_ERRORS:
            return await self._system_error(lane, event, str(result.error_type), str(result.error_type))
        response = LastResponse(result.request_id, result.payload, result.function_error, result.error_type)
        if result.ok:
            # Per event: no bind() (it builds a logger even when the line is filtered out).
            self._log.info("async.invocation", mapping=lane.name, function=lane.function, attempt=attempt,
                           request_id=result.request_id, duration_ms=duration_ms, outcome=result.outcome)
            return Condition.SUCCESS, response, attempt
        lane.last_error = result.error_type
        decision = after_function_error(mapping, invoke_count=attempt, accepted_at=event.accepted_at,
                                        now=self._clock())
        self._log.warning("async.invocation", mapping=lane.name, function=lane.function, attempt=attempt,
                    request_id=result.request_id, duration_ms=duration_ms,
                    outcome=result.outcome, error_type=result.error_type,
                    next="retry" if isinstance(decision, RetryAt) else str(decision.condition),
                    retry_in_seconds=decision.delay if isinstance(decision, RetryAt) else None)
        if isinstance(decision, GiveUp):
            return decision.condition, response, attempt
        await self._queue.reschedule(
            event.id, due_at=decision.due_at, invoke_count=attempt, system_errors=event.system_errors,
            last_response=response, last_error=result.error_type,
        )
        self._metrics.retries.labels(mapping=lane.name).inc()
        self._note_due(lane, "invoke", decision.due_at)
        return None

    async def _system_error(
        self, lane: _Lane, event: StoredEvent, message: str, error_type: str
    ) -> tuple[Condition, LastResponse | None, int] | None:
        """The function did not run (pool throttled or failed): back off, keep the attempt count."""
        errors = event.system_errors + 1
        lane.last_error = error_type
        decision = after_system_error(lane.mapping, consecutive_errors=errors,
                                      accepted_at=event.accepted_at, now=self._clock())
        self._log.warning("async.invocation", mapping=lane.name, function=lane.function,
                          request_id=event.request_id, attempt=event.invoke_count + 1, outcome="not_invoked",
                          error_type=error_type, error=message[:300])
        if isinstance(decision, GiveUp):
            return decision.condition, event.last_response, event.invoke_count
        await self._queue.reschedule(
            event.id, due_at=decision.due_at, invoke_count=event.invoke_count, system_errors=errors,
            last_response=None, last_error=message[:1000],
        )
        self._metrics.retries.labels(mapping=lane.name).inc()
        self._note_due(lane, "invoke", decision.due_at)
        return None

    async def _refuse(self, lane: _Lane, event: StoredEvent) -> None:
        """Reserved concurrency 0: Lambda sends new events to the failure destination uninvoked."""
        try:
            await self._finish(lane, event, Condition.ZERO_RESERVED_CONCURRENCY, None, 0)
        finally:
            lane.deliveries -= 1

    async def _finish(
        self,
        lane: _Lane,
        event: StoredEvent,
        condition: Condition,
        response: LastResponse | None,
        invoke_count: int,
    ) -> None:
        succeeded = condition is Condition.SUCCESS
        config = lane.mapping.destination_config
        target = config.on_success if succeeded else config.on_failure
        if not succeeded:
            self._metrics.async_events_dropped.labels(mapping=lane.name, condition=str(condition)).inc()
        if target is None:
            await self._queue.complete(event.id)
            self._completed(lane)
            if not succeeded:
                self._log.warning("async.event_dropped", mapping=lane.name, function=lane.function,
                                  condition=str(condition), approximate_invoke_count=invoke_count,
                                  request_id=self._request_id(event, response), outcome="dropped",
                                  error_type=response.error_type if response else None)
            return
        invoked = response is not None and condition is not Condition.ZERO_RESERVED_CONCURRENCY
        record = async_destination_record(
            function_arn=self._config.function_arn(lane.function, "$LATEST"),
            condition=condition,
            request_id=self._request_id(event, response),
            approximate_invoke_count=invoke_count,
            request_payload=event.event,
            invoked=invoked,
            response_payload=response.payload if response is not None else None,
            function_error=response.function_error if response is not None else None,
            now=datetime.fromtimestamp(self._clock(), UTC),
        )
        delivery = PendingDelivery(
            uri=target.destination,
            key=async_record_key(lane.name, lane.function, datetime.fromtimestamp(self._clock(), UTC)),
            kind="on_success" if succeeded else "on_failure",
            condition=str(condition),
            record=record,
        )
        await self._deliver(lane, event, delivery, invoke_count, attempts=0)

    def _request_id(self, event: StoredEvent, response: LastResponse | None) -> str:
        return response.request_id if response is not None else event.request_id

    async def _redeliver(self, lane: _Lane, event: StoredEvent) -> None:
        try:
            if event.delivery is None:  # cannot happen for the deliver stage; be safe anyway
                await self._queue.reschedule(event.id, due_at=self._clock(), invoke_count=event.invoke_count,
                                             system_errors=event.system_errors, last_response=None,
                                             last_error="delivery record missing")
                return
            await self._deliver(lane, event, event.delivery, event.invoke_count, attempts=event.delivery_attempts)
        finally:
            lane.deliveries -= 1

    async def _deliver(
        self, lane: _Lane, event: StoredEvent, delivery: PendingDelivery, invoke_count: int, *, attempts: int
    ) -> None:
        log = self._log.bind(mapping=lane.name, function=lane.function, condition=delivery.condition,
                             request_id=delivery.record["requestContext"]["requestId"],
                             destination=delivery.uri)
        now = self._clock()
        if now < lane.delivery_blocked_until:
            # The destination failed moments ago: park without another doomed attempt.
            await self._park(lane, event, delivery, invoke_count, attempts, lane.delivery_blocked_until,
                             "destination backing off")
            return
        try:
            await self._destinations.get(delivery.uri).send(delivery.record, key=delivery.key)
        except Exception as exc:
            self._metrics.destination_delivery_failures.labels(mapping=lane.name).inc()
            lane.delivery_failures += 1
            delay = delivery_retry_delay(lane.delivery_failures)
            lane.delivery_blocked_until = self._clock() + delay
            lane.last_error = f"destination: {exc}"[:300]
            log.warning("async.destination_failed", outcome="parked", error_type=type(exc).__name__,
                        error=str(exc)[:300], attempt=attempts + 1, retry_in_seconds=delay)
            await self._park(lane, event, delivery, invoke_count, attempts + 1, lane.delivery_blocked_until,
                             str(exc)[:1000])
            return
        if lane.delivery_failures:
            log.info("async.destination_recovered", after_failures=lane.delivery_failures)
        lane.delivery_failures = 0
        lane.delivery_blocked_until = 0.0
        success = delivery.kind == "on_success"
        counter = self._metrics.on_success_records if success else self._metrics.on_failure_records
        counter.labels(mapping=lane.name).inc()
        await self._queue.complete(event.id)
        self._completed(lane)
        log.info("async.event_finished", outcome="delivered", key=delivery.key)

    async def _park(
        self, lane: _Lane, event: StoredEvent, delivery: PendingDelivery, invoke_count: int, attempts: int,
        due_at: float, error: str,
    ) -> None:
        await self._queue.park_delivery(event.id, delivery=delivery, due_at=due_at, delivery_attempts=attempts,
                                        invoke_count=invoke_count, last_error=error)
        self._note_due(lane, "deliver", due_at)

    def _note_due(self, lane: _Lane, stage: Literal["invoke", "deliver"], due_at: float) -> None:
        if stage == "invoke":
            lane.next_invoke = due_at if lane.next_invoke is None else min(lane.next_invoke, due_at)
        else:
            lane.next_deliver = due_at if lane.next_deliver is None else min(lane.next_deliver, due_at)
        self._wake_event.set()

    def _completed(self, lane: _Lane) -> None:
        lane.tracker.advanced()
        self._wake_event.set()

    # -- observability -----------------------------------------------------------------------------

    async def _refresh_stats(self, *, force: bool = False) -> None:
        moment = time.monotonic()
        if not force and moment - self._stats_at < STATS_INTERVAL:
            return
        self._stats_at = moment
        stats = await self._queue.stats()
        now = self._clock()
        for name, lane in self._lanes.items():
            lane.stats = stats.get(name, MappingStats(0, None, 0, 0))
            self._metrics.async_queue_depth.labels(mapping=name).set(lane.stats.depth)
            oldest = lane.stats.oldest_accepted_at
            self._metrics.async_event_age_seconds.labels(mapping=name).set(
                max(0.0, now - oldest) if oldest is not None else 0.0)
            # Pending means "should be moving now": events due for invocation and records waiting for
            # their destination. A retry scheduled minutes ahead is not a stall.
            lane.tracker.set_pending(lane.stats.due + lane.stats.awaiting_delivery > 0)
        self._orphans = {name: s for name, s in stats.items() if name not in self._lanes}

    async def _prune(self) -> None:
        moment = time.monotonic()
        if moment - self._pruned_at < PRUNE_INTERVAL:
            return
        self._pruned_at = moment
        windows = [lane.mapping.deduplication_window_seconds for lane in self._lanes.values()]
        if windows:
            removed = await self._queue.prune_dedup(self._clock() - max(windows))
            if removed:
                self._log.debug("async.dedup_pruned", keys=removed)

    def status(self) -> dict[str, Any]:
        now = self._clock()
        mappings: dict[str, Any] = {}
        for name, lane in self._lanes.items():
            oldest = lane.stats.oldest_accepted_at
            mappings[name] = {
                "function": lane.function,
                "depth": lane.stats.depth,
                "oldest_age_seconds": round(now - oldest, 3) if oldest is not None else None,
                "in_flight": lane.in_flight,
                "retries_scheduled": lane.stats.retries_scheduled,
                "awaiting_destination": lane.stats.awaiting_delivery,
                "destination_failures": lane.delivery_failures,
                "last_error": lane.last_error,
            }
        for name, stats in self._orphans.items():
            mappings[name] = {"depth": stats.depth, "state": "not dispatched (mapping missing or disabled)"}
        return {"mappings": mappings}
