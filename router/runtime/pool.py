"""The worker pool: execution environments per function, Lambda's concurrency and failure rules.

Callers (stream mappings, the asynchronous invoker, `router invoke`) hand it an event and get an
`InvocationResult` back; it knows nothing about where events come from. Per function it keeps at
most `reserved_concurrent_executions` environments, started lazily (a cold start is the first
invocation that finds none idle) and reused warm. When all are busy, further invocations wait in
FIFO order for one to free up; they are never dropped. With reserved concurrency 0 every
invocation is throttled at once, as Lambda throttles: an error result with errorType
`TooManyRequestsException` and errorMessage "Rate Exceeded." (no environment is involved, the
handler never runs, and the `invocations` metric counts it under outcome "throttled").

Every way an environment can end — timeout, crash, memory, failed init — costs only that
environment: the invocation gets Lambda's error, the process group is killed and reaped, and the
next invocation starts a fresh one (module globals re-initialised, files in /tmp kept).

memory_size is enforced three ways, because each alone has a gap: the daemon samples the RSS of
running environments (MEMORY_WATCH_INTERVAL) and kills one that passes it; the worker reports its
peak RSS with every result, catching spikes shorter than a sample; and RLIMIT_DATA, set well above
memory_size (RSS limits don't exist on Linux and virtual sizes overcount), turns a runaway
allocation into a MemoryError at once. All three end as Runtime.OutOfMemory.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from router.config import Config, FunctionConfig
from router.observability.metrics import Metrics
from router.runtime import errors, fast_json, protocol
from router.runtime.context import FUNCTION_VERSION, new_log_stream_name, report_line
from router.runtime.environment import ExecutionEnvironment, Exited, Ready
from router.runtime.request_ids import RequestIds
from router.runtime.result import InvocationResult, UnknownFunction

InvocationType = Literal["RequestResponse", "Event"]

# Lambda's init phase limit. Init that runs longer eats into the function timeout, as Lambda's
# re-run of a timed-out init does within the first invoke.
INIT_TIMEOUT_SECONDS = 10.0
# How often the RSS of busy environments is checked against memory_size.
MEMORY_WATCH_INTERVAL = 0.05
# close(): how long a busy worker may take to finish before it is signalled.
CLOSE_GRACE_SECONDS = 2.0
# RLIMIT_DATA backstop = memory_size * factor + slack (see worker._limit_memory).
_DATA_LIMIT_FACTOR = 2
_DATA_LIMIT_SLACK_MB = 512
_MB = 1024 * 1024

# Variables of the daemon's own environment a handler may see. Everything else (where the
# daemon's secrets live) is withheld, as Lambda's sandbox shows a function only its own.
_INHERITED_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TMPDIR", "TEMP", "TMP",
    "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "VIRTUAL_ENV",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "COVERAGE_PROCESS_START",
})

# Restart reasons for the worker_restarts metric, by why the environment ended.
_RESTART_REASONS = {None: "crash", "lost": "crash", "timeout": "timeout", "oom": "oom", "init": "init",
                    "protocol": "protocol", "oversize_result": "protocol"}


class PoolClosed(RuntimeError):
    """invoke() after close(), or an invocation still waiting for an environment at close()."""


def is_throttled(result: InvocationResult) -> bool:
    """A throttle is not a function error: the handler never ran (retry policies treat it apart)."""
    return result.error_type == errors.THROTTLED


def encode_event(event: Any) -> bytes:
    """The event as the JSON bytes the handler receives. bytes are taken as already-encoded JSON."""
    if isinstance(event, bytes | bytearray | memoryview):
        return bytes(event)
    return json.dumps(event, separators=(",", ":")).encode()


def pack_event(event: Any) -> protocol.PackedEvent:
    """Any event the pool accepts, in a form the worker decodes: JSON unless already packed."""
    if isinstance(event, protocol.PackedEvent):
        return event
    return protocol.PackedEvent(protocol.EVENT_JSON, encode_event(event))


@dataclass(slots=True)
class _Request:
    request_id: str
    arn: str
    client_context: bytes  # JSON, b"" for none; encoded before the invocation queues
    event: protocol.PackedEvent
    synchronous: bool


@dataclass(slots=True)
class _Started:
    """An invocation whose INVOKE has been sent to `env`; `pending` resolves with its outcome."""

    env: ExecutionEnvironment
    pending: asyncio.Future[protocol.Result | Exited]
    started: float  # perf_counter at send
    init_ms: float | None = None  # set when the environment was started for this invocation


@dataclass(slots=True, eq=False)
class _Waiter:
    """An invocation waiting for an environment. It is resolved with the invocation already
    started on the environment that freed up (no hop through the waiting task first), or with
    None: a slot is free and the waiter starts a new environment itself."""

    request: _Request
    future: asyncio.Future[_Started | None]


@dataclass(eq=False)  # identity: a retired and a new version of a function are two objects
class _Function:
    """One function's environments and the queue of invocations waiting for one."""

    name: str
    config: FunctionConfig
    environment: dict[str, str]
    task_root: str
    code_path: str | None
    arn: str
    log: Any
    duration: Any = None  # the invocation_duration_seconds child for this function, if metrics
    # Whether the per-invocation lines would be written at all (START/END at debug, REPORT at
    # info): when not, they are not even built. structlog fixes a logger's level when it is made.
    log_lifecycle: bool = True
    log_report: bool = True
    envs: set[ExecutionEnvironment] = field(default_factory=set)
    idle: list[ExecutionEnvironment] = field(default_factory=list)
    waiters: collections.deque[_Waiter] = field(default_factory=collections.deque)
    slots: int = 0  # environments alive or being started; never above the limit
    in_flight: int = 0
    invocations: int = 0
    cold_starts: int = 0
    # Replaced or removed by a config reload: serves the invocations already queued for it, and
    # each environment ends as soon as nothing waits for it (`stop_env`).
    retired: bool = False
    stop_env: Callable[[ExecutionEnvironment], None] | None = None

    @property
    def limit(self) -> int:
        return self.config.reserved_concurrent_executions

    def try_acquire(self) -> tuple[bool, ExecutionEnvironment | None]:
        """Without waiting: (True, an idle environment), (True, None) when a free slot is now ours
        to start one in, or (False, None) when every slot is taken."""
        if self.idle:
            return True, self.idle.pop()  # most recently used: the warmest
        if self.slots < self.limit and not self.waiters:
            self.slots += 1
            return True, None
        return False, None

    async def wait_turn(self, request: _Request) -> _Started | None:
        """Queue behind the invocations already waiting: `request` started on the next
        environment to free up, or None when a free slot is ours to start a new one in."""
        waiter = _Waiter(request, asyncio.get_running_loop().create_future())
        self.waiters.append(waiter)
        try:
            return await waiter.future
        except BaseException:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                started = future.result()
                if started is None:
                    self._hand_over(None)  # woken and cancelled at once: pass the slot on
                else:
                    started.env.abandon(started.pending)  # nobody will read its result
            elif waiter in self.waiters:
                self.waiters.remove(waiter)
            raise

    def send(self, env: ExecutionEnvironment, request: _Request, timeout: float | None = None) -> _Started:
        """Start `request` on `env` (which must be idle): the INVOKE goes out now. The timeout is
        the function's unless a cold start's long init took some of it."""
        if timeout is None:
            timeout = float(self.config.timeout)
        frame = protocol.encode_invoke(
            request.request_id, int(time.time() * 1000 + timeout * 1000), request.arn,
            request.client_context, request.event.body, request.event.format,
        )
        if self.log_lifecycle:
            self.log.debug("invocation.start", request_id=request.request_id, version=FUNCTION_VERSION)
        return _Started(env, env.send(frame, timeout), time.perf_counter())

    def release(self, env: ExecutionEnvironment) -> None:
        """An environment finished an invocation and can serve another."""
        if env.alive and env.state == "idle":
            self._hand_over(env)

    def slot_freed(self) -> None:
        """An environment is gone (or was never started): its slot goes to a waiter, if any."""
        self._hand_over(None)

    def _hand_over(self, env: ExecutionEnvironment | None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.future.done():
                continue  # cancelled while waiting
            if env is None:
                waiter.future.set_result(None)
            else:
                waiter.future.set_result(self.send(env, waiter.request))
            return
        if env is None:
            self.slots -= 1
        elif self.retired and self.stop_env is not None:
            self.stop_env(env)
        else:
            self.idle.append(env)

    def forget(self, env: ExecutionEnvironment) -> None:
        self.envs.discard(env)
        if env in self.idle:
            self.idle.remove(env)


class WorkerPool:
    """Execution environments for every configured function; see the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._log = log if log is not None else structlog.get_logger("router.runtime.pool")
        self._functions = {name: self._function(name, fc) for name, fc in config.functions.items()}
        # Functions a reload replaced or removed, until their last environment has ended.
        self._retiring: set[_Function] = set()
        self._stopping: set[asyncio.Task[Exited]] = set()
        self._asked_to_stop: set[ExecutionEnvironment] = set()
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None
        self._outcome_counters: dict[tuple[str, str], Any] = {}
        self._request_ids = RequestIds()
        self._captured: dict[str, list[str]] = {}  # request id -> log lines, for capture_log
        self._loads = fast_json.json_loads()  # responses

    def _function(self, name: str, fc: FunctionConfig) -> _Function:
        cwd = Path.cwd()
        code_path = str((cwd / fc.code_path).resolve()) if fc.code_path is not None else None
        task_root = code_path or str(cwd)
        env = {k: v for k, v in os.environ.items() if k in _INHERITED_ENV or k.startswith("LC_")}
        env.update(fc.environment.variables)
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_VERSION": FUNCTION_VERSION,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fc.memory_size),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(fc.timeout),
            "AWS_REGION": self._config.region,
            "AWS_DEFAULT_REGION": self._config.region,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "LAMBDA_TASK_ROOT": task_root,
            "LAMBDA_RUNTIME_DIR": str(Path(__file__).resolve().parent),
            "_HANDLER": fc.handler,
            "TZ": ":UTC",
        })
        log = self._log.bind(function=name)
        return _Function(
            name=name, config=fc, environment=env, task_root=task_root, code_path=code_path,
            arn=self._config.function_arn(name), log=log,
            duration=self._metrics.invocation_duration_seconds.labels(name) if self._metrics else None,
            log_lifecycle=_enabled(log, logging.DEBUG), log_report=_enabled(log, logging.INFO),
        )

    # -- configuration ----------------------------------------------------------------------------

    def configure(self, functions: Mapping[str, FunctionConfig]) -> list[str]:
        """Take the functions of a reloaded config; returns the names that changed.

        A new function is available at once. A changed or removed one is retired: its idle
        environments stop now, busy ones once their invocation (and any invocation already queued
        for them) is done, while new invocations of a changed function start environments with its
        new configuration. Until the old ones are gone a changed function may briefly run more
        environments than its new reserved concurrency."""
        changed = []
        for name, fn in list(self._functions.items()):
            new = functions.get(name)
            if new == fn.config:
                continue
            changed.append(name)
            del self._functions[name]
            self._retire(fn)
            if new is None and self._metrics is not None:
                self._metrics.forget_function(name)
                self._outcome_counters = {k: c for k, c in self._outcome_counters.items() if k[0] != name}
        for name, fc in functions.items():
            if name not in self._functions:
                self._functions[name] = self._function(name, fc)
                if name not in changed:
                    changed.append(name)
        return changed

    def _retire(self, fn: _Function) -> None:
        fn.retired = True
        fn.stop_env = self._stop_env
        if fn.envs:
            self._retiring.add(fn)
        for env in list(fn.idle):
            fn.idle.remove(env)
            self._stop_env(env)

    def _stop_env(self, env: ExecutionEnvironment) -> None:
        self._asked_to_stop.add(env)
        task = asyncio.get_running_loop().create_task(env.stop(CLOSE_GRACE_SECONDS))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def reserved_concurrency(self, function: str) -> int:
        """The function's reserved concurrency now (0 for a function that is not configured)."""
        fn = self._functions.get(function)
        return fn.limit if fn is not None else 0

    def functions(self) -> dict[str, FunctionConfig]:
        return {name: fn.config for name, fn in self._functions.items()}

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing is pre-warmed: environments start at their first invocation, as on Lambda."""
        self._ensure_watchdog()

    async def close(self) -> None:
        """Stop every environment: a STOP message, then SIGTERM, then SIGKILL of its group."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        envs: list[ExecutionEnvironment] = []
        for fn in [*self._functions.values(), *self._retiring]:
            while fn.waiters:
                waiter = fn.waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(PoolClosed("the worker pool is closed"))
            envs.extend(fn.envs)
        if envs:
            await asyncio.gather(*(env.stop(CLOSE_GRACE_SECONDS) for env in envs))
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        functions: dict[str, Any] = {}
        for name, fn in self._functions.items():
            states = collections.Counter(env.state for env in fn.envs)
            functions[name] = {
                "reserved_concurrent_executions": fn.limit,
                "environments": len(fn.envs),
                "busy": states["busy"],
                "idle": states["idle"],
                "starting": states["starting"],
                "in_flight": fn.in_flight,
                "waiting": len(fn.waiters),
                "invocations": fn.invocations,
                "cold_starts": fn.cold_starts,
                "pids": sorted(env.pid for env in fn.envs if env.pid is not None),
            }
        return functions

    # -- invoking ---------------------------------------------------------------------------------

    async def invoke(
        self,
        function: str,
        event: Any,
        *,
        request_id: str | None = None,
        invocation_type: InvocationType = "RequestResponse",
        client_context: Mapping[str, Any] | None = None,
        invoked_function_arn: str | None = None,
        capture_log: bool = False,
    ) -> InvocationResult:
        """One invocation. `event` is anything JSON-serialisable, JSON bytes, or a PackedEvent.
        With `capture_log` the result's `log` holds the invocation's log lines as Lambda writes
        them to its log stream (what Invoke's LogType Tail returns)."""
        if capture_log:
            return await self._invoke_capturing(function, event, request_id=request_id,
                                                invocation_type=invocation_type, client_context=client_context,
                                                invoked_function_arn=invoked_function_arn)
        fn = self._functions.get(function)
        if fn is None:
            raise UnknownFunction(function)
        if self._closed:
            raise PoolClosed("the worker pool is closed")
        request_id = request_id or self._request_ids.next()
        packed = pack_event(event)
        if fn.limit == 0:
            return self._throttled(fn, request_id)
        self._ensure_watchdog()
        request = _Request(
            request_id=request_id,
            arn=invoked_function_arn or fn.arn,
            # ClientContext reaches the handler only on synchronous invocations.
            client_context=(
                json.dumps(dict(client_context)).encode()
                if client_context is not None and invocation_type == "RequestResponse" else b""
            ),
            event=packed,
            synchronous=invocation_type == "RequestResponse",
        )
        fn.in_flight += 1
        try:
            got, env = fn.try_acquire()  # no suspension when an environment is idle: the hot path
            started: _Started | None
            if env is not None:
                started = fn.send(env, request)
            elif got:
                started = None  # a free slot is ours
            else:
                started = await fn.wait_turn(request)  # an environment, or a slot, once free
            if started is None:
                cold = await self._start_cold(fn, request)
                if isinstance(cold, InvocationResult):
                    return cold  # the environment never got ready
                started = cold
            # The environment is not released after this: it frees itself the moment its RESULT
            # is read (ExecutionEnvironment's on_idle), so a queued invocation is already running
            # while this one's result is being shaped.
            try:
                outcome = await started.pending
            except asyncio.CancelledError:
                started.env.abandon(started.pending)  # nobody will read its result
                raise
            if isinstance(outcome, Exited):
                elapsed_ms = (time.perf_counter() - started.started) * 1000
                died = self._died(fn, request.request_id, outcome, fn.config.timeout, elapsed_ms)
                return self._finish(fn, died, started.init_ms)
            return self._finish(fn, self._completed(request, started.env, outcome), started.init_ms)
        finally:
            fn.in_flight -= 1

    async def _invoke_capturing(self, function: str, event: Any, *, request_id: str | None,
                                invocation_type: InvocationType, client_context: Mapping[str, Any] | None,
                                invoked_function_arn: str | None) -> InvocationResult:
        fn = self._functions.get(function)
        if fn is None:
            raise UnknownFunction(function)
        request_id = request_id or self._request_ids.next()
        lines = self._captured[request_id] = []
        try:
            result = await self.invoke(function, event, request_id=request_id, invocation_type=invocation_type,
                                       client_context=client_context, invoked_function_arn=invoked_function_arn)
        finally:
            del self._captured[request_id]
        report = report_line(request_id, duration_ms=result.duration_ms,
                             billed_duration_ms=result.billed_duration_ms, memory_size_mb=fn.config.memory_size,
                             max_memory_used_mb=result.max_memory_used_mb, init_duration_ms=result.init_duration_ms,
                             error_type=result.error_type)
        result.log = "".join([f"START RequestId: {request_id} Version: {FUNCTION_VERSION}\n",
                              *(f"{line}\n" for line in lines), f"END RequestId: {request_id}\n", f"{report}\t\n"])
        return result

    async def _start_cold(self, fn: _Function, request: _Request) -> _Started | InvocationResult:
        """Start a new environment in the slot we hold and send it the invocation, or say why
        the invocation failed if the environment never got ready."""
        request_id = request.request_id
        timeout = float(fn.config.timeout)
        env, ready = await self._cold_start(fn, timeout)
        if isinstance(ready, Exited):
            return self._finish(fn, self._died(fn, request_id, ready, timeout, None), None)
        init_ms = ready.init_ms
        if ready.error is not None:
            return self._finish(fn, self._init_failed(request_id, ready), init_ms)
        # Init past Lambda's 10 s limit is charged to the function timeout.
        timeout -= max(0.0, init_ms / 1000 - INIT_TIMEOUT_SECONDS)
        started = fn.send(env, request, timeout)
        started.init_ms = init_ms
        return started

    async def _cold_start(self, fn: _Function, timeout: float) -> tuple[ExecutionEnvironment, Ready | Exited]:
        spec = protocol.WorkerSpec(
            function_name=fn.name,
            handler=fn.config.handler,
            memory_size_mb=fn.config.memory_size,
            timeout_seconds=fn.config.timeout,
            environment={**fn.environment, "AWS_LAMBDA_LOG_STREAM_NAME": (stream := new_log_stream_name())},
            log_stream_name=stream,
            parent_pid=os.getpid(),
            task_root=fn.task_root,
            code_path=fn.code_path,
            data_limit_bytes=(fn.config.memory_size * _DATA_LIMIT_FACTOR + _DATA_LIMIT_SLACK_MB) * _MB,
        )
        env = ExecutionEnvironment(
            spec, on_idle=fn.release,
            on_log=lambda env, request_id, stream, text: self._on_log_line(fn, request_id, stream, text),
            on_exit=lambda env, exited: self._on_exit(fn, env, exited),
        )
        fn.cold_starts += 1
        try:
            fn.envs.add(env)
            ready = await env.start(INIT_TIMEOUT_SECONDS + timeout)
        except BaseException:
            if env.pid is None:
                fn.envs.discard(env)
                fn.slot_freed()
            else:
                env.kill("cancelled")
            raise
        return env, ready

    # -- results ----------------------------------------------------------------------------------

    def _completed(self, request: _Request, env: ExecutionEnvironment, result: protocol.Result) -> InvocationResult:
        duration_ms = result.duration_ms
        error_type = result.error_type
        max_memory_used_mb = _mb(env.peak_rss_bytes)  # already folds in this RESULT's peak
        if error_type is None and request.synchronous and len(result.body) > protocol.MAX_RESPONSE_BYTES:
            error_type = errors.RESPONSE_TOO_LARGE
            payload: Any = errors.error_payload(
                errors.response_too_large_message(protocol.MAX_RESPONSE_BYTES), error_type, request.request_id
            )
        else:
            body = result.body
            payload = body if result.raw else None if body == b"null" else self._loads(body)
        return InvocationResult(
            request_id=request.request_id,
            payload=payload,
            function_error="Unhandled" if error_type else None,
            error_type=error_type,
            duration_ms=duration_ms,
            billed_duration_ms=_billed(duration_ms),
            max_memory_used_mb=max_memory_used_mb,
        )

    def _died(
        self, fn: _Function, request_id: str, exited: Exited, timeout: float, elapsed_ms: float | None
    ) -> InvocationResult:
        """The environment ended mid-invocation (or mid-init): say why, in Lambda's words."""
        if exited.reason == "timeout":
            error_type, message = errors.TIMED_OUT, errors.timeout_message(request_id, timeout)
            duration_ms = timeout * 1000.0
        elif exited.reason == "oversize_result":  # a response far past 6 MB, refused unread
            error_type = errors.RESPONSE_TOO_LARGE
            message = errors.response_too_large_message(protocol.MAX_RESPONSE_BYTES)
            duration_ms = elapsed_ms or 0.0
        elif exited.reason == "oom" or _mb(exited.peak_rss_bytes) > fn.config.memory_size:
            error_type, message = errors.OUT_OF_MEMORY, errors.out_of_memory_message(request_id)
            duration_ms = elapsed_ms or 0.0
        else:
            error_type, message = errors.EXIT_ERROR, errors.exit_message(request_id, exited.exitcode)
            duration_ms = elapsed_ms or 0.0
        self._on_log_line(fn, request_id, "log", message)
        return InvocationResult(
            request_id=request_id,
            payload=errors.error_payload(message, error_type, request_id),
            function_error="Unhandled",
            error_type=error_type,
            duration_ms=duration_ms,
            billed_duration_ms=_billed(duration_ms),
            max_memory_used_mb=_mb(exited.peak_rss_bytes),
        )

    def _init_failed(self, request_id: str, ready: Ready) -> InvocationResult:
        error = dict(ready.error or {})
        error["requestId"] = request_id
        error_type = str(error.get("errorType") or "Runtime.Unknown")
        return InvocationResult(
            request_id=request_id,
            payload=errors.error_payload(
                str(error.get("errorMessage", "")), error_type, request_id, list(error.get("stackTrace") or [])
            ),
            function_error="Unhandled",
            error_type=error_type,
        )

    def _throttled(self, fn: _Function, request_id: str) -> InvocationResult:
        result = InvocationResult(
            request_id=request_id,
            payload=errors.error_payload(errors.THROTTLED_MESSAGE, errors.THROTTLED, request_id),
            function_error="Unhandled",
            error_type=errors.THROTTLED,
        )
        fn.log.warning("invocation.throttled", request_id=request_id, error_type=errors.THROTTLED,
                       reserved_concurrent_executions=0)
        self._count(fn.name, "throttled")
        return result

    def _finish(self, fn: _Function, result: InvocationResult, init_ms: float | None) -> InvocationResult:
        if init_ms is not None:
            result = _with_init(result, init_ms)
        fn.invocations += 1
        outcome = result.outcome
        self._count(fn.name, outcome)
        if fn.duration is not None:
            fn.duration.observe(result.duration_ms / 1000)
        if fn.log_lifecycle or fn.log_report:
            # Written after the caller has its result: a caller that invokes again at once (a
            # stream shard, a queue drain) sends the next INVOKE first, and the line is rendered
            # while that handler runs instead of before it starts. Still before anything the
            # next invocation logs, which needs another turn of the event loop to arrive.
            asyncio.get_running_loop().call_soon(self._log_end, fn, result, outcome)
        return result

    def _log_end(self, fn: _Function, result: InvocationResult, outcome: str) -> None:
        """END (debug) and REPORT (info): Lambda's last two lines of every invocation."""
        request_id = result.request_id
        if fn.log_lifecycle:
            fn.log.debug("invocation.end", request_id=request_id)
        if not fn.log_report:
            return
        report: dict[str, Any] = {
            "request_id": request_id,
            "duration_ms": round(result.duration_ms, 2),
            "billed_duration_ms": result.billed_duration_ms,
            "memory_size_mb": fn.config.memory_size,
            "max_memory_used_mb": result.max_memory_used_mb,
            "outcome": outcome,
        }
        if result.init_duration_ms is not None:
            report["init_duration_ms"] = round(result.init_duration_ms, 2)
        if result.error_type is not None:
            report["error_type"] = result.error_type
        fn.log.info("invocation.report", **report)

    def _count(self, function: str, outcome: str) -> None:
        if self._metrics is None:
            return
        key = (function, outcome)
        counter = self._outcome_counters.get(key)
        if counter is None:
            counter = self._outcome_counters[key] = self._metrics.invocations.labels(function, outcome)
        counter.inc()

    # -- environment events -----------------------------------------------------------------------

    def _on_log_line(self, fn: _Function, request_id: str | None, stream: str, text: str) -> None:
        # A logging record (or context.log) is one event even across lines, as in CloudWatch;
        # printed output is one event per line.
        text = text.removesuffix("\n")
        messages = [text] if stream == "log" else text.split("\n")
        if self._captured and request_id in self._captured:
            self._captured[request_id].extend(messages)
        for message in messages:
            fn.log.info("function.log", request_id=request_id, stream=stream, message=message)

    def _on_exit(self, fn: _Function, env: ExecutionEnvironment, exited: Exited) -> None:
        fn.forget(env)
        fn.slot_freed()
        if fn.retired and not fn.envs:
            self._retiring.discard(fn)
        asked = env in self._asked_to_stop
        self._asked_to_stop.discard(env)
        reason = _RESTART_REASONS.get(exited.reason)
        if reason is not None and not self._closed and not asked:
            if self._metrics is not None:
                self._metrics.worker_restarts.labels(fn.name, reason).inc()
            fn.log.warning(
                "environment.replaced", reason=reason, pid=env.pid,
                exit=errors.exit_description(exited.exitcode), invocations=env.invocations,
            )
        else:
            fn.log.debug("environment.stopped", pid=env.pid, invocations=env.invocations)

    # -- memory -----------------------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None and not self._closed:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_memory())

    async def _watch_memory(self) -> None:
        """Kill an environment whose RSS passes memory_size while it runs user code (init or an
        invocation), as Lambda's memory cgroup would."""
        while True:
            await asyncio.sleep(MEMORY_WATCH_INTERVAL)
            for fn in [*self._functions.values(), *self._retiring]:
                limit = fn.config.memory_size * _MB
                for env in list(fn.envs):
                    if env.state == "idle" or env.state == "dead":
                        continue
                    rss = env.sample_rss()
                    if rss is not None and rss > limit:
                        fn.log.warning("environment.out_of_memory", pid=env.pid, rss_mb=_mb(rss),
                                       memory_size_mb=fn.config.memory_size)
                        env.kill("oom")


def _enabled(log: Any, level: int) -> bool:
    """Whether `log` writes events at `level` (loggers that cannot say are assumed to)."""
    is_enabled_for = getattr(log, "is_enabled_for", None)
    return bool(is_enabled_for(level)) if callable(is_enabled_for) else True


def _mb(n_bytes: float) -> int:
    return math.ceil(n_bytes / _MB) if n_bytes > 0 else 0


def _billed(duration_ms: float) -> int:
    return max(1, math.ceil(duration_ms))


def _with_init(result: InvocationResult, init_ms: float) -> InvocationResult:
    return InvocationResult(
        request_id=result.request_id, payload=result.payload, function_error=result.function_error,
        error_type=result.error_type, duration_ms=result.duration_ms,
        billed_duration_ms=result.billed_duration_ms, max_memory_used_mb=result.max_memory_used_mb,
        init_duration_ms=init_ms,
    )


def invoke_once(
    config: Config,
    function: str,
    event: Any,
    *,
    log: structlog.typing.FilteringBoundLogger | None = None,
    metrics: Metrics | None = None,
    request_id: str | None = None,
    invocation_type: InvocationType = "RequestResponse",
    client_context: Mapping[str, Any] | None = None,
) -> InvocationResult:
    """One invocation in a fresh environment, for synchronous callers such as `router invoke`.

    Raises UnknownFunction before any process is started."""
    if function not in config.functions:
        raise UnknownFunction(function)

    async def run() -> InvocationResult:
        pool = WorkerPool(config, metrics=metrics, log=log)
        await pool.start()
        try:
            return await pool.invoke(
                function, event, request_id=request_id, invocation_type=invocation_type,
                client_context=client_context,
            )
        finally:
            await pool.close()

    return asyncio.run(run())
