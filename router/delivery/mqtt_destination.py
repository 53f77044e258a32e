"""mqtt://TOPIC destinations: QoS 1 publishes on one connection of their own.

The connection uses the configured client id with a "-dest" suffix, so it never takes over the
push source's persistent session (a broker disconnects the older of two clients with one id).
`send` returns after the broker's PUBACK, which is what QoS 1 offers as "written".
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import aiomqtt

from router.config import Config
from router.delivery.destination import DestinationError, SharedConnection, encode_record
from router.mqtt_client import credentials, tls_files
from router.observability.metrics import Metrics


def mqtt_connection(
    config: Config, *, timeout: float, metrics: Metrics | None = None, log: Any = None
) -> SharedConnection[aiomqtt.Client]:
    mqtt = config.mqtt

    async def connect() -> aiomqtt.Client:
        if mqtt is None:
            raise DestinationError("mqtt:// destination needs an mqtt section")
        files = tls_files(mqtt)
        tls = aiomqtt.TLSParameters(**dataclasses.asdict(files)) if files else None
        username, password = credentials(mqtt)
        client = aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            identifier=f"{mqtt.client_id}-dest",
            username=username,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=mqtt.keepalive,
            timeout=timeout,
            tls_params=tls,
        )
        await client.__aenter__()
        return client

    async def disconnect(client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)

    return SharedConnection("mqtt-destination", connect, disconnect, timeout=timeout, metrics=metrics, log=log)


class MqttDestination:
    def __init__(self, uri: str, topic: str, connection: SharedConnection[aiomqtt.Client]) -> None:
        self.uri = uri
        self.topic = topic
        self._connection = connection
        # MQTT's largest packet (a 4-byte remaining length), less the PUBLISH header.
        self.max_record_bytes: int | None = 268_435_455 - len(topic.encode()) - 8

    async def send(self, record: Mapping[str, Any], *, key: str, body: bytes | None = None) -> None:
        payload = encode_record(record) if body is None else body

        async def publish(client: aiomqtt.Client) -> None:
            await client.publish(self.topic, payload, qos=1, timeout=self._connection.timeout)

        await self._connection.run(self.uri, publish)
