"""An asynchronous event's last step: its destination record written, or kept until it can be.

The counterpart of the stream side's `FailureWriter`. Once an event's outcome is decided (success,
retries exhausted, too old, refused), Lambda writes the destination record (reference 3.3) to the
mapping's on-success or on-failure destination; with no destination for that outcome the event is
simply done. Only when the record is durably written (or not wanted) is the event removed from
the queue, so an outcome can never be lost between the two.

A destination that is down never costs an event: the record is *parked* in the queue (stage
"deliver", the function is not run again) and written later with backoff. While a mapping's
destination is failing, further records are parked at once instead of each waiting for a doomed
attempt, and the dispatcher probes the destination with one record at a time (`DestinationHealth`).
The object key is fixed when the record is built, so a retried S3 write after an ambiguous failure
overwrites the same object.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from router.config import AsyncInvokeSettings
from router.delivery.async_policy import DESTINATION_RETRY
from router.delivery.async_queue import LastResponse, PendingDelivery, StoredEvent
from router.delivery.async_record import Condition, async_destination_record
from router.delivery.destination import async_record_key
from router.delivery.destinations import DestinationFactory
from router.delivery.event_queue import EventQueue
from router.observability.metrics import Metrics


@dataclass
class DestinationHealth:
    """How one mapping's destinations have been answering lately."""

    failures: int = 0  # consecutive failed writes
    blocked_until: float = 0.0  # no new attempt before this (epoch seconds)
    last_error: str | None = None

    @property
    def failing(self) -> bool:
        return self.failures > 0


class AsyncDelivery:
    def __init__(
        self,
        queue: EventQueue,
        destinations: DestinationFactory,
        *,
        function_arn: Callable[[str], str],
        metrics: Metrics,
        log: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._destinations = destinations
        self._function_arn = function_arn  # qualified (`:$LATEST`), as async records name it
        self._metrics = metrics
        self._log = log or structlog.get_logger("router.async")
        self._clock = clock

    async def finish(
        self,
        mapping: str,
        function: str,
        settings: AsyncInvokeSettings,
        health: DestinationHealth,
        event: StoredEvent,
        condition: Condition,
        response: LastResponse | None,
        invoke_count: int,
    ) -> float | None:
        """Settle an event whose outcome is known. Returns None once the event is done, or the
        time its parked record is due for another attempt."""
        succeeded = condition is Condition.SUCCESS
        targets = settings.destination_config
        target = targets.on_success if succeeded else targets.on_failure
        if not succeeded:
            self._metrics.async_events_dropped.labels(mapping=mapping, condition=str(condition)).inc()
        request_id = response.request_id if response is not None else event.request_id
        if target is None:
            await self._queue.complete(event.id)
            if not succeeded:
                self._log.warning("async.event_dropped", mapping=mapping, function=function,
                                  condition=str(condition), approximate_invoke_count=invoke_count,
                                  request_id=request_id, outcome="dropped",
                                  error_type=response.error_type if response else None)
            return None
        now = datetime.fromtimestamp(self._clock(), UTC)
        record = async_destination_record(
            function_arn=self._function_arn(function),
            condition=condition,
            request_id=request_id,
            approximate_invoke_count=invoke_count,
            request_payload=event.event,
            invoked=response is not None and condition is not Condition.ZERO_RESERVED_CONCURRENCY,
            response_payload=response.payload if response is not None else None,
            function_error=response.function_error if response is not None else None,
            now=now,
        )
        delivery = PendingDelivery(
            uri=target.destination,
            key=async_record_key(mapping, function, now),
            kind="on_success" if succeeded else "on_failure",
            condition=str(condition),
            record=record,
        )
        return await self.deliver(mapping, function, health, event, delivery, invoke_count, attempts=0)

    async def redeliver(
        self, mapping: str, function: str, health: DestinationHealth, event: StoredEvent
    ) -> float | None:
        """Another attempt at a parked record (the deliver stage of the queue)."""
        if event.delivery is None:  # cannot happen for the deliver stage; be safe anyway
            await self._queue.reschedule(event.id, due_at=self._clock(), invoke_count=event.invoke_count,
                                         system_errors=event.system_errors, last_response=None,
                                         last_error="delivery record missing")
            return None
        return await self.deliver(mapping, function, health, event, event.delivery, event.invoke_count,
                                  attempts=event.delivery_attempts)

    async def deliver(
        self, mapping: str, function: str, health: DestinationHealth, event: StoredEvent,
        delivery: PendingDelivery, invoke_count: int, *, attempts: int,
    ) -> float | None:
        log = self._log.bind(mapping=mapping, function=function, condition=delivery.condition,
                             request_id=delivery.record["requestContext"]["requestId"], destination=delivery.uri)
        if self._clock() < health.blocked_until:
            # The destination failed moments ago: park without another doomed attempt.
            return await self._park(event, delivery, invoke_count, attempts, health.blocked_until,
                                    "destination backing off")
        try:
            await self._destinations.get(delivery.uri).send(delivery.record, key=delivery.key)
        except Exception as exc:
            self._metrics.destination_delivery_failures.labels(mapping=mapping).inc()
            health.failures += 1
            delay = DESTINATION_RETRY.delay(health.failures)
            health.blocked_until = self._clock() + delay
            health.last_error = f"destination: {exc}"[:300]
            log.warning("async.destination_failed", outcome="parked", error_type=type(exc).__name__,
                        error=str(exc)[:300], attempt=attempts + 1, retry_in_seconds=delay)
            return await self._park(event, delivery, invoke_count, attempts + 1, health.blocked_until,
                                    str(exc)[:1000])
        if health.failures:
            log.info("async.destination_recovered", after_failures=health.failures)
        health.failures = 0
        health.blocked_until = 0.0
        metrics = self._metrics
        counter = metrics.on_success_records if delivery.kind == "on_success" else metrics.on_failure_records
        counter.labels(mapping=mapping).inc()
        await self._queue.complete(event.id)
        log.info("async.event_finished", outcome="delivered", key=delivery.key)
        return None

    async def _park(
        self, event: StoredEvent, delivery: PendingDelivery, invoke_count: int, attempts: int, due_at: float,
        error: str,
    ) -> float:
        await self._queue.park_delivery(event.id, delivery=delivery, due_at=due_at, delivery_attempts=attempts,
                                        invoke_count=invoke_count, last_error=error)
        return due_at
