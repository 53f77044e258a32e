"""Checkpoints (out-of-order lanes, gaps) and the exact on-failure record."""

from __future__ import annotations

import json

import pytest

from router.delivery.backoff import Backoff
from router.delivery.checkpoint import ShardCheckpoint
from router.delivery.destination import DestinationError
from router.delivery.stream_failure import FailureWriter, failure_record, iso_millis
from router.events.kinesis import StreamRecord
from router.observability.metrics import Metrics
from router.runtime.result import InvocationResult


def test_checkpoint_is_the_oldest_record_not_done() -> None:
    cp = ShardCheckpoint(start=10)
    assert (cp.position, cp.sequence_number, cp.dirty) == (10, 9, False)
    for offset in (10, 11, 12, 15, 16):  # 13-14: a gap (compaction, transaction markers)
        cp.track(offset)
    cp.done([11, 12, 16])  # other lanes finished first
    assert cp.position == 10 and not cp.dirty
    cp.done([10])
    assert cp.position == 15 and cp.sequence_number == 14 and cp.dirty
    cp.done([15])
    assert cp.position == 17 and cp.outstanding == 0
    cp.mark_committed(17)
    assert not cp.dirty
    cp.mark_committed(12)  # a late acknowledgement never moves it back
    assert cp.committed == 17
    with pytest.raises(ValueError):
        cp.track(16)


def test_nothing_fetched_keeps_the_start() -> None:
    cp = ShardCheckpoint(start=0)
    cp.done([])
    assert cp.position == 0 and cp.sequence_number == -1


def _records() -> list[StreamRecord]:
    return [StreamRecord(o, "k", 1573691884.835 + i * 0.745, b"{}", 200) for i, o in enumerate((7, 8, 9))]


def test_retry_exhausted_record_has_lambdas_shape_plus_payload() -> None:
    result = InvocationResult(request_id="c9b8fa9f", payload={"errorMessage": "x"}, function_error="Unhandled",
                              error_type="ValueError")
    payload = {"Records": [{"kinesis": {"sequenceNumber": "7"}}]}
    record = failure_record(
        condition="RetryAttemptsExhausted", function_arn="arn:aws:lambda:us-east-2:123456789012:function:f",
        shard_id="shardId-000000000001", stream_arn="arn:aws:kinesis:us-east-2:123456789012:stream/s",
        records=_records(), payload=payload, approximate_invoke_count=3, last_result=result,
        now=1573690686.021,
    )
    assert list(record) == ["requestContext", "responseContext", "version", "timestamp", "KinesisBatchInfo",
                            "payload"]
    assert record == {
        "requestContext": {"requestId": "c9b8fa9f", "functionArn": "arn:aws:lambda:us-east-2:123456789012:function:f",
                           "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 3},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2019-11-14T00:18:06.021Z",
        "KinesisBatchInfo": {
            "shardId": "shardId-000000000001", "startSequenceNumber": "7", "endSequenceNumber": "9",
            "approximateArrivalOfFirstRecord": "2019-11-14T00:38:04.835Z",
            "approximateArrivalOfLastRecord": "2019-11-14T00:38:06.325Z",
            "batchSize": 3, "streamArn": "arn:aws:kinesis:us-east-2:123456789012:stream/s",
        },
        "payload": payload,
    }
    json.dumps(record)


def test_partial_failure_exhaustion_has_null_function_error_and_age_has_no_response_context() -> None:
    partial = InvocationResult(request_id="r", payload={"batchItemFailures": [{"itemIdentifier": "7"}]})
    common = {"function_arn": "a", "shard_id": "s", "stream_arn": "x", "records": _records()[:1],
              "payload": {"Records": []}, "now": 0.0}
    exhausted = failure_record(condition="RetryAttemptsExhausted", approximate_invoke_count=4, last_result=partial,
                               **common)  # type: ignore[arg-type]
    assert exhausted["responseContext"]["functionError"] is None
    assert exhausted["KinesisBatchInfo"]["batchSize"] == 1
    aged = failure_record(condition="RecordAgeExceeded", approximate_invoke_count=1, last_result=None,
                          **common)  # type: ignore[arg-type]
    assert "responseContext" not in aged and aged["requestContext"]["requestId"]
    assert iso_millis(0.0) == "1970-01-01T00:00:00.000Z"


class _FlakyDestination:
    uri = "kafka://failed"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[dict, str]] = []

    async def send(self, record: dict, *, key: str) -> None:
        if self.failures:
            self.failures -= 1
            raise DestinationError("down")
        self.sent.append((record, key))


async def test_failure_writer_retries_a_destination_until_written() -> None:
    dest = _FlakyDestination(failures=3)
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    metrics = Metrics()
    writer = FailureWriter(dest, mapping="m", shard_id="shardId-000000000000", metrics=metrics,
                           backoff=Backoff(0.5, 2.0, jitter=True, rng=lambda: 1.0), sleep=sleep)
    record = failure_record(condition="RecordAgeExceeded", function_arn="a", shard_id="shardId-000000000000",
                            stream_arn="x", records=_records(), payload={}, approximate_invoke_count=1,
                            last_result=None, now=0.0)
    await writer.write(record)
    assert sleeps == [0.5, 1.0, 2.0] and len(dest.sent) == 1
    assert dest.sent[0][1].startswith("aws/lambda/") and "/shardId-000000000000/" in dest.sent[0][1]
    assert metrics.registry.get_sample_value("router_destination_delivery_failures_total", {"mapping": "m"}) == 3
    assert metrics.registry.get_sample_value("router_on_failure_records_total", {"mapping": "m"}) == 1


def test_done_below_finishes_a_held_window_at_once_gaps_and_out_of_order_included() -> None:
    checkpoint = ShardCheckpoint(10)
    checkpoint.track_many([10, 11, 13, 14, 20])  # gaps: compaction
    checkpoint.done([14])
    assert checkpoint.position == 10
    checkpoint.done_below(14)
    assert checkpoint.position == 20  # 14 was done already
    checkpoint.done_below(21)
    assert checkpoint.position == 21 and checkpoint.outstanding == 0
