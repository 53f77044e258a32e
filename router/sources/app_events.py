"""MQTT app events: messages on an app-event mapping's topic filter become asynchronous invocations.

The MQTT client is shared with bucket notifications (one connection, one subscription set); the
source hands this router the messages whose topic matches an app-event filter. Each matching
mapping (disabled ones included: their events wait in the queue, as a disabled bucket mapping's
do) gets one queued event per message, after its filter criteria (applied to the event the
function would receive). `accept_batch` returns once everything is durably queued, and only then
does the source acknowledge the messages (PUBACK, in arrival order): a message is never lost
between the broker and the queue, and a redelivery after a crash is queued again (at least once;
duplicate suppression is not by payload, so two identical clicks stay two clicks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from router.config import AppEventMapping
from router.delivery.async_queue import AsyncQueue, QueuedEvent
from router.events.app_event import app_event
from router.events.s3_match import topic_matches
from router.observability.metrics import Metrics


class AppEventRouter:
    def __init__(self, queue: AsyncQueue, *, metrics: Metrics, on_enqueued: Callable[[], None],
                 log: Any = None) -> None:
        self._queue = queue
        self._metrics = metrics
        self._on_enqueued = on_enqueued
        self._log = log or structlog.get_logger("router.app_events")
        self._mappings: dict[str, AppEventMapping] = {}

    def set_mappings(self, mappings: Mapping[str, AppEventMapping]) -> None:
        self._mappings = dict(mappings)

    def topics(self) -> list[str]:
        return sorted({m.mqtt_topic for m in self._mappings.values()})

    def wants(self, topic: str) -> bool:
        return any(topic_matches(m.mqtt_topic, topic) for m in self._mappings.values())

    async def accept_batch(self, items: Sequence[tuple[bytes, str]]) -> int:
        """Queue every (payload, topic); returns the number of events queued."""
        events: list[QueuedEvent] = []
        for payload, topic in items:
            for name, mapping in self._mappings.items():
                if not topic_matches(mapping.mqtt_topic, topic):
                    continue
                event = app_event(payload, topic, topic_key=mapping.topic_key)
                if mapping.filter_criteria is not None and not mapping.filter_criteria.compiled.matches(event):
                    self._metrics.filtered_out_records.labels(mapping=name).inc()
                    continue
                events.append(QueuedEvent(name, mapping.function_name, event))
        if not events:
            return 0
        result = await self._queue.enqueue(events, dedup_window=0)
        if result.accepted:
            self._on_enqueued()
        self._log.debug("app_events.queued", messages=len(items), events=result.accepted)
        return result.accepted
