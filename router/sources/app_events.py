"""MQTT app events: messages on an app-event mapping's topic filter become asynchronous invocations.

The MQTT client is shared with bucket notifications (one connection, one subscription set); the
source hands this router the messages whose topic matches an app-event filter. Each matching
mapping (disabled ones included: their events wait in the queue, as a disabled bucket mapping's
do) gets one queued event per message, after its filter criteria (applied to the event the
function would receive). `accept_batch` returns once everything is durably queued, and only then
does the source acknowledge the messages (PUBACK, in arrival order): a message is never lost
between the broker and the queue, and a redelivery after a crash is queued again (at least once).
A message that trips anything on its way into the queue (a dedup id or topic that cannot be
encoded, say) is dead-lettered on its own and the rest go on: raised, it would withhold its PUBACK
and, since acknowledgements go in order, every one behind it. Duplicates are suppressed only where
a mapping names the message's id (`deduplication_id`: an MQTT v5 user property or a JSON field),
never by payload, so two identical clicks stay two clicks.

With `batch_size` > 1 each message is queued as a record to collect, and the event batcher
(`router.delivery.event_batcher`) turns runs of them into `{"Records": [...]}` invocations.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from router.config import AppEventMapping
from router.delivery.async_queue import EventTooLarge, QueuedEvent, Stage, encode_event, fitting
from router.delivery.dead_letter import DeadLetter
from router.delivery.event_batcher import EventBatcher
from router.delivery.event_queue import EventQueue
from router.events.app_event import app_event, app_record, dedup_id
from router.events.s3_match import topic_matches
from router.observability.metrics import Metrics

# (payload, topic, MQTT v5 user properties) of one message.
Message = tuple[bytes, str, Sequence[tuple[str, str]] | None]


class AppEventRouter:
    def __init__(self, queue: EventQueue, dead_letter: DeadLetter, *, metrics: Metrics,
                 on_enqueued: Callable[[], None], batcher: EventBatcher | None = None, log: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._dead_letter = dead_letter
        self._metrics = metrics
        self._on_enqueued = on_enqueued
        self._batcher = batcher
        self._clock = clock
        # Bound once: a lazy proxy rebinds on every call (once per event here).
        self._log = log or structlog.get_logger("router.app_events").bind()
        self._mappings: dict[str, AppEventMapping] = {}

    def set_mappings(self, mappings: Mapping[str, AppEventMapping]) -> None:
        self._mappings = dict(mappings)
        if self._batcher is not None:
            self._batcher.set_mappings(self._mappings)

    def topics(self) -> list[str]:
        return sorted({m.mqtt_topic for m in self._mappings.values()})

    def wants(self, topic: str) -> bool:
        return any(topic_matches(m.mqtt_topic, topic) for m in self._mappings.values())

    async def accept_batch(self, items: Sequence[Message]) -> int:
        """Queue every message; returns the number of events (or records to batch) queued."""
        events: list[QueuedEvent] = []
        received = self._clock()
        for payload, topic, properties in items:
            try:
                events.extend(self._route(payload, topic, properties, received))
            except Exception as exc:
                reason = str(exc) if isinstance(exc, EventTooLarge) else f"unreadable app event ({type(exc).__name__})"
                await self._dead_letter.write(payload, reason=reason, source="mqtt-app", topic=topic)
        if not events:
            return 0
        result = await self._queue.enqueue(events, dedup_window=0)
        if result.accepted:
            if self._batcher is not None and any(e.stage == "collect" for e in events):
                self._batcher.added()
            self._on_enqueued()
        self._log.debug("app_events.queued", messages=len(items), events=result.accepted,
                        duplicates=result.duplicates)
        return result.accepted

    def _route(self, payload: bytes, topic: str, properties: Sequence[tuple[str, str]] | None,
               received: float) -> list[QueuedEvent]:
        """The events one message becomes, their JSON and keys already encoded so that whatever
        cannot be stored fails here, with this message, and not in the queue write for all."""
        events: list[QueuedEvent] = []
        for name, mapping in self._mappings.items():
            if not topic_matches(mapping.mqtt_topic, topic):
                continue
            event = app_event(payload, topic, topic_key=mapping.topic_key)
            if mapping.filter_criteria is not None and not mapping.filter_criteria.compiled.matches(event):
                self._metrics.filtered_out_records.labels(mapping=name).inc()
                continue
            key = None
            if mapping.deduplication_id is not None:
                key = dedup_id(payload, properties, user_property=mapping.deduplication_id.user_property,
                               json_field=mapping.deduplication_id.json_field)
                if key is not None:
                    key.encode()  # stored as given (an MQTT property may hold a lone surrogate)
            stage: Stage = "collect" if mapping.batch_size > 1 else "invoke"
            if stage == "collect":
                body = encode_event(app_record(payload, topic, received_at=received, message_id=str(uuid.uuid4())))
            else:
                body = encode_event(event)
            events.append(QueuedEvent(name, mapping.function_name, fitting(body, self._queue.max_event_bytes), key,
                                      stage=stage,
                                      dedup_window=mapping.deduplication_window_seconds))
        return events
