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

Records are never rendered as JSON on the poll path: a StreamRecord keeps the record's parts, and
a batch travels to the worker as columns (`router.runtime.kinesis_batch`), where the event's dicts
are built directly. Each record's size in the compact JSON event (what
`json.dumps(event, separators=(",", ":"))` produces) is still computed exactly when it is fetched,
by arithmetic on those parts, so the batcher respects Lambda's 6 MB invocation payload limit
exactly.
"""

from __future__ import annotations

import base64
import json as _json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.config import Config
from router.runtime import kinesis_batch
from router.runtime.protocol import EVENT_KINESIS_BATCH, PackedEvent

SHARD_PREFIX = "shardId-"
# Lambda's synchronous invocation payload limit; a batch closes before it would exceed this.
MAX_INVOCATION_PAYLOAD_BYTES = 6 * 1024 * 1024
_SEQUENCE_RE = re.compile(r"0|[1-9][0-9]{0,128}")
_SHARD_RE = re.compile(r"shardId-([0-9]{12})")

# Sizes are those of the compact JSON event: '{"Records":[' + r1 + ',' + r2 + ']}'.
_ENVELOPE_BYTES = len(b'{"Records":[') + len(b"]}")
_SEPARATOR_BYTES = len(b",")
_COMPACT = (",", ":")
# Partition keys remembered per shard (decoded, with their JSON size); forgotten when this many.
_KEY_CACHE_SIZE = 4096


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



@dataclass(slots=True)
class StreamRecord:
    """One record of one shard, as the delivery path sees it (no Kafka types past the source).

    Treated as immutable; not a frozen dataclass only because a frozen one costs a microsecond
    more to build, once per record of every stream."""

    offset: int
    partition_key: str
    arrival: float  # epoch seconds
    value: bytes  # the record's data, exactly (a null value is b"")
    size: int  # bytes this record adds to the compact JSON event, separator excluded

    @property
    def sequence_number(self) -> str:
        return str(self.offset)

    @property
    def data(self) -> bytes:
        return self.value


# What a source hands over per record: (offset, key, value, timestamp in ms). A plain tuple, because
# the two Kafka clients hand over different objects (aiokafka's ConsumerRecord has attributes,
# librdkafka's Message has methods) and unpacking a tuple is the cheapest thing both can become.
FetchedRecord = tuple[int, bytes | None, bytes | None, int]


class KinesisEventBuilder:
    """Builds records and events for one shard of one mapping; the fixed fields are computed once."""

    def __init__(self, config: Config, *, topic: str, function: str, partition: int) -> None:
        self.shard_id = shard_id(partition)
        self.stream_arn = config.stream_arn(topic)
        self._fields = kinesis_batch.ShardFields(
            shard_id=self.shard_id, stream_arn=self.stream_arn, role_arn=config.role_arn(function),
            region=config.region,
        )
        # A record's JSON size is this plus its variable parts (see stream_records): render one
        # whose parts are empty (key "", sequence "", data "", arrival 0) and take away what those
        # stand-ins still print, the key's quotes and the arrival's "0".
        empty = kinesis_batch.record_dict(self._fields, 0, "", b"", 0)
        empty["kinesis"]["sequenceNumber"] = ""
        empty["eventID"] = f"{self.shard_id}:"
        self._fixed_size = len(_json.dumps(empty, separators=_COMPACT)) - len('""') - len("0")
        self._keys: dict[bytes, tuple[str, int]] = {}

    def stream_record(self, offset: int, key: bytes | None, value: bytes | None, timestamp_ms: int) -> StreamRecord:
        return self.stream_records([(offset, key, value, timestamp_ms)])[0]

    def stream_records(self, records: Sequence[FetchedRecord], after: int = -1) -> list[StreamRecord]:
        """Records as the delivery path wants them, skipping offsets up to `after`.

        This loop runs once per record of every stream, hence the inlining and the shortcuts (the
        rules are in the module docstring: sequence number, partition key fallbacks, arrival time,
        base64 data): a key's decoding and JSON size are remembered (keys repeat), and the
        sequence number's length is worked out once when the whole fetch shares it."""
        out: list[StreamRecord] = []
        if not records:
            return out
        append = out.append
        keys = self._keys
        if len(keys) > _KEY_CACHE_SIZE:
            keys.clear()
        first, last = len(str(records[0][0])), len(str(records[-1][0]))
        # key, the sequence number twice (sequenceNumber, eventID), base64 data, arrival time
        fixed = self._fixed_size + 2 * first if first == last else -1
        for offset, key, value, timestamp in records:
            if offset <= after:
                continue
            if key is None:
                pkey = str(offset)
                key_size = len(pkey) + 2
            else:
                known = keys.get(key)
                if known is None:
                    known = keys[key] = _key(key)
                pkey, key_size = known
            if 1_000_000_000_000 <= timestamp < 10_000_000_000_000:
                # 2001..2286: JSON shows 10 integer digits, a point and the milliseconds without
                # trailing zeros ("1700000000.12", "1700000000.0"). repr() says the same, slower.
                ms = timestamp % 1000
                arrival_size = 14 if ms % 10 else 13 if ms % 100 else 12
            else:
                arrival_size = len(repr(timestamp / 1000))
            value = value or b""
            size = key_size + 4 * ((len(value) + 2) // 3) + arrival_size
            size += fixed if fixed >= 0 else self._fixed_size + 2 * len(str(offset))
            append(StreamRecord(offset, pkey, timestamp / 1000, value, size))
        return out

    def record(self, record: StreamRecord) -> dict[str, Any]:
        """The record as the handler sees it (also the payload of failure records)."""
        return kinesis_batch.record_dict(self._fields, record.offset, record.partition_key, record.value,
                                         record.arrival)

    def event(self, records: Sequence[StreamRecord]) -> dict[str, Any]:
        return {"Records": [self.record(r) for r in records]}

    def pack(self, records: Sequence[StreamRecord]) -> PackedEvent:
        """The invocation event for the worker pool, as columns (see router.runtime.kinesis_batch)."""
        body = kinesis_batch.encode(
            self._fields, [r.offset for r in records], [r.arrival for r in records],
            [r.partition_key for r in records], [r.value for r in records],
        )
        return PackedEvent(EVENT_KINESIS_BATCH, body)


def _key(key: bytes) -> tuple[str, int]:
    """A Kafka key as the partition key and the bytes that key takes in the JSON event."""
    try:
        pkey = key.decode("utf-8")
    except UnicodeDecodeError:
        pkey = base64.b64encode(key).decode("ascii")
    if pkey.isascii() and pkey.isprintable() and '"' not in pkey and "\\" not in pkey:
        return pkey, len(pkey) + 2
    return pkey, len(_json.dumps(pkey))


def event_size(records: Sequence[StreamRecord]) -> int:
    """Serialized size of the invocation event for these records (compact JSON, as the pool sends it)."""
    if not records:
        return _ENVELOPE_BYTES
    return _ENVELOPE_BYTES + sum(r.size for r in records) + _SEPARATOR_BYTES * (len(records) - 1)
