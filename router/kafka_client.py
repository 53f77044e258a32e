"""Kafka connection settings from the `kafka` config section, in one place (aiokafka's and librdkafka's names).

Consumers (the poll path, `router shards`, `reset-checkpoint`, `replay`) and the kafka://
destination's producer all connect to the same cluster with the same security settings; building
those settings twice is how one of them ends up without TLS.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def rdkafka_options(kafka: KafkaConfig) -> dict[str, Any]:
    """The same connection and security settings in librdkafka's names (`kafka.client: confluent`)."""
    options: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol.lower(),
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        for key, path in (("ssl.ca.location", kafka.ssl_cafile), ("ssl.certificate.location", kafka.ssl_certfile),
                          ("ssl.key.location", kafka.ssl_keyfile)):
            if path:
                options[key] = str(path)
    if kafka.security_protocol.startswith("SASL"):
        options["sasl.mechanism"] = kafka.sasl_mechanism
        options["sasl.username"] = kafka.sasl_username
        options["sasl.password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return options


async def ensure_topics(kafka: KafkaConfig, names: Sequence[str], *, partitions: int,
                        configs: dict[str, str] | None = None) -> None:
    """Create the topics router keeps its own state in, if missing: with as many copies as the
    cluster allows, up to 3 (Kafka's usual production factor). A topic that exists is kept as it
    is (its partitions and settings are the operator's)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**client_options(kafka), client_id=f"{kafka.client_id}-admin")
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster()).get("brokers", [])) or 1
        response = await admin.create_topics([
            NewTopic(name=name, num_partitions=partitions, replication_factor=min(3, brokers),
                     topic_configs=configs or {})
            for name in names])
        for entry in response.topic_errors:
            if entry[1] not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                raise RuntimeError(f"creating the topic {entry[0]!r} failed: error {entry[1]}")
    finally:
        await admin.close()
