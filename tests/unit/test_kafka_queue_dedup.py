"""The Kafka queue's deduplication: which copies it drops, and how far back a new owner of a
partition reads to learn the keys already accepted."""

from __future__ import annotations

from typing import Any

from router.config import load_config_data
from router.delivery.kafka_queue import dedup_horizon, is_copy


def config(mappings: dict[str, Any]) -> Any:
    return load_config_data({
        "functions": {"fn": {"handler": "h.handler", "code_path": "."}},
        "mqtt": {"host": "127.0.0.1"},
        "event_source_mappings": mappings,
    })


def test_the_widest_window_of_the_mappings_that_deduplicate() -> None:
    assert dedup_horizon(config({})) == 0
    assert dedup_horizon(config({
        "photos": {"function_name": "fn", "deduplication_window_seconds": 600,
                   "bucket_notifications": {"transport": "mqtt", "topic": "minio/events", "bucket": "photos"}},
        "docs": {"function_name": "fn",
                 "bucket_notifications": {"transport": "mqtt", "topic": "minio/events", "bucket": "docs"}},
    })) == 3600  # the default window of "docs"


def test_app_events_count_only_when_they_name_a_dedup_id() -> None:
    plain = {"function_name": "fn", "mqtt_topic": "app/+/clicks", "deduplication_window_seconds": 7200}
    assert dedup_horizon(config({"clicks": plain})) == 0
    named = {**plain, "deduplication_id": {"json_field": "id"}}
    assert dedup_horizon(config({"clicks": named})) == 7200


def notification(key: str | None, at: float, *, mapping: str = "photos", window: float = 60) -> dict[str, Any]:
    return {"mapping": mapping, "dedup_key": key, "accepted_at": at, "dedup_window": window}


def test_a_copy_inside_the_window_is_dropped_and_does_not_extend_it() -> None:
    seen: dict[str, float] = {}
    assert not is_copy(seen, notification("k", 100))
    assert is_copy(seen, notification("k", 130))
    assert is_copy(seen, notification("k", 160))  # still measured from the first copy at 100
    assert not is_copy(seen, notification("k", 161))  # outside it: a new event, remembered anew
    assert is_copy(seen, notification("k", 200))


def test_keys_are_per_mapping_and_events_without_a_key_are_never_copies() -> None:
    seen: dict[str, float] = {}
    assert not is_copy(seen, notification("k", 100))
    assert not is_copy(seen, notification("k", 101, mapping="thumbnails"))
    assert not is_copy(seen, notification(None, 102))
    assert not is_copy(seen, notification(None, 102))
    assert not is_copy(seen, {"dedup_key": "k"})  # a damaged header: run, never dropped


def test_replaying_the_same_records_gives_the_same_answers() -> None:
    records = [notification(k, t) for k, t in [("a", 0), ("b", 5), ("a", 30), ("a", 70), ("b", 64), ("a", 100)]]
    first: dict[str, float] = {}
    answers = [is_copy(first, r) for r in records]
    rebuilt: dict[str, float] = {}
    assert [is_copy(rebuilt, r) for r in records] == answers == [False, False, True, False, True, True]
    assert rebuilt == first
