"""Kafka records become Kinesis event records byte for byte, and the size arithmetic is exact."""

from __future__ import annotations

import base64
import json
import random
import struct

import pytest

from router.config import load_config_data
from router.events.kinesis import (
    MAX_INVOCATION_PAYLOAD_BYTES,
    KinesisEventBuilder,
    event_size,
    offset_of,
    partition_of,
    sequence_number,
    shard_id,
)
from router.runtime import kinesis_batch, protocol


@pytest.fixture
def builder() -> KinesisEventBuilder:
    config = load_config_data(
        {"region": "eu-west-1", "account_id": "123456789012", "functions": {"metrics": {"handler": "m.handler"}},
         "kafka": {}, "event_source_mappings": {"clicks": {"function_name": "metrics", "kafka_topic": "clicks"}}},
        {},
    )
    return KinesisEventBuilder(config, topic="clicks", function="metrics", partition=3)


def test_record_has_every_field_of_the_aws_shape(builder: KinesisEventBuilder) -> None:
    record = builder.stream_record(42, b"user-1", b"Hello, this is a test.", 1545084650987)
    assert builder.record(record) == {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "user-1",
            "sequenceNumber": "42",
            "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": "shardId-000000000003:42",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/metrics-role",
        "awsRegion": "eu-west-1",
        "eventSourceARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/clicks",
    }


def test_data_is_the_exact_bytes_even_when_binary_or_empty(builder: KinesisEventBuilder) -> None:
    raw = bytes(range(256)) + b'{"not": "re-encoded"}  '
    rec = builder.record(builder.stream_record(0, b"k", raw, 0))
    assert base64.b64decode(rec["kinesis"]["data"]) == raw
    assert builder.record(builder.stream_record(1, b"k", None, 0))["kinesis"]["data"] == ""
    assert builder.record(builder.stream_record(2, b"k", b"", 0))["kinesis"]["data"] == ""


def test_partition_key_fallbacks_are_stable(builder: KinesisEventBuilder) -> None:
    assert builder.stream_record(7, None, b"x", 0).partition_key == "7"
    binary = b"\xff\xfe\x00k"
    key = builder.stream_record(8, binary, b"x", 0).partition_key
    assert key == base64.b64encode(binary).decode() and key == builder.stream_record(9, binary, b"y", 1).partition_key
    assert builder.stream_record(10, "clé-ü".encode(), b"x", 0).partition_key == "clé-ü"


def test_sequence_numbers_round_trip_and_shard_ids_parse() -> None:
    for offset in (0, 1, 9, 10, 123456789, 2**63 - 1):
        assert offset_of(sequence_number(offset)) == offset
    for bad in ("", "01", "-1", "1.0", " 1", "abc"):
        with pytest.raises(ValueError):
            offset_of(bad)
    assert shard_id(3) == "shardId-000000000003" and partition_of("shardId-000000000003") == 3
    with pytest.raises(ValueError):
        partition_of("shardId-3")


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def test_encoded_event_and_sizes_match_json_dumps(builder: KinesisEventBuilder) -> None:
    rng = random.Random(7)
    keys: list[bytes | None] = [None, b"", b"plain", b'q"uote\\', "ünï€😀".encode(), b"\x00\x1f\x7f", b"\xff\xfe",
                                b"tab\tnl\n"]
    records = []
    for i in range(300):
        offset = rng.choice([0, 5, 99, 10**6, 2**40 + i])
        value = rng.randbytes(rng.choice([0, 1, 2, 3, 4, 100, 1001])) if i % 7 else None
        ts = rng.choice([0, -1, 1, 999_999_999_999, 1545084650987, 1700000000123, 1700000000120, 1700000000100,
                         1700000000000, 9_999_999_999_999, 10**13, 2**62])
        record = builder.stream_record(offset, rng.choice(keys), value, ts)
        assert record.size == len(_compact(builder.record(record))), record
        records.append(record)
    rng2 = random.Random(8)
    fetched, expected = [], []
    for offset in range(500, 800):
        key, value, ts = rng2.choice(keys), rng2.randbytes(rng2.choice([0, 5, 77])), rng2.choice([0, 1700000000123])
        fetched.append((offset, key, value, ts))
        expected.append(builder.stream_record(offset, key, value, ts))
    assert builder.stream_records(fetched) == expected
    assert builder.stream_records(fetched, after=749) == expected[250:]
    # One fetch whose sequence numbers change length half way (999 -> 1000), keys seen before.
    across = [(offset, keys[offset % len(keys)], b"v", 1700000000123) for offset in range(990, 1010)]
    assert [r.size for r in builder.stream_records(across)] == [
        len(_compact(builder.record(r))) for r in builder.stream_records(across)]
    for n in (0, 1, 2, 57, 300):
        event = builder.event(records[:n])
        assert event_size(records[:n]) == len(_compact(event))
        # What the worker builds from the packed batch is what json.loads of the JSON event gives,
        # key order included (a handler that re-serialises the event sees the same text).
        packed = builder.pack(records[:n])
        assert packed.format == protocol.EVENT_KINESIS_BATCH
        built = kinesis_batch.decode(packed.body)
        assert built == json.loads(_compact(event))
        assert _compact(built) == _compact(event)


def test_a_damaged_batch_is_refused_not_misread(builder: KinesisEventBuilder) -> None:
    body = builder.pack([builder.stream_record(o, b"k", b"value", 0) for o in range(3)]).body
    with pytest.raises(ValueError):
        kinesis_batch.decode(body + b"x")
    with pytest.raises((ValueError, struct.error)):
        kinesis_batch.decode(body[:-1])


def test_event_is_in_the_order_given(builder: KinesisEventBuilder) -> None:
    records = [builder.stream_record(o, b"k", b"v", 0) for o in (5, 6, 9)]
    event = builder.event(records)
    assert [r["kinesis"]["sequenceNumber"] for r in event["Records"]] == ["5", "6", "9"]
    assert MAX_INVOCATION_PAYLOAD_BYTES == 6 * 1024 * 1024
