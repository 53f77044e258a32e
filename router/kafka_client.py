"""aiokafka connection settings from the `kafka` config section, in one place.

Consumers (the poll path, `router shards`, `reset-checkpoint`, `replay`) and the kafka://
destination's producer all connect to the same cluster with the same security settings; building
those settings twice is how one of them ends up without TLS.
"""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from router.config import KafkaConfig


def client_options(kafka: KafkaConfig) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured brokers and security settings."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
            certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
            keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
        )
    if kafka.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return options
