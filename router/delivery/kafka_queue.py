"""The asynchronous invocation queue on Kafka (`async_queue: kafka://TOPIC`), for several replicas.

The SQLite queue keeps what a replica accepted on that replica's disk; when the pod is gone, so are
its events. Here the queue is two topics every replica shares, so whatever one replica accepted,
another finishes:

* `TOPIC` holds accepted events. `enqueue` returns (and the MQTT PUBACK or the webhook's 200 goes
  out) only once the broker acknowledged the record with `acks=all` (and an idempotent producer
  where the broker grants one; Tansu does not, so a producer retry may store an event twice, which
  the dedup key suppresses for notifications and at-least-once allows for the rest).
* `TOPIC.delayed` holds what an attempt left for later: a retry with its not-before time, a
  destination record waiting for its destination (stage "deliver"), a batch of app events made from
  collected messages. Keeping these apart means a retry due in two minutes never holds back the
  committed offset of fresh events.

Every replica consumes both topics in one consumer group (`router-queue-TOPIC`). A record a
replica fetched is held in memory and offered to the invoker, which claims and settles it exactly as
it does with the SQLite queue. The group commits, per partition, the offset of the oldest record
not yet finished (`ShardCheckpoint`): an event is finished once it succeeded, its destination
record is written, it was dropped by Lambda's rules, or its next attempt was produced (acks=all) to
the delayed topic. So a replica that dies at any moment leaves every unfinished event at or after
its group's committed offset, and the partition's next owner reads it again: at-least-once, never
lost. What it can cost is duplicates: events finished after the last commit (every COMMIT_INTERVAL
seconds) run again, and a retry may run once more than scheduled.

Deduplication: an event with a dedup key (a bucket notification) is produced with the key
`mapping, dedup key`, so every copy of a notification lands on one partition whichever replica
received it, and that partition's owner suppresses copies within the window. The decision is a
pure function of the partition's records, so a new owner rebuilds it: at assignment it reads back
from the first record inside the widest window (Kafka's offset-for-time lookup) to the committed
offset, learning the keys without invoking anything. Memory: one entry per distinct key inside the
window on the partitions a replica owns.

Held records are bounded per partition (MAX_HELD): a partition with that many unfinished records
(a slow function, retries waiting) is paused until half of them are done. A partition the group
takes away is given a short while (REVOKE_WAIT) for its claimed events to settle; what they finished
is committed, the rest runs again on the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

from router.config import Config, KafkaConfig
from router.delivery.async_queue import (
    Claim,
    ClaimRequest,
    Collected,
    EnqueueResult,
    LastResponse,
    MappingStats,
    PendingDelivery,
    QueueClosed,
    QueuedEvent,
    Stage,
    StoredEvent,
    event_json,
    fitting,
)
from router.delivery.backoff import Backoff
from router.delivery.checkpoint import ShardCheckpoint
from router.kafka_client import client_options, ensure_topics
from router.observability.metrics import Metrics
from router.runtime.request_ids import RequestIds

HEADER = "router-queue"  # the event's queue fields as JSON; the value is the event's JSON untouched
DELAYED_SUFFIX = ".delayed"
DEFAULT_PARTITIONS = 12
COMMIT_INTERVAL = 0.5
MAX_HELD = 10_000
REVOKE_WAIT = 10.0
FETCH_TIMEOUT_MS = 500
FETCH_MAX_RECORDS = 2000
# Room left in a produce request for the record's key, queue header and the batch framing.
RECORD_OVERHEAD_BYTES = 8192
PRODUCE_RETRY = Backoff(first=0.5, cap=10.0, jitter=True)


def dedup_horizon(config: Config) -> float:
    """The widest deduplication window of the configured push mappings (how far back a new
    partition owner reads to learn the keys already accepted)."""
    windows = [m.deduplication_window_seconds for m in config.bucket_mappings().values()]
    windows += [m.deduplication_window_seconds for m in config.app_event_mappings().values()
                if m.deduplication_id is not None]  # app events are deduplicated only by a named id
    return float(max(windows, default=0))


@dataclass(slots=True)
class _Partition:
    tp: TopicPartition
    checkpoint: ShardCheckpoint
    start: int  # records before this offset were finished by an earlier owner: dedup history only
    dedup: dict[str, float] | None  # scope → accepted_at; None on the delayed topic
    held: set[int] = field(default_factory=set)
    paused: bool = False
    # "leaving": the group is taking it away (nothing new is fetched, offered or claimed; what is
    # claimed may still finish and be committed); "gone": forgotten, its outcomes are ignored.
    state: Literal["owned", "leaving", "gone"] = "owned"

    @property
    def owned(self) -> bool:
        return self.state == "owned"


@dataclass(slots=True)
class _Held:
    part: _Partition
    offset: int
    key: bytes | None
    event: StoredEvent
    meta: dict[str, Any]
    claimed: bool = False


def _fresh_meta(mapping: str, function: str, request_id: str, at: float, stage: Stage, *,
                dedup_key: str | None = None, dedup_window: float = 0.0) -> dict[str, Any]:
    """The queue fields of an event before its first attempt (the header `_decode` reads back)."""
    return {"mapping": mapping, "function": function, "request_id": request_id, "accepted_at": at,
            "due_at": at, "stage": stage, "invoke_count": 0, "system_errors": 0, "last_response": None,
            "delivery": None, "delivery_attempts": 0, "dedup_key": dedup_key, "dedup_window": dedup_window}


def _headers(meta: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(HEADER, json.dumps(meta, separators=(",", ":")).encode())]


def _header(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any] | None:
    """A queue record's fields (its header's JSON object), or None for a record that has none."""
    raw = next((value for name, value in record.headers or () if name == HEADER), None)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def _decode(record: ConsumerRecord[bytes, bytes]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A queue record's header and the StoredEvent fields it gives, or None for anything else (a
    record someone else wrote to the topic, a damaged one): one bad record must not stop a partition."""
    meta = _header(record)
    if meta is None or record.value is None:
        return None
    try:
        stage = meta["stage"]
        if stage not in ("collect", "invoke", "deliver"):
            return None
        fields: dict[str, Any] = {
            "mapping": str(meta["mapping"]), "function": str(meta["function"]),
            "event_json": record.value.decode(), "request_id": str(meta["request_id"]),
            "accepted_at": float(meta["accepted_at"]), "due_at": float(meta["due_at"]), "stage": stage,
            "invoke_count": int(meta["invoke_count"]), "system_errors": int(meta["system_errors"]),
            "last_response": LastResponse.from_json(meta.get("last_response")),
            "delivery": PendingDelivery.from_json(meta.get("delivery")),
            "delivery_attempts": int(meta.get("delivery_attempts") or 0),
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta, fields


def is_copy(seen: dict[str, float], meta: dict[str, Any]) -> bool:
    """Whether an event repeats one accepted within its dedup window (Lambda's S3 trigger runs a
    notification once); a first copy is remembered. The same rule on the same records gives the
    same answers, which is how a new partition owner rebuilds `seen` from the log."""
    key = meta.get("dedup_key")
    if key is None:
        return False
    try:
        scope = f"{meta['mapping']}\x00{key}"
        accepted_at = float(meta["accepted_at"])
        window = float(meta.get("dedup_window") or 0)
    except (KeyError, TypeError, ValueError):
        return False
    last = seen.get(scope)
    if last is not None and last >= accepted_at - window:
        return True
    seen[scope] = accepted_at
    return False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, queue: KafkaQueue) -> None:
        self._queue = queue

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._queue._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._queue._assigned(assigned)


class KafkaQueue:
    def __init__(
        self, kafka: KafkaConfig, topic: str, *, partitions: int = DEFAULT_PARTITIONS,
        dedup_horizon: Callable[[], float] = lambda: 0.0, metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time, log: Any = None,
    ) -> None:
        self.topic = topic
        self.delayed_topic = f"{topic}{DELAYED_SUFFIX}"
        self.group_id = f"router-queue-{topic}"
        self.partitions = partitions
        self.metrics = metrics
        self.on_committed: Callable[[], None] | None = None
        self._kafka = kafka
        self.dedup_horizon = dedup_horizon
        self._clock = clock
        self._log = log or structlog.get_logger("router.kafka_queue")
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._parts: dict[TopicPartition, _Partition] = {}
        self._records: dict[int, _Held] = {}
        self._lanes: dict[tuple[str, Stage], list[tuple[float, int]]] = {}
        self._next_id = 0
        self._settled = asyncio.Event()  # a claimed record was settled (revocation waits on it)
        self._unstarted: set[TopicPartition] = set()  # assigned, but setting them up failed: retried
        self._unstarted_at = 0.0
        self._request_ids = RequestIds()

    @property
    def name(self) -> str:
        return f"kafka://{self.topic}"

    @property
    def is_open(self) -> bool:
        return self._producer is not None

    @property
    def max_event_bytes(self) -> int:
        """What fits in one produce request (`kafka.max_request_size`, the broker's limit too)."""
        return self._kafka.max_request_size - RECORD_OVERHEAD_BYTES

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._producer is not None:
            return
        await ensure_topics(self._kafka, [self.topic, self.delayed_topic], partitions=self.partitions)
        self._producer = await self._start_producer()
        options = client_options(self._kafka)
        session = self._kafka.session_timeout_ms
        self._consumer = AIOKafkaConsumer(
            **options, client_id=f"{self._kafka.client_id}-queue", group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=session,
            heartbeat_interval_ms=min(self._kafka.heartbeat_interval_ms, session // 3),
            rebalance_timeout_ms=session + int(REVOKE_WAIT * 1000) + 5000, fetch_max_wait_ms=100,
        )
        try:
            await self._consumer.start()
        except BaseException:
            await self._stop_clients()
            raise
        self._consumer.subscribe([self.topic, self.delayed_topic], listener=_Listener(self))
        self._tasks = [asyncio.create_task(self._fetch_loop(), name="kafka-queue-fetch"),
                       asyncio.create_task(self._commit_loop(), name="kafka-queue-commit")]
        self._log.info("kafka_queue.opened", topic=self.topic, group_id=self.group_id)

    async def _start_producer(self) -> AIOKafkaProducer:
        """acks=all, idempotent where the broker grants producer ids (see the module docstring)."""
        options = {**client_options(self._kafka), "client_id": f"{self._kafka.client_id}-queue",
                   "acks": "all", "max_request_size": self._kafka.max_request_size}
        producer = AIOKafkaProducer(**options, enable_idempotence=True)
        try:
            await producer.start()  # asks for the producer id
            return producer
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            self._log.warning("kafka_queue.not_idempotent", topic=self.topic, error_type=type(exc).__name__,
                              reason="the broker grants no producer id; a retried send may store an event "
                                     "twice (dedup keys suppress repeated notifications)")
        producer = AIOKafkaProducer(**options)
        await producer.start()
        return producer

    async def close(self) -> None:
        if self._producer is None:
            return
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self._commit()
        await self._stop_clients()
        self._parts.clear()
        self._records.clear()
        self._lanes.clear()

    async def _stop_clients(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        for client in (consumer, producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()

    # -- producing ---------------------------------------------------------------------------------

    def _live_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise QueueClosed("the asynchronous queue is not open")
        return self._producer

    async def _produce(self, records: Sequence[tuple[str, bytes | None, bytes, dict[str, Any]]]) -> None:
        """Send every (topic, key, value, fields) and return once the broker acknowledged all."""
        producer = self._live_producer()
        sent = [await producer.send(topic, value, key=key, headers=_headers(meta))
                for topic, key, value, meta in records]
        await asyncio.gather(*sent)

    async def enqueue(self, events: Sequence[QueuedEvent], *, dedup_window: float) -> EnqueueResult:
        """Store `events` (acks=all) and return; copies are suppressed by the partition's owner
        when it reads them, so `duplicates` is always 0 here (the metric counts them there)."""
        if not events:
            return EnqueueResult(0, 0)
        now = self._clock()
        records: list[tuple[str, bytes | None, bytes, dict[str, Any]]] = []
        for event, request_id in zip(events, self._request_ids.take(len(events)), strict=True):
            body = fitting(event_json(event.event), self.max_event_bytes)
            window = dedup_window if event.dedup_window is None else event.dedup_window
            key = f"{event.mapping}\x00{event.dedup_key}" if event.dedup_key is not None else request_id
            records.append((self.topic, key.encode(), body.encode(), _fresh_meta(
                event.mapping, event.function, request_id, now, event.stage, dedup_key=event.dedup_key,
                dedup_window=window)))
        await self._produce(records)
        return EnqueueResult(accepted=len(events), duplicates=0)

    async def _settle_by_producing(self, event_id: int, **changes: Any) -> None:
        """The event's next step (its queue fields with `changes`) goes to the delayed topic; only
        then is this record finished. A broker that is down is waited for (the record stays
        unfinished, so nothing is lost if we die meanwhile) unless the partition moved to another
        replica, which runs it again."""
        self._check_open()
        held = self._records.get(event_id)
        if held is None:
            return  # its partition moved away: the new owner runs it from its committed offset
        meta = {**held.meta, **changes, "dedup_key": None}  # a later attempt is no new notification
        failures = 0
        while True:
            try:
                await self._produce([(self.delayed_topic, held.key, held.event.event_json.encode(), meta)])
                break
            except KafkaError as exc:
                failures += 1
                if not held.part.owned or self._producer is None:
                    self._unhold(event_id)
                    return
                self._log.warning("kafka_queue.produce_failed", mapping=held.event.mapping,
                                  request_id=held.event.request_id, error_type=type(exc).__name__,
                                  attempt=failures)
                await asyncio.sleep(PRODUCE_RETRY.delay(failures))
        self._finish(event_id)

    # -- consuming ---------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        errors = 0
        while True:
            consumer = self._consumer
            if consumer is None:
                return
            try:
                batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client reconnects by itself; this loop must outlive anything
                errors += 1
                if errors == 1:
                    self._log.warning("kafka_queue.fetch_failed", error_type=type(exc).__name__, error=str(exc)[:300])
                await asyncio.sleep(PRODUCE_RETRY.delay(errors))
                continue
            if errors:
                self._log.info("kafka_queue.fetch_recovered", after_errors=errors)
                errors = 0
            admitted = False
            for tp, records in batches.items():
                part = self._parts.get(tp)
                if part is None or not part.owned:
                    with contextlib.suppress(IllegalStateError):
                        if records:
                            consumer.seek(tp, records[0].offset)  # fetched again once it is set up
                    if part is None:
                        self._unstarted.add(tp)
                    continue
                for record in records:
                    admitted |= self._take(part, record)
                if len(part.held) >= MAX_HELD and not part.paused:
                    part.paused = True
                    consumer.pause(tp)
            if admitted and self.on_committed is not None:
                self.on_committed()
            if self._unstarted and time.monotonic() - self._unstarted_at > 1.0:
                await self._retry_unstarted(consumer)
            await asyncio.sleep(0)

    async def _retry_unstarted(self, consumer: AIOKafkaConsumer) -> None:
        self._unstarted_at = time.monotonic()
        pending = (self._unstarted & consumer.assignment()) - self._parts.keys()
        self._unstarted.clear()
        if pending:
            with contextlib.suppress(Exception):  # logged by _assigned; tried again in a second
                await self._assigned(pending)

    def _take(self, part: _Partition, record: ConsumerRecord[bytes, bytes]) -> bool:
        """One fetched record: learn its dedup key, or hold it for the invoker. True when held."""
        offset = record.offset
        if offset < part.start:  # finished by an earlier owner: only what it says about copies
            if part.dedup is not None and (meta := _header(record)) is not None:
                is_copy(part.dedup, meta)
            return False
        if offset < part.checkpoint.next_offset:
            return False  # fetched again after a seek: already held or finished
        part.checkpoint.track(offset)
        decoded = _decode(record)
        if decoded is None:  # not ours or damaged: skipped, never a reason to stop the partition
            self._log.error("kafka_queue.record_unreadable", topic=part.tp.topic, shard=part.tp.partition,
                            sequence_number=offset, outcome="skipped")
            part.checkpoint.done([offset])
            return False
        meta, fields = decoded
        if part.dedup is not None:
            if is_copy(part.dedup, meta):
                part.checkpoint.done([offset])
                if self.metrics is not None:
                    self.metrics.duplicate_notifications.labels(mapping=fields["mapping"]).inc()
                return False
            if self.metrics is not None:
                self.metrics.async_events_received.labels(mapping=fields["mapping"]).inc()
        self._next_id += 1
        event_id = self._next_id
        event = StoredEvent(id=event_id, **fields)
        self._records[event_id] = _Held(part, offset, record.key, event, meta)
        part.held.add(event_id)
        self._offer(event_id)
        return True

    def _offer(self, event_id: int) -> None:
        held = self._records[event_id]
        event = held.event
        order = event.accepted_at if event.stage == "collect" else event.due_at
        heapq.heappush(self._lanes.setdefault((event.mapping, event.stage), []), (order, event_id))

    def _finish(self, event_id: int) -> None:
        """The record is done: the checkpoint may pass it."""
        held = self._records.pop(event_id, None)
        if held is None:
            return
        part = held.part
        part.held.discard(event_id)
        self._settled.set()
        if part.state == "gone":
            return
        part.checkpoint.done([held.offset])
        if part.paused and len(part.held) <= MAX_HELD // 2 and self._consumer is not None:
            part.paused = False
            with contextlib.suppress(IllegalStateError):
                self._consumer.resume(part.tp)

    def _unhold(self, event_id: int) -> None:
        """Forget a record without finishing it (its partition moved on; the new owner runs it)."""
        held = self._records.pop(event_id, None)
        if held is not None:
            held.part.held.discard(event_id)
            self._settled.set()

    # -- rebalances --------------------------------------------------------------------------------

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            horizon = self.dedup_horizon()
            beginning = await consumer.beginning_offsets(list(assigned))
            for tp in assigned:
                committed = await consumer.committed(tp)
                start = committed if committed is not None and committed >= 0 else beginning[tp]
                read_from = start
                main = tp.topic == self.topic
                if main and horizon > 0 and start > beginning[tp]:
                    found = await consumer.offsets_for_times({tp: int((self._clock() - horizon) * 1000)})
                    hit = found.get(tp)
                    if hit is not None:
                        read_from = max(beginning[tp], min(start, hit.offset))
                self._parts[tp] = _Partition(tp, ShardCheckpoint(start), start, {} if main else None)
                consumer.seek(tp, read_from)
            self._log.info("kafka_queue.partitions_assigned", partitions=sorted(f"{tp.topic}:{tp.partition}"
                                                                              for tp in assigned))
        except Exception as exc:  # the group will hand them out again; nothing was taken from them
            self._log.error("kafka_queue.assign_failed", error_type=type(exc).__name__, error=str(exc)[:300])
            raise

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        parts = [self._parts[tp] for tp in revoked if tp in self._parts]
        if not parts:
            return
        deadline = time.monotonic() + REVOKE_WAIT
        for part in parts:
            part.state = "leaving"
            part.paused = False
            for event_id in list(part.held):
                held = self._records.get(event_id)
                if held is not None and not held.claimed:
                    self._unhold(event_id)  # never started here: the next owner runs it
        while any(p.held for p in parts) and time.monotonic() < deadline:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), deadline - time.monotonic())
        await self._commit(parts)
        for part in parts:
            part.state = "gone"
            for event_id in list(part.held):
                self._unhold(event_id)
            self._parts.pop(part.tp, None)
        self._log.info("kafka_queue.partitions_revoked",
                       partitions=sorted(f"{p.tp.topic}:{p.tp.partition}" for p in parts))

    # -- commits -----------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            try:
                await self._commit()
            except Exception as exc:  # a missed commit only means more to run again; keep committing
                self._log.exception("kafka_queue.commit_loop_failed", error_type=type(exc).__name__)

    async def _commit(self, parts: Sequence[_Partition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        chosen = list(self._parts.values()) if parts is None else parts
        offsets = {p.tp: p.checkpoint.position for p in chosen
                   if p.checkpoint.dirty and p.state != "gone"}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # refused after a rebalance (fenced), or the broker is away
            self._log.warning("kafka_queue.commit_failed", error_type=type(exc).__name__,
                              error=str(exc).splitlines()[0][:300] if str(exc) else "")
            return
        for part in chosen:
            if part.tp in offsets:
                part.checkpoint.mark_committed(offsets[part.tp])

    # -- the invoker's side ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._producer is None:
            raise QueueClosed("the asynchronous queue is not open")

    async def claim(self, mapping: str, stage: Stage, limit: int) -> Claim:
        (claim,) = await self.claim_many([ClaimRequest(mapping, stage, limit, "")], {"": max(limit, 0)})
        return claim

    async def claim_many(self, requests: Sequence[ClaimRequest], budgets: dict[str, int]) -> list[Claim]:
        self._check_open()
        now = self._clock()
        left = dict(budgets)
        claims: list[Claim] = []
        for request in requests:
            limit = max(0, min(request.limit, left.get(request.budget, 0)))
            due_by = now if request.due_by is None else request.due_by
            heap = self._lanes.get((request.mapping, request.stage), [])
            taken: list[StoredEvent] = []
            while heap:
                due, event_id = heap[0]
                held = self._records.get(event_id)
                if held is None or held.claimed or not held.part.owned:
                    heapq.heappop(heap)  # finished, claimed or moved away since it was offered
                    continue
                if len(taken) >= limit or due > due_by:
                    break
                heapq.heappop(heap)
                held.claimed = True
                taken.append(held.event)
            left[request.budget] = left.get(request.budget, 0) - len(taken)
            claims.append(Claim(taken, heap[0][0] if heap else None))
        return claims

    async def release(self, event_id: int) -> None:
        held = self._records.get(event_id)
        if held is not None and held.claimed:
            held.claimed = False
            self._offer(event_id)

    async def complete(self, event_id: int) -> None:
        self._check_open()
        self._finish(event_id)

    async def reschedule(
        self, event_id: int, *, due_at: float, invoke_count: int, system_errors: int,
        last_response: LastResponse | None, last_error: str | None,
    ) -> None:
        changes: dict[str, Any] = {"due_at": due_at, "invoke_count": invoke_count, "system_errors": system_errors,
                                   "last_error": last_error}
        if last_response is not None:
            changes["last_response"] = last_response.to_json()
        await self._settle_by_producing(event_id, **changes)

    async def park_delivery(
        self, event_id: int, *, delivery: PendingDelivery, due_at: float, delivery_attempts: int,
        invoke_count: int, last_error: str | None,
    ) -> None:
        await self._settle_by_producing(
            event_id, stage="deliver", delivery=delivery.to_json(), due_at=due_at,
            delivery_attempts=delivery_attempts, invoke_count=invoke_count, last_error=last_error)

    # -- collecting app events into batches --------------------------------------------------------

    async def collecting(self) -> dict[str, str]:
        self._check_open()
        found: dict[str, str] = {}
        for held in self._records.values():
            if held.event.stage == "collect":
                found.setdefault(held.event.mapping, held.event.function)
        return found

    def _collectable(self, event_id: int) -> bool:
        held = self._records.get(event_id)
        return held is not None and held.part.owned and not held.claimed

    async def collect(self, mapping: str, function: str, *, limit: int, window: float) -> Collected:
        """As the SQLite queue's `collect`: the batch event is produced to the delayed topic first,
        then its messages are finished (a crash in between makes the batch again: at-least-once)."""
        self._check_open()
        now = self._clock()
        heap = self._lanes.get((mapping, "collect"), [])
        live = [(at, i) for at, i in heap if self._collectable(i)]
        if len(live) != len(heap):
            heapq.heapify(live)
            self._lanes[(mapping, "collect")] = heap = live
        if not heap:
            return Collected(0, None)
        oldest = heap[0][0]
        if len(heap) < limit and oldest + window > now:
            return Collected(0, oldest + window)
        ids: list[int] = []
        size = len('{"Records":[]}')
        while heap and len(ids) < limit:
            extra = len(self._records[heap[0][1]].event.event_json) + 1
            if ids and size + extra > self.max_event_bytes:
                break  # the rest make the next batch: one produce request holds this one
            ids.append(heapq.heappop(heap)[1])
            size += extra
        for event_id in ids:
            self._records[event_id].claimed = True
        batch = '{"Records":[' + ",".join(self._records[i].event.event_json for i in ids) + "]}"
        request_id = self._request_ids.next()
        meta = {**_fresh_meta(mapping, function, request_id, now, "invoke"), "accepted_at": oldest}
        try:
            await self._produce([(self.delayed_topic, request_id.encode(), batch.encode(), meta)])
        except BaseException:
            for event_id in ids:
                if event_id in self._records:
                    self._records[event_id].claimed = False
                    self._offer(event_id)
            raise
        for event_id in ids:
            self._finish(event_id)
        return Collected(1, None)

    # -- observing ---------------------------------------------------------------------------------

    async def stats(self) -> dict[str, MappingStats]:
        """What this replica holds of each mapping (records not fetched yet are the group's lag)."""
        self._check_open()
        now = self._clock()
        found: dict[str, list[Any]] = {}
        for held in self._records.values():
            event = held.event
            row = found.setdefault(event.mapping, [0, None, 0, 0, 0])
            row[0] += 1
            row[1] = event.accepted_at if row[1] is None else min(row[1], event.accepted_at)
            if event.stage == "invoke":
                if event.due_at > now:
                    row[2] += 1
                else:
                    row[4] += 1
            elif event.stage == "deliver":
                row[3] += 1
        return {name: MappingStats(r[0], r[1], r[2], r[3], r[4]) for name, r in found.items()}

    async def prune_dedup(self, older_than: float) -> int:
        removed = 0
        for part in self._parts.values():
            if part.dedup:
                stale = [scope for scope, at in part.dedup.items() if at < older_than]
                for scope in stale:
                    del part.dedup[scope]
                removed += len(stale)
        return removed

    def status(self) -> dict[str, Any]:
        return {
            "queue": self.name,
            "group_id": self.group_id,
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in self._parts),
            "held": len(self._records),
            "paused": sorted(f"{p.tp.topic}:{p.tp.partition}" for p in self._parts.values() if p.paused),
        }
