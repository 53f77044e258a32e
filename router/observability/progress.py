"""Progress tracking: the daemon must make progress or say loudly that it cannot.

Every unit of work that can stall (a shard, the async queue, a broker connection) owns a
`Tracker`. A tracker is *stalled* when it has pending work and has not advanced for the stall
timeout; a *down* tracker (a broker) makes the daemon unready at once. Health, readiness and the
systemd watchdog all read the same `ProgressBoard`, so they can never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Tracker:
    name: str
    clock: Callable[[], float] = time.monotonic
    kind: str = "work"  # "work" (shards, queues) or "broker" (a connection)
    pending: bool = False
    up: bool = True
    last_progress: float = field(default=0.0)
    detail: str = ""

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    def set_pending(self, pending: bool) -> None:
        """Say whether work is waiting. Going from idle to pending restarts the stall clock."""
        if pending and not self.pending:
            self.last_progress = self.clock()
        self.pending = pending

    def advanced(self) -> None:
        """Record that work moved forward (a checkpoint, an invocation finished, a record queued)."""
        self.last_progress = self.clock()

    def set_up(self, up: bool, detail: str = "") -> None:
        self.up = up
        self.detail = detail

    def stalled_for(self) -> float:
        return self.clock() - self.last_progress if self.pending else 0.0


class ProgressBoard:
    def __init__(self, stall_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_timeout = stall_timeout
        self.clock = clock
        self._trackers: dict[str, Tracker] = {}

    def tracker(self, name: str, kind: str | None = None) -> Tracker:
        """The tracker for `name`; names starting "kafka"/"mqtt" or kind="broker" are connections."""
        tracker = self._trackers.get(name)
        if tracker is None:
            if kind is None:
                kind = "broker" if name in ("kafka", "mqtt", "s3") else "work"
            tracker = self._trackers[name] = Tracker(name, clock=self.clock, kind=kind)
        return tracker

    def trackers(self) -> list[Tracker]:
        return list(self._trackers.values())

    def remove(self, name: str) -> None:
        self._trackers.pop(name, None)

    def problem(self, tracker: Tracker, *, detail: bool = True) -> str | None:
        """What is wrong with `tracker`, or None; `detail` adds its error text (a broker's)."""
        if not tracker.up:
            return f"{tracker.name}: down{': ' + tracker.detail if detail and tracker.detail else ''}"
        if (stalled := tracker.stalled_for()) >= self.stall_timeout:
            return f"{tracker.name}: no progress for {stalled:.0f}s with work pending"
        return None

    def problems(self) -> list[str]:
        """Why the daemon is not ready; empty when every tracker is up and moving."""
        return [p for t in self._trackers.values() if (p := self.problem(t)) is not None]

    def longest_stall(self) -> float:
        return max((t.stalled_for() for t in self._trackers.values()), default=0.0)
