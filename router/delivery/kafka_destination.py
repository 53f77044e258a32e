"""kafka://TOPIC destinations: one aiokafka producer (acks=all) shared by every topic.

acks="all" is what makes `send` mean "durably written": the broker answers only once every in-sync
replica has the record, so a checkpoint or a queued event can be released after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)

from router.config import Config, KafkaConfig
from router.delivery.destination import DestinationError, SharedConnection, encode_record
from router.kafka_client import client_options
from router.observability.metrics import Metrics

# What a request holds besides the value when the producer sizes it against max_request_size:
# the record batch's own overhead and the key (an S3-style object key, well under 256 bytes).
_REQUEST_OVERHEAD = 768
# Errors the broker (or the producer, for size) gives for the record itself, whatever the retry.
_PERMANENT = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, InvalidTopicError,
              TopicAuthorizationFailedError)


def permanent(exc: BaseException) -> bool:
    return isinstance(exc, _PERMANENT)


def producer_options(kafka: KafkaConfig, *, timeout: float) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured security settings and our time bounds."""
    return {
        **client_options(kafka),
        "client_id": f"{kafka.client_id}-dest",
        "acks": "all",
        "request_timeout_ms": max(int(timeout * 1000), 1000),
        "retry_backoff_ms": 200,
        "max_request_size": kafka.max_request_size,
    }


def kafka_connection(
    config: Config, *, timeout: float, metrics: Metrics | None = None, log: Any = None
) -> SharedConnection[AIOKafkaProducer]:
    kafka = config.kafka

    async def connect() -> AIOKafkaProducer:
        if kafka is None:
            raise DestinationError("kafka:// destination needs a kafka section")
        producer = AIOKafkaProducer(**producer_options(kafka, timeout=timeout))
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def disconnect(producer: AIOKafkaProducer) -> None:
        await producer.stop()

    return SharedConnection(
        "kafka-destination", connect, disconnect, timeout=timeout, permanent=permanent, metrics=metrics, log=log
    )


class KafkaDestination:
    def __init__(
        self, uri: str, topic: str, connection: SharedConnection[AIOKafkaProducer], *, max_request_size: int,
    ) -> None:
        self.uri = uri
        self.topic = topic
        self._connection = connection
        self.max_record_bytes: int | None = max_request_size - _REQUEST_OVERHEAD

    async def send(self, record: Mapping[str, Any], *, key: str, body: bytes | None = None) -> None:
        value = encode_record(record) if body is None else body

        async def produce(producer: AIOKafkaProducer) -> None:
            await producer.send_and_wait(self.topic, value=value, key=key.encode("utf-8"))

        await self._connection.run(self.uri, produce)
