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

With a tumbling window (`router.delivery.tumbling_window`: one lane, validation refuses a factor
above 1) a batch holds records of one window only, the function's answered state is carried into
the window's next invocation, and the checkpoint does not move past a window's first record until
its final invocation is done: records are held in the checkpoint, not in the buffer, so a long
window never pauses the partition.

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
from router.delivery.tumbling_window import (
    CLOSE_GRACE_SECONDS,
    Window,
    WindowAssigner,
    state_too_large,
    window_event,
    window_state,
)
from router.events.kinesis import (
    MAX_INVOCATION_PAYLOAD_BYTES,
    FetchedRecord,
    KinesisEventBuilder,
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
        seconds = mapping.tumbling_window_in_seconds
        self._windows = WindowAssigner(seconds) if seconds else None
        self._invoking: tuple[Window, bool] | None = None  # the window being invoked and whether finally
        self._answered: dict[str, Any] | None = None  # state of the last successful windowed answer
        self._last_add = 0.0  # loop time records last arrived
        self._labels = (name, self.shard_id)
        self._set_checkpoint_metrics()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for lane in self._lanes:
            lane.window_open = loop.time()
            run = self._run_window_lane if self._windows is not None else self._run_lane
            lane.task = loop.create_task(run(lane), name=f"{self._tracker_name}:lane{lane.index}")

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

    def add(self, records: Sequence[FetchedRecord]) -> None:
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
        loop_time = asyncio.get_running_loop().time()
        if self._windows is not None:
            self._last_add = loop_time
            self._lanes[0].wakeup.set()  # a later window's first record closes the current one
            if fresh:
                fresh = self._assign_windows(fresh)
        elif self._filters is not None and fresh:
            fresh = self._filter(fresh)
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

    def _assign_windows(self, records: list[StreamRecord]) -> list[StreamRecord]:
        """Every record joins a window, filtered or not (a filtered record still moves the window
        along and is checkpointed with it); the records to invoke are returned."""
        assert self._windows is not None
        kept = records
        if self._filters is not None:
            kept, dropped = split_by_filters(self._filters, records)
            if dropped:
                self._held -= len(dropped)
                self._metrics.filtered_out_records.labels(mapping=self.name).inc(len(dropped))
                self._after_progress()
        self._windows.assign(records, None if len(kept) == len(records) else {r.offset for r in kept})
        return kept

    # -- lanes ---------------------------------------------------------------------------------------

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            while not self._stopping.is_set():
                batch = await self._next_batch(lane)
                if batch:
                    await self._run_batch(lane, batch)
        except Abandoned:
            self._log.info("stream.batch_abandoned", reason="shard stopping",
                           checkpoint=self.checkpoint.sequence_number)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost this shard, loudly, never the daemon
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._log.exception("stream.shard_failed", error_type=type(exc).__name__)
            self.tracker.set_up(False, self.last_error)

    async def _run_batch(self, lane: _Lane, batch: list[StreamRecord], *, invoke_empty: bool = False) -> None:
        lane.in_flight = len(batch)
        try:
            if len(batch) == 1 and event_size(batch) > MAX_INVOCATION_PAYLOAD_BYTES:
                await self._discard(Discard("MaximumPayloadSizeExceeded", batch, 0, None))
            else:
                await self._policy.run(batch, invoke_empty=invoke_empty)
        finally:
            lane.in_flight = 0
            lane.window_open = asyncio.get_running_loop().time()

    async def _run_window_lane(self, lane: _Lane) -> None:
        """The lane of a windowed shard: batches of the current window, then its final invocation
        when a later window's record arrived or the clock passed its end with nothing more to read."""
        windows = self._windows
        assert windows is not None
        try:
            while not self._stopping.is_set():
                window = windows.current
                if window is None:
                    await self._wait(lane, None)
                elif window.waiting:
                    batch = await self._next_batch(lane, limit=window.waiting)
                    if not batch:
                        continue
                    window.waiting -= len(batch)
                    window.delivered += len(batch)
                    final = not window.waiting and self._window_over(window)
                    await self._invoke_window(lane, window, batch, final=final)
                elif self._window_over(window):
                    if window.delivered:
                        await self._invoke_window(lane, window, [], final=True)
                    else:  # every record of it was filtered out: nothing to invoke
                        self._close_window(window)
                else:  # re-read the wall clock at least every second: it may be stepped
                    await self._wait(lane, min(1.0, window.end + CLOSE_GRACE_SECONDS - self._now()))
        except Abandoned:
            self._log.info("stream.batch_abandoned", reason="shard stopping",
                           checkpoint=self.checkpoint.sequence_number)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost this shard, loudly, never the daemon
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._log.exception("stream.shard_failed", error_type=type(exc).__name__)
            self.tracker.set_up(False, self.last_error)

    async def _wait(self, lane: _Lane, timeout: float | None) -> None:
        lane.wakeup.clear()
        if timeout is None:
            await lane.wakeup.wait()
        elif timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lane.wakeup.wait(), timeout)

    def _window_over(self, window: Window) -> bool:
        """No more records can join `window`: a later window has begun, or the clock is past its end
        (with grace) and the shard has read everything there is."""
        assert self._windows is not None
        if len(self._windows.windows) > 1:
            return True
        if self._now() < window.end + CLOSE_GRACE_SECONDS:
            return False
        idle = asyncio.get_running_loop().time() - self._last_add >= CLOSE_GRACE_SECONDS
        return idle or self.high_watermark is None or self.checkpoint.next_offset >= self.high_watermark

    async def _invoke_window(self, lane: _Lane, window: Window, batch: list[StreamRecord], *, final: bool) -> None:
        self._invoking = (window, final)
        try:
            await self._run_batch(lane, batch, invoke_empty=final)
            if final:
                self._close_window(window)
            elif state_too_large(window.state):
                # Lambda ends the window early: a final invocation with what there is, then the
                # same window goes on with fresh state.
                window.terminated_early = True
                self._invoking = (window, True)
                await self._run_batch(lane, [], invoke_empty=True)
                self._close_window(window, early=lane.buffer[0].offset if window.waiting else None)
        finally:
            self._invoking = None

    def _close_window(self, window: Window, *, early: int | None = None) -> None:
        """The window's final invocation is done: its records are checkpointed, its state dropped."""
        assert self._windows is not None
        if window.terminated_early:
            through = early if early is not None else window.last_offset + 1
            self._windows.restart_current(through)
        else:
            self._windows.close()
            through = window.last_offset + 1
        self.checkpoint.done_below(through)
        self._after_progress()
        self._commit()
        self._log.info("stream.window_closed", window_start=window.bounds["start"], window_end=window.bounds["end"],
                       records=window.delivered, terminated_early=window.terminated_early,
                       checkpoint=self.checkpoint.sequence_number)

    async def _next_batch(self, lane: _Lane, limit: int | None = None) -> list[StreamRecord]:
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
        return self._take(lane, self.mapping.batch_size if limit is None else min(limit, self.mapping.batch_size))

    def _take(self, lane: _Lane, limit: int) -> list[StreamRecord]:
        buffer = lane.buffer
        popleft = buffer.popleft
        batch = [popleft() for _ in range(min(len(buffer), limit))]
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
        body: Any
        if self._invoking is not None:
            window, final = self._invoking
            body = window_event(self.builder.event(records)["Records"], window, shard_id=self.shard_id,
                                stream_arn=self.builder.stream_arn, final=final)
        else:
            body = self.builder.pack(records)
        self._metrics.batch_records.labels(self.name).observe(len(records))
        if records:
            self.iterator_age = max(0.0, self._now() - records[-1].arrival)
            self._metrics.iterator_age_seconds.labels(*self._labels).set(self.iterator_age)
        started = time.perf_counter()
        result = await self._pool.invoke(self._function, body, invocation_type="RequestResponse")
        if is_throttled(result):
            raise Throttled(f"{self._function} has no reserved concurrency")
        if self._invoking is not None:
            self._answered = window_state(result.payload) if result.ok else None
        fields = {
            "first_sequence_number": records[0].sequence_number if records else None,
            "last_sequence_number": records[-1].sequence_number if records else None, "batch_size": len(records),
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
        if not records:  # a tumbling window's final invocation without records ran out of retries
            self._log.warning("stream.window_final_failed", condition=discard.condition,
                              attempts=discard.approximate_invoke_count)
            return
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
        await self._finish(records)

    async def _done(self, records: Sequence[StreamRecord]) -> None:
        """The policy's verdict: these records succeeded (with a window, so did the state)."""
        if self._invoking is not None:
            if self._answered is not None:
                self._invoking[0].state = self._answered
            self._answered = None
        await self._finish(records)

    async def _finish(self, records: Sequence[StreamRecord]) -> None:
        if not records:
            return
        self._held -= len(records)
        if self._windows is None:
            self.checkpoint.done(r.offset for r in records)
            self._after_progress()
            self._commit()
        else:  # held in the checkpoint until the window's final invocation (see _close_window)
            self._after_progress()

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
            **self._window_status(),
        }

    def _window_status(self) -> dict[str, Any]:
        window = self._windows.current if self._windows is not None else None
        if window is None:
            return {}
        return {"window": {**window.bounds, "records": window.delivered + window.waiting,
                           "terminated_early": window.terminated_early}}
