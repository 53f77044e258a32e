"""Both Kafka clients get the same cluster and security settings from the one `kafka` section, and
a confluent-backed mapping's consumer keeps the aiokafka backend's group behaviour."""

from __future__ import annotations

from pathlib import Path

from router.config import Config, KafkaConfig, load_config_data
from router.kafka_client import client_options, rdkafka_options
from router.sources.kafka import KafkaStreamSource, consumer_options
from router.sources.kafka_confluent import ConfluentStreamSource, confluent_options
from router.sources.stream_mapping import source_class


def test_sasl_ssl_reaches_librdkafka_in_its_names() -> None:
    kafka = KafkaConfig(bootstrap_servers="b1:9093,b2:9093", security_protocol="SASL_SSL",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="router", sasl_password="s3cret",
                        ssl_cafile=Path("/etc/ca.pem"), ssl_certfile=Path("/etc/c.pem"), ssl_keyfile=Path("/etc/k.pem"))
    assert rdkafka_options(kafka) == {
        "bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "sasl_ssl",
        "ssl.ca.location": "/etc/ca.pem", "ssl.certificate.location": "/etc/c.pem", "ssl.key.location": "/etc/k.pem",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "router", "sasl.password": "s3cret",
    }
    plain = kafka.model_copy(update={"security_protocol": "SASL_PLAINTEXT"})  # no certificate files to load
    options = rdkafka_options(plain)
    assert options["security.protocol"] == "sasl_plaintext" and "ssl.ca.location" not in options
    aiokafka = client_options(plain)
    assert (aiokafka["security_protocol"], aiokafka["sasl_mechanism"], aiokafka["sasl_plain_password"]) == \
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", "s3cret")


def test_plaintext_sends_no_security_keys() -> None:
    assert rdkafka_options(KafkaConfig()) == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "plaintext"}


def test_a_confluent_consumer_keeps_the_groups_rules() -> None:
    config = load_config_data({
        "kafka": {"client": "confluent", "session_timeout_ms": 6000, "heartbeat_interval_ms": 5000},
        "functions": {"f": {"handler": "m.handler", "timeout": 600}},
        "event_source_mappings": {"m": {"function_name": "f", "kafka_topic": "clicks"}},
    }, {})
    mapping = config.stream_mappings()["m"]
    ours, theirs = confluent_options(config, "m", mapping), consumer_options(config, "m", mapping)
    assert ours["group.id"] == theirs["group_id"] and ours["client.id"] == theirs["client_id"]
    assert ours["enable.auto.commit"] is False and ours["auto.offset.reset"] == "earliest"
    assert ours["heartbeat.interval.ms"] == 2000  # a third of the session, as aiokafka's
    assert ours["max.poll.interval.ms"] == theirs["max_poll_interval_ms"] == 660_000  # function timeout + 60 s
    assert ours["fetch.wait.max.ms"] == theirs["fetch_max_wait_ms"]
    # aiokafka's default assignor, so members on either backend can share a group.
    assert ours["partition.assignment.strategy"] == "roundrobin"
    assert source_class(config) is ConfluentStreamSource


def test_the_default_client_is_confluent_and_aiokafka_is_one_key_away() -> None:
    def config(kafka: dict[str, str]) -> Config:
        return load_config_data({"functions": {"f": {"handler": "m.handler"}}, "kafka": kafka,
                                 "event_source_mappings": {"m": {"function_name": "f", "kafka_topic": "t"}}}, {})

    assert source_class(config({})) is ConfluentStreamSource
    assert source_class(config({"client": "aiokafka"})) is KafkaStreamSource
