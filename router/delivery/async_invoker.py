"""The dispatch loop of the asynchronous invocation queue: how S3 invokes Lambda, on our own queue.

One coroutine claims due events and starts one task per event; the task invokes the function in
the worker pool, then either reschedules the event (function error with retries left), or hands its
outcome to `AsyncDelivery`, which writes the destination record and only then removes the event
from the queue.

Each push mapping is a *lane*: its function, its `AsyncInvokeSettings` (retries, event age,
destinations, delays) and its dispatch state. Lanes come and go while the daemon runs (the mapping
supervisor adds, updates and retires them):

* A **disabled** lane keeps its queued events and claims none for invocation; enabling it
  resumes from there (the queue is the push path's checkpoint). Parked destination records are
  still written: the function already ran for them.
* A **retired** lane (its mapping was deleted) is not invoked again. With an on-failure
  destination its remaining events go there uninvoked (condition `EventSourceMappingDeleted`);
  without one they stay in the queue, reported in `/status`, until the mapping returns. Either
  way it has no progress tracker: a deleted mapping cannot make the daemon unready.

Why this shape:
* Concurrency per function is bounded here by its reserved concurrency, not only in the pool, so
  a backlog waits in the durable queue (visible in metrics, surviving restarts) instead of piling
  up in memory in front of the workers.
* Lanes are visited round-robin and each claims at most its share of its function's free slots
  per round, so a busy or slow mapping cannot starve another; a slow function only uses its own
  slots. One round is one round trip to the queue: every ready lane's claim travels together
  (and carries the settlements of finished attempts with it), so the drain rate is not bounded by
  one SQLite round trip per event.
* Each function may have up to its reserved concurrency of events claimed ahead, in memory, beyond
  those running (`_Lane.ready`): a freed slot starts the next one at once instead of waiting for a
  round trip to the queue. Claims are not persisted, so these are due again after any restart;
  `stop` gives them back. The bound keeps the backlog in the durable queue, not in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from router.config import AsyncInvokeSettings
from router.delivery.async_delivery import AsyncDelivery, DestinationHealth
from router.delivery.async_policy import (
    GiveUp,
    RetryAt,
    after_function_error,
    after_system_error,
    age_exceeded,
)
from router.delivery.async_queue import (
    Claim,
    ClaimRequest,
    LastResponse,
    MappingStats,
    QueueClosed,
    StoredEvent,
)
from router.delivery.async_record import Condition
from router.delivery.event_queue import EventQueue
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
    """Dispatch state of one push mapping."""

    name: str
    function: str
    settings: AsyncInvokeSettings
    tracker: Tracker | None
    enabled: bool = True
    retired: bool = False
    in_flight: int = 0
    # Claimed ahead, not yet started (see the module docstring); oldest first.
    ready: deque[StoredEvent] = field(default_factory=deque)
    deliveries: int = 0
    # Next known due time per stage; `dirty` means "look again, something may have arrived".
    next_invoke: float | None = None
    next_deliver: float | None = None
    invoke_dirty: bool = True
    deliver_dirty: bool = True
    health: DestinationHealth = field(default_factory=DestinationHealth)
    last_error: str | None = None
    stats: MappingStats = field(default_factory=lambda: MappingStats(0, None, 0, 0))

    @property
    def drain_to(self) -> str | None:
        """Where a retired lane's remaining events go uninvoked (its on-failure destination)."""
        target = self.settings.destination_config.on_failure
        return target.destination if self.retired and target is not None else None

    @property
    def invokes(self) -> bool:
        return self.enabled and not self.retired

    @property
    def busy(self) -> bool:
        return bool(self.in_flight or self.ready or self.deliveries)


class AsyncInvoker:
    def __init__(
        self,
        queue: EventQueue,
        pool: InvokesFunctions,
        delivery: AsyncDelivery,
        *,
        concurrency: Callable[[str], int],
        metrics: Metrics,
        board: ProgressBoard,
        log: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._pool = pool
        self._delivery = delivery
        self._concurrency = concurrency  # a function's reserved concurrency, as the pool has it now
        self._metrics = metrics
        self._board = board
        # Bound once: a lazy proxy rebinds on every call (once per event here).
        self._log = log or structlog.get_logger("router.async").bind()
        self._clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._function_in_flight: dict[str, int] = {}
        self._lanes_of: dict[str, list[_Lane]] = {}
        self._next_ready: dict[str, int] = {}
        self._round = 0
        self._wake_event = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._abandoned: list[int] = []
        self._stopping = False
        self._stats_at = -math.inf
        self._pruned_at = -math.inf
        self._orphans: dict[str, MappingStats] = {}

    # -- lanes ---------------------------------------------------------------------------------

    def set_lane(self, name: str, function: str, settings: AsyncInvokeSettings, *, enabled: bool = True) -> None:
        """Add a push mapping's lane, or change its function, settings or state (events already
        running finish under the settings they started with)."""
        lane = self._lanes.get(name)
        if lane is None or lane.retired:
            lane = _Lane(name, function, settings, self._board.tracker(f"async:{name}", kind="work"),
                         enabled=enabled)
            self._lanes[name] = lane
            self._orphans.pop(name, None)
        else:
            lane.function, lane.settings, lane.enabled = function, settings, enabled
        if lane.tracker is None:
            lane.tracker = self._board.tracker(f"async:{name}", kind="work")
        lane.invoke_dirty = lane.deliver_dirty = True
        self._index()
        self._stats_at = -math.inf  # pending-ness depends on the state: look again soon
        self._wake_event.set()

    def retire_lane(self, name: str) -> None:
        """The mapping was deleted: see the module docstring."""
        lane = self._lanes.get(name)
        if lane is None or lane.retired:
            return
        lane.retired = True
        lane.tracker = None
        self._board.remove(f"async:{name}")
        while lane.ready:  # claimed ahead for invocation: given back (drained or kept)
            self._abandoned.append(lane.ready.popleft().id)
        lane.invoke_dirty = lane.deliver_dirty = True
        self._log.info("async.mapping_retired", mapping=name, function=lane.function,
                       remaining_events_to=lane.drain_to or "queue (until the mapping returns)")
        self._index()
        self._stats_at = -math.inf
        self._wake_event.set()

    def lanes(self) -> list[str]:
        return [name for name, lane in self._lanes.items() if not lane.retired]

    def _index(self) -> None:
        self._lanes_of = {}
        for lane in self._lanes.values():
            if lane.invokes:
                self._lanes_of.setdefault(lane.function, []).append(lane)

    def _drop(self, lane: _Lane) -> None:
        """A retired lane with nothing left to do for it is forgotten, with its metrics."""
        self._lanes.pop(lane.name, None)
        self._metrics.forget_mapping(lane.name)
        self._log.info("async.mapping_forgotten", mapping=lane.name, events_kept=lane.stats.depth)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._dispatcher is not None:
            return
        self._stopping = False
        await self._refresh_stats(force=True)
        for name, stats in self._orphans.items():
            self._log.warning(
                "async.orphaned_events", mapping=name, depth=stats.depth,
                reason="mapping is not configured; its events wait until it is",
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
        await self._release_abandoned()

    async def _release_abandoned(self) -> None:
        abandoned, self._abandoned = self._abandoned, []
        for event_id in abandoned:
            with contextlib.suppress(QueueClosed):
                await self._queue.release(event_id)

    # -- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._wake_event.clear()
            try:
                await self._release_abandoned()
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
        return self._concurrency(function) - self._function_in_flight.get(function, 0)

    def _claim_room(self, function: str) -> int:
        """Events a function may still claim: free slots plus room in its claimed-ahead buffer."""
        return (2 * self._concurrency(function) - self._function_in_flight.get(function, 0)
                - self._claimed_ahead(function))

    def _claimed_ahead(self, function: str) -> int:
        return sum(len(lane.ready) for lane in self._lanes_of.get(function, ()))

    def _start_ready(self, function: str) -> None:
        """Start claimed-ahead events while the function has free slots, taking lanes in turn."""
        lanes = self._lanes_of.get(function, [])
        while not self._stopping and lanes and self._free_slots(function) > 0:
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
        progress = True
        while progress and not self._stopping:
            lanes = list(self._lanes.values())
            if not lanes:
                return
            start = self._round % len(lanes)
            self._round += 1
            progress = await self._dispatch_round(lanes[start:] + lanes[:start], self._clock())

    def _lane_ready(self, next_due: float | None, dirty: bool, now: float) -> bool:
        return dirty or (next_due is not None and next_due <= now)

    def _refuses(self, lane: _Lane) -> bool:
        """Events of this lane go to its on-failure destination uninvoked."""
        return lane.drain_to is not None or (lane.invokes and self._concurrency(lane.function) == 0)

    async def _dispatch_round(self, lanes: list[_Lane], now: float) -> bool:
        """One claim for every ready lane, in this round's order; True when anything was started."""
        requests: list[ClaimRequest] = []
        budgets: dict[str, int] = {}
        owners: list[_Lane] = []
        for lane in lanes:
            if (lane.invokes or lane.drain_to) and self._lane_ready(lane.next_invoke, lane.invoke_dirty, now):
                due_by: float | None = None
                if self._refuses(lane):
                    # Refusals are destination writes: bounded per lane like deliveries. A retired
                    # lane drains everything, retries scheduled later included.
                    budget, free = f"refuse:{lane.name}", DELIVERY_CONCURRENCY - lane.deliveries
                    share = free
                    due_by = math.inf if lane.retired else None
                else:
                    budget, free = f"fn:{lane.function}", self._claim_room(lane.function)
                    share = max(1, free // len(self._lanes_of.get(lane.function, [lane])))
                if free > 0:
                    budgets[budget] = free
                    requests.append(ClaimRequest(lane.name, "invoke", min(free, share), budget, due_by))
                    owners.append(lane)
            if self._lane_ready(lane.next_deliver, lane.deliver_dirty, now) and now >= lane.health.blocked_until:
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

    def _start_invocations(self, lane: _Lane, limit: int, claim: Claim) -> None:
        lane.next_invoke, lane.invoke_dirty = claim.next_due, False
        if lane.drain_to is not None:
            for event in claim.events:
                lane.deliveries += 1
                self._spawn(self._refuse(lane, event, Condition.EVENT_SOURCE_MAPPING_DELETED), event)
        elif self._concurrency(lane.function) == 0:
            for event in claim.events:
                lane.deliveries += 1
                self._spawn(self._refuse(lane, event, Condition.ZERO_RESERVED_CONCURRENCY), event)
        else:
            lane.ready.extend(claim.events)
        if claim.events and len(claim.events) == limit:
            lane.invoke_dirty = True  # there may be more due right now

    def _start_deliveries(self, lane: _Lane, limit: int, claim: Claim) -> None:
        lane.next_deliver, lane.deliver_dirty = claim.next_due, False
        for event in claim.events:
            lane.deliveries += 1
            self._spawn(self._redeliver(lane, event), event)
        if claim.events and len(claim.events) == limit:
            lane.deliver_dirty = True

    def _spawn(self, work: Coroutine[Any, Any, None], event: StoredEvent) -> None:
        task: asyncio.Task[None] = asyncio.create_task(self._guard(work, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Coroutine[Any, Any, None], event: StoredEvent) -> None:
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
        if self._refuses(lane):
            return lane.deliveries < DELIVERY_CONCURRENCY
        return lane.invokes and self._claim_room(lane.function) > 0

    def _abandon_ready(self) -> None:
        """Claimed-ahead events go back to the queue when the invoker stops (released in `stop`)."""
        for lane in self._lanes.values():
            while lane.ready:
                self._abandoned.append(lane.ready.popleft().id)

    def _delivery_limit(self, lane: _Lane) -> int:
        """Parked records to claim now; while the destination is failing, probe with one at a time."""
        if lane.health.failing:
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
                wake_at = min(wake_at, max(due, lane.health.blocked_until))
        return max(0.0, wake_at - now)

    # -- one event ---------------------------------------------------------------------------------

    def _release_slot(self, lane: _Lane) -> None:
        lane.in_flight -= 1
        self._function_in_flight[lane.function] -= 1
        self._start_ready(lane.function)
        self._wake_event.set()

    async def _attempt(self, lane: _Lane, event: StoredEvent) -> None:
        settings = lane.settings
        try:
            now = self._clock()
            if age_exceeded(settings, accepted_at=event.accepted_at, at=now):
                # It waited in the queue (backlog, downtime) past its maximum age: not invoked again.
                finish: tuple[Condition, LastResponse | None, int] | None = (
                    Condition.EVENT_AGE_EXCEEDED, event.last_response, event.invoke_count)
            else:
                finish = await self._invoke(lane, settings, event)
        finally:
            self._release_slot(lane)
        if finish is not None:
            condition, response, invoke_count = finish
            await self._finish(lane, settings, event, condition, response, invoke_count)

    async def _invoke(
        self, lane: _Lane, settings: AsyncInvokeSettings, event: StoredEvent
    ) -> tuple[Condition, LastResponse | None, int] | None:
        """One attempt. Returns the final outcome, or None when the event was rescheduled."""
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
            return await self._system_error(lane, settings, event, f"{type(exc).__name__}: {exc}",
                                            type(exc).__name__)
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        if not result.ok and result.error_type in _THROTTLE_ERRORS:
            return await self._system_error(lane, settings, event, str(result.error_type), str(result.error_type))
        response = LastResponse(result.request_id, result.payload, result.function_error, result.error_type)
        if result.ok:
            # Per event: no bind() (it builds a logger even when the line is filtered out).
            self._log.info("async.invocation", mapping=lane.name, function=lane.function, attempt=attempt,
                           request_id=result.request_id, duration_ms=duration_ms, outcome=result.outcome)
            return Condition.SUCCESS, response, attempt
        lane.last_error = result.error_type
        decision = after_function_error(settings, invoke_count=attempt, accepted_at=event.accepted_at,
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
        self, lane: _Lane, settings: AsyncInvokeSettings, event: StoredEvent, message: str, error_type: str
    ) -> tuple[Condition, LastResponse | None, int] | None:
        """The function did not run (pool throttled or failed): back off, keep the attempt count."""
        errors = event.system_errors + 1
        lane.last_error = error_type
        decision = after_system_error(settings, consecutive_errors=errors,
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

    async def _refuse(self, lane: _Lane, event: StoredEvent, condition: Condition) -> None:
        """Straight to the on-failure destination, uninvoked: reserved concurrency 0 (as Lambda
        does), or the mapping was deleted (reporting what the event's earlier attempts gave)."""
        try:
            if condition is Condition.ZERO_RESERVED_CONCURRENCY:
                response, count = None, 0
            else:
                response, count = event.last_response, event.invoke_count
            await self._finish(lane, lane.settings, event, condition, response, count)
        finally:
            lane.deliveries -= 1

    async def _finish(
        self, lane: _Lane, settings: AsyncInvokeSettings, event: StoredEvent, condition: Condition,
        response: LastResponse | None, invoke_count: int,
    ) -> None:
        parked = await self._delivery.finish(lane.name, lane.function, settings, lane.health, event, condition,
                                             response, invoke_count)
        self._settled(lane, parked)

    async def _redeliver(self, lane: _Lane, event: StoredEvent) -> None:
        try:
            parked = await self._delivery.redeliver(lane.name, lane.function, lane.health, event)
            self._settled(lane, parked)
        finally:
            lane.deliveries -= 1

    def _settled(self, lane: _Lane, parked_until: float | None) -> None:
        if parked_until is not None:
            self._note_due(lane, "deliver", parked_until)
            return
        if lane.tracker is not None:
            lane.tracker.advanced()
        self._wake_event.set()

    def _note_due(self, lane: _Lane, stage: Literal["invoke", "deliver"], due_at: float) -> None:
        if stage == "invoke":
            lane.next_invoke = due_at if lane.next_invoke is None else min(lane.next_invoke, due_at)
        else:
            lane.next_deliver = due_at if lane.next_deliver is None else min(lane.next_deliver, due_at)
        self._wake_event.set()

    # -- observability -----------------------------------------------------------------------------

    async def _refresh_stats(self, *, force: bool = False) -> None:
        moment = time.monotonic()
        if not force and moment - self._stats_at < STATS_INTERVAL:
            return
        self._stats_at = moment
        stats = await self._queue.stats()
        now = self._clock()
        for name, lane in list(self._lanes.items()):
            lane.stats = stats.get(name, MappingStats(0, None, 0, 0))
            if lane.retired:
                left = lane.stats.awaiting_delivery + (lane.stats.depth if lane.drain_to else 0)
                if not left and not lane.busy:
                    self._drop(lane)
                continue
            self._metrics.async_queue_depth.labels(mapping=name).set(lane.stats.depth)
            oldest = lane.stats.oldest_accepted_at
            self._metrics.async_event_age_seconds.labels(mapping=name).set(
                max(0.0, now - oldest) if oldest is not None else 0.0)
            # Pending means "should be moving now": events due for invocation and records waiting for
            # their destination. A retry scheduled minutes ahead, or a disabled mapping's backlog,
            # is not a stall.
            if lane.tracker is not None:
                due = lane.stats.due if lane.enabled else 0
                lane.tracker.set_pending(due + lane.stats.awaiting_delivery > 0)
        self._orphans = {name: s for name, s in stats.items() if name not in self._lanes}

    async def _prune(self) -> None:
        moment = time.monotonic()
        if moment - self._pruned_at < PRUNE_INTERVAL:
            return
        self._pruned_at = moment
        windows = [lane.settings.deduplication_window_seconds for lane in self._lanes.values()]
        if windows:
            removed = await self._queue.prune_dedup(self._clock() - max(windows))
            if removed:
                self._log.debug("async.dedup_pruned", keys=removed)

    def status(self) -> dict[str, Any]:
        now = self._clock()
        mappings: dict[str, Any] = {}
        for name, lane in self._lanes.items():
            oldest = lane.stats.oldest_accepted_at
            entry: dict[str, Any] = {
                "function": lane.function,
                "state": "Deleting" if lane.retired else "Enabled" if lane.enabled else "Disabled",
                "depth": lane.stats.depth,
                "oldest_age_seconds": round(now - oldest, 3) if oldest is not None else None,
                "in_flight": lane.in_flight,
                "retries_scheduled": lane.stats.retries_scheduled,
                "awaiting_destination": lane.stats.awaiting_delivery,
                "destination_failures": lane.health.failures,
                "last_error": lane.last_error or lane.health.last_error,
            }
            if lane.retired:
                entry["remaining_events_to"] = lane.drain_to
            mappings[name] = entry
        for name, stats in self._orphans.items():
            mappings[name] = {"depth": stats.depth, "state": "not dispatched (no such mapping)",
                              "oldest_age_seconds": round(now - stats.oldest_accepted_at, 3)
                              if stats.oldest_accepted_at is not None else None}
        return {"mappings": mappings}
