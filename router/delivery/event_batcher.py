"""Batches of app events: messages queued one by one, invoked as `{"Records": [...]}`.

An app-event mapping with `batch_size` > 1 collects messages the way Lambda's queue mappings do:
an invocation holds at most `batch_size` records, is never empty, and waits at most
`maximum_batching_window_in_seconds` after its oldest message for the batch to fill.

Why collect in the durable queue and not in memory: a message is acknowledged (PUBACK) once it is
queued, so holding acknowledgements back for a batching window would stall the broker's in-flight
window (Mosquitto sends a client at most 20 unacknowledged QoS 1 messages by default) and cap every
batch at that. Each message is therefore queued at once, in the `collect` stage; this batcher
replaces a full (or old enough) run of them with one batch event in a single transaction, which
then takes the ordinary asynchronous path (retries, event age counted from the oldest message,
destinations). A crash before that transaction leaves the messages to collect again; after it, the
batch: nothing is lost or doubled in between.

Messages left collecting by a mapping that is no longer batching (deleted, or its batch size set
back to 1) are flushed into batches at once, so the asynchronous path, which knows what to do with a
deleted mapping's events, sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from router.config import AppEventMapping
from router.delivery.async_queue import QueueClosed
from router.delivery.event_queue import EventQueue

# Without a wakeup, look again this often (a wakeup can only be missed across a restart).
IDLE_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class _Batching:
    function: str
    batch_size: int
    window: float


class EventBatcher:
    def __init__(self, queue: EventQueue, *, on_batched: Callable[[], None], log: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._on_batched = on_batched  # batch events were queued: wake the invoker
        self._log = log or structlog.get_logger("router.event_batcher")
        self._clock = clock
        self._mappings: dict[str, _Batching] = {}
        self._flush: dict[str, str] = {}  # mapping → function: collect everything left, now
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def set_mappings(self, mappings: Mapping[str, AppEventMapping]) -> None:
        wanted = {name: _Batching(m.function_name, m.batch_size, m.maximum_batching_window_in_seconds)
                  for name, m in mappings.items() if m.batch_size > 1}
        for name, old in self._mappings.items():
            if name not in wanted:
                self._flush[name] = old.function
        self._mappings = wanted
        self._wake.set()

    def added(self) -> None:
        """Messages were queued for collection."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            for name, function in (await self._queue.collecting()).items():
                if name not in self._mappings:
                    self._flush.setdefault(name, function)
            self._task = asyncio.create_task(self._run(), name="event-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_due = await self._round()
            except QueueClosed:
                return
            except Exception as exc:  # the loop must outlive a bad step; the messages stay queued
                self._log.exception("event_batcher.failed", error_type=type(exc).__name__)
                next_due = self._clock() + 1.0
            timeout = IDLE_POLL_SECONDS if next_due is None else max(0.0, next_due - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(timeout, IDLE_POLL_SECONDS))

    async def _round(self) -> float | None:
        """Batch what is ready; the earliest time a partial batch becomes due."""
        next_due: float | None = None
        batched = 0
        for name, function in list(self._flush.items()):
            while (await self._queue.collect(name, function, limit=10_000, window=0.0)).batched:
                batched += 1
            del self._flush[name]
        for name, settings in list(self._mappings.items()):
            while True:
                result = await self._queue.collect(name, settings.function, limit=settings.batch_size,
                                                   window=settings.window)
                if not result.batched:
                    break
                batched += 1
            if result.due_at is not None:
                next_due = result.due_at if next_due is None else min(next_due, result.due_at)
        if batched:
            self._on_batched()
        return next_due
