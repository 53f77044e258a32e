"""The app-event batcher on a real SQLite queue: full batches at once, a partial one after the
batching window, and records of a mapping that stopped batching flushed rather than stranded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from router.config import AppEventMapping
from router.delivery.async_queue import AsyncQueue, QueuedEvent
from router.delivery.event_batcher import EventBatcher


def mapping(batch_size: int, window: float = 0) -> AppEventMapping:
    return AppEventMapping(function_name="fn", mqtt_topic="app/#", batch_size=batch_size,
                           maximum_batching_window_in_seconds=window)


async def batches(queue: AsyncQueue, name: str, want: int) -> list[int]:
    for _ in range(400):
        claim = await queue.claim(name, "invoke", 100)
        for event in claim.events:
            await queue.release(event.id)
        if len(claim.events) >= want:
            return [len(e.event["Records"]) for e in claim.events]
        await asyncio.sleep(0.01)
    raise AssertionError("batches not made in time")


async def test_full_batches_at_once_and_the_rest_after_the_window(tmp_path: Path) -> None:
    queue = AsyncQueue(tmp_path / "q.sqlite3")
    await queue.open()
    woken: list[int] = []
    batcher = EventBatcher(queue, on_batched=lambda: woken.append(1))
    batcher.set_mappings({"app": mapping(3, window=0.3)})
    await batcher.start()
    try:
        await queue.enqueue([QueuedEvent("app", "fn", {"n": i}, stage="collect") for i in range(7)], dedup_window=0)
        batcher.added()
        assert await batches(queue, "app", 2) == [3, 3]
        assert await batches(queue, "app", 3) == [3, 3, 1]  # the last one, once its window passed
        assert woken
    finally:
        await batcher.stop()
        await queue.close()


async def test_records_of_a_mapping_that_stopped_batching_are_flushed(tmp_path: Path) -> None:
    queue = AsyncQueue(tmp_path / "q.sqlite3")
    await queue.open()
    await queue.enqueue([QueuedEvent("gone", "fn", {"n": i}, stage="collect") for i in range(2)], dedup_window=0)
    batcher = EventBatcher(queue, on_batched=lambda: None)
    batcher.set_mappings({"app": mapping(50, window=60)})
    await batcher.start()  # "gone" is not batching (deleted while the daemon was down): flushed
    try:
        assert await batches(queue, "gone", 1) == [2]
        await queue.enqueue([QueuedEvent("app", "fn", {"n": 0}, stage="collect")], dedup_window=0)
        batcher.set_mappings({"app": mapping(1)})  # batching turned off: what waited is flushed
        assert await batches(queue, "app", 1) == [1]
    finally:
        await batcher.stop()
        await queue.close()
