"""Readiness by path: a replica is unready only when it can serve nothing it is configured for.

One replica serves several paths at once: stream mappings (Kafka), MQTT intake (bucket
notifications and app events), the S3 webhooks, HTTP routes and the Lambda API. Taking the whole
replica out of the Service because one broker is down would stop every other path too: a Kafka
outage would take websites and webhooks down with it, although they do not need Kafka. So:

- Each tracker on the progress board belongs to the paths that need it: `kafka` and every
  `stream:<mapping>:<shard>` to "streams"; `mqtt` to "mqtt"; an async lane (`async:<mapping>`),
  which runs what the push paths accepted, to "mqtt" and "webhooks".
- A path is ready when none of its trackers is down or stalled. HTTP routes and the Lambda API
  need nothing but the listener that is answering, so they are ready whenever configured.
- `/readyz` fails only when no configured path is ready (and a replica configured for nothing is
  ready: it serves its probes). `/status` shows every path with its problems; `/readyz` names the
  paths and the trackers, never the error text, since it is open to anyone who can reach it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from router.config import AppEventMapping, BucketMapping, Config
from router.observability.progress import ProgressBoard

PATHS = ("streams", "mqtt", "webhooks", "http_routes", "lambda_api")


def paths_of(tracker: str) -> tuple[str, ...]:
    """The paths that cannot serve while `tracker` is down or stalled."""
    if tracker == "kafka" or tracker.startswith("stream:"):
        return ("streams",)
    if tracker == "mqtt":
        return ("mqtt",)
    if tracker.startswith("async:"):
        return ("mqtt", "webhooks")
    return ()


def configured_paths(config: Config) -> set[str]:
    paths: set[str] = set()
    for mapping in config.event_source_mappings.values():
        if isinstance(mapping, BucketMapping):
            paths.add("webhooks" if mapping.bucket_notifications.transport == "webhook" else "mqtt")
        elif isinstance(mapping, AppEventMapping):
            paths.add("mqtt")
        else:
            paths.add("streams")
    if config.http_routes:
        paths.add("http_routes")
    if config.lambda_api is not None:
        paths.add("lambda_api")
    return paths


def readiness(board: ProgressBoard, paths: Iterable[str], *, detail: bool) -> dict[str, dict[str, Any]]:
    """{path: {"ready": bool, "problems": [...]}} for each configured path; `detail` adds error text."""
    wanted = set(paths)
    found: dict[str, dict[str, Any]] = {p: {"ready": True, "problems": []} for p in PATHS if p in wanted}
    for tracker in board.trackers():
        problem = board.problem(tracker, detail=detail)
        if problem is None:
            continue
        for path in paths_of(tracker.name):
            if path in found:
                found[path]["ready"] = False
                found[path]["problems"].append(problem)
    return found


def is_ready(by_path: dict[str, dict[str, Any]]) -> bool:
    return not by_path or any(p["ready"] for p in by_path.values())
