"""The readiness rule: a path is unready when a tracker it needs is down or stalled, and the
replica is unready only when no configured path can serve."""

from __future__ import annotations

from router.config import load_config_data
from router.observability.progress import ProgressBoard
from router.observability.readiness import configured_paths, is_ready, readiness


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_tracker_takes_down_only_the_paths_that_need_it() -> None:
    clock = Clock()
    board = ProgressBoard(stall_timeout=10, clock=clock)
    paths = {"streams", "mqtt", "webhooks", "http_routes"}
    board.tracker("kafka").set_up(False, "connection refused at 10.0.0.5:9092")
    by_path = readiness(board, paths, detail=False)
    assert {p: r["ready"] for p, r in by_path.items()} == {
        "streams": False, "mqtt": True, "webhooks": True, "http_routes": True}
    assert by_path["streams"]["problems"] == ["kafka: down"]  # no error text without detail
    assert readiness(board, paths, detail=True)["streams"]["problems"] == [
        "kafka: down: connection refused at 10.0.0.5:9092"]
    assert is_ready(by_path)
    lane = board.tracker("async:photos", kind="work")
    lane.set_pending(True)
    clock.now = 11
    by_path = readiness(board, paths, detail=False)
    assert not by_path["mqtt"]["ready"] and not by_path["webhooks"]["ready"]  # the lane serves both
    assert by_path["http_routes"]["ready"] and is_ready(by_path)
    assert not is_ready(readiness(board, {"streams", "webhooks"}, detail=False))  # nothing left to serve
    assert is_ready(readiness(board, set(), detail=False))  # configured for nothing: its probes work


def test_configured_paths_follow_the_mappings_routes_and_api() -> None:
    config = load_config_data({
        "functions": {"f": {"handler": "m.h"}},
        "kafka": {}, "mqtt": {},
        "http": {"webhook_token": "t"},
        "event_source_mappings": {
            "s": {"function_name": "f", "kafka_topic": "t"},
            "w": {"function_name": "f", "bucket_notifications": {"transport": "webhook", "bucket": "b"}},
            "a": {"function_name": "f", "mqtt_topic": "app/+/clicks"},
        },
        "http_routes": {"r": {"function_name": "f", "path": "/x"}},
        "lambda_api": {},
    }, {})
    assert configured_paths(config) == {"streams", "webhooks", "mqtt", "http_routes", "lambda_api"}
    assert configured_paths(load_config_data({}, {})) == set()
