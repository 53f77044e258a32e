"""The composition root: builds every part from the config and owns the lifecycle.

Nothing else in the package constructs long-lived collaborators or reads the environment; each part
gets what it needs here. Start order goes from the inside out (HTTP port, pool, queue, invoker,
then the mapping supervisor, which starts the sources that feed them) and stop order is the
reverse, so work that was accepted always has somewhere to go until it is finished or
checkpointed. A step that fails at startup unwinds every step before it and ends the daemon with
one line naming what failed.

Signals: the first SIGTERM/SIGINT starts a drain bounded by `shutdown_timeout_seconds`; a second
one exits at once. Exiting at once is safe because nothing is checkpointed or acknowledged early.
SIGHUP re-reads the config file and applies what changed (`router.reload`): an invalid file
changes nothing, sections that need a restart are named in the log, the rest goes live.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from aiokafka.errors import KafkaError

from router import event_loop
from router.config import Config, ConfigError
from router.delivery.async_delivery import AsyncDelivery
from router.delivery.async_invoker import AsyncInvoker
from router.delivery.async_queue import AsyncQueue
from router.delivery.dead_letter import DeadLetter
from router.delivery.destinations import DestinationFactory
from router.delivery.event_batcher import EventBatcher
from router.delivery.event_queue import EventQueue
from router.delivery.kafka_queue import KafkaQueue, dedup_horizon
from router.drain_budget import FINISH_SECONDS, DrainBudget
from router.lambda_api.api import LambdaApi
from router.lambda_api.reconciler import Reconciler
from router.lambda_api.registry import FileRegistry, KafkaRegistry, Registry
from router.observability.http import AdminEndpoints, start_http
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.observability.readiness import configured_paths, readiness
from router.observability.sdnotify import SystemdNotifier, watchdog_loop
from router.reload import plan_reload
from router.routes.handler import HttpRoutes
from router.runtime import containment
from router.runtime.pool import CLOSE_GRACE_SECONDS, WorkerPool
from router.sources.app_events import AppEventRouter
from router.sources.bucket_notifications import NotificationRouter
from router.sources.mqtt import MqttNotificationSource
from router.sources.webhook import WebhookReceiver
from router.supervisor import MappingSupervisor

log = structlog.get_logger("router.app")

EXIT_STARTUP_FAILURE = 1
EXIT_STALLED = 3
EXIT_SECOND_SIGNAL = 130
# Collector thresholds for a running daemon; see tune_garbage_collector.
GC_THRESHOLDS = (10_000, 10, 10)
# How often the stall watch looks at the progress board.
STALL_WATCH_INTERVAL = 5.0

ConfigLoader = Callable[[], Config]


class StartupError(Exception):
    """A problem that stops the daemon from starting; its message is the one line shown."""


def prepare_state_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"state_dir {path}: not writable ({exc.strerror or exc})") from None
    return path


@dataclass
class Router:
    """Every long-lived part of a running daemon, built by `build` and run by `serve`."""

    config: Config
    metrics: Metrics
    board: ProgressBoard
    pool: WorkerPool
    destinations: DestinationFactory
    queue: EventQueue
    invoker: AsyncInvoker
    batcher: EventBatcher
    notifications: NotificationRouter
    supervisor: MappingSupervisor
    webhooks: WebhookReceiver
    routes: HttpRoutes
    reconciler: Reconciler
    registry: Registry | None = None
    lambda_api: LambdaApi | None = None
    mqtt: MqttNotificationSource | None = None
    http_runner: web.AppRunner | None = None
    started: bool = False

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        brokers = {t.name: {"up": t.up, "detail": t.detail} for t in self.board.trackers() if t.kind == "broker"}
        return {
            "mappings": self.supervisor.status(),
            "http_routes": self.routes.status(),
            "event_invokes": self.supervisor.invoke_status(),
            "async_queue": self.queue.status(),
            "intake": self.supervisor.intake.state,
            "brokers": brokers,
            "functions": self.pool.status(),
            "paths": readiness(self.board, configured_paths(self.supervisor.config), detail=True),
            "problems": self.board.problems(),
        }

    def alive(self) -> bool:
        return self.started


def build_async_invoker(config: Config, queue: EventQueue, pool: WorkerPool, destinations: DestinationFactory, *,
                        metrics: Metrics, board: ProgressBoard) -> AsyncInvoker:
    """The asynchronous invoker with a lane for each of `config`'s bucket mappings (the supervisor
    changes them later); also what the queue's own tests run."""
    delivery = AsyncDelivery(queue, destinations, metrics=metrics,
                             function_arn=lambda function: config.function_arn(function, "$LATEST"))
    invoker = AsyncInvoker(queue, pool, delivery, concurrency=pool.reserved_concurrency, metrics=metrics,
                           board=board)
    for name, mapping in config.bucket_mappings().items():
        invoker.set_lane(name, mapping.function_name, mapping, enabled=mapping.enabled)
    # Look for new events as soon as they are committed, not only after their fsync.
    queue.on_committed = invoker.wake
    return invoker


async def build(config: Config) -> Router:
    """Every part, wired; nothing started and no connection made yet."""
    state_dir = prepare_state_dir(config.state_dir)
    metrics = Metrics()
    board = ProgressBoard(config.stall_timeout_seconds)
    pool = WorkerPool(config, metrics=metrics)
    dead_letter = DeadLetter(state_dir / "dead-letter", max_bytes=config.dead_letter_max_bytes, metrics=metrics)
    destinations = DestinationFactory(config, metrics=metrics, dead_letter=dead_letter)
    queue = build_queue(config, state_dir, metrics)
    invoker = build_async_invoker(config, queue, pool, destinations, metrics=metrics, board=board)
    notifications = NotificationRouter(config, queue, dead_letter, metrics=metrics, on_enqueued=invoker.wake)
    batcher = EventBatcher(queue, on_batched=invoker.wake)
    app_events = AppEventRouter(queue, dead_letter, metrics=metrics, on_enqueued=invoker.wake, batcher=batcher)
    mqtt = (MqttNotificationSource(config, notifications, metrics=metrics, board=board, topics=[],
                                   app_events=app_events)
            if config.mqtt is not None else None)
    routes = HttpRoutes(config, pool, metrics=metrics)
    supervisor = MappingSupervisor(
        config, pool=pool, destinations=destinations, invoker=invoker, notifications=notifications, mqtt=mqtt,
        routes=routes, app_events=app_events, metrics=metrics, board=board,
    )
    if isinstance(queue, KafkaQueue):  # how far back a new partition owner learns dedup keys
        queue.dedup_horizon = lambda: dedup_horizon(supervisor.config)
    registry = build_registry(config, state_dir)
    reconciler = Reconciler(supervisor, config, registry)
    api = (LambdaApi(config, pool=pool, queue=queue, invoker=invoker, supervisor=supervisor, reconciler=reconciler,
                     registry=registry)
           if registry is not None else None)
    return Router(
        config=config, metrics=metrics, board=board, pool=pool, destinations=destinations, queue=queue,
        invoker=invoker, batcher=batcher, notifications=notifications, supervisor=supervisor,
        webhooks=WebhookReceiver(config, notifications, metrics=metrics, intake=supervisor.intake), routes=routes,
        mqtt=mqtt,
        reconciler=reconciler, registry=registry, lambda_api=api,
    )


def build_queue(config: Config, state_dir: Path, metrics: Metrics) -> EventQueue:
    """The push path's durable queue: SQLite in state_dir, or topics shared by every replica."""
    topic = config.async_queue_topic
    if topic is not None and config.kafka is not None:
        return KafkaQueue(config.kafka, topic, metrics=metrics)
    return AsyncQueue(state_dir / "async-queue.sqlite3", metrics=metrics)


def build_registry(config: Config, state_dir: Path) -> Registry | None:
    """Where the Lambda API keeps the mappings it creates (None: the API is off)."""
    api = config.lambda_api
    if api is None:
        return None
    if api.registry is not None and config.kafka is not None:
        return KafkaRegistry(config.kafka, urlsplit(api.registry).netloc)
    return FileRegistry(state_dir)


async def start(app: Router) -> None:
    """Start every part; if one fails, stop the ones already started and raise StartupError."""
    config = app.config
    http_app = web.Application(client_max_size=config.http.max_body_bytes + 1024)
    AdminEndpoints(
        board=app.board, metrics=app.metrics, status=app.status, liveness=app.alive,
        paths=lambda: configured_paths(app.supervisor.config),
        admin_token=config.http.admin_token, require_token=not config.http.is_loopback,
        intake=app.supervisor.intake, set_intake=app.supervisor.set_intake,
    ).register(http_app)
    app.webhooks.register(http_app)
    if app.lambda_api is not None:
        app.lambda_api.register(http_app)
    app.routes.register(http_app)  # the catch-all: last, so router's own paths win
    started: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    try:
        # The port is taken first: a daemon that cannot serve health checks must not start consuming.
        try:
            app.http_runner = runner = await start_http(http_app, config.http,
                                                        shutdown_timeout=config.shutdown_timeout_seconds)
        except OSError as exc:
            raise StartupError(f"http.listen {config.http.listen}: {exc.strerror or exc}") from None
        started.append(("http", runner.cleanup))
        await app.pool.start()
        started.append(("pool", app.pool.close))
        try:
            await app.queue.open()
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"state_dir {config.state_dir}: cannot open the async queue "
                               f"{app.queue.name} ({exc})") from None
        except (KafkaError, RuntimeError) as exc:
            raise StartupError(f"async_queue {app.queue.name}: cannot open the queue "
                               f"({type(exc).__name__}: {exc})") from None
        started.append(("async-queue", app.queue.close))
        await app.invoker.start()
        started.append(("async-invoker", lambda: app.invoker.stop(0)))
        await app.batcher.start()
        started.append(("event-batcher", app.batcher.stop))
        if app.registry is not None:
            try:
                await app.registry.open()
            except Exception as exc:
                raise StartupError(f"lambda_api.registry: cannot read the mapping registry ({exc})") from None
            started.append(("registry", app.registry.close))
        await app.reconciler.start()
    except BaseException:
        for name, undo in reversed(started):
            await _quietly(name, undo(), None)
        await _quietly("destinations", app.destinations.close(), None)
        raise
    app.started = True
    log.info(
        "router.started", listen=config.http.listen, functions=len(config.functions),
        stream_mappings=len(config.stream_mappings()), bucket_mappings=len(config.bucket_mappings()),
    )


def tune_garbage_collector() -> None:
    """Once started, stop the cyclic collector from rescanning the daemon's own furniture.

    Every record and notification allocates short-lived objects, and the default thresholds run a
    young collection every 700 of them and, now and then, a full one that walks everything alive,
    including the hundreds of thousands of objects that imports, config and clients left behind
    (measured: a sixth of the daemon's CPU while draining a stream backlog). Freezing what exists
    after startup takes those out of every later collection, and a larger first generation makes
    young collections rarer; cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def stop(app: Router) -> None:
    """Drain: stop taking new work, let in-flight work finish within one budget (drain_budget.py),
    checkpoint, stop workers."""
    budget = DrainBudget(app.config.shutdown_timeout_seconds)
    await _quietly("reconciler", app.reconciler.stop(), budget.remaining(FINISH_SECONDS))
    await _quietly("mqtt", app.supervisor.stop_intake(), budget.remaining(FINISH_SECONDS))
    # In-flight work, side by side against the same deadline (the HTTP runner's own shutdown
    # timeout is the same budget, set when it started).
    in_flight = [_quietly("streams", app.supervisor.stop_streams(budget.remaining()), None),
                 _quietly("async-invoker", app.invoker.stop(budget.remaining()), None)]
    if app.http_runner is not None:
        in_flight.append(_quietly("http", app.http_runner.cleanup(), budget.remaining(FINISH_SECONDS) + 1))
    await asyncio.gather(*in_flight)
    await _quietly("event-batcher", app.batcher.stop(), budget.remaining(FINISH_SECONDS))
    await _quietly("async-queue", app.queue.close(), budget.remaining(FINISH_SECONDS))
    await _quietly("pool", app.pool.close(), budget.remaining(FINISH_SECONDS) + CLOSE_GRACE_SECONDS)
    if app.registry is not None:
        await _quietly("registry", app.registry.close(), budget.remaining(FINISH_SECONDS))
    await _quietly("destinations", app.destinations.close(), budget.remaining(FINISH_SECONDS))
    app.started = False
    log.info("router.stopped")


async def _quietly(what: str, step: Awaitable[Any], timeout: float | None) -> None:
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log.error("router.stop_timed_out", part=what, timeout_seconds=round(timeout or 0, 1))
    except Exception as exc:  # shutdown must go on past one part's failure
        log.error("router.stop_failed", part=what, error_type=type(exc).__name__, error=str(exc))


async def reload(app: Router, load: ConfigLoader) -> bool:
    """Re-read the config and apply what changed; False when the file was refused."""
    try:
        loaded = await asyncio.to_thread(load)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload.invalid", problem=problem)
        log.warning("reload.refused", problems=len(exc.problems), detail="nothing was changed")
        return False
    plan = plan_reload(app.config, loaded)
    for section in plan.needs_restart:
        log.warning("reload.needs_restart", section=section, detail="changed in the file; applied at the next start")
    for name, problems in plan.held_back.items():
        for problem in problems:
            log.warning("reload.mapping_held_back", mapping=name, problem=problem,
                        detail="needs a section the running daemon does not have; restart to apply")
    changes = await app.reconciler.apply(plan.config)
    app.config = plan.config
    if app.lambda_api is not None:
        app.lambda_api.set_config(plan.config)
    app.board.stall_timeout = plan.config.stall_timeout_seconds
    log.info("reload.applied", created=changes.created, updated=changes.updated, deleted=changes.deleted,
             functions=changes.functions, needs_restart=plan.needs_restart, held_back=sorted(plan.held_back))
    return True


async def _reloader(app: Router, load: ConfigLoader, requested: asyncio.Event, notifier: SystemdNotifier) -> None:
    """Reloads one at a time; SIGHUPs that arrive during one make one more afterwards."""
    while True:
        await requested.wait()
        requested.clear()
        notifier.notify(RELOADING=1, MONOTONIC_USEC=int(asyncio.get_running_loop().time() * 1_000_000),
                        STATUS="reloading")
        try:
            await reload(app, load)
        except Exception as exc:  # a reload must never take the daemon down
            log.exception("reload.failed", error_type=type(exc).__name__)
        notifier.notify(READY=1, STATUS="running")


async def _stall_watch(app: Router, done: asyncio.Future[int]) -> None:
    while not done.done():
        exit_after = app.config.stall_exit_seconds
        await asyncio.sleep(STALL_WATCH_INTERVAL if exit_after is None else min(STALL_WATCH_INTERVAL, exit_after / 4))
        if exit_after is None:
            continue
        stalled = app.board.longest_stall()
        if stalled >= exit_after:
            log.error("router.stalled_exit", stalled_seconds=round(stalled), problems=app.board.problems())
            if not done.done():
                done.set_result(EXIT_STALLED)


async def _run_then_finish(step: Awaitable[int], done: asyncio.Future[int]) -> None:
    try:
        code = await step
    except Exception as exc:
        log.error("router.on_ready_failed", error_type=type(exc).__name__, error=str(exc))
        code = 1
    if not done.done():
        done.set_result(code)


async def serve(
    config: Config,
    on_ready: Callable[[Router], Awaitable[int]] | None = None,
    *,
    load: ConfigLoader | None = None,
) -> int:
    """Run until a signal (exit 0 after a drain) or a stall past `stall_exit_seconds` (exit 3).

    `load` re-reads the config on SIGHUP (without it SIGHUP is logged and ignored). `on_ready`,
    when given, runs once the daemon has started; its return value ends the run with that exit
    code (`router dev --demo` drives the daemon this way)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    reload_requested = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("router.second_signal", signal=signal.Signals(signum).name)
            os._exit(EXIT_SECOND_SIGNAL)
        log.info("router.stopping", signal=signal.Signals(signum).name)
        if not done.done():
            done.set_result(0)

    def on_hangup() -> None:
        if load is None:
            log.warning("reload.unavailable", detail="no config file to re-read")
            return
        log.info("reload.requested", signal="SIGHUP")
        reload_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)  # before start: an early SIGHUP must not kill us

    notifier = SystemdNotifier()
    app = await build(config)
    await start(app)
    tune_garbage_collector()
    background = [
        asyncio.create_task(watchdog_loop(notifier, app.board)),
        asyncio.create_task(_stall_watch(app, done)),
    ]
    if load is not None:
        background.append(asyncio.create_task(_reloader(app, load, reload_requested, notifier)))
    if on_ready is not None:
        background.append(asyncio.create_task(_run_then_finish(on_ready(app), done)))
    notifier.notify(READY=1, STATUS="running")
    try:
        code = await done
    finally:
        notifier.notify(STOPPING=1, STATUS="draining")
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await stop(app)
    return code


def run(config: Config, load: ConfigLoader | None = None) -> int:
    containment.protect_daemon()
    try:
        return event_loop.run(serve(config, load=load), config.event_loop)
    except StartupError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE
