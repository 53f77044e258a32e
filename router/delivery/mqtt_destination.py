"""mqtt://TOPIC destinations: QoS 1 publishes on one connection of their own.

The connection uses the configured client id with a "-dest" suffix, so it never takes over the
push source's persistent session (a broker disconnects the older of two clients with one id).
`send` returns after the broker's PUBACK, which is what QoS 1 offers as "written".
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import aiomqtt

from router.config import Config
from router.delivery.destinations import DestinationError, SharedConnection, encode_record
from router.observability.metrics import Metrics


def mqtt_connection(
    config: Config, *, timeout: float, metrics: Metrics | None = None, log: Any = None
) -> SharedConnection[aiomqtt.Client]:
    mqtt = config.mqtt

    async def connect() -> aiomqtt.Client:
        if mqtt is None:
            raise DestinationError("mqtt:// destination needs an mqtt section")
        tls = None
        if mqtt.tls.enabled:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
                certfile=str(mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
                keyfile=str(mqtt.tls.key_file) if mqtt.tls.key_file else None,
            )
        client = aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            identifier=f"{mqtt.client_id}-dest",
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password else None,
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

    async def send(self, record: Mapping[str, Any], *, key: str) -> None:
        payload = encode_record(record)

        async def publish(client: aiomqtt.Client) -> None:
            await client.publish(self.topic, payload, qos=1, timeout=self._connection.timeout)

        await self._connection.run(self.uri, publish)
