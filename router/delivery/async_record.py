"""Lambda's asynchronous-invocation destination record (reference 3.3), built in one place.

Consumers of on-failure and on-success destinations (replay, alerting, users' own tooling) parse
these records exactly as they parse AWS's, so the shape follows the AWS-recorded one field for
field: `functionArn` is qualified with `:$LATEST`, `timestamp` is ISO-8601 UTC with milliseconds,
and `responseContext`/`responsePayload` are left out when the function never ran for the event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

EXECUTED_VERSION = "$LATEST"


class Condition(StrEnum):
    """Why a record was written (`requestContext.condition`)."""

    SUCCESS = "Success"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    EVENT_AGE_EXCEEDED = "EventAgeExceeded"
    # AWS sends events of a function with zero reserved concurrency straight to the failure
    # destination without invoking it; it documents no condition for that case, so we use
    # LocalStack's spelling (approximateInvokeCount 0, no response parts), which tools that
    # already know LocalStack recognise.
    ZERO_RESERVED_CONCURRENCY = "ZeroReservedConcurrency"
    # router's own: the mapping was deleted while its events were queued; they go to its
    # on-failure destination uninvoked (the record reports their earlier attempts, if any),
    # rather than being dropped with it. Lambda has no such case (an S3 trigger cannot be
    # deleted from under queued events), so the name says plainly what happened.
    EVENT_SOURCE_MAPPING_DELETED = "EventSourceMappingDeleted"


def iso_millis(moment: datetime) -> str:
    """2019-11-14T18:16:05.568Z: the timestamp form in every Lambda destination record."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def async_destination_record(
    *,
    function_arn: str,
    condition: Condition,
    request_id: str,
    approximate_invoke_count: int,
    request_payload: Any,
    invoked: bool,
    response_payload: Any = None,
    function_error: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The record Lambda sends to an asynchronous destination.

    `invoked` says whether a response exists to report: an event that expired in the queue before
    its first attempt, or one refused for zero concurrency, has no `responseContext`.
    """
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_millis(now or datetime.now(UTC)),
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": str(condition),
            "approximateInvokeCount": approximate_invoke_count,
        },
        "requestPayload": request_payload,
    }
    if invoked:
        response_context: dict[str, Any] = {"statusCode": 200, "executedVersion": EXECUTED_VERSION}
        if function_error is not None:
            response_context["functionError"] = function_error
        record["responseContext"] = response_context
        record["responsePayload"] = response_payload
    return record
