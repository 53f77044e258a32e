"""The stream outcome policy against the AWS-recorded cases: invocation counts and discards.

A fake clock advances with every backoff sleep, so record age and retry timing are exact and the
tests take milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from router.config import StreamMapping
from router.delivery.backoff import Backoff
from router.delivery.stream_retries import Abandoned, Discard, StreamBatchPolicy
from router.events.kinesis import StreamRecord
from router.observability.metrics import Metrics
from router.runtime.result import InvocationResult

NOW = 1_700_000_000.0

Handler = Callable[[list[str], int], InvocationResult]


def ok(payload: Any = None) -> InvocationResult:
    return InvocationResult(request_id="req", payload=payload)


def error(kind: str = "ValueError") -> InvocationResult:
    return InvocationResult(request_id="req-err", payload={"errorMessage": "boom", "errorType": kind},
                            function_error="Unhandled", error_type=kind)


def failures(*seqs: str) -> InvocationResult:
    return ok({"batchItemFailures": [{"itemIdentifier": s} for s in seqs]})


def records(offsets: Sequence[int], ages: Sequence[float] | None = None) -> list[StreamRecord]:
    ages = ages or [1.0] * len(offsets)
    return [StreamRecord(o, f"k{o}", NOW - a, b"{}", 200) for o, a in zip(offsets, ages, strict=True)]


class Harness:
    def __init__(self, handler: Handler, **mapping: Any) -> None:
        self.mapping = StreamMapping(function_name="f", kafka_topic="t", **mapping)
        self.handler = handler
        self.clock = NOW
        self.calls: list[list[str]] = []
        self.discards: list[Discard] = []
        self.done: list[str] = []
        self.sleeps: list[float] = []
        self.metrics = Metrics()
        self.abandon_after: int | None = None
        self.raise_before: int = 0
        self.policy = StreamBatchPolicy(
            self.mapping, invoke=self._invoke, discard=self._discard, done=self._done, sleep=self._sleep,
            now=lambda: self.clock, backoff=Backoff(1.0, 8.0, jitter=True, rng=lambda: 1.0), metrics=self.metrics,
            mapping_name="m",
        )

    async def _invoke(self, batch: list[StreamRecord], attempt: int) -> InvocationResult:
        if self.raise_before > 0:
            self.raise_before -= 1
            raise ConnectionError("pool unavailable")
        seqs = [r.sequence_number for r in batch]
        self.calls.append(seqs)
        self.clock += 0.1
        return self.handler(seqs, attempt)

    async def _discard(self, d: Discard) -> None:
        self.discards.append(d)

    async def _done(self, batch: Sequence[StreamRecord]) -> None:
        self.done.extend(r.sequence_number for r in batch)

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.abandon_after is not None and len(self.sleeps) > self.abandon_after:
            raise Abandoned
        self.clock += seconds

    def invocations_of(self, seq: str) -> int:
        return sum(seq in c for c in self.calls)

    def counter(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(f"router_{name}_total", {"mapping": "m"})
        return value or 0.0


def discarded(d: Discard) -> tuple[str, list[str], int]:
    return d.condition, [r.sequence_number for r in d.records], d.approximate_invoke_count


async def test_success_marks_everything_done_once() -> None:
    h = Harness(lambda s, a: ok())
    await h.policy.run(records([1, 2, 3]))
    assert h.calls == [["1", "2", "3"]] and h.done == ["1", "2", "3"] and not h.discards


@pytest.mark.parametrize(("retries", "invocations"), [(0, 1), (1, 2), (2, 3), (5, 6)])
async def test_n_retries_means_n_plus_one_invocations(retries: int, invocations: int) -> None:
    h = Harness(lambda s, a: error(), maximum_retry_attempts=retries)
    await h.policy.run(records([10, 11]))
    assert len(h.calls) == invocations
    assert [discarded(d) for d in h.discards] == [("RetryAttemptsExhausted", ["10", "11"], invocations)]
    assert h.discards[0].last_result is not None and h.discards[0].last_result.function_error == "Unhandled"
    assert h.done == [] and h.counter("retries") == retries


async def test_backoff_grows_exponentially_and_is_capped() -> None:
    h = Harness(lambda s, a: error(), maximum_retry_attempts=6)
    await h.policy.run(records([1]))
    assert h.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    jittered = Backoff(2.0, 100.0, jitter=True, rng=lambda: 0.0)
    assert [jittered.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert Backoff(0.0, 10.0).delay(5) == 0.0


async def test_old_head_record_is_discarded_and_fresh_ones_delivered() -> None:
    # AWS: retries 0, age 60, one 80 s old record then 5 fresh → RecordAgeExceeded batchSize 1, count 1.
    h = Harness(lambda s, a: ok(), maximum_retry_attempts=0, maximum_record_age_in_seconds=60)
    await h.policy.run(records([1, 2, 3, 4, 5, 6], ages=[80, 1, 1, 1, 1, 1]))
    assert [discarded(d) for d in h.discards] == [("RecordAgeExceeded", ["1"], 1)]
    assert h.discards[0].last_result is None
    assert h.calls == [["2", "3", "4", "5", "6"]] and h.done == ["2", "3", "4", "5", "6"]


async def test_only_the_leading_run_of_expired_records_is_split_off() -> None:
    h = Harness(lambda s, a: ok(), maximum_record_age_in_seconds=60)
    await h.policy.run(records([1, 2, 3, 4], ages=[90, 70, 1, 95]))
    assert [discarded(d) for d in h.discards] == [("RecordAgeExceeded", ["1", "2"], 1)]
    assert h.calls == [["3", "4"]]


async def test_infinite_retries_stop_when_the_record_ages_out() -> None:
    # AWS: age 60, retries -1, always failing → RecordAgeExceeded with approximateInvokeCount ≈ attempts (8).
    h = Harness(lambda s, a: error(), maximum_record_age_in_seconds=60)
    await h.policy.run(records([1, 2], ages=[5, 5]))
    assert len(h.calls) >= 5
    assert [discarded(d) for d in h.discards] == [("RecordAgeExceeded", ["1", "2"], len(h.calls))]
    assert h.clock - (NOW - 5) > 60


async def test_partial_failure_remainder_is_a_new_batch_with_its_own_budget() -> None:
    # AWS: 6 records, batch size 3, retries 3, record 6 always failed → 1-5 once, 6 five times,
    # failure record count 4, batchSize 1, start = end = seq of 6, functionError null.
    h = Harness(lambda s, a: failures("6") if "6" in s else ok(), maximum_retry_attempts=3,
                function_response_types=["ReportBatchItemFailures"])
    await h.policy.run(records([1, 2, 3]))
    await h.policy.run(records([4, 5, 6]))
    assert [h.invocations_of(str(i)) for i in range(1, 7)] == [1, 1, 1, 1, 1, 5]
    assert [discarded(d) for d in h.discards] == [("RetryAttemptsExhausted", ["6"], 4)]
    last = h.discards[0].last_result
    assert last is not None and last.function_error is None
    assert h.done == ["1", "2", "3", "4", "5"]


async def test_partial_failure_retries_from_the_lowest_including_later_successes() -> None:
    seen: list[list[str]] = []

    def handler(s: list[str], a: int) -> InvocationResult:
        seen.append(s)
        return failures("5", "3") if len(seen) == 1 else ok()

    h = Harness(handler, function_response_types=["ReportBatchItemFailures"])
    await h.policy.run(records([1, 2, 3, 4, 5]))
    assert h.calls == [["1", "2", "3", "4", "5"], ["3", "4", "5"]]
    assert h.done == ["1", "2", "3", "4", "5"] and not h.discards and h.sleeps == []


async def test_invalid_partial_response_fails_the_whole_batch_without_bisecting() -> None:
    h = Harness(lambda s, a: failures(""), maximum_retry_attempts=2, bisect_batch_on_function_error=True,
                function_response_types=["ReportBatchItemFailures"])
    await h.policy.run(records([1, 2, 3, 4]))
    assert h.calls == [["1", "2", "3", "4"]] * 3
    assert [discarded(d) for d in h.discards] == [("RetryAttemptsExhausted", ["1", "2", "3", "4"], 3)]
    assert h.counter("bisections") == 0


async def test_response_is_ignored_without_report_batch_item_failures() -> None:
    h = Harness(lambda s, a: failures("1"), maximum_retry_attempts=0)
    await h.policy.run(records([1, 2]))
    assert h.calls == [["1", "2"]] and h.done == ["1", "2"] and not h.discards


async def test_bisect_isolates_the_poison_record_without_consuming_retries() -> None:
    h = Harness(lambda s, a: error() if "5" in s else ok(), maximum_retry_attempts=1,
                bisect_batch_on_function_error=True)
    await h.policy.run(records([0, 1, 2, 3, 4, 5, 6, 7]))
    assert h.calls == [
        ["0", "1", "2", "3", "4", "5", "6", "7"],
        ["0", "1", "2", "3"],
        ["4", "5", "6", "7"],
        ["4", "5"],
        ["4"],
        ["5"], ["5"],  # the single record uses its one retry
        ["6", "7"],
    ]
    assert [discarded(d) for d in h.discards] == [("RetryAttemptsExhausted", ["5"], 2)]
    assert h.done == ["0", "1", "2", "3", "4", "6", "7"]
    assert h.counter("bisections") == 3 and h.counter("retries") == 1


async def test_bisect_with_partial_response_splits_at_the_returned_sequence_number() -> None:
    h = Harness(lambda s, a: failures("3") if "3" in s else ok(), maximum_retry_attempts=0,
                bisect_batch_on_function_error=True, function_response_types=["ReportBatchItemFailures"])
    await h.policy.run(records([1, 2, 3, 4]))
    assert h.calls == [["1", "2", "3", "4"], ["3", "4"]]
    assert [discarded(d) for d in h.discards] == [("RetryAttemptsExhausted", ["3", "4"], 1)]
    assert h.done == ["1", "2"] and h.counter("bisections") == 0


async def test_errors_before_invocation_do_not_consume_retries() -> None:
    h = Harness(lambda s, a: error(), maximum_retry_attempts=1)
    h.raise_before = 3
    await h.policy.run(records([1]))
    assert len(h.calls) == 2 and len(h.sleeps) == 3 + 1
    assert [discarded(d) for d in h.discards] == [("RetryAttemptsExhausted", ["1"], 2)]


async def test_timeout_is_a_function_error() -> None:
    h = Harness(lambda s, a: error("Sandbox.Timedout"), maximum_retry_attempts=0)
    await h.policy.run(records([1]))
    last = h.discards[0].last_result
    assert last is not None and last.error_type == "Sandbox.Timedout" and last.function_error == "Unhandled"


async def test_abandoned_batch_leaves_records_undone() -> None:
    h = Harness(lambda s, a: error())
    h.abandon_after = 2
    with pytest.raises(Abandoned):
        await h.policy.run(records([1, 2]))
    assert h.done == [] and h.discards == [] and len(h.calls) == 3


async def test_retry_then_success_marks_done_without_discard() -> None:
    h = Harness(lambda s, a: ok() if a == 3 else error(), maximum_retry_attempts=5)
    await h.policy.run(records([1, 2]))
    assert len(h.calls) == 3 and h.done == ["1", "2"] and not h.discards
