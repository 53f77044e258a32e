"""The librdkafka backend of a stream mapping's source (`kafka.client: confluent`).

Why a second client: aiokafka parses every fetched record in Python on the event loop, a third of
the daemon's CPU on a busy stream. librdkafka (the confluent-kafka wheel) fetches and decodes on
its own threads; what is left on ours is taking its Message objects apart. Everything above the
consumer (start positions, hand-back, commit fencing, probe, status) is `StreamSource`'s, shared
with the aiokafka backend, so both behave alike; what differs is how the consumer meets the loop:

* **One poll thread per mapping** calls `consume()` (the GIL is released while it waits) and hands
  each batch to the loop as (offset, key, value, timestamp) rows per partition. At most
  `BATCHES_IN_FLIGHT` batches are handed over and not yet taken: the loop always has the next one
  when it finishes a batch (waiting for each hand-over left the loop idle while the poll thread
  got the GIL back: a third slower), and librdkafka's own queue (`queued.max.messages.kbytes`)
  bounds what is prefetched.
* **Rebalance callbacks** run inside `consume()`, on the poll thread. They run the shared steps on
  the loop and wait for them, so a revocation finishes (in-flight batches drained, checkpoints
  committed while the generation still owns the shards) before the group moves on, as with
  aiokafka. Start positions are handed to `assign()`: librdkafka refuses a seek on a partition
  whose fetching has not started yet.
* **The member consumer is the poll thread's alone.** What the loop needs done on it (commits,
  pauses, seeks) is queued to that thread, which runs it between two `consume()` calls (at most
  `POLL_BUSY_SECONDS` later while shards have work, `POLL_IDLE_SECONDS` otherwise) or at once
  while it waits for the loop. Measured with Tansu: a commit or offset query made on the member
  from another thread while the poll thread sat in `consume()` or in a rebalance callback did not
  come back until it left (or at all; an asynchronous commit from the loop blocked the loop), and
  the same call from the poll thread answered in 1-2 ms. Lookups (committed offsets, watermarks,
  offsets for a time, metadata) go to a second consumer that never joins the group, from the
  default executor. `close()` runs only after the poll thread has stopped.
* **Pause/resume and rewinds**: librdkafka stops fetching a paused partition, but records it had
  prefetched, and batches already handed over, still arrive. Those of a full shard are not given
  to it: the partition is rewound (a seek to the first of them) and fetched again on resume, so a
  full shard holds its buffer plus one batch at most, as with aiokafka. The same rewind takes back
  records of a shard not yet set up. A rewind is exact: every batch the poll thread took before
  its seek ran is stale for that partition and dropped (`_stale_until`), so nothing after the
  rewind point slips in ahead of the refetch and leaves a gap.
* The group uses the **roundrobin** assignor, aiokafka's default, so members on either backend can
  share a group while a deployment moves from one to the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from router.config import Config, KafkaConfig, StreamMapping
from router.events.kinesis import FetchedRecord
from router.kafka_client import rdkafka_options
from router.sources.kafka import (
    COMMIT_WAIT_SECONDS,
    FETCH_MAX_RECORDS,
    FETCH_MAX_WAIT_MS,
    PROBE_TIMEOUT_SECONDS,
    CommitRefused,
    ShardStart,
    StreamSource,
)

T = TypeVar("T")

# How long consume() waits for records: also how soon the poll thread runs a queued call (a
# commit) or notices a stop when no records come. While a shard has records in flight or
# uncommitted a commit is coming, and the time it waits for the poll thread is a finished batch a
# crash repeats (at 10 ms, and at 5 ms in a full suite run, a SIGKILL test under CPU load
# redelivered one): 1 ms then, 3.8 % of a core while a slow batch runs with nothing to fetch
# (aiokafka: 1.8 %). Otherwise 20 ms: 1.35 % of a core per idle mapping (measured).
POLL_BUSY_SECONDS = 0.001
POLL_IDLE_SECONDS = 0.02
# Batches handed to the loop and not yet taken (see the module docstring).
BATCHES_IN_FLIGHT = 2
# What librdkafka may prefetch for all the mapping's shards together, and how soon it looks again
# when that is full.
PREFETCH_KBYTES = 16 * 1024
FETCH_QUEUE_BACKOFF_MS = 10
# librdkafka's logs, routed through our JSON logging (it writes its own format to stderr otherwise).
_RDKAFKA_LOG = logging.getLogger("router.sources.rdkafka")
# Commit errors that mean another generation owns the shard now.
_FENCED = frozenset({
    KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID, KafkaError._ASSIGNMENT_LOST, KafkaError._STATE,
})


def confluent_options(config: Config, name: str, mapping: StreamMapping) -> dict[str, Any]:
    """librdkafka's settings for a mapping's consumer (the aiokafka backend's, in its names)."""
    kafka = config.kafka or KafkaConfig()
    function = config.functions.get(mapping.function_name)
    timeout_ms = (function.timeout if function else 900) * 1000
    return {
        **rdkafka_options(kafka),
        "client.id": f"{kafka.client_id}-{name}",
        "group.id": mapping.group_id(name),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # see consumer_options
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": min(kafka.heartbeat_interval_ms, kafka.session_timeout_ms // 3),
        # Also the rebalance timeout librdkafka asks the group for: a revocation may finish an
        # invocation in flight.
        "max.poll.interval.ms": max(300_000, timeout_ms + 60_000),
        "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
        "partition.assignment.strategy": "roundrobin",
        "queued.max.messages.kbytes": PREFETCH_KBYTES,
        # A full prefetch queue pauses fetching for this long (librdkafka's default, 1 s, left
        # the shards idle for most of that second once they had drained the queue).
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        # Brokers close idle connections (Tansu every ~20 s) and librdkafka reconnects by itself:
        # not worth a log line each time. Lost brokers still reach _on_error.
        "log.connection.close": False,
    }


class ConfluentStreamSource(StreamSource):
    def _init_client(self) -> None:
        self._options = confluent_options(self._config, self.name, self.mapping)
        self._consumer: Consumer | None = None  # the group member: fetches, commits
        self._lookup: Consumer | None = None  # never joins: offsets, watermarks, metadata
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt = threading.Event()  # the poll thread's stop signal
        self._polling: asyncio.Future[None] | None = None  # the poll thread's end
        self._fetch_error: int | None = None
        # What the poll thread is told: calls to run on the member (see _call), and the futures of
        # coroutines it handed to the loop once they are done.
        self._calls: queue.SimpleQueue[_Call | concurrent.futures.Future[Any]] = queue.SimpleQueue()
        self._taken = 0  # batches the poll thread has taken from consume() (it alone writes this)
        # Per partition, the last batch number a rewind makes stale (inf while the seek is queued).
        self._stale_until: dict[int, float] = {}
        # Batches handed to the loop and not yet taken (poll thread only).
        self._batches: set[concurrent.futures.Future[None]] = set()
        self._serving = False  # whether a poll thread takes calls (under _calls_lock)
        self._calls_lock = threading.Lock()
        self._owned: frozenset[int] = frozenset()  # the partitions librdkafka assigned us (see _assignment)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping.set()
        await self._end(self._prober)
        # Hand the shards back while the poll thread still runs: it makes the commits.
        if self._consumer is not None:
            await self._hand_back(self._assignment(), max(0.1, deadline - loop.time() - 1.5))
        self._halt.set()
        if self._polling is not None:
            await asyncio.wait({self._polling}, timeout=max(0.5, deadline - loop.time() - 1.0))
        await self._end(self._supervisor)
        await self._close_consumer(max(1.0, deadline - loop.time()))
        self.state = "Disabled"

    async def _close_consumer(self, timeout: float) -> None:
        consumer, lookup = self._consumer, self._lookup
        self._consumer = self._lookup = None
        # Leaves the group; the revoke callback it runs finds the shards handed back already.
        for handle in (consumer, lookup):
            if handle is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.to_thread(handle.close), timeout=timeout)

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()  # the poll thread's way back
        failures = 0
        while not self._stopping.is_set():
            try:
                lookup = Consumer({**self._options, "client.id": f"{self._options['client.id']}-lookup",
                                   "logger": _RDKAFKA_LOG})
                consumer = Consumer({**self._options, "error_cb": self._on_error, "logger": _RDKAFKA_LOG})
                consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                   on_lost=self._on_revoke)
            except Exception as exc:  # librdkafka refused the settings
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._log.error("stream.consumer_failed", error_type=type(exc).__name__, error=str(exc))
                await self._wait_to_retry(first, failures)
                continue
            failures = 0
            self._consumer, self._lookup = consumer, lookup
            self._halt.clear()
            await self._run_consumer(first, "confluent", self._run_poll_thread(consumer))

    async def _run_poll_thread(self, consumer: Consumer) -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        self._polling = ended

        def run() -> None:
            try:
                self._poll(consumer)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, ended, exc)
            else:
                loop.call_soon_threadsafe(_settle, ended, None)

        threading.Thread(target=run, name=f"rdkafka-poll:{self.name}", daemon=True).start()
        await asyncio.shield(ended)

    # -- the poll thread -----------------------------------------------------------------------------

    def _poll(self, consumer: Consumer) -> None:
        """consume() until stopped, handing each batch to the loop."""
        with self._calls_lock:
            self._serving = True
        self._batches.clear()
        self._stale_until.clear()
        try:
            while not self._halt.is_set():
                wait = POLL_BUSY_SECONDS if self._commit_coming() else POLL_IDLE_SECONDS
                messages = consumer.consume(FETCH_MAX_RECORDS, wait)
                self._run_calls(block=False)
                if not messages:
                    continue
                batches: dict[int, list[FetchedRecord]] = {}
                errors: list[KafkaError] = []
                for message in messages:
                    error = message.error()
                    if error is not None:
                        errors.append(error)
                        continue
                    partition = message.partition()
                    rows = batches.get(partition)  # type: ignore[arg-type]
                    if rows is None:
                        rows = batches[partition] = []  # type: ignore[index]
                    rows.append((message.offset(), message.key(), message.value(),  # type: ignore[arg-type]
                                 message.timestamp()[1]))
                self._taken += 1
                self._batches.add(self._hand_over(self._deliver(batches, errors, self._taken)))
                while len(self._batches) >= BATCHES_IN_FLIGHT:
                    self._run_calls(block=True)
        finally:
            with self._calls_lock:
                self._serving = False
                while True:  # nobody will run these now
                    try:
                        item = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Call) and item.done.set_running_or_notify_cancel():
                        item.done.set_exception(RuntimeError("the consumer stopped"))

    def _commit_coming(self) -> bool:
        """Whether a shard has records in flight or not yet committed (read from the poll thread:
        a shard added or removed meanwhile makes it answer yes)."""
        try:
            return any(cp.outstanding or cp.dirty for cp in self._owner.checkpoints().values())
        except RuntimeError:
            return True

    def _hand_over(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine on the loop; the poll thread hears when it is done (see _run_calls)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.add_done_callback(self._calls.put)
        return future

    def _wait_for_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop from the poll thread and wait for it, running the calls it
        queues (see _call) meanwhile."""
        future = self._hand_over(coroutine)
        while self._run_calls(block=True) is not future:
            pass
        return future.result()

    def _run_calls(self, *, block: bool) -> concurrent.futures.Future[Any] | None:
        """Run queued calls until the queue is empty, or with `block` until a coroutine handed to
        the loop is done (returned). A taken batch frees its slot; one whose delivery failed stops
        the poll thread (the supervisor rebuilds the consumer)."""
        while True:
            try:
                item = self._calls.get() if block else self._calls.get_nowait()
            except queue.Empty:
                return None
            if isinstance(item, _Call):
                item.run()
                continue
            if item in self._batches:
                self._batches.discard(item)
                item.result()  # raises what the delivery raised
            if block:
                return item

    def _post(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue a call for the poll thread (it fails at once when no poll thread is running)."""
        call = _Call(fn)
        with self._calls_lock:
            if self._serving:
                self._calls.put(call)
                return call.done
        call.done.set_exception(RuntimeError("the consumer is not running"))
        return call.done

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run a call on the member consumer (on the poll thread) and wait for its result."""
        return await asyncio.wrap_future(self._post(fn))

    async def _deliver(self, batches: dict[int, list[FetchedRecord]], errors: list[KafkaError],
                       number: int) -> None:
        for error in errors:
            if error.code() != self._fetch_error:
                self._fetch_error = error.code()
                self._log.warning("stream.fetch_failed", error_type=error.name(), error=error.str())
        if batches:
            self._fetch_error = None
        stale = self._stale_until
        for partition, rows in batches.items():
            if number <= stale.get(partition, 0):
                continue  # taken before a rewind of this partition: fetched again after it
            if partition in self._full or not self._owner.records(partition, rows):
                self._rewind(partition, rows[0][0])
            await asyncio.sleep(0)  # let finished invocations be answered in between

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        mine = {tp.partition for tp in partitions if tp.topic == self.topic}
        if self._halt.is_set():
            return
        starts: dict[int, ShardStart] | None = None
        failure: BaseException = RuntimeError("no start positions")
        try:
            starts = self._wait_for_loop(self._start_positions(mine))
        except Exception as exc:
            failure = exc
        for partition in mine:  # what was taken before belongs to an earlier assignment
            self._stale_until[partition] = self._taken
        if starts is not None:
            consumer.assign([TopicPartition(self.topic, p, start.offset) for p, start in starts.items()])
        else:
            consumer.assign(partitions)  # fetched from the group's offsets, refused until set up
        self._owned = frozenset(mine)
        self._wait_for_loop(self._start_shards(mine, starts if starts is not None else failure))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._halt.is_set():  # stopping: the shards were handed back already
            self._owned = frozenset()
            return
        revoked = {tp.partition for tp in partitions if tp.topic == self.topic}
        try:
            self._wait_for_loop(self._revoked(revoked))
        finally:
            self._owned = self._owned - revoked

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (on the poll thread): only "no broker answers" changes state;
        the others are logged once each (librdkafka retries them itself)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._client_error, error)

    def _client_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._set_connected(False, f"{error.name()}: {error.str()}")
        elif error.fatal():
            self.last_error = f"{error.name()}: {error.str()}"
            self._log.error("stream.consumer_error", error_type=error.name(), error=error.str())

    # -- backend -------------------------------------------------------------------------------------

    def _live(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the consumer is closed")
        return self._consumer

    def _assignment(self) -> set[int]:
        """Kept by the rebalance callbacks: librdkafka's assignment() asks its group thread, which
        does not answer while a callback runs (the loop would wait for the poll thread, which
        waits for the loop)."""
        return set(self._owned) if self._consumer is not None else set()

    def _consumer_open(self) -> bool:
        return self._consumer is not None

    def _seek(self, partition: int, offset: int) -> None:
        """A retried setup's start (the first one goes into assign()): a rewind, so that batches
        taken before it are dropped."""
        self._rewind(partition, offset)

    def _lookups(self) -> Consumer:
        if self._lookup is None:
            raise RuntimeError("the consumer is closed")
        return self._lookup

    async def _committed(self, partitions: list[int]) -> dict[int, int | None]:
        lookup = self._lookups()
        wanted = [TopicPartition(self.topic, p) for p in partitions]
        found = await asyncio.to_thread(lookup.committed, wanted, timeout=PROBE_TIMEOUT_SECONDS * 2)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    def _ask_broker(self, partitions: list[int]) -> dict[int, tuple[int, int]]:
        """The probe's question (watermarks, or metadata without shards), then the lookup
        consumer's log lines, which wait in its queue until served."""
        lookup = self._lookups()
        try:
            if partitions:
                return self._watermarks(partitions)
            lookup.list_topics(self.topic, timeout=PROBE_TIMEOUT_SECONDS)
            return {}
        finally:
            lookup.poll(0)

    def _watermarks(self, partitions: list[int]) -> dict[int, tuple[int, int]]:
        lookup = self._lookups()
        return {p: lookup.get_watermark_offsets(TopicPartition(self.topic, p), timeout=PROBE_TIMEOUT_SECONDS,
                                                cached=False)
                for p in partitions}

    async def _beginnings(self, partitions: list[int]) -> dict[int, int]:
        marks = await asyncio.to_thread(self._watermarks, partitions)
        return {p: low for p, (low, _) in marks.items()}

    async def _ends(self, partitions: list[int]) -> dict[int, int]:
        marks = await asyncio.to_thread(self._watermarks, partitions)
        return {p: high for p, (_, high) in marks.items()}

    async def _offsets_for_time(self, partitions: list[int], timestamp_ms: int) -> dict[int, int | None]:
        lookup = self._lookups()
        wanted = [TopicPartition(self.topic, p, timestamp_ms) for p in partitions]
        found = await asyncio.to_thread(lookup.offsets_for_times, wanted, timeout=PROBE_TIMEOUT_SECONDS)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    async def _commit(self, offsets: dict[int, int]) -> None:
        consumer = self._live()
        wanted = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            answered = await asyncio.wait_for(
                self._call(lambda: consumer.commit(offsets=wanted, asynchronous=False)), COMMIT_WAIT_SECONDS * 2)
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and error.code() in _FENCED:
                raise CommitRefused(error.str()) from exc
            raise
        for tp in answered or []:
            if tp.error is not None:
                if tp.error.code() in _FENCED:
                    raise CommitRefused(tp.error.str()) from KafkaException(tp.error)
                raise KafkaException(tp.error)

    def _rewind(self, partition: int, offset: int) -> None:
        """Fetch the partition again from `offset`; batches taken before the seek runs are stale."""
        consumer = self._consumer
        if consumer is None:
            return
        self._stale_until[partition] = math.inf

        def seek() -> None:
            self._stale_until[partition] = self._taken
            _quietly(consumer.seek, TopicPartition(self.topic, partition, offset))

        self._post(seek)

    def _pause_partition(self, partition: int) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._post(lambda: _quietly(consumer.pause, [TopicPartition(self.topic, partition)]))

    def _resume_partition(self, partition: int) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._post(lambda: _quietly(consumer.resume, [TopicPartition(self.topic, partition)]))

    async def _probe(self) -> bool:
        consumer = self._consumer
        if consumer is None:
            return False
        assigned = sorted(self._assignment())
        listed = await asyncio.to_thread(self._ask_broker, assigned)
        if not assigned:
            return True
        # The last fetch's high watermark is exact where ListOffsets is not (see high_watermarks).
        fetched = await self._call(lambda: {
            p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)[1] for p in assigned})
        self._owner.high_watermarks({p: max(high, fetched.get(p) or 0) for p, (_, high) in listed.items()})
        return True


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """A pause, resume or seek on a partition we no longer hold fails; nothing to do then."""
    with contextlib.suppress(KafkaException, RuntimeError):
        fn(*args)


class _Call:
    """A call for the poll thread to make on the member consumer, and its result."""

    __slots__ = ("done", "fn")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run(self) -> None:
        if not self.done.set_running_or_notify_cancel():  # the loop stopped waiting for it
            return
        try:
            self.done.set_result(self.fn())
        except BaseException as exc:
            self.done.set_exception(exc)


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)

