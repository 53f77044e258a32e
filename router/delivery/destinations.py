"""The destination factory: one Destination per URI, one shared client per scheme.

The concrete destination modules are imported when a URI of their scheme is first asked for, so a
daemon (or `router validate`) without S3 destinations never loads the S3 client library.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import structlog

from router.config import Config, KafkaConfig
from router.delivery.dead_letter import DeadLetter
from router.delivery.destination import Destination, SharedConnection
from router.delivery.destination_fallback import FallbackDestination
from router.observability.metrics import Metrics


class DestinationFactory:
    """Builds and caches one Destination per URI; the clients behind them are shared per scheme
    and connect on first use, so a configured but unused destination never needs its broker."""

    def __init__(
        self, config: Config, *, metrics: Metrics | None = None, log: Any = None, timeout: float = 10.0,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        self._config = config
        # With it, every destination keeps what it can never take there (destination_fallback).
        self._dead_letter = dead_letter
        self._metrics = metrics
        self._log = log or structlog.get_logger("router.destinations")
        self._timeout = timeout
        self._destinations: dict[str, Destination] = {}
        self._connections: dict[str, SharedConnection[Any]] = {}

    def get(self, uri: str) -> Destination:
        found = self._destinations.get(uri)
        if found is not None:
            return found
        parts = urlsplit(uri)
        name = parts.netloc
        path = parts.path.lstrip("/")
        destination: Destination
        if parts.scheme == "kafka":
            from router.delivery.kafka_destination import KafkaDestination, kafka_connection

            topic = f"{name}/{path}" if path else name
            destination = KafkaDestination(
                uri, topic, self._connection("kafka", kafka_connection),
                max_request_size=(self._config.kafka or KafkaConfig()).max_request_size,
            )
        elif parts.scheme == "s3":
            from router.delivery.s3_destination import S3Destination, s3_connection

            destination = S3Destination(uri, name, path, self._connection("s3", s3_connection))
        elif parts.scheme == "mqtt":
            from router.delivery.mqtt_destination import MqttDestination, mqtt_connection

            topic = f"{name}/{path}" if path else name
            destination = MqttDestination(uri, topic, self._connection("mqtt", mqtt_connection))
        else:
            raise ValueError(f"{uri}: not a kafka://, s3:// or mqtt:// destination")
        if self._dead_letter is not None:
            destination = FallbackDestination(destination, self._dead_letter, log=self._log)
        self._destinations[uri] = destination
        return destination

    def _connection(
        self, scheme: str, build: Callable[..., SharedConnection[Any]]
    ) -> SharedConnection[Any]:
        connection = self._connections.get(scheme)
        if connection is None:
            connection = build(self._config, timeout=self._timeout, metrics=self._metrics, log=self._log)
            self._connections[scheme] = connection
        return connection

    async def close(self) -> None:
        connections = list(self._connections.values())
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
