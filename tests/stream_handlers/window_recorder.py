"""A tumbling-window Lambda handler for the window tests: records what every invocation carried and
keeps, as its state, the sequence numbers it has seen in the window (so a final state that lists
each record once proves nothing was lost or counted twice).

Appends one JSON line per invocation to RECORD_FILE before answering. MODE:
  ok            answer {"state": {"seqs": [...previous, ...these]}}
  nostate_once  the first invocation with records answers without state (a failed invocation)
SLEEP: seconds to sleep per invocation, to hold one in flight.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def handler(event: dict[str, Any], context: Any) -> Any:
    records = event.get("Records", [])
    seqs = [r["kinesis"]["sequenceNumber"] for r in records]
    line = {
        "replica": os.environ.get("REPLICA"),
        "at": time.time(),
        "keys": list(event),
        "types": {k: type(v).__name__ for k, v in event.items()},
        "window": event.get("window"),
        "state": event.get("state"),
        "shardId": event.get("shardId"),
        "eventSourceARN": event.get("eventSourceARN"),
        "final": event.get("isFinalInvokeForWindow"),
        "early": event.get("isWindowTerminatedEarly"),
        "seqs": seqs,
        "arrivals": [r["kinesis"]["approximateArrivalTimestamp"] for r in records],
    }
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
    time.sleep(float(os.environ.get("SLEEP", "0")))
    if os.environ.get("MODE") == "nostate_once" and records:
        marker = os.environ["RECORD_FILE"] + ".failed-once"
        if not os.path.exists(marker):
            open(marker, "w").close()
            return {"batchItemFailures": []}
    state = event.get("state") or {}
    return {"state": {"seqs": [*state.get("seqs", []), *seqs]}}
