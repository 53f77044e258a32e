"""Tumbling windows on a stream shard: which window a record belongs to, what an invocation of a
window carries, and what the function must answer.

Lambda (reference 1.7): windows of 1 to 900 seconds, computed from each record's arrival time,
every record in exactly one window. Each invocation of a window carries `window` ({start, end}),
`state` (what the previous invocation of this window returned), `shardId`, `eventSourceARN`,
`isFinalInvokeForWindow` and `isWindowTerminatedEarly` beside `Records`. The function must answer
`{"state": {...}}` (plus `batchItemFailures` when it reports them); an answer without `state` is a
failed invocation. After the window ends a final invocation is made; once it succeeds the shard is
checkpointed and the state dropped. State over 1 MB ends the window early: the next invocation
continues the same window with fresh state.

Where Lambda is silent, our choices (the README repeats them):

* Windows are aligned to the Unix epoch in UTC: 300-second windows start at :00, :05, :10, ...
* The arrival time is the Kafka record timestamp. Inside an open window time never goes back: a
  record stamped before the open window's end joins it, even when its timestamp is earlier than the
  window's start (a CreateTime producer whose clock went back); only a record at or after the end
  opens a new window, the window of its own timestamp. Assignment therefore depends only on the
  records from a window's first record on, which is exactly where a new owner resumes (the
  checkpoint never passes an open window's first record), so a replay after a crash puts the same
  records into the same windows.
* State lives in memory only and is built only from invocations that succeeded: a failed attempt is
  retried with the same input state.
* A record's window is closed by the first record of a later window, or, when no such record comes,
  once the wall clock is `CLOSE_GRACE_SECONDS` past its end and the shard has nothing more to read:
  the grace lets records appended just before the end arrive through the fetch before the window
  is final.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.events.kinesis import StreamRecord

# Lambda's per-shard state limit; state returned above it ends the window early.
MAX_STATE_BYTES = 1024 * 1024
CLOSE_GRACE_SECONDS = 1.0


def iso_utc(epoch: float) -> str:
    """`2020-07-30T17:00:00Z`, as Lambda writes window bounds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(eq=False)
class Window:
    """One window of one shard, from its first record until its final invocation is done."""

    start: float
    end: float
    first_offset: int
    last_offset: int  # the newest record assigned to it, filtered or not
    waiting: int = 0  # records of it in the shard buffer, not yet taken into a batch
    delivered: int = 0  # records of it taken into batches (a final invocation is owed once > 0)
    state: dict[str, Any] = field(default_factory=dict)
    terminated_early: bool = False

    @property
    def bounds(self) -> dict[str, str]:
        return {"start": iso_utc(self.start), "end": iso_utc(self.end)}


class WindowAssigner:
    """A shard's windows in record order: the first is the one being invoked, later ones hold
    records fetched ahead of it."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.windows: deque[Window] = deque()

    @property
    def current(self) -> Window | None:
        return self.windows[0] if self.windows else None

    def assign(self, records: Sequence[StreamRecord], kept: Collection[int] | None = None) -> None:
        """Put fetched records (shard order) into windows; `kept` are the offsets that will be
        invoked (the rest were filtered out and only move the window's end). None means all."""
        windows = self.windows
        for record in records:
            last = windows[-1] if windows else None
            if last is None or record.arrival >= last.end:
                start = math.floor(record.arrival / self.seconds) * self.seconds
                last = Window(start=start, end=start + self.seconds, first_offset=record.offset,
                              last_offset=record.offset)
                windows.append(last)
            last.last_offset = record.offset
            if kept is None or record.offset in kept:
                last.waiting += 1

    def close(self) -> Window:
        """The current window is final: forget it (a record that comes later, whatever its
        timestamp, starts a window of its own)."""
        return self.windows.popleft()

    def restart_current(self, first_offset: int) -> Window:
        """The current window ended early (state too large): the same bounds go on with fresh state
        from `first_offset`, its records not yet taken still waiting."""
        old = self.windows[0]
        fresh = Window(start=old.start, end=old.end, first_offset=first_offset, last_offset=old.last_offset,
                       waiting=old.waiting)
        self.windows[0] = fresh
        return fresh


def window_state(payload: Any) -> dict[str, Any] | None:
    """The state in a function's answer, or None when the answer has no object `state`."""
    if isinstance(payload, dict):
        state = payload.get("state")
        if isinstance(state, dict):
            return state
    return None


def state_too_large(state: dict[str, Any]) -> bool:
    return len(json.dumps(state, separators=(",", ":")).encode()) > MAX_STATE_BYTES


def window_event(
    records: list[dict[str, Any]], window: Window, *, shard_id: str, stream_arn: str, final: bool
) -> dict[str, Any]:
    """The invocation event, in the key order of AWS's documented example."""
    return {
        "Records": records,
        "window": window.bounds,
        "state": window.state,
        "shardId": shard_id,
        "eventSourceARN": stream_arn,
        "isFinalInvokeForWindow": final,
        "isWindowTerminatedEarly": window.terminated_early,
    }
