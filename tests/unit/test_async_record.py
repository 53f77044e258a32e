"""The asynchronous destination record, field for field as reference 3.3 shows it."""

from __future__ import annotations

from datetime import UTC, datetime

from router.delivery.async_record import Condition, async_destination_record, iso_millis

ARN = "arn:aws:lambda:us-east-1:000000000000:function:thumbnail:$LATEST"
NOW = datetime(2019, 11, 14, 18, 16, 5, 568_999, tzinfo=UTC)


def test_timestamp_is_iso_utc_with_milliseconds_and_z() -> None:
    assert iso_millis(NOW) == "2019-11-14T18:16:05.568Z"


def test_failure_record_has_lambdas_shape() -> None:
    error = {"errorMessage": "boom", "errorType": "ValueError", "requestId": "r-1", "stackTrace": []}
    record = async_destination_record(
        function_arn=ARN, condition=Condition.RETRIES_EXHAUSTED, request_id="r-1",
        approximate_invoke_count=3, request_payload={"Records": [{"s3": {}}]}, invoked=True,
        response_payload=error, function_error="Unhandled", now=NOW,
    )
    assert record == {
        "version": "1.0",
        "timestamp": "2019-11-14T18:16:05.568Z",
        "requestContext": {"requestId": "r-1", "functionArn": ARN, "condition": "RetriesExhausted",
                           "approximateInvokeCount": 3},
        "requestPayload": {"Records": [{"s3": {}}]},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": error,
    }
    assert list(record) == ["version", "timestamp", "requestContext", "requestPayload", "responseContext",
                            "responsePayload"]


def test_success_record_has_no_function_error() -> None:
    record = async_destination_record(
        function_arn=ARN, condition=Condition.SUCCESS, request_id="r-2", approximate_invoke_count=1,
        request_payload={"k": 1}, invoked=True, response_payload={"ok": True}, now=NOW,
    )
    assert record["requestContext"]["condition"] == "Success"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {"ok": True}


def test_uninvoked_event_has_no_response_parts() -> None:
    record = async_destination_record(
        function_arn=ARN, condition=Condition.ZERO_RESERVED_CONCURRENCY, request_id="r-3",
        approximate_invoke_count=0, request_payload={}, invoked=False, now=NOW,
    )
    assert "responseContext" not in record and "responsePayload" not in record
    assert record["requestContext"]["condition"] == "ZeroReservedConcurrency"
    assert record["requestContext"]["approximateInvokeCount"] == 0
