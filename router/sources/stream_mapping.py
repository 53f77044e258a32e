"""A stream event source mapping at run time: the Kafka source plus one processor per owned shard.

This is the seam the composition root uses (`start`, `stop`, `status`). The source decides which
shards we own and where they start; each `ShardProcessor` turns its records into invocations under
the mapping's policy; commits go back through the source, which alone talks to the group.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from router.config import Config, KafkaConfig, StreamMapping
from router.delivery.checkpoint import ShardCheckpoint
from router.delivery.destination import Destination
from router.delivery.shard import ShardProcessor
from router.events.kinesis import FetchedRecord, shard_id
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.runtime.pool import WorkerPool
from router.sources.kafka import KafkaStreamSource, ShardStart, StreamSource

# On revoke a shard may finish the invocation in flight: the function timeout plus this margin.
REVOKE_MARGIN_SECONDS = 2.0


def source_class(config: Config) -> type[StreamSource]:
    """The Kafka client backend `kafka.client` names (confluent-kafka is imported only when chosen)."""
    if (config.kafka or KafkaConfig()).client == "confluent":
        from router.sources.kafka_confluent import ConfluentStreamSource

        return ConfluentStreamSource
    return KafkaStreamSource


class StreamMappingRunner:
    def __init__(
        self,
        name: str,
        mapping: StreamMapping,
        config: Config,
        pool: WorkerPool,
        on_failure: Destination | None,
        metrics: Metrics,
        board: ProgressBoard,
        log: Any = None,
    ) -> None:
        self.name = name
        self.mapping = mapping
        self._config = config
        self._pool = pool
        self._on_failure = on_failure
        self._metrics = metrics
        self._board = board
        self._log = (log or structlog.get_logger("router.stream_mapping")).bind(
            mapping=name, function=mapping.function_name)
        self._shards: dict[int, ShardProcessor] = {}
        function = config.functions.get(mapping.function_name)
        self._revoke_timeout = (function.timeout if function else 3) + REVOKE_MARGIN_SECONDS
        self.source = source_class(config)(name, mapping, config, self, metrics=metrics, board=board, log=self._log)
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Returns once the consumer is started (shards arrive with the group's assignment)."""
        await self.source.start()
        self._started = True
        self._log.info("stream.mapping_started", topic=self.mapping.kafka_topic,
                       group_id=self.mapping.group_id(self.name))

    async def stop(self, timeout: float) -> None:
        """Stop fetching, finish or abandon in-flight batches within `timeout`, commit, leave."""
        await self.source.stop(timeout)
        self._started = False
        self._log.info("stream.mapping_stopped")

    # -- ShardOwner ----------------------------------------------------------------------------------

    async def shards_assigned(self, starts: Mapping[int, ShardStart]) -> None:
        for partition, start in starts.items():
            old = self._shards.pop(partition, None)
            if old is not None:  # should not happen (revoke comes first); never run two
                await old.stop(self._revoke_timeout)
            shard = ShardProcessor(
                name=self.name, mapping=self.mapping, config=self._config, partition=partition,
                start=start.offset, pool=self._pool, on_failure=self._on_failure, metrics=self._metrics,
                board=self._board, commit=self.source.committer.request,
                pause=functools.partial(self.source.pause, partition),
                resume=functools.partial(self.source.resume, partition),
                skip_before=start.skip_before, log=self._log,
            )
            if start.committed:
                shard.checkpoint.mark_committed(start.offset)
            self._shards[partition] = shard
            shard.start()

    async def drain(self, partitions: set[int], timeout: float | None) -> None:
        bound = self._revoke_timeout if timeout is None else timeout
        shards = [s for p, s in self._shards.items() if p in partitions]
        await asyncio.gather(*(s.stop(bound) for s in shards))

    def release(self, partitions: set[int]) -> None:
        for partition in partitions:
            shard = self._shards.pop(partition, None)
            if shard is not None:
                self._board.remove(f"stream:{self.name}:{shard.shard_id}")

    def records(self, partition: int, records: Sequence[FetchedRecord]) -> bool:
        shard = self._shards.get(partition)
        if shard is None:
            return False
        shard.add(records)
        return True

    def checkpoints(self) -> Mapping[int, ShardCheckpoint]:
        return {p: s.checkpoint for p, s in self._shards.items()}

    def high_watermarks(self, offsets: Mapping[int, int]) -> None:
        for partition, offset in offsets.items():
            shard = self._shards.get(partition)
            if shard is not None:
                shard.set_high_watermark(offset)

    # -- status --------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        source = self.source.status()
        shards = {s.shard_id: s.status() for _, s in sorted(self._shards.items())}
        return {
            "function": self.mapping.function_name,
            "state": source["state"],
            "topic": self.mapping.kafka_topic,
            "group_id": source["group_id"],
            "broker_connected": source["broker_connected"],
            "shards_owned": [shard_id(p) for p in sorted(self._shards)],
            "shards": shards,
            "lag": sum(s["lag"] or 0 for s in shards.values()),
            "iterator_age_seconds": max((s["iterator_age_seconds"] or 0 for s in shards.values()), default=None),
            "in_flight": sum(s["in_flight"] for s in shards.values()),  # batches
            "last_error": source["last_error"] or next(
                (s["last_error"] for s in shards.values() if s["last_error"]), None),
            "as_of": round(time.time(), 3),
        }
