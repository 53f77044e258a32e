"""A ceiling on log lines about refused requests.

A refused request (a wrong token, a bad signature, a Host that is not ours, a connection over the
cap) is worth a warning, but whoever sends them decides how many there are: a scanner or a
misconfigured client at 10,000 requests a second would fill the disk and bury every other event.
Each event name gets `burst` lines per `interval`; past that, lines are counted, and the next one
allowed carries `suppressed=N` with how many were not written. Nothing about the refusal itself
changes: only its log line is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class LogLimiter:
    def __init__(
        self, log: Any, *, burst: int = 20, interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # event -> (window start, logged, suppressed)

    def warning(self, event: str, **fields: Any) -> None:
        now = self._clock()
        start, logged, suppressed = self._windows.get(event, (now, 0, 0))
        if now - start >= self._interval:
            start, logged = now, 0
        if logged >= self._burst:
            self._windows[event] = (start, logged, suppressed + 1)
            return
        if suppressed:
            fields["suppressed"] = suppressed
        self._windows[event] = (start, logged + 1, 0)
        self._log.warning(event, **fields)
