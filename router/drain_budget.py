"""One time budget for the whole drain, as the supervisor gives one.

Kubernetes' `terminationGracePeriodSeconds` and systemd's `TimeoutStopSec` bound the whole stop,
then kill. The drain used to give each step `shutdown_timeout_seconds` of its own, one after the
other (in-flight HTTP requests, up to aiohttp's own 60 s; then the stream batches; then the async
events), so a busy replica could pass the grace period and be killed before its checkpoints were
committed. Now the steps that wait for in-flight work run side by side against one deadline,
`shutdown_timeout_seconds` after SIGTERM, and the steps that only finish up (commit, close the
queue, stop the workers, close the clients) each get at least `FINISH_SECONDS` after it, so they
run even when in-flight work used the whole budget. The whole stop is therefore bounded by the
timeout plus a few seconds per finishing step; the manifests' grace periods allow for that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# What a finishing step is given at least, however little of the budget is left.
FINISH_SECONDS = 2.0


class DrainBudget:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._deadline = clock() + seconds

    def remaining(self, floor: float = 0.0) -> float:
        return max(self._deadline - self._clock(), floor)
