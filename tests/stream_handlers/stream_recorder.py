"""A Lambda handler for the stream-mapping tests, steered by its function environment.

Every invocation appends one JSON line to RECORD_FILE *before* deciding its outcome, so a test can
count invocations and see exactly what each batch held (sequence numbers, keys, raw data, shard).

MODE (default "ok"):
  ok      return None (full success)
  poison  raise ValueError when any record's data equals POISON
  fail    raise ValueError for every batch
  items   ReportBatchItemFailures: every record whose data starts with b"fail" is reported failed
  return  return the JSON in RESPONSE as is
SLEEP: seconds to sleep per batch (after recording), to hold a batch in flight.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any


def handler(event: dict[str, Any], context: Any) -> Any:
    records = event["Records"]
    raw = [base64.b64decode(r["kinesis"]["data"]) for r in records]
    line = {
        "request_id": context.aws_request_id,
        "pid": os.getpid(),
        "replica": os.environ.get("REPLICA"),
        "at": time.time(),
        "shard": records[0]["eventID"].split(":")[0] if records else None,
        "shards": sorted({r["eventID"].split(":")[0] for r in records}),
        "seqs": [r["kinesis"]["sequenceNumber"] for r in records],
        "keys": [r["kinesis"]["partitionKey"] for r in records],
        "data": [d.decode("latin-1") for d in raw],
        "first": records[0] if records else None,
    }
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    time.sleep(float(os.environ.get("SLEEP", "0")))
    mode = os.environ.get("MODE", "ok")
    if (mode == "poison" and os.environ.get("POISON", "").encode() in raw) or mode == "fail":
        raise ValueError("poison record")
    if mode == "items":
        return {"batchItemFailures": [
            {"itemIdentifier": r["kinesis"]["sequenceNumber"]} for r, d in zip(records, raw, strict=True)
            if d.startswith(b"fail")
        ]}
    if mode == "return":
        return json.loads(os.environ["RESPONSE"])
    return None
