"""Kafka records as Kinesis event records, byte for byte what a Lambda handler would receive.

Choices that are ours (Kinesis has no Kafka), fixed here so every other module agrees:

* **Shard id**: partition 3 is `shardId-000000000003`.
* **Sequence number**: the Kafka offset in plain decimal (offset 0 is "0"). It matches Kinesis's
  pattern `0|[1-9]\\d{0,128}`, is strictly increasing within a shard, compares correctly when
  compared numerically (as Kinesis sequence numbers must be) and round-trips to the offset without a
  lookup table, so a handler's `batchItemFailures` and an operator's `reset-checkpoint
  --sequence-number` map straight back to Kafka.
* **Partition key**: the Kafka key decoded as UTF-8. A key that is not valid UTF-8 becomes the
  standard base64 of its bytes (stable and reversible). A null key becomes the record's own
  sequence number: Kafka producers send null keys precisely when they want no per-key ordering, so
  with a parallelization factor above 1 such records spread over the lanes; with factor 1 the shard
  order holds as always. Keys are not truncated to Kinesis's 256 characters (nothing is lost).
* **Arrival time**: the Kafka record timestamp in ms / 1000 (LOG_APPEND_TIME is the closer
  analogue of Kinesis arrival; CREATE_TIME is used when that is what the topic keeps).
* **data**: base64 of the exact value bytes; a null or empty value is "".

The event is serialized by `json.dumps` with default separators; `record_size` computes that
serialized size without serializing, so the batcher can respect Lambda's 6 MB invocation payload
limit cheaply for every record.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.config import Config

SHARD_PREFIX = "shardId-"
# Lambda's synchronous invocation payload limit; a batch closes before it would exceed this.
MAX_INVOCATION_PAYLOAD_BYTES = 6 * 1024 * 1024
_SEQUENCE_RE = re.compile(r"0|[1-9][0-9]{0,128}")
_SHARD_RE = re.compile(r"shardId-([0-9]{12})")

# json.dumps({"Records": [r1, r2]}) == '{"Records": [' + r1 + ', ' + r2 + ']}'
_ENVELOPE_BYTES = len('{"Records": [') + len("]}")
_SEPARATOR_BYTES = len(", ")


def shard_id(partition: int) -> str:
    return f"{SHARD_PREFIX}{partition:012d}"


def partition_of(shard: str) -> int:
    """The Kafka partition of a shard id, or ValueError for anything else."""
    match = _SHARD_RE.fullmatch(shard)
    if not match:
        raise ValueError(f"not a shard id: {shard!r} (expected shardId- and 12 digits)")
    return int(match.group(1))


def sequence_number(offset: int) -> str:
    return str(offset)


def offset_of(sequence: str) -> int:
    """The Kafka offset a sequence number stands for; ValueError if it is not one of ours."""
    if not isinstance(sequence, str) or not _SEQUENCE_RE.fullmatch(sequence):
        raise ValueError(f"not a sequence number: {sequence!r}")
    return int(sequence)


def partition_key(key: bytes | None, sequence: str) -> str:
    if key is None:
        return sequence
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(key).decode("ascii")


def arrival_seconds(timestamp_ms: int) -> float:
    return timestamp_ms / 1000


def _json_str_len(text: str) -> int:
    # Printable ASCII without quote or backslash is copied as is; anything else asks json.
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2
    return len(json.dumps(text))


def _b64_len(size: int) -> int:
    return 4 * ((size + 2) // 3)


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One record of one shard, as the delivery path sees it (no Kafka types past the source)."""

    offset: int
    sequence_number: str
    partition_key: str
    data: bytes
    arrival: float  # epoch seconds
    size: int  # bytes this record adds to a serialized invocation event, separator excluded


class KinesisEventBuilder:
    """Builds records and events for one shard of one mapping; the fixed fields are computed once."""

    def __init__(self, config: Config, *, topic: str, function: str, partition: int) -> None:
        self.shard_id = shard_id(partition)
        self.stream_arn = config.stream_arn(topic)
        self._role_arn = config.role_arn(function)
        self._region = config.region
        # Size of a record whose variable fields are all empty; the variable parts are added back
        # in `_size` (json.dumps escapes only the partition key: the other strings are ASCII digits
        # and base64, and the timestamp is rendered by float.__repr__ like json.dumps does).
        empty = self._record("", "", "", 0.0)
        self._fixed_size = len(json.dumps(empty)) - len("0.0")

    def _record(self, key: str, sequence: str, data_b64: str, arrival: float) -> dict[str, Any]:
        return {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": key,
                "sequenceNumber": sequence,
                "data": data_b64,
                "approximateArrivalTimestamp": arrival,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"{self.shard_id}:{sequence}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": self._role_arn,
            "awsRegion": self._region,
            "eventSourceARN": self.stream_arn,
        }

    def _size(self, key: str, sequence: str, data_len: int, arrival: float) -> int:
        return (self._fixed_size + _json_str_len(key) - 2 + 2 * len(sequence) + _b64_len(data_len)
                + len(repr(arrival)))

    def stream_record(self, offset: int, key: bytes | None, value: bytes | None, timestamp_ms: int) -> StreamRecord:
        sequence = sequence_number(offset)
        pkey = partition_key(key, sequence)
        data = value or b""
        arrival = arrival_seconds(timestamp_ms)
        return StreamRecord(offset, sequence, pkey, data, arrival, self._size(pkey, sequence, len(data), arrival))

    def record(self, record: StreamRecord) -> dict[str, Any]:
        data = binascii.b2a_base64(record.data, newline=False).decode("ascii")
        return self._record(record.partition_key, record.sequence_number, data, record.arrival)

    def event(self, records: Sequence[StreamRecord]) -> dict[str, Any]:
        return {"Records": [self.record(r) for r in records]}


def event_size(records: Sequence[StreamRecord]) -> int:
    """Serialized size of the invocation event for these records (json.dumps, default separators)."""
    if not records:
        return _ENVELOPE_BYTES
    return _ENVELOPE_BYTES + sum(r.size for r in records) + _SEPARATOR_BYTES * (len(records) - 1)


def added_size(record: StreamRecord, batch_len: int) -> int:
    """How much one more record grows an event that already holds `batch_len` records."""
    return record.size + (_SEPARATOR_BYTES if batch_len else 0)
