import json

from router.commands.replay import parse_failure_record


def test_stream_failure_record_replays_its_payload_synchronously() -> None:
    payload = {"Records": [{"kinesis": {"sequenceNumber": "5"}}]}
    body = json.dumps({
        "requestContext": {"functionArn": "arn:aws:lambda:us-east-1:000000000000:function:metrics",
                           "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 3},
        "KinesisBatchInfo": {"shardId": "shardId-000000000000"}, "payload": payload,
    }).encode()
    record = parse_failure_record("k", body)
    assert record is not None
    assert (record.function, record.condition, record.invocation_type) == (
        "metrics", "RetryAttemptsExhausted", "RequestResponse")
    assert record.event == payload


def test_async_failure_record_replays_its_request_payload_as_an_event() -> None:
    body = json.dumps({
        "version": "1.0",
        "requestContext": {"functionArn": "arn:aws:lambda:us-east-1:000000000000:function:thumbnail:$LATEST",
                           "condition": "RetriesExhausted"},
        "requestPayload": {"Records": [{"s3": {}}]},
    }).encode()
    record = parse_failure_record("k", body)
    assert record is not None
    assert (record.function, record.invocation_type) == ("thumbnail", "Event")


def test_other_bodies_are_not_failure_records() -> None:
    assert parse_failure_record("k", b"not json") is None
    assert parse_failure_record("k", b"[1, 2]") is None
    assert parse_failure_record("k", b'{"requestContext": {}}') is None
