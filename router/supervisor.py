"""The mapping supervisor: which event source mappings exist, and what runs for each of them.

Everything that makes a mapping run is owned here and nowhere else, so that mappings can change
while the daemon runs (a config reload today; the Lambda API's Create/Update/DeleteEventSourceMapping
next) without a restart:

* a **stream** mapping is a `StreamMappingRunner` (one consumer group, one processor per owned
  shard);
* a **bucket-notification** mapping is a lane of the `AsyncInvoker` (its settings and dispatch), an
  entry of the `NotificationRouter`'s matchers (which notifications it takes) and, over MQTT, a
  topic filter of the running MQTT client's subscriptions.

`apply(config)` compares the desired set with what runs and changes only the difference: what is
new is started, what is gone is stopped, what changed is replaced and what is equal is left alone
(a running consumer is never bounced by an unrelated edit). Replacing a stream mapping drains the
old runner's in-flight batches, commits their checkpoints and leaves the group before the new
runner joins it, so the new one resumes exactly where the old one stopped. Disabling a stream
mapping stops its runner (the group keeps the checkpoint); enabling it starts a new one from there.
A push mapping's lane is updated in place; a deleted one is retired (see `AsyncInvoker`). Changes
are applied one `apply` at a time.

Push intake changes in an order that never loses an accepted event: a new mapping's lane exists
before its notifications are matched, and a deleted mapping stops matching before its lane retires.
Metrics and progress trackers of a deleted mapping go with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from router.config import AppEventMapping, AsyncInvokeSettings, BucketMapping, Config, StreamMapping
from router.delivery.async_invoker import AsyncInvoker
from router.delivery.destinations import DestinationFactory
from router.intake import Intake
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.routes.handler import HttpRoutes
from router.runtime.pool import WorkerPool
from router.sources.app_events import AppEventRouter
from router.sources.bucket_notifications import NotificationRouter
from router.sources.mqtt import MqttNotificationSource
from router.sources.stream_mapping import StreamMappingRunner

# The async-invoker lane of a function's Event invocations: `invoke:<function>`.
INVOKE_LANE_PREFIX = "invoke:"
# Lambda's defaults for an Event invoke without an event invoke config: two retries, six hours.
# Every Invoke is its own event, so nothing is deduplicated.
EVENT_INVOKE_DEFAULTS = AsyncInvokeSettings(deduplication_window_seconds=0)


@dataclass
class Changes:
    """What one `apply` did, by mapping name (for the log line and the tests)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.deleted or self.functions)


class MappingSupervisor:
    def __init__(
        self,
        config: Config,
        *,
        pool: WorkerPool,
        destinations: DestinationFactory,
        invoker: AsyncInvoker,
        notifications: NotificationRouter,
        mqtt: MqttNotificationSource | None,
        routes: HttpRoutes | None = None,
        app_events: AppEventRouter | None = None,
        metrics: Metrics,
        board: ProgressBoard,
        intake: Intake | None = None,
        log: Any = None,
    ) -> None:
        self.config = config
        self.intake = intake or Intake()
        self._pool = pool
        self._destinations = destinations
        self._invoker = invoker
        self._notifications = notifications
        self._mqtt = mqtt
        self._mqtt_started = False
        self._routes = routes
        self._app_events = app_events
        self._metrics = metrics
        self._board = board
        self._log = log or structlog.get_logger("router.supervisor")
        self._streams: dict[str, StreamMappingRunner] = {}
        self._buckets: dict[str, BucketMapping | AppEventMapping] = {}  # push mappings: one lane each
        self._stream_specs: dict[str, StreamMapping] = {}
        self._invoke_lanes: dict[str, tuple[str, AsyncInvokeSettings]] = {}
        self._lock = asyncio.Lock()

    # -- applying a desired set ------------------------------------------------------------------

    async def start(self, config: Config | None = None) -> Changes:
        """Start every mapping of `config` (by default the one the supervisor was made with)."""
        return await self._apply(config or self.config, initial=True)

    async def apply(self, config: Config) -> Changes:
        """Make what runs match `config` (already validated as a whole)."""
        return await self._apply(config, initial=False)

    async def _apply(self, config: Config, *, initial: bool) -> Changes:
        async with self._lock:
            old = {} if initial else dict(self.config.event_source_mappings)
            self.config = config
            changes = Changes()
            if not initial:
                changes.functions = self._pool.configure(config.functions)
            new = config.event_source_mappings
            for name in sorted(set(old) | set(new)):
                if name not in new:
                    changes.deleted.append(name)
                elif name not in old:
                    changes.created.append(name)
                elif old[name] != new[name]:
                    changes.updated.append(name)
                else:
                    changes.unchanged.append(name)
            if self._routes is not None:
                self._routes.set_routes(config.http_routes)
            await self._apply_push(config.bucket_mappings(), config.app_event_mappings())
            self._apply_invoke_lanes(config)
            await self._apply_streams(config, config.stream_mappings())
            self._log_changes(changes, old, new, initial=initial)
            return changes

    async def _apply_push(self, buckets: Mapping[str, BucketMapping], apps: Mapping[str, AppEventMapping]) -> None:
        wanted: dict[str, BucketMapping | AppEventMapping] = {**buckets, **apps}
        for name, mapping in wanted.items():
            if self._buckets.get(name) != mapping:
                self._invoker.set_lane(name, mapping.function_name, mapping, enabled=mapping.enabled)
        self._notifications.set_mappings(buckets)
        if self._app_events is not None:
            self._app_events.set_mappings(apps)
        for name in set(self._buckets) - set(wanted):
            self._invoker.retire_lane(name)
        self._buckets = wanted
        await self._apply_mqtt()

    def _apply_invoke_lanes(self, config: Config) -> None:
        """With the Lambda API on, every function has a lane for `Invoke` with InvocationType
        Event, run with the function's event invoke config."""
        wanted = ({f"{INVOKE_LANE_PREFIX}{name}": (name, fn.event_invoke_config or EVENT_INVOKE_DEFAULTS)
                   for name, fn in config.functions.items()} if config.lambda_api is not None else {})
        for lane, (function, settings) in wanted.items():
            if self._invoke_lanes.get(lane) != (function, settings):
                self._invoker.set_lane(lane, function, settings)
        for lane in set(self._invoke_lanes) - set(wanted):
            self._invoker.retire_lane(lane)
        self._invoke_lanes = wanted

    async def _apply_mqtt(self) -> None:
        topics = sorted({*self._notifications.matcher("mqtt").topics(),
                         *(self._app_events.topics() if self._app_events is not None else [])})
        if self.intake.paused:
            topics = []  # see router.intake: unsubscribed, connection and session kept
        source = self._mqtt
        if source is None:
            return
        await source.set_topics(topics)
        if topics and not self._mqtt_started:
            await source.start()
            self._mqtt_started = True
        elif not topics and self._mqtt_started and not self.intake.paused:
            await source.stop()
            self._mqtt_started = False

    async def set_intake(self, paused: bool) -> None:
        """Pause or resume this replica's intake (router.intake)."""
        async with self._lock:
            if paused == self.intake.paused:
                return
            self.intake.paused = paused
            await self._apply_mqtt()
        self._log.info("intake.paused" if paused else "intake.resumed")

    async def _apply_streams(self, config: Config, wanted: Mapping[str, StreamMapping]) -> None:
        running = {name: spec for name, spec in self._stream_specs.items() if name in self._streams}
        desired = {name: spec for name, spec in wanted.items() if spec.enabled}
        stop = [name for name, spec in running.items() if desired.get(name) != spec]
        start = [name for name, spec in desired.items() if running.get(name) != spec]
        timeout = config.shutdown_timeout_seconds
        await asyncio.gather(*(self._stop_stream(name, timeout) for name in stop))
        for name in set(self._stream_specs) - set(wanted):
            self._metrics.forget_mapping(name)
        self._stream_specs = dict(wanted)
        await asyncio.gather(*(self._start_stream(config, name, desired[name]) for name in start))
        if not wanted:
            self._board.remove("kafka")  # no consumer is left to keep it up to date

    async def _stop_stream(self, name: str, timeout: float) -> None:
        runner = self._streams.pop(name)
        try:
            await runner.stop(timeout)
        except Exception as exc:  # the rest of the change must still happen
            self._log.error("mapping.stop_failed", mapping=name, error_type=type(exc).__name__, error=str(exc))

    async def _start_stream(self, config: Config, name: str, mapping: StreamMapping) -> None:
        target = mapping.destination_config.on_failure
        on_failure = self._destinations.get(target.destination) if target else None
        runner = StreamMappingRunner(name, mapping, config, self._pool, on_failure, metrics=self._metrics,
                                     board=self._board)
        self._streams[name] = runner
        await runner.start()

    def _log_changes(self, changes: Changes, old: Mapping[str, Any], new: Mapping[str, Any], *,
                     initial: bool) -> None:
        for name in changes.created:
            self._log.info("mapping.created" if not initial else "mapping.configured", mapping=name,
                           function=new[name].function_name, kind=_kind(new[name]),
                           state="Enabled" if new[name].enabled else "Disabled")
        for name in changes.updated:
            self._log.info("mapping.updated", mapping=name, function=new[name].function_name, kind=_kind(new[name]),
                           state="Enabled" if new[name].enabled else "Disabled")
        for name in changes.deleted:
            self._log.info("mapping.deleted", mapping=name, function=old[name].function_name, kind=_kind(old[name]))

    # -- stopping --------------------------------------------------------------------------------

    async def stop_streams(self, timeout: float) -> None:
        """Drain every stream mapping (shutdown): in-flight batches finish or are abandoned
        within `timeout`, checkpoints are committed, the groups are left."""
        async with self._lock:
            await asyncio.gather(*(self._stop_stream(name, timeout) for name in list(self._streams)))

    async def stop_intake(self) -> None:
        """Stop taking push notifications (shutdown): the MQTT client disconnects once what it
        received is queued and acknowledged."""
        if self._mqtt is not None and self._mqtt_started:
            await self._mqtt.stop()
            self._mqtt_started = False

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        mappings: dict[str, Any] = {}
        for name, spec in sorted(self._stream_specs.items()):
            runner = self._streams.get(name)
            if runner is not None:
                mappings[name] = {"kind": "stream", **runner.status()}
            else:
                mappings[name] = {"kind": "stream", "function": spec.function_name, "state": "Disabled",
                                  "topic": spec.kafka_topic}
        lanes = self._invoker.status().get("mappings", {})
        for name, mapping in sorted(self._buckets.items()):
            queue = dict(lanes.get(name, {}))
            queue.pop("function", None)
            queue.pop("state", None)
            source = ({"transport": mapping.bucket_notifications.transport} if isinstance(mapping, BucketMapping)
                      else {"mqtt_topic": mapping.mqtt_topic})
            mappings[name] = {
                "kind": _kind(mapping),
                "function": mapping.function_name,
                "state": "Enabled" if mapping.enabled else "Disabled",
                **source,
                "queue": queue,
                "last_error": queue.pop("last_error", None),
            }
        for name, lane in lanes.items():
            if name.startswith(INVOKE_LANE_PREFIX):
                continue  # not a mapping: Invoke's Event queue (see invoke_status)
            if name not in mappings:  # deleted, draining or holding queued events
                mappings[name] = {"kind": "bucket", "queue": lane, "state": lane.get("state", "Deleted"),
                                  "function": lane.get("function")}
        return mappings

    def invoke_status(self) -> dict[str, Any]:
        """The queues of `Invoke` with InvocationType Event, by function."""
        lanes = self._invoker.status().get("mappings", {})
        return {name.removeprefix(INVOKE_LANE_PREFIX): lane for name, lane in sorted(lanes.items())
                if name.startswith(INVOKE_LANE_PREFIX)}

    def stream_status(self, name: str) -> dict[str, Any] | None:
        """One stream mapping's runner status (None while it does not run)."""
        runner = self._streams.get(name)
        return runner.status() if runner is not None else None

    def mapping_names(self) -> list[str]:
        return sorted(self.config.event_source_mappings)


def _kind(mapping: Any) -> str:
    if isinstance(mapping, StreamMapping):
        return "stream"
    return "app" if isinstance(mapping, AppEventMapping) else "bucket"
