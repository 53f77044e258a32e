"""App events: an MQTT message as the event an AWS IoT rule `SELECT *` passes (reference 5.3-5.4)."""

from __future__ import annotations

import base64

import pytest

from router.config import ConfigError, load_config_data
from router.events.app_event import app_event


def test_a_json_object_is_the_event_itself() -> None:
    assert app_event(b'{"screen": "home"}', "app/p1/clicks", topic_key=None) == {"screen": "home"}


def test_the_topic_is_added_only_under_the_key_asked_for() -> None:
    assert app_event(b'{"a": 1}', "app/p1/clicks", topic_key="topic") == {"a": 1, "topic": "app/p1/clicks"}


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"42", b"plain text", b"\xff\x00binary", b""])
def test_anything_else_is_delivered_base64_with_an_explicit_flag(payload: bytes) -> None:
    event = app_event(payload, "app/p1/clicks", topic_key=None)
    assert event["isBase64Encoded"] is True and event["topic"] == "app/p1/clicks"
    assert base64.b64decode(event["data"]) == payload


@pytest.mark.parametrize(("topic", "ok"), [("app/+/clicks", True), ("app/#", True), ("#", True),
                                           ("app/#/x", False), ("app/a+/x", False), ("$SYS/#", False), ("", False)])
def test_mqtt_topic_must_be_a_topic_filter(topic: str, ok: bool) -> None:
    data = {"functions": {"f": {"handler": "m.h"}}, "mqtt": {},
            "event_source_mappings": {"m": {"function_name": "f", "mqtt_topic": topic}}}
    if ok:
        assert load_config_data(data).app_event_mappings()["m"].mqtt_topic == topic
    else:
        with pytest.raises(ConfigError) as raised:
            load_config_data(data)
        assert any(p.startswith("event_source_mappings.m.mqtt_topic: ") for p in raised.value.problems)


def test_app_events_need_an_mqtt_section() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config_data({"functions": {"f": {"handler": "m.h"}},
                          "event_source_mappings": {"m": {"function_name": "f", "mqtt_topic": "a/b"}}})
    assert "event_source_mappings.m.mqtt_topic: needs an mqtt section" in raised.value.problems
