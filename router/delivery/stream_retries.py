"""What happens to a stream batch after each invocation: Lambda's retry, bisect, partial-failure
and record-age rules, as one state machine that knows nothing about Kafka or worker processes.

The batch is worked on as a queue of *segments* (runs of consecutive records, shard order):

* Before every attempt the expired head of the segment is discarded (`RecordAgeExceeded`,
  `approximateInvokeCount` = attempts so far, at least 1, as AWS recorded for a record that was
  never invoked).
* Success: the segment is done.
* A valid ReportBatchItemFailures response: the records before the lowest failed one are done; the
  rest becomes a *new* segment with its own retry budget (AWS-recorded: 6 records, batch size 3,
  3 retries, record 6 always failing → records 1-5 delivered once, record 6 five times, failure
  record with `approximateInvokeCount` 4 and `batchSize` 1). When the lowest failed record is the
  first one, nothing moved, so the attempt is an ordinary failed attempt of the same segment.
* A function error with `bisect_batch_on_function_error` and more than one record: the segment is
  split in two halves, first half first (order), each a new segment; splitting consumes no retry.
* Any other failure (a function error that cannot be split, or an invalid partial response, which
  is a whole-batch failure but not a function error and is therefore not bisected): retried after
  exponential backoff with jitter until `maximum_retry_attempts` is spent (N retries = N+1
  invocations; -1 = until the records are too old), then `RetryAttemptsExhausted`.
* Errors before the function ran (the pool could not invoke) are retried with backoff and consume
  no retry attempts, as Lambda treats throttles and service errors.

Discarded records are handed to `discard` (which writes the on-failure record and returns only once
it is written); done records go to `done` (which moves the checkpoint). Stopping the shard makes
`sleep` raise `Abandoned`, which leaves the remaining records undone for the next owner.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from router.config import StreamMapping
from router.delivery.backoff import Backoff
from router.delivery.batch_item_failures import SUCCESS, ItemFailures, parse_batch_item_failures
from router.delivery.record_age import split_expired
from router.delivery.stream_failure import Condition
from router.delivery.tumbling_window import window_state
from router.events.kinesis import StreamRecord
from router.observability.metrics import Metrics
from router.runtime.result import InvocationResult


class Abandoned(Exception):
    """The shard is stopping; leave the remaining records undone (the checkpoint stays)."""


@dataclass(frozen=True, slots=True)
class Discard:
    condition: Condition
    records: list[StreamRecord]
    approximate_invoke_count: int
    last_result: InvocationResult | None


Invoke = Callable[[list[StreamRecord], int], Awaitable[InvocationResult]]


class StreamBatchPolicy:
    def __init__(
        self,
        mapping: StreamMapping,
        *,
        invoke: Invoke,
        discard: Callable[[Discard], Awaitable[None]],
        done: Callable[[Sequence[StreamRecord]], Awaitable[None]],
        sleep: Callable[[float], Awaitable[None]],
        now: Callable[[], float],
        backoff: Backoff,
        metrics: Metrics,
        mapping_name: str,
        log: Any = None,
    ) -> None:
        self._mapping = mapping
        self._invoke = invoke
        self._discard = discard
        self._done = done
        self._sleep = sleep
        self._now = now
        self._backoff = backoff
        self._metrics = metrics
        self._name = mapping_name
        self._log = log or structlog.get_logger("router.stream_retries")

    def judge(self, result: InvocationResult, records: Sequence[StreamRecord]) -> ItemFailures:
        if not result.ok:
            return ItemFailures("invalid", reason="function error")
        if self._mapping.tumbling_window_in_seconds and window_state(result.payload) is None:
            # Lambda: a windowed function must answer {"state": {...}}; anything else failed.
            return ItemFailures("invalid", reason="response without state")
        if not self._mapping.report_batch_item_failures:
            return SUCCESS
        return parse_batch_item_failures(result.payload, [r.sequence_number for r in records])

    async def run(self, records: Sequence[StreamRecord], *, invoke_empty: bool = False) -> None:
        """Process one batch until every record is done or discarded (or raise Abandoned).
        `invoke_empty`: an empty batch is still invoked (a tumbling window's final invocation)."""
        segments: deque[list[StreamRecord]] = deque([list(records)])
        while segments:
            await self._run_segment(segments.popleft(), segments, invoke_empty=invoke_empty)

    async def _run_segment(
        self, segment: list[StreamRecord], segments: deque[list[StreamRecord]], *, invoke_empty: bool = False
    ) -> None:
        mapping = self._mapping
        attempts = 0  # invocations of this segment
        not_invoked = 0  # consecutive errors before the function ran
        last: InvocationResult | None = None
        while True:
            expired, segment = split_expired(segment, self._now(), mapping.maximum_record_age_in_seconds)
            if expired:
                await self._discard(Discard("RecordAgeExceeded", expired, max(attempts, 1), last))
            if not segment and not invoke_empty:
                return
            try:
                result = await self._invoke(segment, attempts + 1)
            except Abandoned:
                raise
            except Exception as exc:  # the pool did not run the function: no retry consumed
                not_invoked += 1
                self._log.warning("stream.invoke_failed", mapping=self._name, error_type=type(exc).__name__,
                                  error=str(exc), attempt=attempts + 1)
                await self._sleep(self._backoff.delay(not_invoked))
                continue
            not_invoked = 0
            attempts += 1
            last = result
            verdict = self.judge(result, segment)
            if verdict.success:
                await self._done(segment)
                return
            if verdict.verdict == "partial" and verdict.first_failed > 0:
                await self._done(segment[: verdict.first_failed])
                segment, attempts, last = segment[verdict.first_failed:], 0, None
                continue
            if not result.ok and mapping.bisect_batch_on_function_error and len(segment) > 1:
                middle = len(segment) // 2
                segments.appendleft(segment[middle:])
                segments.appendleft(segment[:middle])
                self._metrics.bisections.labels(self._name).inc()
                return
            if mapping.maximum_retry_attempts != -1 and attempts > mapping.maximum_retry_attempts:
                await self._discard(Discard("RetryAttemptsExhausted", segment, attempts, result))
                return
            self._metrics.retries.labels(self._name).inc()
            await self._sleep(self._backoff.delay(attempts))
