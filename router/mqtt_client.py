"""MQTT connection settings from the `mqtt` config section, in one place.

The MQTT source (paho, for its manual acknowledgements) and the mqtt:// destination (aiomqtt)
connect to the same broker with the same credentials and TLS files; building those settings twice
is how one of them ends up without TLS, as `kafka_client.py` says for Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.config import MqttConfig


@dataclass(frozen=True)
class TlsFiles:
    """The keyword arguments of paho's `tls_set` and aiomqtt's `TLSParameters` alike; the broker's
    certificate is always verified."""

    ca_certs: str | None
    certfile: str | None
    keyfile: str | None


def tls_files(mqtt: MqttConfig) -> TlsFiles | None:
    tls = mqtt.tls
    if not tls.enabled:
        return None
    return TlsFiles(
        ca_certs=str(tls.ca_file) if tls.ca_file else None,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
    )


def credentials(mqtt: MqttConfig) -> tuple[str | None, str | None]:
    """(username, password); the password is only unwrapped here, on its way to the client."""
    return mqtt.username, mqtt.password.get_secret_value() if mqtt.password else None
