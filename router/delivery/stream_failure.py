"""The on-failure record of a stream mapping, and writing it until it is written.

The record is Lambda's (reference 2.4: `requestContext`, `responseContext`, `version`,
`timestamp`, `KinesisBatchInfo`, describing only the discarded records) plus, for every destination
and not only S3, a `payload` holding the invocation event of those records: Kafka retention will
delete the source records one day, and `router replay` re-invokes from `payload`.

Conditions: `RetryAttemptsExhausted` (with `responseContext.functionError` "Unhandled" for
function errors, null when the failures came from ReportBatchItemFailures responses),
`RecordAgeExceeded` (no `responseContext`, as AWS omits it), and `MaximumPayloadSizeExceeded` for
a single record larger than an invocation may be (Kafka ESM's condition; such a record can never
be delivered, so it is written out without an invocation and with `approximateInvokeCount` 0).

The checkpoint must never pass records whose failure record was not written, so `FailureWriter`
retries a destination that is down with capped exponential backoff, for as long as it takes (or
until the shard is stopped, which abandons the batch without moving the checkpoint).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from router.delivery.backoff import Backoff
from router.delivery.destination import Destination, DestinationError, stream_failure_key
from router.events.kinesis import StreamRecord
from router.observability.metrics import Metrics
from router.runtime.result import InvocationResult

Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded", "MaximumPayloadSizeExceeded"]


def iso_millis(epoch_seconds: float) -> str:
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def failure_record(
    *,
    condition: Condition,
    function_arn: str,
    shard_id: str,
    stream_arn: str,
    records: Sequence[StreamRecord],
    payload: Mapping[str, Any] | None,
    approximate_invoke_count: int,
    last_result: InvocationResult | None,
    now: float,
) -> dict[str, Any]:
    """One failure record covering `records` (non-empty, shard order)."""
    request_id = last_result.request_id if last_result is not None else str(uuid.uuid4())
    record: dict[str, Any] = {
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": approximate_invoke_count,
        },
    }
    if condition == "RetryAttemptsExhausted":
        record["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": last_result.function_error if last_result is not None else None,
        }
    record["version"] = "1.0"
    record["timestamp"] = iso_millis(now)
    record["KinesisBatchInfo"] = {
        "shardId": shard_id,
        "startSequenceNumber": records[0].sequence_number,
        "endSequenceNumber": records[-1].sequence_number,
        "approximateArrivalOfFirstRecord": iso_millis(records[0].arrival),
        "approximateArrivalOfLastRecord": iso_millis(records[-1].arrival),
        "batchSize": len(records),
        "streamArn": stream_arn,
    }
    if payload is not None:
        record["payload"] = payload
    return record


class FailureWriter:
    """Writes failure records of one shard to the mapping's on-failure destination, retrying."""

    def __init__(
        self,
        destination: Destination | None,
        *,
        mapping: str,
        shard_id: str,
        metrics: Metrics,
        backoff: Backoff,
        sleep: Callable[[float], Awaitable[None]],
        log: Any = None,
    ) -> None:
        self._destination = destination
        self._mapping = mapping
        self._shard_id = shard_id
        self._metrics = metrics
        self._backoff = backoff
        self._sleep = sleep
        self._log = log or structlog.get_logger("router.stream_failure")

    async def write(self, record: Mapping[str, Any]) -> None:
        info = record["KinesisBatchInfo"]
        context = record["requestContext"]
        fields = {
            "mapping": self._mapping, "shard": self._shard_id, "condition": context["condition"],
            "first_sequence_number": info["startSequenceNumber"],
            "last_sequence_number": info["endSequenceNumber"], "batch_size": info["batchSize"],
        }
        if self._destination is None:
            self._log.warning("stream.records_discarded", destination=None, **fields)
            return
        failures = 0
        while True:
            try:
                await self._destination.send(record, key=stream_failure_key(self._mapping, self._shard_id))
            except DestinationError as exc:
                failures += 1
                self._metrics.destination_delivery_failures.labels(self._mapping).inc()
                if failures == 1:
                    self._log.warning("stream.on_failure_destination_unavailable",
                                      destination=self._destination.uri, error=str(exc), **fields)
                await self._sleep(self._backoff.delay(failures))
                continue
            self._metrics.on_failure_records.labels(self._mapping).inc()
            self._log.warning("stream.records_sent_on_failure", destination=self._destination.uri,
                              attempt=failures + 1, **fields)
            return
