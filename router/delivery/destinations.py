"""On-failure and on-success destinations: kafka://TOPIC, s3://BUCKET/PREFIX, mqtt://TOPIC.

Contract shared by the poll and push paths: `send` returns only once the record is durably
written (Kafka acks=all, S3 PUT answered, MQTT PUBACK), and raises DestinationError otherwise, so
the caller can keep the checkpoint (or the queued event) where it is and retry with backoff.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol


class DestinationError(Exception):
    """The record was not written; retry later."""


class Destination(Protocol):
    uri: str

    async def send(self, record: Mapping[str, Any], *, key: str) -> None:
        """Write one JSON record. `key` is the object key below the S3 prefix and the Kafka message
        key; MQTT ignores it."""
        ...


def esm_uuid(mapping: str) -> str:
    """A stable UUID for a mapping name, standing in for Lambda's event source mapping UUID."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"router:event-source-mapping:{mapping}"))


def stream_failure_key(mapping: str, shard_id: str, now: datetime | None = None) -> str:
    """Lambda's S3 key for stream failure records:
    aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<random UUID>."""
    now = now or datetime.now(UTC)
    return (
        f"aws/lambda/{esm_uuid(mapping)}/{shard_id}/{now:%Y/%m/%d}/"
        f"{now:%Y-%m-%dT%H.%M.%S}-{uuid.uuid4()}"
    )


def async_record_key(mapping: str, function: str, now: datetime | None = None) -> str:
    """The same layout for asynchronous-invocation destination records, keyed by function."""
    now = now or datetime.now(UTC)
    return (
        f"aws/lambda/{esm_uuid(mapping)}/{function}/{now:%Y/%m/%d}/"
        f"{now:%Y-%m-%dT%H.%M.%S}-{uuid.uuid4()}"
    )
