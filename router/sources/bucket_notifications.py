"""Shared routing of bucket notifications: payload bytes in, durably queued invocations out.

Both push transports (MQTT and webhooks) hand every payload here and acknowledge the sender only
after `accept` returns, which happens only once each matching record is committed to the
asynchronous queue, or the unreadable payload is committed to the dead-letter store. That single
rule is what makes an accepted notification impossible to lose.

Each record matching a mapping becomes one asynchronous invocation with the event
`{"Records": [record]}`, as S3 invokes Lambda; a record matching two mappings invokes both
functions. Records matching no mapping are counted and dropped, as S3 drops events no rule wants.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from router.config import BucketMapping, Config
from router.delivery.async_queue import EnqueueResult, EventTooLarge, QueuedEvent, encode_event, fitting
from router.delivery.dead_letter import DeadLetter
from router.delivery.event_queue import EventQueue
from router.events.dedup import dedup_key
from router.events.s3 import MalformedNotification, Store, event_record, parse_notification
from router.events.s3_match import MappingMatcher, Transport, rule_matches
from router.observability.metrics import Metrics

Outcome = Literal["accepted", "unmatched", "ignored", "malformed"]
# filtered_out_records label for records whose bucket no mapping of the transport names.
NO_MAPPING = "(unmatched)"


@dataclass(frozen=True)
class AcceptResult:
    outcome: Outcome
    records: int = 0  # object events found in the payload
    queued: int = 0  # invocations newly queued
    duplicates: int = 0  # invocations already accepted within the dedup window
    unmatched: int = 0  # records no mapping wanted
    reason: str | None = None  # why a payload was malformed, or why it held no object event
    dead_letter: Path | None = None


@dataclass
class _Routed:
    outcome: Outcome
    shape: str = ""
    note: str | None = None
    events: list[tuple[int, QueuedEvent]] = field(default_factory=list)  # (dedup window, event)
    records: int = 0
    unmatched: int = 0


class NotificationRouter:
    def __init__(
        self,
        config: Config,
        queue: EventQueue,
        dead_letter: DeadLetter,
        *,
        metrics: Metrics,
        on_enqueued: Callable[[], None] = lambda: None,
        log: Any = None,
    ) -> None:
        self._config = config
        self._queue = queue
        self._dead_letter = dead_letter
        self._metrics = metrics
        self._on_enqueued = on_enqueued
        # Bound once: a lazy proxy rebinds on every call (once per event here).
        self._log = log or structlog.get_logger("router.notifications").bind()
        self._matchers: dict[Transport, MappingMatcher] = {}
        self.set_mappings(config.bucket_mappings())

    def set_mappings(self, mappings: Mapping[str, BucketMapping]) -> None:
        """The bucket mappings notifications are matched against from now on (a payload being
        routed finishes with the set it started with)."""
        self._matchers = {
            "mqtt": MappingMatcher(mappings.items(), "mqtt"),
            "webhook": MappingMatcher(mappings.items(), "webhook"),
        }

    def matcher(self, transport: Transport) -> MappingMatcher:
        return self._matchers[transport]

    async def accept(
        self,
        payload: bytes,
        *,
        transport: Transport,
        topic: str | None = None,
        store: Store = "auto",
    ) -> AcceptResult:
        """Route one payload; durable when it returns. Raises when neither the queue nor the
        dead-letter store could take it (the sender must then retry)."""
        return await self.accept_batch([(payload, topic)], transport=transport, store=store)

    async def accept_batch(
        self,
        items: Sequence[tuple[bytes, str | None]],
        *,
        transport: Transport,
        store: Store = "auto",
    ) -> AcceptResult:
        """Route payloads that arrived together, `(payload, topic)` each, with one queue write: the
        MQTT source hands over everything one socket read delivered. Durable when it returns;
        raises when any of it could not be kept (then none of it may be acknowledged, and a
        redelivery of what did commit is deduplicated). The result sums the batch."""
        source = "seaweedfs" if store == "seaweedfs" else transport
        matcher = self._matchers[transport]
        by_window: dict[int, list[QueuedEvent]] = {}
        outcomes: list[Outcome] = []
        records = unmatched = 0
        reason: str | None = None
        dead_letter: Path | None = None
        for payload, topic in items:
            try:
                routed = self._route(payload, topic, matcher, store)
            except Exception as exc:
                # Anything that trips over one payload (the parser, a key that cannot be encoded, a
                # number too large for a date) is that payload's problem: it is dead-lettered and
                # intake goes on. Were it raised, MQTT would withhold its PUBACK and, since
                # acknowledgements go in order, everything behind it, for good; the webhook would
                # answer 503 to every retry. Only the queue's own errors (below) are retried.
                reason = str(exc) if isinstance(exc, MalformedNotification | EventTooLarge) else (
                    f"unreadable notification ({type(exc).__name__})")
                dead_letter = await self._dead_letter.write(payload, reason=reason, source=source, topic=topic)
                self._count(source, "malformed")
                outcomes.append("malformed")
                continue
            if routed.outcome == "ignored":
                reason = routed.note or None
            records += routed.records
            unmatched += routed.unmatched
            for window, event in routed.events:
                by_window.setdefault(window, []).append(event)
            outcomes.append(routed.outcome)
            if routed.outcome != "accepted":
                self._count(source, routed.outcome)
                self._log.debug(f"notification.{routed.outcome}", source=source, shape=routed.shape,
                                records=routed.records, reason=routed.note)

        queued = duplicates = 0
        if by_window:
            queued, duplicates = await self._enqueue(by_window)
            for outcome in outcomes:
                if outcome == "accepted":
                    self._count(source, "accepted")
            self._log.debug("notification.accepted", source=source, notifications=len(items), records=records,
                            queued=queued, duplicates=duplicates, unmatched=unmatched)
        return AcceptResult(
            _summary(outcomes), records=records, queued=queued, duplicates=duplicates, unmatched=unmatched,
            reason=reason, dead_letter=dead_letter,
        )

    def _route(self, payload: bytes, topic: str | None, matcher: MappingMatcher, store: Store) -> _Routed:
        """What one payload becomes: the events to queue (their JSON already encoded, so a value that
        cannot be serialised fails here, as this payload's problem) and its outcome."""
        parsed = parse_notification(payload, store=store)
        if not parsed.events:
            return _Routed("ignored", shape=parsed.shape, note=parsed.note or "")
        events: list[tuple[int, QueuedEvent]] = []
        unmatched = 0
        for event in parsed.events:
            candidates = matcher.candidates(event.bucket, topic)
            matched = [(n, m) for n, m in candidates
                       if rule_matches(m.bucket_notifications, bucket=event.bucket,
                                       event_name=event.event_name, key=event.key)]
            if len(matched) != len(candidates) or not candidates:
                # Each mapping of this bucket whose rule said no has filtered the record out.
                wanted = {name for name, _ in matched}
                for name in [n for n, _ in candidates if n not in wanted] or ([] if matched else [NO_MAPPING]):
                    self._metrics.filtered_out_records.labels(mapping=name).inc()
            if not matched:
                unmatched += 1
                continue
            key = dedup_key(event)
            for name, mapping in matched:
                rule = mapping.bucket_notifications
                record = event_record(
                    event, event_format=rule.event_format, region=self._config.region, configuration_id=name
                )
                if mapping.filter_criteria is not None and not mapping.filter_criteria.compiled.matches(record):
                    # Lambda's filter criteria, on the record as the function would receive it.
                    self._metrics.filtered_out_records.labels(mapping=name).inc()
                    continue
                body = fitting(encode_event({"Records": [record]}), self._queue.max_event_bytes)
                events.append((mapping.deduplication_window_seconds,
                               QueuedEvent(name, mapping.function_name, body, key)))
        matched_any = unmatched < len(parsed.events)
        return _Routed("accepted" if matched_any else "unmatched", shape=parsed.shape, events=events,
                       records=len(parsed.events), unmatched=unmatched)

    async def _enqueue(self, by_window: dict[int, list[QueuedEvent]]) -> tuple[int, int]:
        if len(by_window) == 1:
            [(window, events)] = by_window.items()
            result = await self._queue.enqueue(events, dedup_window=window)
            if result.accepted:
                self._on_enqueued()
            return result.accepted, result.duplicates
        results = await asyncio.gather(
            *(self._queue.enqueue(events, dedup_window=window) for window, events in by_window.items()),
            return_exceptions=True,
        )
        done = [r for r in results if isinstance(r, EnqueueResult)]
        queued = sum(r.accepted for r in done)
        if queued:
            self._on_enqueued()
        for failure in results:
            if isinstance(failure, BaseException):
                raise failure  # whatever did commit is deduplicated when the sender retries
        return queued, sum(r.duplicates for r in done)

    def _count(self, source: str, outcome: str) -> None:
        self._metrics.notifications.labels(source=source, outcome=outcome).inc()


def _summary(outcomes: list[Outcome]) -> Outcome:
    """One payload's outcome, or for a batch the most useful one: accepted if anything was."""
    order: tuple[Outcome, ...] = ("accepted", "malformed", "unmatched", "ignored")
    return next((outcome for outcome in order if outcome in outcomes), "ignored")
