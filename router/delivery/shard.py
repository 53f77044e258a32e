"""One shard's processor: buffer, batcher and outcome policy, lane by lane, and its checkpoint.

Records arrive from the source in shard order and wait in a bounded buffer (the source pauses the
partition when `shard_buffer_records` are held and resumes it at three quarters, early enough
that its next records, when they are not prefetched already, are a fetch away and not more:
resumed at half, busy shards ran dry while draining a backlog). With parallelization
factor 1 there is one lane: one batch in flight, the next waits for its result. With factor N
there are N lanes and each record goes to lane `crc32(partitionKey) % N`, so a key always lands in
the same lane and keeps its order while other keys run beside it; the shard checkpoint is the
oldest record any lane has not finished.

A lane's batch closes at `batch_size` records, when the batching window has elapsed, or before
the invocation payload would exceed 6 MB. The window starts when the lane's previous invocation
completed (Lambda's rule for streams) or, after an idle spell, when the first record arrived. A
single record too large for any invocation is written to the on-failure destination at once
(`MaximumPayloadSizeExceeded`), never invoked and never allowed to block the shard.

Stopping (revoke or shutdown): no new batch starts, retry and destination backoffs end at once
(`Abandoned`), a running invocation may finish within the caller's bound; whatever is not done
stays behind the checkpoint for the next owner. A stuck shard blocks nothing but itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from router.config import Config, StreamMapping
from router.delivery.backoff import Backoff
from router.delivery.checkpoint import ShardCheckpoint
from router.delivery.destination import Destination
from router.delivery.record_filter import split_by_filters
from router.delivery.stream_failure import FailureWriter, failure_record
from router.delivery.stream_retries import Abandoned, Discard, StreamBatchPolicy
from router.events.kinesis import (
    MAX_INVOCATION_PAYLOAD_BYTES,
    KinesisEventBuilder,
    SourceRecord,
    StreamRecord,
    event_size,
)
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.runtime.pool import WorkerPool, is_throttled
from router.runtime.result import InvocationResult

_EMPTY_EVENT = event_size([])


class Throttled(Exception):
    """The function has no concurrency for us: the handler did not run, so no retry is spent."""


@dataclass
class _Lane:
    index: int
    buffer: deque[StreamRecord] = field(default_factory=deque)
    buffered_bytes: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    first_ready: float = 0.0  # monotonic time the buffer last went from empty to non-empty
    window_open: float = 0.0  # monotonic time the previous invocation completed
    in_flight: int = 0  # records of the batch being worked on
    task: asyncio.Task[None] | None = None


class ShardProcessor:
    def __init__(
        self,
        *,
        name: str,
        mapping: StreamMapping,
        config: Config,
        partition: int,
        start: int,
        pool: WorkerPool,
        on_failure: Destination | None,
        metrics: Metrics,
        board: ProgressBoard,
        commit: Callable[[], None],  # asks for the checkpoint to be committed; returns at once
        pause: Callable[[], None],
        resume: Callable[[], None],
        skip_before: float | None = None,
        log: Any = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.mapping = mapping
        self.partition = partition
        self.builder = KinesisEventBuilder(config, topic=mapping.kafka_topic, function=mapping.function_name,
                                           partition=partition)
        self.shard_id = self.builder.shard_id
        self.checkpoint = ShardCheckpoint(start)
        self._function = mapping.function_name
        self._function_arn = config.function_arn(mapping.function_name)
        self._pool = pool
        self._metrics = metrics
        self._commit = commit
        self._pause = pause
        self._resume = resume
        # AT_TIMESTAMP: records before the first one at/after this time are skipped (done, never sent).
        self._skip_before = skip_before
        self._now = wall_clock
        self._log = (log or structlog.get_logger("router.shard")).bind(
            mapping=name, function=mapping.function_name, shard=self.shard_id)
        self._tracker_name = f"stream:{name}:{self.shard_id}"
        self._board = board
        self.tracker = board.tracker(self._tracker_name, kind="work")
        self._stopping = asyncio.Event()
        self._held = 0  # records added and not yet done
        self._limit = mapping.shard_buffer_records
        self.paused = False
        self.high_watermark: int | None = None
        self.iterator_age: float | None = None
        self.last_error: str | None = None
        backoff = Backoff(mapping.retry_base_delay_seconds, mapping.retry_max_delay_seconds, jitter=True)
        self._writer = FailureWriter(on_failure, mapping=name, shard_id=self.shard_id, metrics=metrics,
                                     backoff=backoff, sleep=self._sleep, log=self._log)
        self._policy = StreamBatchPolicy(
            mapping, invoke=self._invoke, discard=self._discard, done=self._done, sleep=self._sleep,
            now=wall_clock, backoff=backoff, metrics=metrics, mapping_name=name, log=self._log,
        )
        self._lanes = [_Lane(i) for i in range(mapping.parallelization_factor)]
        self._filters = mapping.filter_criteria.compiled if mapping.filter_criteria else None
        self._labels = (name, self.shard_id)
        self._set_checkpoint_metrics()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for lane in self._lanes:
            lane.window_open = loop.time()
            lane.task = loop.create_task(self._run_lane(lane), name=f"{self._tracker_name}:lane{lane.index}")

    async def stop(self, timeout: float) -> None:
        """Start no new batch; let a running invocation finish within `timeout`, then abandon."""
        self._stopping.set()
        for lane in self._lanes:
            lane.wakeup.set()
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if pending:
                self._log.warning("stream.batch_abandoned", reason="stop timeout",
                                  checkpoint=self.checkpoint.sequence_number)
        self._board.remove(self._tracker_name)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- intake (called by the source, never blocks) -----------------------------------------------

    def add(self, records: Sequence[SourceRecord]) -> None:
        """Take fetched records (shard order). A stopping shard drops them; offsets seen before (a
        re-fetch after a seek) are ignored."""
        if self._stopping.is_set():
            return
        fresh = self.builder.stream_records(records, after=self.checkpoint.next_offset - 1)
        if not fresh:
            return
        self.checkpoint.track_many([r.offset for r in fresh])
        self._held += len(fresh)
        if self._skip_before is not None:
            fresh = self._skip_old(fresh)
        if self._filters is not None and fresh:
            fresh = self._filter(fresh)
        loop_time = asyncio.get_running_loop().time()
        lanes = self._lanes
        if len(lanes) == 1:
            self._append(lanes[0], fresh, loop_time)
        else:
            routed: list[list[StreamRecord]] = [[] for _ in lanes]
            crc32, count = zlib.crc32, len(lanes)
            for record in fresh:
                routed[crc32(record.partition_key.encode("utf-8", "surrogatepass")) % count].append(record)
            for lane, chunk in zip(lanes, routed, strict=True):
                if chunk:
                    self._append(lane, chunk, loop_time)
        self.tracker.set_pending(self._held > 0)
        if self._held >= self._limit and not self.paused:
            self.paused = True
            self._pause()

    def _append(self, lane: _Lane, records: list[StreamRecord], now: float) -> None:
        was_empty = not lane.buffer
        if was_empty:
            lane.first_ready = now
        lane.buffer.extend(records)
        lane.buffered_bytes += sum(r.size for r in records) + len(records)
        # Wake the lane for its first records (they may start a window) and when a batch is full.
        if was_empty or len(lane.buffer) >= self.mapping.batch_size \
                or lane.buffered_bytes >= MAX_INVOCATION_PAYLOAD_BYTES:
            lane.wakeup.set()

    def _skip_old(self, records: list[StreamRecord]) -> list[StreamRecord]:
        """AT_TIMESTAMP: records before the first one at or after the timestamp are done unsent."""
        assert self._skip_before is not None
        keep = next((i for i, r in enumerate(records) if r.arrival >= self._skip_before), len(records))
        if keep < len(records):
            self._skip_before = None
        if keep:
            self.checkpoint.done(r.offset for r in records[:keep])
            self._held -= keep
            self._after_progress()
        return records[keep:]

    def _filter(self, records: list[StreamRecord]) -> list[StreamRecord]:
        """Records matching no pattern are done at once, and the checkpoint is asked to move past
        them now: a fully filtered shard commits to its end without waiting for an invocation."""
        assert self._filters is not None
        kept, dropped = split_by_filters(self._filters, records)
        if dropped:
            self.checkpoint.done(r.offset for r in dropped)
            self._held -= len(dropped)
            self._metrics.filtered_out_records.labels(mapping=self.name).inc(len(dropped))
            self._after_progress()
            self._commit()
        return kept

    # -- lanes ---------------------------------------------------------------------------------------

    async def _run_lane(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                batch = await self._next_batch(lane)
                if not batch:
                    continue
                lane.in_flight = len(batch)
                try:
                    if len(batch) == 1 and event_size(batch) > MAX_INVOCATION_PAYLOAD_BYTES:
                        await self._discard(Discard("MaximumPayloadSizeExceeded", batch, 0, None))
                    else:
                        await self._policy.run(batch)
                finally:
                    lane.in_flight = 0
                    lane.window_open = loop.time()
        except Abandoned:
            self._log.info("stream.batch_abandoned", reason="shard stopping",
                           checkpoint=self.checkpoint.sequence_number)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost this shard, loudly, never the daemon
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._log.exception("stream.shard_failed", error_type=type(exc).__name__)
            self.tracker.set_up(False, self.last_error)

    async def _next_batch(self, lane: _Lane) -> list[StreamRecord]:
        loop = asyncio.get_running_loop()
        while not lane.buffer:
            if self._stopping.is_set():
                return []
            lane.wakeup.clear()
            await lane.wakeup.wait()
        window = self.mapping.maximum_batching_window_in_seconds
        if window > 0:
            deadline = max(lane.window_open, lane.first_ready) + window
            while not self._stopping.is_set() and len(lane.buffer) < self.mapping.batch_size \
                    and lane.buffered_bytes < MAX_INVOCATION_PAYLOAD_BYTES:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                lane.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.wakeup.wait(), remaining)
            if self._stopping.is_set():
                return []
        return self._take(lane)

    def _take(self, lane: _Lane) -> list[StreamRecord]:
        buffer = lane.buffer
        popleft = buffer.popleft
        batch = [popleft() for _ in range(min(len(buffer), self.mapping.batch_size))]
        # Bytes of the event: envelope, each record, a separator between records.
        sizes = [r.size + 1 for r in batch]
        total = sum(sizes)
        if _EMPTY_EVENT - 1 + total > MAX_INVOCATION_PAYLOAD_BYTES:
            # Too big for one invocation: keep the longest prefix that fits (at least one record;
            # a single record too large to invoke is discarded by the caller), return the rest.
            keep, size = 0, _EMPTY_EVENT - 1
            while keep < len(batch) and (keep == 0 or size + sizes[keep] <= MAX_INVOCATION_PAYLOAD_BYTES):
                size += sizes[keep]
                keep += 1
            buffer.extendleft(reversed(batch[keep:]))
            total -= sum(sizes[keep:])
            batch = batch[:keep]
        lane.buffered_bytes -= total
        if buffer:
            lane.first_ready = asyncio.get_running_loop().time()
        return batch

    # -- policy callbacks ----------------------------------------------------------------------------

    async def _invoke(self, records: list[StreamRecord], attempt: int) -> InvocationResult:
        body = self.builder.pack(records)
        self._metrics.batch_records.labels(self.name).observe(len(records))
        self.iterator_age = max(0.0, self._now() - records[-1].arrival)
        self._metrics.iterator_age_seconds.labels(*self._labels).set(self.iterator_age)
        started = time.perf_counter()
        result = await self._pool.invoke(self._function, body, invocation_type="RequestResponse")
        if is_throttled(result):
            raise Throttled(f"{self._function} has no reserved concurrency")
        fields = {
            "first_sequence_number": records[0].sequence_number,
            "last_sequence_number": records[-1].sequence_number, "batch_size": len(records),
            "request_id": result.request_id, "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "attempt": attempt, "outcome": result.outcome,
        }
        if result.ok:
            self._log.debug("stream.batch", **fields)
        else:
            self.last_error = f"{result.error_type}"
            self._log.warning("stream.batch", error_type=result.error_type, **fields)
        return result

    async def _discard(self, discard: Discard) -> None:
        records = discard.records
        record = failure_record(
            condition=discard.condition,
            function_arn=self._function_arn, shard_id=self.shard_id, stream_arn=self.builder.stream_arn,
            records=records,
            # A record too large to invoke would make the failure record too large to write as well;
            # it stays readable in the stream (Lambda likewise drops the payload part that does not fit).
            payload=None if discard.condition == "MaximumPayloadSizeExceeded" else self.builder.event(records),
            approximate_invoke_count=discard.approximate_invoke_count, last_result=discard.last_result,
            now=self._now(),
        )
        await self._writer.write(record)
        await self._done(records)

    async def _done(self, records: Sequence[StreamRecord]) -> None:
        if not records:
            return
        self.checkpoint.done(r.offset for r in records)
        self._held -= len(records)
        self._after_progress()
        self._commit()

    def _after_progress(self) -> None:
        self.tracker.advanced()
        self.tracker.set_pending(self._held > 0)
        self._set_checkpoint_metrics()
        if self.paused and self._held <= self._limit * 3 // 4:  # see the module docstring
            self.paused = False
            self._resume()

    def _set_checkpoint_metrics(self) -> None:
        self._metrics.checkpoint_sequence_number.labels(*self._labels).set(self.checkpoint.sequence_number)
        if self.high_watermark is not None:
            self._metrics.offset_lag.labels(*self._labels).set(max(0, self.high_watermark - self.checkpoint.position))

    def set_high_watermark(self, offset: int) -> None:
        self.high_watermark = offset
        self._set_checkpoint_metrics()

    async def _sleep(self, seconds: float) -> None:
        """Backoff that ends at once, with Abandoned, when the shard stops."""
        if self._stopping.is_set():
            raise Abandoned
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise Abandoned

    # -- status --------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        checkpoint = self.checkpoint
        lag = None if self.high_watermark is None else max(0, self.high_watermark - checkpoint.position)
        return {
            "checkpoint": str(checkpoint.sequence_number) if checkpoint.sequence_number >= 0 else None,
            "committed_offset": checkpoint.committed,
            "high_watermark": self.high_watermark,
            "lag": lag,
            "iterator_age_seconds": None if self.iterator_age is None else round(self.iterator_age, 3),
            "buffered_records": sum(len(lane.buffer) for lane in self._lanes),
            "in_flight": sum(1 for lane in self._lanes if lane.in_flight),  # batches (router status)
            "in_flight_records": sum(lane.in_flight for lane in self._lanes),
            "paused": self.paused,
            "last_error": self.last_error,
        }
