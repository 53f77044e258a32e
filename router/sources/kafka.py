"""The Kafka side of a stream mapping: group membership, shard iterators, fetching, commits.

One consumer group per mapping, never auto-committing. The source only moves records and
positions; what a shard does with its records is the owner's business (`ShardOwner`):

* **Assignment** (a rebalance gave us partitions): the starting position of each shard is the
  group's committed offset; without one, `starting_position` decides (TRIM_HORIZON: the oldest
  record, LATEST: the end, AT_TIMESTAMP: the broker's offset-for-time lookup, and the owner skips
  any leading records older than the timestamp, since some brokers (Tansu) answer that lookup
  loosely). A LATEST position is committed at once, so a restart before the first record does not
  move "latest" forward and miss what arrived meanwhile (Lambda keeps its iterator too).
* **Revocation**: the owner finishes or abandons its in-flight batches (bounded) and the done
  checkpoints are committed while the generation still owns the shards. A commit from a member
  that lost its shards is refused by the group (CommitFailedError, IllegalStateError): it is
  logged and the checkpoint stays where the group last acknowledged it.
* **Fetching** never blocks on a shard: records are handed over and the shard is paused when its
  buffer is full, resumed when it drains (`pause`/`resume`).
* **Connection loss**: aiokafka reconnects by itself; a consumer that cannot start or fails
  outright is rebuilt with backoff. A probe (end offsets or metadata) tells the "kafka" tracker and
  `router_broker_connected` whether the broker answers, logged once per change of state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

from router.config import Config, KafkaConfig, StreamMapping
from router.delivery.backoff import Backoff
from router.delivery.checkpoint import ShardCheckpoint
from router.events.kinesis import FetchedRecord
from router.kafka_client import client_options
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard

PROBE_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 5.0
FETCH_TIMEOUT_MS = 500
FETCH_MAX_WAIT_MS = 100
# While every shard is full, getmany is still called this often (the group's max_poll_interval_ms
# is at least 300 s).
POLL_KEEPALIVE_SECONDS = 30.0
# Records handed over per getmany: bounds the Kafka record objects alive at once (aiokafka keeps
# the rest of a fetch as compact bytes until asked).
FETCH_MAX_RECORDS = 2000
COMMIT_WAIT_SECONDS = 5.0


def consumer_options(config: Config, name: str, mapping: StreamMapping) -> dict[str, Any]:
    kafka = config.kafka or KafkaConfig()
    function = config.functions.get(mapping.function_name)
    timeout_ms = (function.timeout if function else 900) * 1000
    return {
        **client_options(kafka),
        "client_id": f"{kafka.client_id}-{name}",
        "group_id": mapping.group_id(name),
        "enable_auto_commit": False,
        # Only reached when a committed offset fell out of retention: resume at the trim horizon,
        # as an expired Kinesis iterator would, rather than skip to the end.
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": min(kafka.heartbeat_interval_ms, kafka.session_timeout_ms // 3),
        # The group waits for our revocation, which may finish an invocation in flight.
        "rebalance_timeout_ms": kafka.session_timeout_ms + timeout_ms + 5000,
        "max_poll_interval_ms": max(300_000, timeout_ms + 60_000),
        # How long the broker holds a fetch for shards that are caught up. Another fetch waits
        # for it, so a shard that resumes with nothing prefetched (see pause()) waits this long
        # for its records: aiokafka's 500 ms starved busy shards while draining a backlog.
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
    }


async def high_watermarks(kafka: KafkaConfig, topic: str, partitions: list[int],
                          timeout: float = PROBE_TIMEOUT_SECONDS) -> dict[int, int]:
    """Each partition's end offset, confirmed by a fetch.

    Some brokers (Tansu) answer ListOffsets(LATEST) with one past the *first* offset of the last
    record batch, not of its last record; a fetch response carries the true high watermark. A
    short-lived consumer without a group seeks to the listed end and fetches once per partition.
    """
    consumer = AIOKafkaConsumer(**client_options(kafka), client_id=f"{kafka.client_id}-watermarks",
                                enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        found = {tp.partition: ends[tp] for tp in tps}
        for tp in tps:
            consumer.seek(tp, ends[tp])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = set(tps)
        while pending and loop.time() < deadline:
            await consumer.getmany(*pending, timeout_ms=100, max_records=1)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    found[tp.partition] = max(found[tp.partition], highwater)
                    pending.discard(tp)
        return found
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class ShardStart:
    offset: int  # the position the shard is read from (what the group has or should have committed)
    committed: bool  # whether the group already holds this position
    skip_before: float | None = None  # AT_TIMESTAMP: skip leading records older than this


class ShardOwner(Protocol):
    async def shards_assigned(self, starts: Mapping[int, ShardStart]) -> None: ...

    async def drain(self, partitions: set[int], timeout: float | None) -> None:
        """Stop the shards (no new batch; in-flight work bounded by `timeout`, default the
        function timeout); their checkpoints stay readable until `release`."""
        ...

    def release(self, partitions: set[int]) -> None: ...

    def records(self, partition: int, records: Sequence[FetchedRecord]) -> bool:
        """Take fetched records; False when the partition has no shard yet (fetch them again)."""
        ...

    def checkpoints(self) -> Mapping[int, ShardCheckpoint]: ...

    def high_watermarks(self, offsets: Mapping[int, int]) -> None: ...


class Committer:
    """Commits every dirty checkpoint in one request; concurrent requests share one queued flush,
    so N shards finishing together cost one or two commits, never N."""

    def __init__(self, commit: Callable[[dict[int, int]], Awaitable[set[int]]],
                 checkpoints: Callable[[], Mapping[int, ShardCheckpoint]]) -> None:
        self._commit = commit
        self._checkpoints = checkpoints
        self._lock = asyncio.Lock()
        self._queued: asyncio.Task[None] | None = None

    def request(self) -> None:
        """Commit soon, without waiting (a shard after each batch, the probe after an outage). A
        shard that waited for every commit's round trip before its next batch spent a fifth of a
        backlog drain idle; nothing needs the commit to have landed first (a checkpoint only ever
        trails what is done)."""
        self._flush_task()

    def _flush_task(self) -> asyncio.Task[None]:
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_task(self._run())
        return self._queued

    async def _run(self) -> None:
        async with self._lock:
            self._queued = None  # later requests need a flush that sees their checkpoints
            checkpoints = dict(self._checkpoints())
            offsets = {p: cp.position for p, cp in checkpoints.items() if cp.dirty}
            if not offsets:
                return
            for partition in await self._commit(offsets):
                checkpoints[partition].mark_committed(offsets[partition])

    async def flush(self, timeout: float = COMMIT_WAIT_SECONDS) -> None:
        """Commit what is done now; give up waiting after `timeout` (the flush goes on)."""
        await asyncio.wait({self._flush_task()}, timeout=timeout)

    def dirty(self) -> bool:
        return any(cp.dirty for cp in self._checkpoints().values())


class CommitRefused(Exception):
    """The group refused a commit because this member no longer owns the shard (a newer generation
    does): the checkpoint stays where the group last acknowledged it."""


class StreamSource:
    """What both Kafka client backends share: shard bookkeeping, start positions, hand-back on
    revocation, commits and their fencing, broker health, status. A backend supplies the consumer:
    its lifecycle and fetch loop, and the few calls below marked "backend"."""

    def __init__(
        self,
        name: str,
        mapping: StreamMapping,
        config: Config,
        owner: ShardOwner,
        *,
        metrics: Metrics,
        board: ProgressBoard,
        log: Any = None,
    ) -> None:
        self.name = name
        self.mapping = mapping
        self.topic = mapping.kafka_topic
        self.group_id = mapping.group_id(name)
        self._config = config
        self._kafka = config.kafka or KafkaConfig()
        self._owner = owner
        self._metrics = metrics
        self._broker = board.tracker("kafka", kind="broker")
        self._log = (log or structlog.get_logger("router.sources.kafka")).bind(mapping=name)
        self.committer = Committer(self._commit_offsets, owner.checkpoints)
        self._stopping = asyncio.Event()
        self._connected: bool | None = None
        self._commit_problem: str | None = None
        self._unstarted: set[int] = set()  # assigned shards whose setup failed (retried by the probe)
        self._full: set[int] = set()  # shards whose buffer is full (see pause())
        self._room = asyncio.Event()  # set when a full shard makes room or the assignment changes
        self.state = "Creating"
        self.last_error: str | None = None
        self._backoff = Backoff(0.5, 30.0, jitter=True)
        self._supervisor: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._init_client()

    async def start(self) -> None:
        """Start the consumer (or keep trying in the background if the broker is not there yet)."""
        first = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(first), name=f"stream:{self.name}:consumer")
        self._prober = asyncio.create_task(self._probe_loop(), name=f"stream:{self.name}:probe")
        await asyncio.wait({first, self._supervisor}, return_when=asyncio.FIRST_COMPLETED)

    # -- backend -------------------------------------------------------------------------------------

    def _init_client(self) -> None:
        """The backend's own state (called at the end of __init__)."""
        raise NotImplementedError

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        """Build consumers and run them until stopped (see _run_consumer); settle `first` once the
        first one is up or has failed."""
        raise NotImplementedError

    async def stop(self, timeout: float) -> None:
        """Stop fetching, finish or abandon in-flight batches (bounded), commit, leave the group."""
        raise NotImplementedError

    def _assignment(self) -> set[int]:
        """Partitions of the topic the consumer owns now (empty without a consumer)."""
        raise NotImplementedError

    async def _commit(self, offsets: dict[int, int]) -> None:
        """Commit these offsets; CommitRefused when the group fenced us off, another error when the
        commit did not happen for any other reason."""
        raise NotImplementedError

    async def _committed(self, partitions: list[int]) -> dict[int, int | None]:
        raise NotImplementedError

    async def _beginnings(self, partitions: list[int]) -> dict[int, int]:
        raise NotImplementedError

    async def _ends(self, partitions: list[int]) -> dict[int, int]:
        raise NotImplementedError

    async def _offsets_for_time(self, partitions: list[int], timestamp_ms: int) -> dict[int, int | None]:
        raise NotImplementedError

    def _consumer_open(self) -> bool:
        raise NotImplementedError

    def _seek(self, partition: int, offset: int) -> None:
        """Read the partition from `offset` on (its fetching has started)."""
        raise NotImplementedError

    async def _probe(self) -> bool:
        """Ask the broker something cheap (raise when it does not answer), telling the owner the
        assigned shards' high watermarks on the way; False when there is no consumer to ask."""
        raise NotImplementedError

    def _pause_partition(self, partition: int) -> None:
        raise NotImplementedError

    def _resume_partition(self, partition: int) -> None:
        raise NotImplementedError

    async def _close_consumer(self, timeout: float) -> None:
        raise NotImplementedError

    # -- the consumer's life -------------------------------------------------------------------------

    async def _run_consumer(self, first: asyncio.Future[None], client: str, run: Awaitable[None]) -> None:
        """A consumer is up: say so, then `run` it until it fails, when its shards are handed back
        and it is closed (the caller's loop builds the next one)."""
        self.state = "Enabled"
        self._log.info("stream.consumer_started", group_id=self.group_id, topic=self.topic, client=client)
        if not first.done():
            first.set_result(None)
        try:
            await run
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the consumer is unusable: rebuild it, shards start over
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._log.error("stream.consumer_failed", error_type=type(exc).__name__, error=str(exc))
            self.state = "Reconnecting"
            await self._hand_back(self._assignment(), None)
            await self._close_consumer(PROBE_TIMEOUT_SECONDS)
            await asyncio.sleep(self._backoff.delay(1))

    @staticmethod
    async def _end(task: asyncio.Task[None] | None) -> None:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _wait_to_retry(self, first: asyncio.Future[None], failures: int) -> None:
        """Building or starting a consumer failed: try again after a backoff."""
        self.state = "Reconnecting"
        if not first.done():
            first.set_result(None)
        await asyncio.sleep(self._backoff.delay(failures))

    # -- shards --------------------------------------------------------------------------------------

    async def _hand_back(self, partitions: set[int], timeout: float | None) -> None:
        """Drain the shards, commit what they finished (we still own them), forget them."""
        try:
            await self._owner.drain(partitions, timeout)
            await self.committer.flush()
        finally:
            self._owner.release(partitions)

    async def _revoked(self, partitions: set[int]) -> None:
        self._unstarted -= partitions
        self._full -= partitions
        self._room.set()  # the fetch loop re-reads the assignment
        if partitions:
            self._log.info("stream.shards_revoked", shards=sorted(partitions))
        try:
            await self._hand_back(partitions, None)
        except Exception as exc:
            self._log.exception("stream.revoke_failed", error_type=type(exc).__name__)

    async def _setup_shards(self, partitions: set[int], starts: Mapping[int, ShardStart]) -> None:
        """The consumer reads the shards from `starts`: give them to the owner, and commit a LATEST
        position at once (see the module docstring)."""
        await self._owner.shards_assigned(starts)
        self._log.info("stream.shards_assigned", shards=sorted(partitions),
                       positions={p: s.offset for p, s in starts.items()})
        established = {p: s.offset for p, s in starts.items()
                       if not s.committed and self.mapping.starting_position == "LATEST"}
        if established:
            committed = await self._commit_offsets(established)
            for partition in committed:
                self._owner.checkpoints()[partition].mark_committed(established[partition])
        self._unstarted -= partitions

    async def _assigned(self, partitions: set[int]) -> None:
        """Set up shards the group gave us (also the retry of a failed setup): find their start
        positions, move the consumer there, give them to the owner."""
        if not self._consumer_open():
            return
        try:
            starts = await self._start_positions(partitions)
            for partition, start in starts.items():
                self._seek(partition, start.offset)
        except Exception as exc:
            await self._start_shards(partitions, exc)
            return
        await self._start_shards(partitions, starts)

    async def _start_shards(self, partitions: set[int], starts: Mapping[int, ShardStart] | BaseException) -> None:
        """The shards start empty, from `starts` (or stay unstarted when finding them failed)."""
        self._full -= partitions
        self._room.set()
        if isinstance(starts, BaseException):
            self._setup_failed(partitions, starts)
            return
        try:
            await self._setup_shards(partitions, starts)
        except Exception as exc:
            self._setup_failed(partitions, exc)

    def _setup_failed(self, partitions: set[int], exc: BaseException) -> None:
        """The shards stay without a processor (their records are fetched again, never lost); the
        probe loop retries while the group still gives them to us."""
        self._unstarted |= partitions
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._log.error("stream.assign_failed", error_type=type(exc).__name__, error=str(exc),
                        shards=sorted(partitions))

    async def _retry_unstarted(self) -> None:
        self._unstarted &= self._assignment()
        if self._unstarted:
            await self._assigned(set(self._unstarted))

    async def _start_positions(self, partitions: set[int]) -> dict[int, ShardStart]:
        starts: dict[int, ShardStart] = {}
        committed = await self._committed(sorted(partitions))
        missing: list[int] = []
        for partition in sorted(partitions):
            offset = committed.get(partition)
            if offset is not None and offset >= 0:
                starts[partition] = ShardStart(offset, committed=True)
            else:
                missing.append(partition)
        if not missing:
            return starts
        mapping = self.mapping
        beginning = await self._beginnings(missing)
        if mapping.starting_position == "TRIM_HORIZON":
            for partition in missing:
                starts[partition] = ShardStart(beginning[partition], committed=False)
        elif mapping.starting_position == "LATEST":
            end = await high_watermarks(self._kafka, self.topic, missing)
            for partition in missing:
                starts[partition] = ShardStart(end[partition], committed=False)
        else:
            stamp = float(mapping.starting_position_timestamp or 0)
            found = await self._offsets_for_time(missing, int(stamp * 1000))
            end = await self._ends(missing)
            for partition in missing:
                hit = found.get(partition)
                offset = end[partition] if hit is None else hit
                # Never before the trim horizon; the owner skips leading records older than stamp.
                starts[partition] = ShardStart(max(offset, beginning[partition]), committed=False,
                                               skip_before=stamp)
        return starts

    # -- commits ---------------------------------------------------------------------------------------

    async def _commit_offsets(self, offsets: dict[int, int]) -> set[int]:
        """Commit what the group still lets us commit; the partitions whose commit was accepted."""
        if not offsets:
            return set()
        assigned = self._assignment()
        owned = {p: o for p, o in offsets.items() if p in assigned}
        if not owned:
            return set()
        try:
            await self._commit(owned)
        except CommitRefused as exc:
            self._commit_failed("refused", exc.__cause__ or exc)
            return set()
        except Exception as exc:
            self._commit_failed("failed", exc)
            return set()
        if self._commit_problem is not None:
            self._log.info("stream.commit_recovered")
            self._commit_problem = None
        return set(owned)

    def _commit_failed(self, how: str, exc: BaseException) -> None:
        problem = f"{how}:{type(exc).__name__}"
        if problem != self._commit_problem:
            # Refused = fenced by the group generation (the shard moved on); the checkpoint stays.
            self._log.warning(f"stream.commit_{how}", error_type=type(exc).__name__,
                              error=(str(exc).splitlines() or [""])[0])
            self._commit_problem = problem
        self.last_error = f"commit {how}: {type(exc).__name__}"

    # -- flow control ------------------------------------------------------------------------------

    def pause(self, partition: int) -> None:
        """The shard is full: fetch nothing more for it until resume() (the backend says how)."""
        self._full.add(partition)
        self._pause_partition(partition)

    def resume(self, partition: int) -> None:
        self._full.discard(partition)
        self._room.set()
        self._resume_partition(partition)

    # -- broker health and lag ---------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            try:
                if not await self._probe():
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_connected(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                continue
            self._set_connected(True)
            if self.committer.dirty():
                self.committer.request()
            if self._unstarted:
                await self._retry_unstarted()

    def _set_connected(self, up: bool, detail: str = "") -> None:
        self._metrics.broker_connected.labels("kafka").set(1 if up else 0)
        self._broker.set_up(up, "" if up else detail)
        if up == self._connected:
            return
        self._connected = up
        if up:
            self._log.info("stream.broker_connected", bootstrap_servers=self._kafka.bootstrap_servers)
        else:
            self.last_error = detail
            self._log.warning("stream.broker_unreachable", bootstrap_servers=self._kafka.bootstrap_servers,
                              error=detail)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "group_id": self.group_id,
            "topic": self.topic,
            "broker_connected": self._connected,
            "assigned": sorted(self._assignment()),
            "last_error": self.last_error,
        }


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaStreamSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._source._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._source._assigned({tp.partition for tp in assigned})


class KafkaStreamSource(StreamSource):
    """The aiokafka backend (`kafka.client: aiokafka`): everything on the event loop."""

    def _init_client(self) -> None:
        self._options = consumer_options(self._config, self.name, self.mapping)
        self._consumer: AIOKafkaConsumer | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Stop fetching, finish or abandon in-flight batches (bounded), commit, leave the group."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping.set()
        await self._end(self._prober)
        await self._end(self._supervisor)
        if self._consumer is not None:
            await self._hand_back(self._assignment(), max(0.1, deadline - loop.time() - 1.0))
        await self._close_consumer(max(1.0, deadline - loop.time()))
        self.state = "Disabled"

    async def _close_consumer(self, timeout: float) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        self._consumer = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), timeout=timeout)

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        failures = 0
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(**self._options)
            try:
                await consumer.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                failures += 1
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
                await self._wait_to_retry(first, failures)
                continue
            failures = 0
            self._consumer = consumer
            self._set_connected(True)
            consumer.subscribe([self.topic], listener=_Listener(self))
            await self._run_consumer(first, "aiokafka", self._fetch(consumer))

    async def _fetch(self, consumer: AIOKafkaConsumer) -> None:
        errors = 0
        while not self._stopping.is_set():
            assigned = consumer.assignment()
            wanted = [tp for tp in assigned if tp.partition not in self._full]
            if assigned and not wanted:
                await self._wait_for_room(consumer)
                continue
            try:
                if len(wanted) == len(assigned):
                    batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
                else:
                    batches = await self._fetch_some(consumer, wanted)
            except KafkaError as exc:
                errors += 1
                if errors == 1:
                    self._log.warning("stream.fetch_failed", error_type=type(exc).__name__, error=str(exc))
                await asyncio.sleep(self._backoff.delay(errors))
                continue
            errors = 0
            for tp, records in batches.items():
                rows = [(r.offset, r.key, r.value, r.timestamp) for r in records]
                if rows and not self._owner.records(tp.partition, rows):
                    with contextlib.suppress(IllegalStateError):
                        consumer.seek(tp, rows[0][0])
                # Turning a partition's records into stream records takes a while; let finished
                # invocations be answered in between, so environments do not sit waiting for us.
                await asyncio.sleep(0)

    async def _fetch_some(
        self, consumer: AIOKafkaConsumer, wanted: list[TopicPartition]
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """getmany for the shards with room only: what the consumer prefetched for the others
        stays buffered for them (see pause()). A full shard making room ends the wait, since its
        records may already be here."""
        self._room.clear()
        fetch = asyncio.ensure_future(
            consumer.getmany(*wanted, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS))
        room = asyncio.ensure_future(self._room.wait())
        try:
            await asyncio.wait((fetch, room), return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetch
        return fetch.result() if not fetch.cancelled() else {}

    async def _wait_for_room(self, consumer: AIOKafkaConsumer) -> None:
        """Every shard is full: wait for one to make room (or the assignment to change). The
        group drops a member that stops calling getmany for max_poll_interval_ms, so after a
        while it is called once anyway (which makes the consumer drop what it holds for the
        paused shards: refetched later) and the fetch loop looks again."""
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), POLL_KEEPALIVE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(KafkaError):
                await consumer.getmany(timeout_ms=0)

    # -- backend -------------------------------------------------------------------------------------

    def _assignment(self) -> set[int]:
        consumer = self._consumer
        return {tp.partition for tp in consumer.assignment()} if consumer is not None else set()

    def _consumer_open(self) -> bool:
        return self._consumer is not None

    def _seek(self, partition: int, offset: int) -> None:
        self._live().seek(TopicPartition(self.topic, partition), offset)

    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise KafkaError("the consumer is closed")
        return self._consumer

    def _tps(self, partitions: list[int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in partitions]

    async def _committed(self, partitions: list[int]) -> dict[int, int | None]:
        consumer = self._live()
        return {tp.partition: await consumer.committed(tp) for tp in self._tps(partitions)}

    async def _beginnings(self, partitions: list[int]) -> dict[int, int]:
        found = await self._live().beginning_offsets(self._tps(partitions))
        return {tp.partition: offset for tp, offset in found.items()}

    async def _ends(self, partitions: list[int]) -> dict[int, int]:
        found = await self._live().end_offsets(self._tps(partitions))
        return {tp.partition: offset for tp, offset in found.items()}

    async def _offsets_for_time(self, partitions: list[int], timestamp_ms: int) -> dict[int, int | None]:
        found = await self._live().offsets_for_times({tp: timestamp_ms for tp in self._tps(partitions)})
        return {tp.partition: (hit.offset if hit is not None else None) for tp, hit in found.items()}

    async def _commit(self, offsets: dict[int, int]) -> None:
        try:
            await self._live().commit({TopicPartition(self.topic, p): o for p, o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            raise CommitRefused(str(exc)) from exc

    def _pause_partition(self, partition: int) -> None:
        """The consumer pauses the partition (no fetch asks for it, so a broker that answers a fetch
        with one partition's records, as Tansu does, answers for a shard that wants them) and
        getmany leaves it out: aiokafka drops what it prefetched for a paused partition only when
        getmany reaches it, so those records (one fetch at most) stay buffered and are handed over
        the moment the shard makes room, instead of being refetched behind the fetch in flight."""
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(IllegalStateError):
                consumer.pause(TopicPartition(self.topic, partition))

    def _resume_partition(self, partition: int) -> None:
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(IllegalStateError):
                consumer.resume(TopicPartition(self.topic, partition))

    async def _probe(self) -> bool:
        consumer = self._consumer
        if consumer is None:
            return False
        assigned = list(consumer.assignment())
        if assigned:
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), PROBE_TIMEOUT_SECONDS)
            # The last fetch's high watermark is exact where ListOffsets is not (see high_watermarks).
            self._owner.high_watermarks({
                tp.partition: max(offset, consumer.highwater(tp) or 0) for tp, offset in ends.items()})
        else:
            await asyncio.wait_for(consumer.topics(), PROBE_TIMEOUT_SECONDS)
        return True


# -- inspection for operators (router shards, router reset-checkpoint) --------------------------------


@dataclass(frozen=True, slots=True)
class GroupMember:
    member_id: str
    client_id: str
    host: str
    # Partitions of the mapping's topic this member owns; None when the broker does not report
    # assignments (Tansu answers DescribeGroups with empty assignment bytes).
    partitions: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_id: str
    state: str
    members: tuple[GroupMember, ...]

    def owner_of(self, partition: int) -> GroupMember | None:
        return next((m for m in self.members if m.partitions and partition in m.partitions), None)

    @property
    def assignments_known(self) -> bool:
        return any(m.partitions is not None for m in self.members)


def _decode_assignment(raw: bytes, topic: str) -> tuple[int, ...] | None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    if not raw:
        return None
    try:
        assignment = ConsumerProtocolMemberAssignment.decode(raw)
    except Exception:
        return None
    return tuple(sorted(p for t, parts in assignment.assignment if t == topic for p in parts))


async def describe_group(kafka: KafkaConfig, group_id: str, topic: str) -> GroupInfo:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(kafka), client_id=f"{kafka.client_id}-admin")
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    for response in responses:
        for group in response.groups:
            error_code, gid, state, _ptype, _protocol, members = group[:6]
            if gid != group_id:
                continue
            if error_code:
                raise KafkaError(f"DescribeGroups {group_id}: error {error_code}")
            return GroupInfo(group_id, state, tuple(
                GroupMember(m[0], m[1], m[2], _decode_assignment(m[4], topic)) for m in members))
    return GroupInfo(group_id, "Dead", ())


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer.topics()  # a metadata refresh
        partitions = consumer.partitions_for_topic(topic)
    return sorted(partitions or [])
