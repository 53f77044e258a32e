"""Where event source mappings created through the Lambda API are kept, so they survive restarts.

The config file stays the operator's; what `CreateEventSourceMapping` made is an entry here, keyed
by its UUID. Two stores behind one interface:

* `FileRegistry` (the default, one instance): a JSON file in `state_dir`, replaced atomically
  (written to a temporary file, fsynced, renamed) so a crash leaves the old or the new set, never
  half of one.
* `KafkaRegistry` (`lambda_api.registry: kafka://TOPIC`, several replicas): a compacted topic with
  one partition, key = UUID, value = the entry, a tombstone (null value) for a delete. Every replica
  reads it from the beginning at start and follows it afterwards, so all of them converge on the same
  mappings in the same order. The replica that wrote answers its caller only once it has read its
  own write back, so a Get right after a Create sees the mapping there, as on Lambda.

Each change bumps `revision` (the Kafka offset read back, or a counter) and calls `on_change`; the
reconciler applies the set and records which revision now runs, which is how the API tells
`Creating` from `Enabled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from router.config import KafkaConfig, StreamMapping
from router.kafka_client import client_options, ensure_topics

FILE_NAME = "lambda-api-mappings.json"
# How long a write waits to read itself back from the registry topic before it is reported failed.
READ_BACK_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Entry:
    uuid: str
    mapping: StreamMapping
    last_modified: float  # epoch seconds, Lambda's LastModified
    # What the mapping is doing until this revision runs: Creating, Updating, Enabling, Disabling.
    transition: str
    revision: int = 0  # set by the registry when the entry is stored

    def encode(self) -> bytes:
        return json.dumps({"UUID": self.uuid, "Mapping": self.mapping.model_dump(mode="json"),
                           "LastModified": self.last_modified, "Transition": self.transition}).encode()

    @classmethod
    def decode(cls, data: bytes | str, revision: int) -> Entry:
        """Raises ValueError for a value that is not an entry (so one bad record is skipped)."""
        try:
            raw = json.loads(data)
            return cls(uuid=str(raw["UUID"]), mapping=StreamMapping.model_validate(raw["Mapping"]),
                       last_modified=float(raw["LastModified"]), transition=str(raw.get("Transition", "Creating")),
                       revision=revision)
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise ValueError(f"not a registry entry: {type(exc).__name__}") from None


class Registry:
    """The entries in memory, the revision and the change callback; subclasses store them."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self.revision = 0
        self.on_change: Callable[[], None] | None = None
        self._log = structlog.get_logger("router.lambda_api.registry")

    def entries(self) -> Mapping[str, Entry]:
        return dict(self._entries)

    def get(self, uuid: str) -> Entry | None:
        return self._entries.get(uuid)

    async def open(self) -> None:
        """Load what is stored; afterwards `entries()` is complete as of this moment."""

    async def close(self) -> None:
        return None

    async def put(self, entry: Entry) -> Entry:
        """Store `entry` (a new UUID or a replacement); returns it with its revision."""
        raise NotImplementedError

    async def delete(self, uuid: str) -> int:
        """Remove the entry; returns the revision of the removal."""
        raise NotImplementedError

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class FileRegistry(Registry):
    def __init__(self, state_dir: Path) -> None:
        super().__init__()
        self.path = state_dir / FILE_NAME
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            text = await asyncio.to_thread(self.path.read_text)
        except FileNotFoundError:
            return
        for raw in json.loads(text).get("EventSourceMappings", []):
            try:
                entry = Entry.decode(json.dumps(raw), 0)
            except ValueError as exc:  # hand-edited or from a newer version: keep the rest running
                self._log.error("registry.entry_skipped", store=str(self.path), error=str(exc))
                continue
            self._entries[entry.uuid] = entry

    async def put(self, entry: Entry) -> Entry:
        async with self._lock:
            stored = replace(entry, revision=self.revision + 1)
            await self._write({**self._entries, stored.uuid: stored})
            self._entries[stored.uuid] = stored
            self.revision = stored.revision
        self._changed()
        return stored

    async def delete(self, uuid: str) -> int:
        async with self._lock:
            await self._write({k: v for k, v in self._entries.items() if k != uuid})
            self._entries.pop(uuid, None)
            self.revision += 1
            revision = self.revision
        self._changed()
        return revision

    async def _write(self, entries: Mapping[str, Entry]) -> None:
        document = {"EventSourceMappings": [json.loads(e.encode()) for e in entries.values()]}
        await asyncio.to_thread(_replace_file, self.path, json.dumps(document, indent=1).encode())


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class KafkaRegistry(Registry):
    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        super().__init__()
        self.topic = topic
        self._kafka = kafka
        self._consumer: Any = None
        self._producer: Any = None
        self._follower: asyncio.Task[None] | None = None
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._position = 0  # the next offset to read
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        await ensure_topics(self._kafka, [self.topic], partitions=1, configs={"cleanup.policy": "compact"})
        options = client_options(self._kafka)
        # No idempotent producer (Tansu has no InitProducerId, and it is not needed): every value
        # is a whole entry, so a retried duplicate is the same entry again, and writes are sent
        # one at a time under a lock, so a retry cannot reorder them.
        self._producer = AIOKafkaProducer(**options, acks="all")
        self._consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False,
                                          auto_offset_reset="earliest")
        try:
            await self._producer.start()
            await self._consumer.start()
            partition = TopicPartition(self.topic, 0)
            self._consumer.assign([partition])
            await self._consumer.seek_to_beginning(partition)
            end = (await self._consumer.end_offsets([partition]))[partition]
            while self._position < end:
                await self._read(timeout_ms=1000)
        except BaseException:
            await self.close()
            raise
        self._follower = asyncio.create_task(self._follow(), name="lambda-api-registry")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._consumer = self._producer = None
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(RuntimeError("the registry closed"))

    async def _follow(self) -> None:
        while True:
            try:
                if await self._read(timeout_ms=1000):
                    self._changed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client reconnects by itself; keep following
                self._log.error("registry.read_failed", topic=self.topic, error_type=type(exc).__name__,
                                error=str(exc)[:300])
                await asyncio.sleep(1.0)

    async def _read(self, *, timeout_ms: int) -> bool:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        changed = False
        for records in batches.values():
            for record in records:
                self._position = record.offset + 1
                self.revision = self._position
                uuid = record.key.decode() if record.key else ""
                if record.value is None:
                    changed |= self._entries.pop(uuid, None) is not None
                else:
                    try:
                        self._entries[uuid] = Entry.decode(record.value, self.revision)
                        changed = True
                    except ValueError as exc:
                        self._log.error("registry.entry_skipped", topic=self.topic, offset=record.offset,
                                        error=str(exc))
                waiter = self._waiters.pop(record.offset, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        return changed

    async def put(self, entry: Entry) -> Entry:
        offset = await self._send(entry.uuid, entry.encode())
        return self._entries.get(entry.uuid) or replace(entry, revision=offset + 1)

    async def delete(self, uuid: str) -> int:
        return await self._send(uuid, None) + 1

    async def _send(self, key: str, value: bytes | None) -> int:
        """Produce, then wait until the follower has read the record back."""
        if self._producer is None:
            raise RuntimeError("the registry is not open")
        async with self._write_lock:
            metadata = await (await self._producer.send(self.topic, value, key=key.encode(), partition=0))
        offset: int = metadata.offset
        if self._position <= offset:
            waiter = self._waiters.setdefault(offset, asyncio.get_running_loop().create_future())
            await asyncio.wait_for(asyncio.shield(waiter), READ_BACK_TIMEOUT_SECONDS)
        return offset
