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

Events go to the worker pool as compact JSON bytes (what `json.dumps(event, separators=(",", ":"))`
produces, byte for byte). Each record is rendered once from a per-shard %-template when it is
fetched, instead of building and serializing dicts per invocation: after Kafka's own record parsing
this is most of the poll path's cost. Each record's serialized size is therefore known exactly
before a batch closes, so the batcher respects Lambda's 6 MB invocation payload limit exactly.
"""

from __future__ import annotations

import base64
import binascii
import json as _json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from router.config import Config

SHARD_PREFIX = "shardId-"
# Lambda's synchronous invocation payload limit; a batch closes before it would exceed this.
MAX_INVOCATION_PAYLOAD_BYTES = 6 * 1024 * 1024
_SEQUENCE_RE = re.compile(r"0|[1-9][0-9]{0,128}")
_SHARD_RE = re.compile(r"shardId-([0-9]{12})")

# The worker pool sends events as compact JSON: '{"Records":[' + r1 + ',' + r2 + ']}'.
_COMPACT = (",", ":")
_EVENT_HEAD = b'{"Records":['
_EVENT_TAIL = b"]}"
_ENVELOPE_BYTES = len(_EVENT_HEAD) + len(_EVENT_TAIL)
_SEPARATOR_BYTES = len(b",")


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


@dataclass(slots=True)
class StreamRecord:
    """One record of one shard, as the delivery path sees it (no Kafka types past the source).

    The record's event JSON is rendered once, when it is fetched: batches (and their retries, bisected
    halves and remainders) are then only joins of ready bytes, and each record's exact contribution
    to the 6 MB payload is simply its length. Treated as immutable; not a frozen dataclass only
    because a frozen one costs a microsecond more to build, once per record of every stream."""

    offset: int
    sequence_number: str
    partition_key: str
    arrival: float  # epoch seconds
    json: bytes  # this record's compact JSON inside the invocation event

    @property
    def size(self) -> int:
        """Bytes this record adds to a serialized invocation event, separator excluded."""
        return len(self.json)

    @property
    def data(self) -> bytes:
        decoded: bytes = base64.b64decode(_json.loads(self.json)["kinesis"]["data"])
        return decoded


class SourceRecord(Protocol):
    """What a source hands over per record (aiokafka's ConsumerRecord has these)."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> int: ...


class KinesisEventBuilder:
    """Builds records and events for one shard of one mapping; the fixed fields are computed once."""

    def __init__(self, config: Config, *, topic: str, function: str, partition: int) -> None:
        self.shard_id = shard_id(partition)
        self.stream_arn = config.stream_arn(topic)
        tail = {
            "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": "@", "eventName": "aws:kinesis:record",
            "invokeIdentityArn": config.role_arn(function), "awsRegion": config.region,
            "eventSourceARN": self.stream_arn,
        }
        # '...,"eventID":"@",...' split around the placeholder: the shard id is fixed, the sequence is not.
        before, after = _json.dumps(tail, separators=_COMPACT)[1:].split('"@"')
        # One %-template per shard: key JSON, sequence, base64 data, timestamp, sequence.
        self._template = (
            '{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":%s,"sequenceNumber":"%s","data":"%s",'
            '"approximateArrivalTimestamp":%s},'
            + f'{before}"{self.shard_id}:'.replace("%", "%%") + '%s"' + after.replace("%", "%%")
        ).encode("ascii")

    def stream_record(self, offset: int, key: bytes | None, value: bytes | None, timestamp_ms: int) -> StreamRecord:
        return self.stream_records([_Fetched(offset, key, value, timestamp_ms)])[0]

    def stream_records(self, records: Iterable[SourceRecord], after: int = -1) -> list[StreamRecord]:
        """Records as the delivery path wants them, skipping offsets up to `after`.

        This loop runs once per record of every stream, hence the inlining (the rules are in the
        module docstring: sequence number, partition key fallbacks, arrival time, base64 data)."""
        out: list[StreamRecord] = []
        append = out.append
        template = self._template
        dumps = _json.dumps
        b2a = binascii.b2a_base64
        for r in records:
            offset = r.offset
            if offset <= after:
                continue
            sequence = str(offset)
            key = r.key
            if key is None:
                pkey = sequence
            else:
                try:
                    pkey = key.decode("utf-8")
                except UnicodeDecodeError:
                    pkey = base64.b64encode(key).decode("ascii")
            if pkey.isascii() and pkey.isprintable() and '"' not in pkey and "\\" not in pkey:
                key_json = b'"' + pkey.encode("ascii") + b'"'
            else:
                key_json = dumps(pkey).encode("ascii")
            arrival = r.timestamp / 1000
            seq = sequence.encode("ascii")
            rendered = template % (key_json, seq, b2a(r.value or b"", newline=False),
                                   repr(arrival).encode("ascii"), seq)
            append(StreamRecord(offset, sequence, pkey, arrival, rendered))
        return out

    def record(self, record: StreamRecord) -> dict[str, Any]:
        """The record as a dict (for failure records' payload and for tests)."""
        decoded: dict[str, Any] = _json.loads(record.json)
        return decoded

    def event(self, records: Sequence[StreamRecord]) -> dict[str, Any]:
        return {"Records": [self.record(r) for r in records]}

    def encode_event(self, records: Sequence[StreamRecord]) -> bytes:
        """The invocation event as compact JSON bytes, equal to json.dumps of `event(records)`."""
        return _EVENT_HEAD + b",".join([r.json for r in records]) + _EVENT_TAIL


@dataclass(slots=True)
class _Fetched:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def event_size(records: Sequence[StreamRecord]) -> int:
    """Serialized size of the invocation event for these records (compact JSON, as the pool sends it)."""
    if not records:
        return _ENVELOPE_BYTES
    return _ENVELOPE_BYTES + sum(r.size for r in records) + _SEPARATOR_BYTES * (len(records) - 1)
