"""What every on-failure and on-success destination is (kafka://TOPIC, s3://BUCKET/PREFIX,
mqtt://TOPIC), and what they share: the record encoding, the object keys, one lazily connected
client per scheme. The concrete destinations import only this; `destinations.py` builds them.

Contract shared by the poll and push paths: `send` returns only once the record is durably
written (Kafka acks=all, S3 PUT answered, MQTT PUBACK), and raises DestinationError otherwise, so
the caller can keep the checkpoint (or the queued event) where it is and retry with backoff.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import structlog

from router.observability.metrics import Metrics

T = TypeVar("T")


class DestinationError(Exception):
    """The record was not written. Retry later, unless `permanent`: the destination refused this
    record for what it is (too large, a topic that cannot exist, access denied), so sending it
    again as it is cannot succeed."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Destination(Protocol):
    uri: str
    # The largest encoded record (`encode_record`) the destination takes; None when unbounded.
    max_record_bytes: int | None

    async def send(self, record: Mapping[str, Any], *, key: str, body: bytes | None = None) -> None:
        """Write one JSON record. `key` is the object key below the S3 prefix and the Kafka message
        key; MQTT ignores it. `body`, when given, is `encode_record(record)` already made (so a
        caller that had to measure the record does not have it encoded twice)."""
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


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Compact JSON, UTF-8: what every destination stores (S3 object body, Kafka value, MQTT payload)."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


C = TypeVar("C")


class SharedConnection(Generic[C]):
    """One lazily opened client shared by every destination of a scheme, replaced after a failure.

    Sharing matters: all mqtt:// destinations must use one MQTT connection (one client id), and
    one Kafka producer serves every kafka:// topic. A failed operation closes the client it used
    (not a newer one another task already opened) so the next send reconnects, unless `permanent`
    says the failure was the record's own. Every step is
    bounded by `timeout`: a send to a broker that is down fails promptly instead of hanging.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], Awaitable[C]],
        disconnect: Callable[[C], Awaitable[None]],
        *,
        timeout: float,
        permanent: Callable[[BaseException], bool] = lambda exc: False,
        metrics: Metrics | None = None,
        log: Any = None,
    ) -> None:
        self.name = name
        self._permanent = permanent
        self._connect = connect
        self._disconnect = disconnect
        self.timeout = timeout
        self._metrics = metrics
        self._log = log or structlog.get_logger("router.destinations")
        self._client: C | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def run(self, what: str, op: Callable[[C], Awaitable[T]]) -> T:
        """Run `op` on the (possibly new) client; any failure becomes DestinationError."""
        client = await self._get()
        try:
            return await asyncio.wait_for(op(client), self.timeout)
        except Exception as exc:
            if self._permanent(exc):  # the client is fine; the record is what was refused
                raise DestinationError(f"{what}: {_describe(exc)}", permanent=True) from exc
            await self._drop(client)
            raise DestinationError(f"{what}: {_describe(exc)}") from exc

    async def _get(self) -> C:
        if self._closed:
            raise DestinationError(f"{self.name}: destinations are closed")
        async with self._lock:
            if self._client is not None:
                return self._client
            try:
                client = await asyncio.wait_for(self._connect(), self.timeout)
            except Exception as exc:
                self._set_connected(False)
                raise DestinationError(f"{self.name}: cannot connect: {_describe(exc)}") from exc
            self._client = client
            self._set_connected(True)
            self._log.info("destination.connected", destination=self.name)
            return client

    async def _drop(self, client: C) -> None:
        async with self._lock:
            if self._client is not client:
                return  # someone already replaced it
            self._client = None
            self._set_connected(False)
        await self._close_quietly(client)

    async def _close_quietly(self, client: C) -> None:
        try:
            await asyncio.wait_for(self._disconnect(client), self.timeout)
        except Exception as exc:  # closing a broken client may fail too; it is gone either way
            self._log.debug("destination.close_failed", destination=self.name, error_type=type(exc).__name__)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            await self._close_quietly(client)
            self._set_connected(False)

    def _set_connected(self, up: bool) -> None:
        if self._metrics is not None:
            self._metrics.broker_connected.labels(broker=self.name).set(1 if up else 0)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
