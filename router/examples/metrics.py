"""Data and analytics example: aggregate click events from a stream into per-page metrics.

An ordinary Kinesis-triggered Lambda handler. Each record's data is JSON such as
`{"page": "/home", "user": "u1", "ms": 120}`; the handler counts views and sums latency per page
for the batch, prints the aggregate as a CloudWatch Embedded Metric Format line (which is how a
Lambda function publishes metrics without API calls), and, when METRICS_BUCKET is set, writes the
aggregate to S3 under `metrics/<shardId>/<first sequence number>.json`. Records that are not JSON
are counted as malformed rather than failing the batch: one bad producer must not block a shard.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import defaultdict
from typing import Any


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    views: dict[str, int] = defaultdict(int)
    latency: dict[str, float] = defaultdict(float)
    malformed = 0
    for record in records:
        try:
            click = json.loads(base64.b64decode(record["kinesis"]["data"]))
            page = str(click["page"])
        except (ValueError, KeyError, TypeError):
            malformed += 1
            continue
        views[page] += 1
        latency[page] += float(click.get("ms", 0))
    pages = {
        page: {"views": count, "avg_ms": round(latency[page] / count, 3)} for page, count in views.items()
    }
    return {"records": len(records), "malformed": malformed, "pages": pages}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    records = event.get("Records", [])
    if not records:
        return {"records": 0}
    result = aggregate(records)
    shard_id = records[0]["eventID"].split(":", 1)[0]
    result["shardId"] = shard_id
    result["firstSequenceNumber"] = records[0]["kinesis"]["sequenceNumber"]
    result["lastSequenceNumber"] = records[-1]["kinesis"]["sequenceNumber"]
    print(json.dumps({
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": "router-example",
                "Dimensions": [["shardId"]],
                "Metrics": [{"Name": "Records", "Unit": "Count"}, {"Name": "Malformed", "Unit": "Count"}],
            }],
        },
        "shardId": shard_id,
        "Records": result["records"],
        "Malformed": result["malformed"],
    }))
    bucket = os.environ.get("METRICS_BUCKET")
    if bucket:
        import boto3

        boto3.client("s3").put_object(
            Bucket=bucket,
            Key=f"metrics/{shard_id}/{result['firstSequenceNumber']}.json",
            Body=json.dumps(result).encode(),
            ContentType="application/json",
        )
    return result
