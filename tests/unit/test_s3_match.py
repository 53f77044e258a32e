"""Mapping match rules (event patterns, decoded-key prefix/suffix, MQTT topics) and dedup keys."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from router.config import load_config_data
from router.events.dedup import dedup_key
from router.events.s3 import ObjectEvent
from router.events.s3_match import MappingMatcher, event_name_matches, key_matches, topic_matches


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        (["s3:ObjectCreated:*"], "s3:ObjectCreated:Put", True),
        (["s3:ObjectCreated:*"], "s3:ObjectCreated:CompleteMultipartUpload", True),
        (["s3:ObjectCreated:*"], "s3:ObjectRemoved:Delete", False),
        (["s3:ObjectRemoved:Delete"], "s3:ObjectRemoved:DeleteMarkerCreated", False),
        (["s3:ObjectRemoved:Delete"], "s3:ObjectRemoved:Delete", True),
        (["s3:ObjectRemoved:*"], "s3:ObjectRemoved:NoOP", True),
        (["s3:*"], "s3:ObjectAccessed:Get", True),
        (["s3:ObjectCreated:Put", "s3:ObjectRemoved:*"], "s3:ObjectRemoved:Delete", True),
        ([], "s3:ObjectCreated:Put", False),
    ],
)
def test_event_name_patterns(patterns: list[str], name: str, expected: bool) -> None:
    assert event_name_matches(patterns, name) is expected


def test_prefix_and_suffix_apply_to_the_decoded_key() -> None:
    assert key_matches("albums/summer 2024/", ".jpg", "albums/summer 2024/café + friends ü.jpg")
    assert not key_matches("albums%2F", "", "albums/x.jpg")
    assert key_matches("", "", "anything")
    assert not key_matches("uploads/", ".jpg", "uploads/a.png")
    assert not key_matches("ab", "ba", "aba")  # prefix*suffix: they may not overlap


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("minio/events", "minio/events", True),
        ("minio/events", "minio/events/x", False),
        ("minio/+", "minio/events", True),
        ("minio/#", "minio/events/x", True),
        ("#", "minio/events", True),
        ("#", "$SYS/broker", False),
        ("+/events", "minio/other", False),
    ],
)
def test_topic_filters(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def _config(**mappings: Any) -> Any:
    return load_config_data({
        "functions": {"f": {"handler": "m.h"}, "g": {"handler": "m.h"}},
        "mqtt": {}, "http": {"webhook_token": "t"},
        "event_source_mappings": mappings,
    })


def test_matcher_routes_by_transport_topic_bucket_and_rule() -> None:
    config = _config(
        a={"function_name": "f", "bucket_notifications": {"transport": "mqtt", "topic": "minio/events",
                                                          "bucket": "photos", "prefix": "uploads/"}},
        b={"function_name": "g", "bucket_notifications": {"transport": "mqtt", "topic": "other/+",
                                                          "bucket": "photos"}},
        c={"function_name": "f", "bucket_notifications": {"transport": "webhook", "bucket": "photos"}},
        d={"function_name": "f", "enabled": False,
           "bucket_notifications": {"transport": "mqtt", "topic": "minio/events", "bucket": "photos"}},
    )
    mqtt = MappingMatcher.from_config(config, "mqtt")
    webhook = MappingMatcher.from_config(config, "webhook")
    assert mqtt.topics() == ["minio/events", "other/+"]
    found = mqtt.matches(bucket="photos", event_name="s3:ObjectCreated:Put", key="uploads/a.jpg",
                         topic="minio/events")
    # A disabled mapping still takes its notifications: they wait in its queue until it is enabled.
    assert [n for n, _ in found] == ["a", "d"]
    assert [n for n, _ in mqtt.matches(bucket="photos", event_name="s3:ObjectCreated:Put", key="x.jpg",
                                       topic="other/site1")] == ["b"]
    assert [n for n, _ in mqtt.matches(bucket="photos", event_name="s3:ObjectCreated:Put", key="x.jpg",
                                       topic="minio/events")] == ["d"]
    assert mqtt.matches(bucket="videos", event_name="s3:ObjectCreated:Put", key="x.jpg", topic="minio/events") == []
    assert [n for n, _ in webhook.matches(bucket="photos", event_name="s3:ObjectCreated:Put", key="x")] == ["c"]
    assert not webhook.knows_bucket("videos")


def _event(**changes: Any) -> ObjectEvent:
    base = ObjectEvent(bucket="b", key="k 1", event_name="s3:ObjectCreated:Put", event_time="t",
                       etag="e", sequencer="0A")
    return replace(base, **changes)


def test_dedup_key_is_the_same_for_a_redelivery_and_differs_for_a_new_event() -> None:
    first = _event()
    assert dedup_key(first) == dedup_key(_event(request_id="other", principal_id="x"))
    assert dedup_key(first) != dedup_key(_event(sequencer="0B"))  # same bytes written again
    assert dedup_key(first) != dedup_key(_event(event_name="s3:ObjectRemoved:Delete"))
    assert dedup_key(first) != dedup_key(_event(key="k 2"))
    assert dedup_key(first) != dedup_key(_event(bucket="c"))
    assert dedup_key(_event(version_id="v1")) != dedup_key(_event(version_id="v2"))
    # without a sequencer the event time tells events apart
    assert dedup_key(_event(sequencer=None, event_time="1")) != dedup_key(_event(sequencer=None, event_time="2"))
