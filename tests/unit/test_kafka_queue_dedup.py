"""How far back a new owner of a Kafka-queue partition reads to learn accepted dedup keys."""

from __future__ import annotations

from typing import Any

from router.config import load_config_data
from router.delivery.kafka_queue import dedup_horizon


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
