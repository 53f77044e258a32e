"""What the push path needs from its durable queue, whichever engine keeps it.

Two queues implement it: `AsyncQueue` (SQLite in `state_dir`, the default on one machine) and
`KafkaQueue` (`async_queue: kafka://TOPIC`, for several replicas). Sources enqueue, the batcher
collects, the invoker claims and settles; none of them knows which engine it talks to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from router.delivery.async_queue import (
    Claim,
    ClaimRequest,
    Collected,
    EnqueueResult,
    LastResponse,
    MappingStats,
    PendingDelivery,
    QueuedEvent,
    Stage,
)
from router.observability.metrics import Metrics


class EventQueue(Protocol):
    metrics: Metrics | None
    # Called when accepted events become claimable, so the invoker looks at once.
    on_committed: Callable[[], None] | None

    @property
    def name(self) -> str:
        """What an operator calls this queue in an error line (a file name, a kafka:// URI)."""
        ...

    @property
    def is_open(self) -> bool: ...

    @property
    def max_event_bytes(self) -> int:
        """The largest event JSON the queue can store; sources dead-letter (or refuse) a larger
        one up front, since retrying it could never succeed."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def enqueue(self, events: Sequence[QueuedEvent], *, dedup_window: float) -> EnqueueResult: ...

    async def collect(self, mapping: str, function: str, *, limit: int, window: float) -> Collected: ...

    async def collecting(self) -> dict[str, str]: ...

    async def claim(self, mapping: str, stage: Stage, limit: int) -> Claim: ...

    async def claim_many(self, requests: Sequence[ClaimRequest], budgets: dict[str, int]) -> list[Claim]: ...

    async def release(self, event_id: int) -> None: ...

    async def complete(self, event_id: int) -> None: ...

    async def reschedule(
        self, event_id: int, *, due_at: float, invoke_count: int, system_errors: int,
        last_response: LastResponse | None, last_error: str | None,
    ) -> None: ...

    async def park_delivery(
        self, event_id: int, *, delivery: PendingDelivery, due_at: float, delivery_attempts: int,
        invoke_count: int, last_error: str | None,
    ) -> None: ...

    async def stats(self) -> dict[str, MappingStats]: ...

    async def prune_dedup(self, older_than: float) -> int: ...

    def status(self) -> dict[str, Any]:
        """The queue itself for /status (each mapping's depth is the invoker's)."""
        ...
