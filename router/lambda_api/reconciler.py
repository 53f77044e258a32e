"""What should run = the config file's mappings + the registry's; the reconciler makes it so.

The supervisor applies a whole desired set; this is the one place that builds it, for the start, a
reload (a new file) and a registry change (an API call here or on another replica). Changes are
applied one at a time and coalesced: ten Creates in a burst are one apply with all ten.

An API mapping that no longer fits the file (its function was removed, its destination needs a
section that is gone) is held back with a warning rather than failing the whole set; it runs again
once the file has what it needs. `applied_revision` is the registry revision now running, which is
how the API reports `Creating` until a mapping runs and `Enabled` afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from router.config import Config, mapping_problems
from router.lambda_api.registry import Registry
from router.supervisor import Changes, MappingSupervisor


class Reconciler:
    def __init__(self, supervisor: MappingSupervisor, config: Config, registry: Registry | None) -> None:
        self.base = config
        self.registry = registry
        self.applied_revision = -1
        self._supervisor = supervisor
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._held_back: dict[str, list[str]] = {}
        self._log = structlog.get_logger("router.lambda_api.reconciler")

    def desired(self) -> tuple[Config, int]:
        """The merged config and the registry revision it reflects."""
        if self.registry is None:
            return self.base, 0
        revision = self.registry.revision
        merged = dict(self.base.event_source_mappings)
        entries = self.registry.entries()
        for uuid, entry in entries.items():
            if uuid not in merged:  # a file mapping of the same name wins (the API refuses such UUIDs)
                merged[uuid] = entry.mapping
        config = self.base.model_copy(update={"event_source_mappings": merged})
        held: dict[str, list[str]] = {}
        for uuid in entries:
            problems = mapping_problems(config, uuid) if uuid not in self.base.event_source_mappings else []
            if problems:
                held[uuid] = problems
                del merged[uuid]
        for uuid, problems in held.items():
            if self._held_back.get(uuid) != problems:
                self._log.warning("mapping.held_back", mapping=uuid, problems=problems,
                                  detail="created through the Lambda API; runs again once the config has what it needs")
        self._held_back = held
        return config.model_copy(update={"event_source_mappings": merged}), revision

    def held_back(self, uuid: str) -> list[str]:
        return self._held_back.get(uuid, [])

    async def start(self) -> Changes:
        async with self._lock:
            config, revision = self.desired()
            changes = await self._supervisor.start(config)
            self.applied_revision = revision
        if self.registry is not None:
            self.registry.on_change = self._dirty.set
            self._task = asyncio.create_task(self._run(), name="mapping-reconciler")
        return changes

    async def apply(self, base: Config | None = None) -> Changes:
        """Apply the current set now (with a new file config, on a reload)."""
        async with self._lock:
            if base is not None:
                self.base = base
            self._dirty.clear()
            config, revision = self.desired()
            changes = await self._supervisor.apply(config)
            self.applied_revision = max(self.applied_revision, revision)
            return changes

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                await self.apply()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next change tries again; the daemon stays up
                self._log.exception("mapping.reconcile_failed", error_type=type(exc).__name__)
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.registry is not None:
            self.registry.on_change = None
