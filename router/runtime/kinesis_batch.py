"""A batch of Kinesis records on its way to a worker: columns of raw record parts, not JSON.

Rendering every record as ~700 bytes of JSON in the daemon and parsing it back in the worker cost
more per record than everything else the poll path does after Kafka's own parsing. The record's
parts (sequence, partition key, arrival time, value bytes) are what both ends actually need: the
daemon packs them into a handful of arrays, and the worker builds the event's dicts from them
directly. The handler receives exactly what `json.loads` of the compact JSON event would give it,
key order included, so `json.dumps(event)` inside a handler is unchanged too.

Layout (all integers big-endian): record count n (u32), the four per-shard strings (u16 length
each, then UTF-8 bytes: shard id, stream ARN, invoke identity ARN, region), then n offsets (i64),
n arrival times (f64, epoch seconds), n key lengths (u32), n value lengths (u32), the keys (UTF-8),
the values.

Imported by the worker process before the handler: standard library only.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_COUNT = struct.Struct("!I")
_TEXT_LENGTH = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class ShardFields:
    """What every record of one shard shares."""

    shard_id: str
    stream_arn: str
    role_arn: str
    region: str


def record_dict(shard: ShardFields, offset: int, partition_key: str, value: bytes, arrival: float) -> dict[str, Any]:
    """One Kinesis event record, in AWS's field order."""
    sequence = str(offset)
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": sequence,
            "data": binascii.b2a_base64(value, newline=False).decode("ascii"),
            "approximateArrivalTimestamp": arrival,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard.shard_id}:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": shard.role_arn,
        "awsRegion": shard.region,
        "eventSourceARN": shard.stream_arn,
    }


def encode(
    shard: ShardFields, offsets: Sequence[int], arrivals: Sequence[float], keys: Sequence[str],
    values: Sequence[bytes],
) -> bytes:
    n = len(offsets)
    texts = [t.encode("utf-8") for t in (shard.shard_id, shard.stream_arn, shard.role_arn, shard.region)]
    key_bytes = [k.encode("utf-8", "surrogatepass") for k in keys]
    return b"".join((
        _COUNT.pack(n),
        *(part for text in texts for part in (_TEXT_LENGTH.pack(len(text)), text)),
        struct.pack(f"!{n}q", *offsets),
        struct.pack(f"!{n}d", *arrivals),
        struct.pack(f"!{n}I", *[len(k) for k in key_bytes]),
        struct.pack(f"!{n}I", *[len(v) for v in values]),
        *key_bytes,
        *values,
    ))


def decode(blob: bytes) -> dict[str, Any]:
    """The invocation event ({"Records": [...]}) a batch stands for."""
    view = memoryview(blob)
    (n,) = _COUNT.unpack_from(blob, 0)
    at = _COUNT.size
    texts: list[str] = []
    for _ in range(4):
        (size,) = _TEXT_LENGTH.unpack_from(blob, at)
        at += _TEXT_LENGTH.size
        texts.append(str(view[at : at + size], "utf-8"))
        at += size
    shard_id, stream_arn, role_arn, region = texts
    offsets = struct.unpack_from(f"!{n}q", blob, at)
    at += 8 * n
    arrivals = struct.unpack_from(f"!{n}d", blob, at)
    at += 8 * n
    key_lengths = struct.unpack_from(f"!{n}I", blob, at)
    at += 4 * n
    value_lengths = struct.unpack_from(f"!{n}I", blob, at)
    at += 4 * n
    keys: list[str] = []
    for size in key_lengths:
        keys.append(str(view[at : at + size], "utf-8", "surrogatepass"))
        at += size
    b2a = binascii.b2a_base64
    prefix = shard_id + ":"
    records: list[dict[str, Any]] = []
    append = records.append
    # Inlined record_dict: this loop runs once per record of every stream batch.
    for i in range(n):
        size = value_lengths[i]
        sequence = str(offsets[i])
        append({
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": keys[i],
                "sequenceNumber": sequence,
                "data": b2a(view[at : at + size], newline=False).decode("ascii"),
                "approximateArrivalTimestamp": arrivals[i],
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": prefix + sequence,
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": role_arn,
            "awsRegion": region,
            "eventSourceARN": stream_arn,
        })
        at += size
    if at != len(blob):
        raise ValueError(f"Kinesis batch of {n} records has {len(blob) - at} bytes left over")
    return {"Records": records}
