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


def test_a_batch_record_carries_topic_payload_flag_time_and_id() -> None:
    from router.events.app_event import app_record

    obj = app_record(b'{"screen": "home"}', "app/d1/clicks", received_at=1_700_000_000.5, message_id="m1")
    assert obj == {"topic": "app/d1/clicks", "payload": {"screen": "home"}, "isBase64Encoded": False,
                   "receivedAt": "2023-11-14T22:13:20.500Z", "messageId": "m1"}
    raw = app_record(b"\xff\x00", "t", received_at=0.0, message_id="m2")
    assert raw["isBase64Encoded"] is True and base64.b64decode(raw["payload"]) == b"\xff\x00"
    assert app_record(b"", "t", received_at=0.0, message_id="m3")["payload"] == ""
    assert app_record(b"[1]", "t", received_at=0.0, message_id="m4")["isBase64Encoded"] is True


def test_dedup_id_comes_only_from_what_the_mapping_names() -> None:
    from router.events.app_event import dedup_id

    props = [("trace", "x"), ("msg-id", "abc")]
    assert dedup_id(b"{}", props, user_property="msg-id", json_field=None) == "abc"
    assert dedup_id(b"{}", None, user_property="msg-id", json_field=None) is None
    assert dedup_id(b'{"meta": {"id": 7}}', None, user_property=None, json_field="meta.id") == "7"
    assert dedup_id(b'{"meta": {"id": true}}', None, user_property=None, json_field="meta.id") is None
    assert dedup_id(b'{"meta": 1}', None, user_property=None, json_field="meta.id") is None
    assert dedup_id(b"not json", None, user_property=None, json_field="id") is None
    assert dedup_id(b'{"id": "a"}', None, user_property=None, json_field=None) is None  # opt-in only


def test_batching_and_dedup_config_rules() -> None:
    def load(**mapping: object) -> object:
        return load_config_data({
            "functions": {"f": {"handler": "m.handler"}}, "mqtt": {"host": "127.0.0.1"},
            "event_source_mappings": {"a": {"function_name": "f", "mqtt_topic": "app/#", **mapping}},
        }, {})

    load(batch_size=10, maximum_batching_window_in_seconds=2)
    with pytest.raises(ConfigError, match="maximum_batching_window_in_seconds"):
        load(maximum_batching_window_in_seconds=2)
    with pytest.raises(ConfigError, match="deduplication_id"):
        load(deduplication_id={"user_property": "a", "json_field": "b"})
    with pytest.raises(ConfigError, match="deduplication_id"):
        load(deduplication_id={})
