"""Handlers for the daemon tests.

`gated`: records each batch's sequence numbers to RECORD_FILE, then hangs (past the function
timeout) for as long as the file GATE exists, so a test can stall a shard and later unstall it.
`slow`: records "start" and "end" around a SLEEP, so a test can signal the daemon mid-batch.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def _append(line: dict[str, Any]) -> None:
    with open(os.environ["RECORD_FILE"], "a") as out:
        out.write(json.dumps(line) + "\n")


def gated(event: dict[str, Any], context: Any) -> None:
    seqs = [r["kinesis"]["sequenceNumber"] for r in event.get("Records", [])]
    while os.path.exists(os.environ["GATE"]):
        time.sleep(0.05)
    _append({"seqs": seqs})


def slow(event: dict[str, Any], context: Any) -> None:
    seqs = [r["kinesis"]["sequenceNumber"] for r in event.get("Records", [])]
    _append({"phase": "start", "seqs": seqs})
    time.sleep(float(os.environ.get("SLEEP", "2")))
    _append({"phase": "end", "seqs": seqs})


def fail(event: dict[str, Any], context: Any) -> None:
    raise RuntimeError("always fails")


def record(event: dict[str, Any], context: Any) -> dict[str, int]:
    _append({"event": event})
    return {"records": len(event.get("Records", []))}
