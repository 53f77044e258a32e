"""The deduplication key of an object event.

MinIO's `queue_dir` replay, MQTT QoS 1 redelivery, webhook retries and several targets pointing at
one broker all deliver the same notification more than once. Two deliveries describe the same
event when they agree on the bucket, the key, the object version (its versionId, else its eTag),
the sequencer and the event name; the queue drops the second within the mapping's window.

The sequencer orders events of one key, so a second PUT of identical bytes (same eTag) is still a
new event. Where a store sends no sequencer the event time stands in for it.
"""

from __future__ import annotations

import hashlib
import json

from router.events.s3 import ObjectEvent


def dedup_key(event: ObjectEvent) -> str:
    parts = [
        event.bucket,
        event.key,
        event.version_id or event.etag or "",
        event.sequencer or event.event_time,
        event.event_name,
    ]
    # A digest keeps the key short and free of separators that could collide across fields.
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()
