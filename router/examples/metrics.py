"""Data and analytics example: per-window metrics from a stream of click and view events.

An ordinary Kinesis-triggered Lambda handler for a mapping with `tumbling_window_in_seconds`. Each
record's data is JSON such as `{"type": "click", "user": "u1", "ts": 1700000000.5}`. Every
invocation folds its records into the window's `state` (counts per type, the distinct users, the
records and malformed ones seen) and returns it; Lambda, and router, hand that state to the next
invocation of the same window. The final invocation of a window (`isFinalInvokeForWindow`) turns
the state into the window's metrics: one CloudWatch Embedded Metric Format line on stdout (how a
Lambda function publishes metrics without API calls) and, when METRICS_BUCKET is set, an object
`metrics/<window start>/<shardId>.json` in S3. A window that ended early because its state grew
past 1 MB is written as a part, `metrics/<window start>/<shardId>-<request id>.json`.

Records that are not JSON objects with a string `type` are counted as malformed, never failing the
batch: one bad producer must not block a shard.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any


def fold(state: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The window's state after these records (a new dict; `state` is left alone)."""
    counts: dict[str, int] = dict(state.get("counts", {}))
    users = set(state.get("users", []))
    malformed = int(state.get("malformed", 0))
    for record in records:
        try:
            event = json.loads(base64.b64decode(record["kinesis"]["data"]))
            kind = event["type"]
            if not isinstance(kind, str):
                raise TypeError(kind)
        except (ValueError, KeyError, TypeError):
            malformed += 1
            continue
        counts[kind] = counts.get(kind, 0) + 1
        user = event.get("user")
        if isinstance(user, str):
            users.add(user)
    return {
        "records": int(state.get("records", 0)) + len(records),
        "malformed": malformed,
        "counts": counts,
        "users": sorted(users),
    }


def summary(event: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    return {
        "window": event["window"],
        "shardId": event["shardId"],
        "records": state.get("records", 0),
        "malformed": state.get("malformed", 0),
        "counts": state.get("counts", {}),
        "distinctUsers": len(state.get("users", [])),
        "terminatedEarly": bool(event.get("isWindowTerminatedEarly")),
    }


def emf_line(metrics: dict[str, Any]) -> str:
    """One CloudWatch Embedded Metric Format record for the window."""
    counts = metrics["counts"]
    names = ["Records", "Malformed", "DistinctUsers", *(f"{kind.capitalize()}s" for kind in sorted(counts))]
    return json.dumps({
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": "router-example",
                "Dimensions": [["shardId"]],
                "Metrics": [{"Name": name, "Unit": "Count"} for name in names],
            }],
        },
        "shardId": metrics["shardId"],
        "windowStart": metrics["window"]["start"],
        "Records": metrics["records"],
        "Malformed": metrics["malformed"],
        "DistinctUsers": metrics["distinctUsers"],
        **{f"{kind.capitalize()}s": n for kind, n in sorted(counts.items())},
    })


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    state = fold(event.get("state") or {}, event.get("Records", []))
    if event.get("isFinalInvokeForWindow") and state["records"]:
        metrics = summary(event, state)
        print(emf_line(metrics), flush=True)
        bucket = os.environ.get("METRICS_BUCKET")
        if bucket:
            import boto3

            key = f"metrics/{event['window']['start']}/{event['shardId']}"
            if event.get("isWindowTerminatedEarly"):
                key += f"-{getattr(context, 'aws_request_id', 'part')}"
            boto3.client("s3").put_object(Bucket=bucket, Key=f"{key}.json", Body=json.dumps(metrics).encode(),
                                          ContentType="application/json")
    return {"state": state}
