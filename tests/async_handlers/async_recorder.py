"""Lambda handlers for the asynchronous-invocation tests.

Each invocation appends one JSON line to the file named by RECORD_FILE (set in the function's
environment, as on Lambda), so tests count invocations from inside the handler.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def _record(event: dict[str, Any], context: Any, what: str) -> None:
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"what": what, "request_id": context.aws_request_id, "event": event}) + "\n")
        out.flush()
        os.fsync(out.fileno())


def fail(event: dict[str, Any], context: Any) -> None:
    _record(event, context, "fail")
    raise ValueError("thumbnail could not be made")


def succeed(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _record(event, context, "succeed")
    return {"processed": event.get("Records", [{}])[0].get("n")}


def slow_when_flagged(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Records its start, then sleeps while the file named by SLOW_FLAG exists (a crash window)."""
    _record(event, context, "start")
    deadline = time.monotonic() + 10
    while os.path.exists(os.environ["SLOW_FLAG"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"ok": True}
