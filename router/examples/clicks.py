"""Mobile apps example: clicks sent by devices over MQTT, counted per screen and user.

An ordinary Lambda handler behind an app-event mapping (AWS IoT's model: a topic rule invokes the
function asynchronously with the message). A device publishes `{"screen": "home", "user": "u1"}`
to `app/<device>/clicks`. With `batch_size` > 1 the event is `{"Records": [{"topic", "payload",
"isBase64Encoded", "receivedAt", "messageId"}]}`; with batch size 1 it is the message itself, as an
IoT rule's `SELECT *` delivers it. Messages that are not a JSON object with a string `screen` are
counted as malformed, never failing the invocation: one broken app version must not cost the
others their retries.

Each invocation prints what it saw (one JSON line) and, when CLICKS_BUCKET is set, writes its counts
to `clicks/<request id>.json` in S3, where the dev demo (or a dashboard) sums them. Keyed by the
request id, a retried invocation (asynchronous retries keep their request id) overwrites its own
object instead of counting twice.
"""

from __future__ import annotations

import json
import os
from typing import Any


def messages(event: dict[str, Any]) -> list[tuple[Any, str | None]]:
    """(payload, topic) of every message in the event, batched or not."""
    if isinstance(event.get("Records"), list):
        return [(None if r.get("isBase64Encoded") else r.get("payload"), r.get("topic")) for r in event["Records"]]
    if event.get("isBase64Encoded"):
        return [(None, event.get("topic"))]
    return [(event, event.get("topic"))]


def count(event: dict[str, Any]) -> dict[str, Any]:
    screens: dict[str, dict[str, Any]] = {}
    malformed = 0
    found = messages(event)
    for payload, topic in found:
        screen = payload.get("screen") if isinstance(payload, dict) else None
        if not isinstance(screen, str):
            malformed += 1
            continue
        user = payload.get("user")
        if not isinstance(user, str):  # the device, from app/<device>/clicks
            levels = (topic or "").split("/")
            user = levels[1] if len(levels) > 1 else "unknown"
        entry = screens.setdefault(screen, {"clicks": 0, "users": {}})
        entry["clicks"] += 1
        entry["users"][user] = entry["users"].get(user, 0) + 1
    return {"messages": len(found), "malformed": malformed, "screens": screens}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    counts = count(event)
    print(json.dumps({"clicks": counts}), flush=True)
    bucket = os.environ.get("CLICKS_BUCKET")
    if bucket:
        import boto3

        request_id = getattr(context, "aws_request_id", "local")
        boto3.client("s3").put_object(Bucket=bucket, Key=f"clicks/{request_id}.json",
                                      Body=json.dumps(counts).encode(), ContentType="application/json")
    return counts
