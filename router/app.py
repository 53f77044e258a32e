"""The composition root: builds every part from the config and owns the lifecycle.

Nothing else in the package constructs long-lived collaborators or reads the environment; each part
gets what it needs here. Start order goes from the inside out (pool, queue, destinations, invoker,
then sources and the HTTP server that feed them) and stop order is the reverse, so work that was
accepted always has somewhere to go until it is finished or checkpointed.

Signals: the first SIGTERM/SIGINT starts a drain bounded by `shutdown_timeout_seconds`; a second
one exits at once. Exiting at once is safe because nothing is checkpointed or acknowledged early.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from router import event_loop
from router.config import Config
from router.delivery.async_invoker import AsyncInvoker
from router.delivery.async_queue import AsyncQueue
from router.delivery.dead_letter import DeadLetter
from router.delivery.destinations import DestinationFactory
from router.observability.http import AdminEndpoints, start_http
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.observability.sdnotify import SystemdNotifier, watchdog_loop
from router.runtime.pool import WorkerPool
from router.sources.bucket_notifications import NotificationRouter
from router.sources.mqtt import MqttNotificationSource
from router.sources.stream_mapping import StreamMappingRunner
from router.sources.webhook import WebhookReceiver

log = structlog.get_logger("router.app")

EXIT_STARTUP_FAILURE = 1
EXIT_STALLED = 3
EXIT_SECOND_SIGNAL = 130
# Collector thresholds for a running daemon; see tune_garbage_collector.
GC_THRESHOLDS = (10_000, 10, 10)


class StartupError(Exception):
    """A problem that stops the daemon from starting; its message is the one line shown."""


class _Stoppable(Protocol):
    async def stop(self, timeout: float) -> None: ...


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
    queue: AsyncQueue | None = None
    invoker: AsyncInvoker | None = None
    notification_router: NotificationRouter | None = None
    mqtt: MqttNotificationSource | None = None
    webhooks: WebhookReceiver | None = None
    streams: dict[str, StreamMappingRunner] = field(default_factory=dict)
    http_runner: web.AppRunner | None = None
    started: bool = False

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        mappings: dict[str, Any] = {}
        for name, runner in self.streams.items():
            mappings[name] = {"kind": "stream", **runner.status()}
        invoker_status = self.invoker.status() if self.invoker else {}
        for name, mapping in self.config.bucket_mappings().items():
            queue = dict(invoker_status.get("mappings", {}).get(name, {}))
            queue.pop("function", None)
            mappings[name] = {
                "kind": "bucket",
                "function": mapping.function_name,
                "state": "Enabled" if mapping.enabled else "Disabled",
                "transport": mapping.bucket_notifications.transport,
                "queue": queue,
                "last_error": queue.pop("last_error", None),
            }
        for name, stream in self.config.stream_mappings().items():
            if name not in mappings:
                mappings[name] = {"kind": "stream", "function": stream.function_name, "state": "Disabled"}
        brokers = {t.name: {"up": t.up, "detail": t.detail} for t in self.board.trackers() if t.kind == "broker"}
        return {
            "mappings": mappings,
            "brokers": brokers,
            "functions": self.pool.status(),
            "problems": self.board.problems(),
        }

    def alive(self) -> bool:
        return self.started


async def build(config: Config) -> Router:
    state_dir = prepare_state_dir(config.state_dir)
    metrics = Metrics()
    board = ProgressBoard(config.stall_timeout_seconds)
    pool = WorkerPool(config, metrics=metrics)
    destinations = DestinationFactory(config, metrics=metrics)
    app = Router(config=config, metrics=metrics, board=board, pool=pool, destinations=destinations)

    buckets = {n: m for n, m in config.bucket_mappings().items() if m.enabled}
    if buckets:
        app.queue = AsyncQueue(state_dir / "async-queue.sqlite3")
        app.invoker = AsyncInvoker(config, app.queue, pool, destinations, metrics=metrics, board=board)
        invoker = app.invoker
        app.notification_router = NotificationRouter(
            config, app.queue, DeadLetter(state_dir / "dead-letter", metrics=metrics),
            metrics=metrics, on_enqueued=invoker.wake,
        )
        if any(m.bucket_notifications.transport == "mqtt" for m in buckets.values()):
            app.mqtt = MqttNotificationSource(config, app.notification_router, metrics=metrics, board=board)
        if any(m.bucket_notifications.transport == "webhook" for m in buckets.values()):
            app.webhooks = WebhookReceiver(config, app.notification_router, metrics=metrics)

    for name, mapping in config.stream_mappings().items():
        if not mapping.enabled:
            log.info("mapping.disabled", mapping=name, function=mapping.function_name)
            continue
        target = mapping.destination_config.on_failure
        on_failure = destinations.get(target.destination) if target else None
        app.streams[name] = StreamMappingRunner(
            name, mapping, config, pool, on_failure, metrics=metrics, board=board
        )
    return app


async def start(app: Router) -> None:
    config = app.config
    http_app = web.Application(client_max_size=config.http.max_body_bytes + 1024)
    AdminEndpoints(
        board=app.board, metrics=app.metrics, status=app.status, liveness=app.alive,
        admin_token=config.http.admin_token, require_token=not config.http.is_loopback,
    ).register(http_app)
    if app.webhooks is not None:
        app.webhooks.register(http_app)
    # The port is taken first: a daemon that cannot serve health checks must not start consuming.
    try:
        app.http_runner = await start_http(http_app, config.http.host, config.http.port)
    except OSError as exc:
        raise StartupError(f"http.listen {config.http.listen}: {exc.strerror or exc}") from None

    await app.pool.start()
    if app.queue is not None and app.invoker is not None:
        await app.queue.open()
        await app.invoker.start()
    if app.mqtt is not None:
        await app.mqtt.start()
    for runner in app.streams.values():
        await runner.start()
    app.started = True
    log.info(
        "router.started", listen=config.http.listen, functions=len(config.functions),
        stream_mappings=len(app.streams), bucket_mappings=len(config.bucket_mappings()),
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
    """Drain: stop taking new work, let in-flight work finish (bounded), checkpoint, stop workers."""
    timeout = app.config.shutdown_timeout_seconds
    if app.mqtt is not None:
        await _quietly("mqtt", app.mqtt.stop())
    if app.http_runner is not None:
        await _quietly("http", app.http_runner.cleanup())
    await asyncio.gather(*(_quietly(n, r.stop(timeout)) for n, r in app.streams.items()))
    if app.invoker is not None:
        await _quietly("async-invoker", app.invoker.stop(timeout))
    if app.queue is not None:
        await _quietly("async-queue", app.queue.close())
    await _quietly("pool", app.pool.close())
    await _quietly("destinations", app.destinations.close())
    log.info("router.stopped")


async def _quietly(what: str, step: Any) -> None:
    try:
        await step
    except Exception as exc:  # shutdown must go on past one part's failure
        log.error("router.stop_failed", part=what, error_type=type(exc).__name__, error=str(exc))


async def _stall_watch(app: Router, exit_after: float, done: asyncio.Future[int]) -> None:
    while not done.done():
        await asyncio.sleep(min(5.0, exit_after / 4))
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


async def serve(config: Config, on_ready: Callable[[Router], Awaitable[int]] | None = None) -> int:
    """Run until a signal (exit 0 after a drain) or a stall past `stall_exit_seconds` (exit 3).

    `on_ready`, when given, runs once the daemon has started; its return value ends the run with
    that exit code (`router dev --demo` drives the daemon this way)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
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

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    notifier = SystemdNotifier()
    try:
        app = await build(config)
        await start(app)
    except StartupError:
        raise
    tune_garbage_collector()
    background = [asyncio.create_task(watchdog_loop(notifier, app.board))]
    if config.stall_exit_seconds is not None:
        background.append(asyncio.create_task(_stall_watch(app, config.stall_exit_seconds, done)))
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


def run(config: Config) -> int:
    try:
        return event_loop.run(serve(config), config.event_loop)
    except StartupError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE
