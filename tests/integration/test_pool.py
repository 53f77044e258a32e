"""The worker pool against real worker processes: Lambda's invocation contract end to end.

Handlers live in tests/handlers (put on code_path). Every assertion is on an outcome a caller or a
handler can observe: payloads, error JSON, pids, files, timestamps, captured log events, metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog

from router.config import load_config_data
from router.observability.metrics import Metrics
from router.runtime import protocol
from router.runtime.pool import PoolClosed, WorkerPool
from router.runtime.result import UnknownFunction

pytestmark = pytest.mark.integration

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@dataclass
class LogRecorder:
    """A structlog processor that keeps every event the pool logs."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        self.events.append({**event_dict, "level": method})
        raise structlog.DropEvent

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in match.items())]


@dataclass
class Harness:
    pool: WorkerPool
    metrics: Metrics
    logs: LogRecorder

    def counted(self, metric: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(metric, labels) or 0.0

    def pids(self, function: str) -> list[int]:
        pids: list[int] = self.pool.status()[function]["pids"]
        return pids


MakePool = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[WorkerPool] = []

    async def make(**functions: dict[str, Any]) -> Harness:
        config = load_config_data({
            "region": "eu-west-1",
            "account_id": "123456789012",
            "functions": {name: {"code_path": str(HANDLERS), **spec} for name, spec in functions.items()},
        })
        metrics, logs = Metrics(), LogRecorder()
        log = structlog.wrap_logger(
            structlog.PrintLogger(), processors=[logs],
            wrapper_class=structlog.make_filtering_bound_logger(0),
        )
        pool = WorkerPool(config, metrics=metrics, log=log)
        pools.append(pool)
        await pool.start()
        return Harness(pool, metrics, logs)

    yield make
    for pool in pools:
        await pool.close()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_gone(pids: list[int], within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if running(pid)]
        if not alive:
            return []
        await asyncio.sleep(0.05)
    return [pid for pid in pids if running(pid)]


# ------------------------------------------------------------------------------------------------
# warm reuse, context, environment


async def test_warm_environment_keeps_module_globals(make_pool: MakePool) -> None:
    h = await make_pool(counter={"handler": "basic.counter"})
    first = await h.pool.invoke("counter", {})
    second = await h.pool.invoke("counter", {})
    assert first.ok and second.ok
    assert (first.payload["count"], second.payload["count"]) == (1, 2)
    assert first.payload["pid"] == second.payload["pid"]
    assert first.init_duration_ms is not None and first.init_duration_ms > 0
    assert second.init_duration_ms is None  # warm: no init
    assert h.pool.status()["counter"]["cold_starts"] == 1
    assert h.counted("router_invocations_total", function="counter", outcome="success") == 2


async def test_context_object_has_every_attribute_with_lambdas_types(make_pool: MakePool) -> None:
    h = await make_pool(ctx={"handler": "basic.context_info", "memory_size": 256, "timeout": 5})
    client_context = {
        "client": {"installation_id": "i-1", "app_title": "Clicks", "app_version_name": "2.0",
                   "app_version_code": "20", "app_package_name": "com.example.clicks"},
        "custom": {"screen": "home"},
        "env": {"platform": "iOS"},
    }
    result = await h.pool.invoke("ctx", {}, request_id="req-1", client_context=client_context)
    assert result.ok, result.payload
    info = result.payload
    assert info["function_name"] == "ctx"
    assert info["function_version"] == "$LATEST"
    assert info["invoked_function_arn"] == "arn:aws:lambda:eu-west-1:123456789012:function:ctx"
    assert info["memory_limit_in_mb"] == "256" and info["memory_limit_type"] == "str"
    assert info["aws_request_id"] == "req-1"
    assert info["log_group_name"] == "/aws/lambda/ctx"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", info["log_stream_name"])
    assert info["identity_is_none"] is False
    assert info["cognito_identity_id"] is None and info["cognito_identity_pool_id"] is None
    assert info["client_context_is_none"] is False
    assert info["client"] == client_context["client"]
    assert info["custom"] == {"screen": "home"} and info["env"] == {"platform": "iOS"}
    assert info["tenant_id"] is None
    first, second = info["remaining"]
    assert info["remaining_type"] == "int"
    assert 4000 < first <= 5000  # counts down from the real 5 s deadline
    assert 30 <= first - second <= 1000  # the handler slept 50 ms between the two readings

    # The same environment, a generated request id, an explicit qualified ARN.
    qualified = "arn:aws:lambda:eu-west-1:123456789012:function:ctx:live"
    again = await h.pool.invoke("ctx", {}, invoked_function_arn=qualified)
    assert UUID_RE.match(again.payload["aws_request_id"])
    assert again.request_id == again.payload["aws_request_id"]
    assert again.payload["invoked_function_arn"] == qualified
    assert again.payload["log_stream_name"] == info["log_stream_name"]  # one stream per environment
    assert again.payload["client_context_is_none"] is True


async def test_client_context_is_none_for_event_invocations(make_pool: MakePool) -> None:
    h = await make_pool(ctx={"handler": "basic.context_info"})
    result = await h.pool.invoke(
        "ctx", {}, invocation_type="Event", client_context={"custom": {"dropped": True}}
    )
    assert result.ok
    assert result.payload["client_context_is_none"] is True
    assert result.payload["client"] is None


async def test_lambda_environment_variables_and_task_root(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_TEST_SECRET", "daemon-only")
    h = await make_pool(envfn={
        "handler": "basic.env_info", "memory_size": 512,
        "environment": {"variables": {"GREETING": "hello"}},
    })
    result = await h.pool.invoke("envfn", {})
    assert result.ok, result.payload
    env = result.payload["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "envfn"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/envfn"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", env["AWS_LAMBDA_LOG_STREAM_NAME"])
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["LAMBDA_TASK_ROOT"] == str(HANDLERS)
    assert env["LAMBDA_RUNTIME_DIR"] and env["LAMBDA_RUNTIME_DIR"].endswith("router/runtime")
    assert env["_HANDLER"] == "basic.env_info"
    assert env["TZ"] == ":UTC"
    assert env["GREETING"] == "hello"
    assert env["ROUTER_TEST_SECRET"] is None  # the daemon's own environment stays out
    assert result.payload["cwd"] == str(HANDLERS)
    assert result.payload["sys_path_0"] == str(HANDLERS)
    assert result.payload["localtime_is_utc"] is True
    assert result.payload["pgid_is_pid"] is True


# ------------------------------------------------------------------------------------------------
# errors reported by the runtime


async def test_handler_exception_is_an_unhandled_function_error(make_pool: MakePool) -> None:
    h = await make_pool(boom={"handler": "basic.boom"})
    result = await h.pool.invoke("boom", {"n": 7}, request_id="req-boom")
    assert result.function_error == "Unhandled"
    assert result.error_type == "ValueError"
    assert result.outcome == "error"
    payload = result.payload
    assert payload["errorMessage"] == "boom 7"
    assert payload["errorType"] == "ValueError"
    assert payload["requestId"] == "req-boom"
    assert isinstance(payload["stackTrace"], list) and payload["stackTrace"]
    assert all(isinstance(line, str) for line in payload["stackTrace"])
    assert "basic.py" in payload["stackTrace"][0] and "in boom" in payload["stackTrace"][0]
    assert not any("worker.py" in line for line in payload["stackTrace"])  # user frames only
    # An exception does not cost the environment.
    again = await h.pool.invoke("boom", {"n": 8})
    assert again.payload["errorMessage"] == "boom 8"
    assert h.pool.status()["boom"]["cold_starts"] == 1
    assert h.counted("router_invocations_total", function="boom", outcome="error") == 2
    # The runtime writes the error to the function log, as awslambdaric does.
    logged = [e["message"] for e in h.logs.named("function.log", request_id="req-boom")]
    assert any(m.startswith("[ERROR] ValueError: boom 7") for m in logged)


async def test_captured_log_is_the_invocations_own_lambda_log_stream(make_pool: MakePool) -> None:
    """What Invoke's LogType Tail returns: START, the handler's output, END and REPORT of this
    invocation only."""
    h = await make_pool(chatty={"handler": "basic.chatty"}, boom={"handler": "basic.boom"})
    await h.pool.invoke("chatty", {})  # another invocation's lines must not appear below
    result = await h.pool.invoke("chatty", {}, request_id="req-tail", capture_log=True)
    assert result.payload == "done" and result.log is not None
    lines = result.log.splitlines()
    assert lines[0] == "START RequestId: req-tail Version: $LATEST"
    assert lines[-2] == "END RequestId: req-tail"
    assert lines[-1].startswith("REPORT RequestId: req-tail\tDuration: ")
    assert "Memory Size: 128 MB" in lines[-1]
    assert lines.count("hello from stdout") == 1 and "two" in lines and "lines" in lines
    failed = await h.pool.invoke("boom", {"n": 1}, request_id="req-boom-tail", capture_log=True)
    assert failed.log is not None and "[ERROR] ValueError: boom 1" in failed.log
    assert failed.log.splitlines()[-1].endswith("\tStatus: error\tError Type: ValueError\t")  # a tab: as Lambda
    plain = await h.pool.invoke("chatty", {})
    assert plain.log is None


async def test_non_serialisable_response_is_a_marshal_error(make_pool: MakePool) -> None:
    h = await make_pool(bad={"handler": "basic.unmarshalable"})
    result = await h.pool.invoke("bad", {})
    assert result.error_type == "Runtime.MarshalError"
    assert result.payload["errorMessage"].startswith("Unable to marshal response: ")
    assert "set" in result.payload["errorMessage"]


async def test_import_error_is_import_module_error_and_init_is_retried(make_pool: MakePool) -> None:
    h = await make_pool(imp={"handler": "broken_import.handler"})
    first = await h.pool.invoke("imp", {}, request_id="req-imp")
    assert first.function_error == "Unhandled"
    assert first.error_type == "Runtime.ImportModuleError"
    assert first.payload["errorMessage"] == (
        "Unable to import module 'broken_import': No module named 'router_test_module_that_does_not_exist'"
    )
    assert first.payload["requestId"] == "req-imp"
    second = await h.pool.invoke("imp", {})
    assert second.error_type == "Runtime.ImportModuleError"
    assert h.pool.status()["imp"]["cold_starts"] == 2  # every invoke tries init again
    assert await wait_gone(h.pids("imp")) == []


async def test_syntax_error_is_reported_as_lambda_does(make_pool: MakePool, tmp_path: Path) -> None:
    (tmp_path / "broken_syntax.py").write_text("def handler(event, context)\n    return 1\n")
    h = await make_pool(syn={"handler": "broken_syntax.handler", "code_path": str(tmp_path)})
    result = await h.pool.invoke("syn", {})
    # awslambdaric's type for a SyntaxError in the handler module (not ImportModuleError).
    assert result.error_type == "Runtime.UserCodeSyntaxError"
    assert result.payload["errorMessage"].startswith("Syntax error in module 'broken_syntax': ")
    assert "broken_syntax.py" in result.payload["stackTrace"][0]


async def test_missing_handler_function_is_handler_not_found(make_pool: MakePool) -> None:
    h = await make_pool(missing={"handler": "basic.does_not_exist"})
    result = await h.pool.invoke("missing", {})
    assert result.error_type == "Runtime.HandlerNotFound"
    assert result.payload["errorMessage"] == "Handler 'does_not_exist' missing on module 'basic'"


async def test_failed_init_is_retried_at_the_next_invoke(make_pool: MakePool, tmp_path: Path) -> None:
    marker = tmp_path / "flaky-marker"
    h = await make_pool(flaky={
        "handler": "flaky_init.handler",
        "environment": {"variables": {"FLAKY_INIT_MARKER": str(marker)}},
    })
    first = await h.pool.invoke("flaky", {})
    assert first.error_type == "RuntimeError"
    assert first.payload["errorMessage"] == "first init fails"
    assert any("flaky_init.py" in line for line in first.payload["stackTrace"])
    second = await h.pool.invoke("flaky", {})
    assert second.ok and second.payload == "initialised"
    await asyncio.sleep(0.1)
    assert h.counted("router_worker_restarts_total", function="flaky", reason="init") == 1


# ------------------------------------------------------------------------------------------------
# errors observed from outside: timeout, crash, memory


async def test_timeout_resets_the_environment_but_keeps_tmp_files(make_pool: MakePool, tmp_path: Path) -> None:
    """Lambda's recorded behaviour: a global set to 42 reads back as 0 after a timeout, while a
    file in /tmp is still there."""
    tmp_file = tmp_path / f"kept-{uuid.uuid4().hex}"
    h = await make_pool(fn={"handler": "basic.remember", "timeout": 1})
    event = {"tmp_file": str(tmp_file)}
    set_ = await h.pool.invoke("fn", {**event, "action": "set"})
    warm = await h.pool.invoke("fn", {**event, "action": "read"})
    assert warm.payload["value"] == 42 and warm.payload["pid"] == set_.payload["pid"]

    started = time.monotonic()
    result = await h.pool.invoke("fn", {**event, "action": "hang"}, request_id="req-slow")
    elapsed = time.monotonic() - started
    assert result.function_error == "Unhandled"
    assert result.error_type == "Sandbox.Timedout"
    assert result.outcome == "timeout"
    assert result.payload == {
        "errorMessage": "RequestId: req-slow Error: Task timed out after 1.00 seconds",
        "errorType": "Sandbox.Timedout", "requestId": "req-slow", "stackTrace": [],
    }
    assert result.duration_ms == 1000.0
    assert 0.9 < elapsed < 3.0  # a real deadline, not the handler's 60 s sleep

    fresh = await h.pool.invoke("fn", {**event, "action": "read"})
    assert fresh.payload["value"] == 0
    assert fresh.payload["tmp_file_kept"] is True
    assert fresh.payload["pid"] != warm.payload["pid"]
    assert await wait_gone([warm.payload["pid"]]) == []
    assert h.counted("router_worker_restarts_total", function="fn", reason="timeout") == 1
    assert h.counted("router_invocations_total", function="fn", outcome="timeout") == 1


async def test_timeout_then_next_invoke_runs_in_a_fresh_process(make_pool: MakePool, tmp_path: Path) -> None:
    h = await make_pool(sleepy={"handler": "basic.sleepy", "timeout": 1})
    quick = await h.pool.invoke("sleepy", {"seconds": 0})
    slow = await h.pool.invoke("sleepy", {"seconds": 5})
    after = await h.pool.invoke("sleepy", {"seconds": 0})
    assert quick.ok and after.ok
    assert slow.error_type == "Sandbox.Timedout"
    assert after.init_duration_ms is not None  # a cold start: the old process is gone
    assert h.pool.status()["sleepy"]["cold_starts"] == 2


async def test_timeout_kills_processes_the_handler_started(make_pool: MakePool, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    h = await make_pool(spawner={"handler": "basic.spawn_and_hang", "timeout": 1})
    result = await h.pool.invoke("spawner", {"pid_file": str(pid_file)})
    assert result.error_type == "Sandbox.Timedout"
    grandchild = int(pid_file.read_text())
    assert await wait_gone([grandchild]) == []


async def test_exit_in_handler_is_runtime_exit_error(make_pool: MakePool) -> None:
    h = await make_pool(crash={"handler": "basic.crash"})
    result = await h.pool.invoke("crash", {"status": 3}, request_id="req-crash")
    assert result.function_error == "Unhandled"
    assert result.error_type == "Runtime.ExitError"
    assert result.outcome == "crash"
    assert result.payload["errorMessage"] == "RequestId: req-crash Error: Runtime exited with error: exit status 3"
    # What it printed just before dying was not lost.
    assert [e["message"] for e in h.logs.named("function.log", request_id="req-crash", stream="stdout")] == [
        "about to exit"
    ]
    again = await h.pool.invoke("crash", {"status": 4})
    assert again.payload["errorMessage"].endswith("exit status 4")
    assert h.pool.status()["crash"]["cold_starts"] == 2
    await asyncio.sleep(0.05)
    assert h.counted("router_worker_restarts_total", function="crash", reason="crash") == 2


async def test_segfault_and_sys_exit_are_exit_errors(make_pool: MakePool) -> None:
    h = await make_pool(segv={"handler": "basic.segfault"}, sysexit={"handler": "basic.system_exit"},
                        ok={"handler": "basic.noop"})
    segv = await h.pool.invoke("segv", {}, request_id="r-segv")
    assert segv.error_type == "Runtime.ExitError"
    assert segv.payload["errorMessage"] == (
        "RequestId: r-segv Error: Runtime exited with error: signal: segmentation fault"
    )
    sysexit = await h.pool.invoke("sysexit", {}, request_id="r-exit")
    assert sysexit.payload["errorMessage"] == "RequestId: r-exit Error: Runtime exited with error: exit status 2"
    assert (await h.pool.invoke("ok", {})).ok  # other functions are unaffected


async def test_environment_killed_from_outside_is_replaced(make_pool: MakePool) -> None:
    h = await make_pool(sleepy={"handler": "basic.sleepy", "timeout": 30})
    await h.pool.invoke("sleepy", {"seconds": 0})
    (pid,) = h.pids("sleepy")
    task = asyncio.create_task(h.pool.invoke("sleepy", {"seconds": 20}, request_id="r-killed"))
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    result = await asyncio.wait_for(task, 5)
    assert result.error_type == "Runtime.ExitError"
    assert result.payload["errorMessage"] == "RequestId: r-killed Error: Runtime exited with error: signal: killed"
    after = await h.pool.invoke("sleepy", {"seconds": 0})
    assert after.ok and h.pids("sleepy") != [pid]


async def test_rss_over_memory_size_is_out_of_memory(make_pool: MakePool) -> None:
    h = await make_pool(hog={"handler": "basic.hog", "memory_size": 128, "timeout": 10})
    started = time.monotonic()
    result = await h.pool.invoke("hog", {"mb": 300, "hold": 5}, request_id="r-oom")
    assert time.monotonic() - started < 4  # killed by the watchdog, not after the 5 s hold
    assert result.function_error == "Unhandled"
    assert result.error_type == "Runtime.OutOfMemory"
    assert result.outcome == "oom"
    assert result.payload["errorMessage"] == "RequestId: r-oom Error: Runtime exited with error: signal: killed"
    assert result.max_memory_used_mb > 128
    ok = await h.pool.invoke("hog", {"mb": 1, "hold": 0})
    assert ok.ok and ok.payload == 1024 * 1024
    assert h.counted("router_worker_restarts_total", function="hog", reason="oom") == 1


async def test_memory_of_the_processes_a_handler_starts_counts_against_memory_size(make_pool: MakePool) -> None:
    # As in Lambda's sandbox, whose memory cgroup holds the handler's subprocesses too.
    h = await make_pool(kid={"handler": "basic.child_hog", "memory_size": 128, "timeout": 10})
    started = time.monotonic()
    result = await h.pool.invoke("kid", {"mb": 300, "hold": 5}, request_id="r-kid")
    assert time.monotonic() - started < 4  # killed by the watchdog, not after the 5 s hold
    assert result.error_type == "Runtime.OutOfMemory" and result.outcome == "oom"
    assert result.max_memory_used_mb > 128
    ok = await h.pool.invoke("kid", {"mb": 10, "hold": 0})
    assert ok.ok and ok.payload == 0


async def test_peak_rss_over_memory_size_is_out_of_memory_even_when_quick(make_pool: MakePool) -> None:
    h = await make_pool(quick={"handler": "basic.quick_hog", "memory_size": 128})
    result = await h.pool.invoke("quick", {"mb": 200})
    assert result.error_type == "Runtime.OutOfMemory"
    assert result.max_memory_used_mb > 128
    assert (await h.pool.invoke("quick", {"mb": 1})).ok


async def test_memory_error_in_handler_is_out_of_memory(make_pool: MakePool) -> None:
    h = await make_pool(huge={"handler": "basic.huge_allocation", "memory_size": 128})
    result = await h.pool.invoke("huge", {})
    assert result.error_type == "Runtime.OutOfMemory"
    await asyncio.sleep(0.1)
    assert h.counted("router_worker_restarts_total", function="huge", reason="oom") == 1


async def test_report_carries_max_memory_used(make_pool: MakePool) -> None:
    h = await make_pool(echo={"handler": "basic.echo"})
    result = await h.pool.invoke("echo", {"x": 1})
    assert 5 < result.max_memory_used_mb < 128
    assert result.billed_duration_ms >= 1 and result.billed_duration_ms >= result.duration_ms


# ------------------------------------------------------------------------------------------------
# concurrency


async def test_reserved_concurrency_bounds_environments_and_queues_the_rest(
    make_pool: MakePool, tmp_path: Path
) -> None:
    h = await make_pool(sleepy={"handler": "basic.sleepy", "reserved_concurrent_executions": 2, "timeout": 10})
    # Warm both environments first so cold-start time does not blur the measurement.
    await asyncio.gather(*(h.pool.invoke("sleepy", {"seconds": 0.3}) for _ in range(2)))
    assert len(h.pids("sleepy")) == 2
    markers = tmp_path / "markers"
    markers.mkdir()
    tasks = [
        asyncio.create_task(h.pool.invoke("sleepy", {"seconds": 0.5, "marker_dir": str(markers)}))
        for _ in range(3)
    ]
    await asyncio.sleep(0.2)
    status = h.pool.status()["sleepy"]
    assert (status["busy"], status["waiting"], status["in_flight"]) == (2, 1, 3)
    results = await asyncio.gather(*tasks)
    assert all(r.ok for r in results)  # the third waited; nothing was dropped
    spans = sorted(tuple(map(float, p.read_text().split()[:2])) for p in markers.iterdir())
    assert len(spans) == 3
    most_at_once = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most_at_once == 2
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.01  # the third started after one ended
    assert len({p.read_text().split()[2] for p in markers.iterdir()}) == 2  # two environments


async def test_zero_reserved_concurrency_throttles_at_once(make_pool: MakePool) -> None:
    h = await make_pool(off={"handler": "basic.noop", "reserved_concurrent_executions": 0})
    result = await asyncio.wait_for(h.pool.invoke("off", {}, request_id="r-429"), 1)
    assert result.error_type == "TooManyRequestsException"
    assert result.payload == {
        "errorMessage": "Rate Exceeded.", "errorType": "TooManyRequestsException",
        "requestId": "r-429", "stackTrace": [],
    }
    assert h.pids("off") == []
    assert h.counted("router_invocations_total", function="off", outcome="throttled") == 1


async def test_unknown_function_raises(make_pool: MakePool) -> None:
    h = await make_pool(echo={"handler": "basic.echo"})
    with pytest.raises(UnknownFunction):
        await h.pool.invoke("nope", {})


async def test_cancelled_invocation_ends_its_environment_and_frees_the_slot(make_pool: MakePool) -> None:
    h = await make_pool(sleepy={"handler": "basic.sleepy", "timeout": 30})
    await h.pool.invoke("sleepy", {"seconds": 0})
    (pid,) = h.pids("sleepy")
    task = asyncio.create_task(h.pool.invoke("sleepy", {"seconds": 20}))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone([pid]) == []
    result = await asyncio.wait_for(h.pool.invoke("sleepy", {"seconds": 0}), 10)
    assert result.ok


async def test_a_cancelled_queued_invocation_never_runs_and_costs_no_environment(
    make_pool: MakePool, tmp_path: Path
) -> None:
    h = await make_pool(sleepy={"handler": "basic.sleepy", "timeout": 10})
    await h.pool.invoke("sleepy", {"seconds": 0})
    (pid,) = h.pids("sleepy")
    markers = tmp_path / "markers"
    markers.mkdir()

    def invoke(request_id: str, seconds: float) -> asyncio.Task[Any]:
        event = {"seconds": seconds, "marker_dir": str(markers)}
        return asyncio.create_task(h.pool.invoke("sleepy", event, request_id=request_id))

    first = invoke("first", 0.3)
    await asyncio.sleep(0.05)
    dropped, last = invoke("dropped", 0), invoke("last", 0)
    await asyncio.sleep(0.05)
    dropped.cancel()
    assert (await first).ok and (await last).ok
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert sorted(p.name for p in markers.iterdir()) == ["first", "last"]
    assert h.pids("sleepy") == [pid]  # the same warm environment served both


async def test_a_queued_invocation_starts_when_the_environment_answers_not_when_its_caller_resumes(
    make_pool: MakePool,
) -> None:
    """The next queued INVOKE goes out from the callback that reads the previous RESULT: a caller
    that is slow to resume (here one that blocks the event loop) does not hold the environment."""
    h = await make_pool(sleepy={"handler": "basic.sleepy", "timeout": 10})
    await h.pool.invoke("sleepy", {"seconds": 0})
    first_caller_done = 0.0

    async def slow_caller() -> Any:
        nonlocal first_caller_done
        result = await h.pool.invoke("sleepy", {"seconds": 0.3})
        time.sleep(0.5)  # blocking the event loop on purpose
        first_caller_done = time.time()
        return result

    first = asyncio.create_task(slow_caller())
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(h.pool.invoke("sleepy", {"seconds": 0}))
    assert (await first).ok
    second = await queued
    assert second.ok
    assert second.payload["start"] < first_caller_done - 0.3
    assert len(h.pids("sleepy")) == 1


# ------------------------------------------------------------------------------------------------
# logs


async def test_handler_output_and_logging_are_captured_per_request(make_pool: MakePool) -> None:
    h = await make_pool(chatty={"handler": "basic.chatty"})
    result = await h.pool.invoke("chatty", {}, request_id="req-chat")
    assert result.ok and result.payload == "done"
    lines = [(e["stream"], e["message"]) for e in h.logs.named("function.log", request_id="req-chat")]
    assert ("stdout", "hello from stdout") in lines
    assert ("stdout", "two") in lines and ("stdout", "lines") in lines
    assert ("stderr", "to stderr") in lines
    assert ("stdout", "no newline at the end") in lines
    assert ("log", "via context.log") in lines
    warning = [m for s, m in lines if s == "log" and "a warning via logging" in m]
    assert len(warning) == 1
    assert re.fullmatch(
        r"\[WARNING\]\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\treq-chat\ta warning via logging", warning[0]
    )
    assert not any("below the root logger" in m for _, m in lines)  # root logger stays at WARNING
    assert all(e["function"] == "chatty" for e in h.logs.named("function.log"))
    assert h.logs.named("invocation.start", request_id="req-chat")
    # END and REPORT are written once the caller has its result, before the next invocation's
    # lines, even when that caller invokes again at once.
    second = await h.pool.invoke("chatty", {}, request_id="req-next")
    assert second.ok
    order = [(e["event"], e.get("request_id")) for e in h.logs.events]
    last_of_first = max(i for i, (_, rid) in enumerate(order) if rid == "req-chat")
    assert order[last_of_first - 1 : last_of_first + 1] == [
        ("invocation.end", "req-chat"), ("invocation.report", "req-chat"),
    ]
    assert all(rid == "req-next" for _, rid in order[last_of_first + 1 :])
    (report,) = h.logs.named("invocation.report", request_id="req-chat")
    assert report["function"] == "chatty" and report["outcome"] == "success"
    assert report["memory_size_mb"] == 128 and report["max_memory_used_mb"] > 0
    assert report["billed_duration_ms"] >= 1 and "init_duration_ms" in report


async def test_a_chatty_handler_does_not_block_the_event_loop(make_pool: MakePool) -> None:
    h = await make_pool(chatty={"handler": "basic.many_lines", "timeout": 30})
    await h.pool.invoke("chatty", {"n": 1})
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    result = await h.pool.invoke("chatty", {"n": 20000}, request_id="req-many")
    stop.set()
    await tick
    assert result.ok and result.payload == 20000
    lines = h.logs.named("function.log", request_id="req-many")
    assert len(lines) == 20000
    assert lines[0]["message"] == "line 0" and lines[-1]["message"] == "line 19999"
    assert max(gaps) < 0.5


async def test_a_function_that_ships_its_own_orjson_gets_that_one(make_pool: MakePool, tmp_path: Path) -> None:
    # The worker decodes events with orjson, but imports it only after the handler's init, so the
    # function's code path decides which module `orjson` is, as it would on Lambda. This one is
    # not even a JSON library: events must still arrive decoded (by json).
    (tmp_path / "orjson.py").write_text('WHOSE = "the function\'s own"\n')
    (tmp_path / "vendored.py").write_text(
        "import orjson\n\ndef handler(event, context):\n    return {'whose': orjson.WHOSE, 'event': event}\n"
    )
    h = await make_pool(vendored={"handler": "vendored.handler", "code_path": str(tmp_path)})
    event = {"n": 1, "nested": {"list": [1.5, "x", None, True]}}
    for _ in range(2):  # the first invocation ends init, the second runs warm
        result = await h.pool.invoke("vendored", event)
        assert result.ok, result.payload
        assert result.payload == {"whose": "the function's own", "event": event}


async def test_big_event_and_big_response(make_pool: MakePool) -> None:
    h = await make_pool(echo={"handler": "basic.echo"}, big={"handler": "basic.big_response", "memory_size": 512})
    blob = "e" * (5 * 1024 * 1024)
    echoed = await h.pool.invoke("echo", {"blob": blob})
    assert echoed.ok and echoed.payload["event"]["blob"] == blob
    big = await h.pool.invoke("big", {"size": 6 * 1024 * 1024})
    assert big.ok and big.payload == "x" * (6 * 1024 * 1024)
    too_big = await h.pool.invoke("big", {"size": 6_291_556})  # + 2 quotes: over Lambda's limit
    assert too_big.error_type == "Function.ResponseSizeTooLarge"
    assert too_big.payload["errorMessage"] == (
        "Response payload size exceeded maximum allowed payload size (6291556 bytes)."
    )
    # Asynchronous invocations have no caller to answer: the limit is for synchronous ones.
    async_big = await h.pool.invoke("big", {"size": 6_291_556}, invocation_type="Event")
    assert async_big.ok
    # Far past it, the worker says so itself and is not replaced for it.
    pids = h.pids("big")
    huge = await h.pool.invoke("big", {"size": 12 * 1024 * 1024}, invocation_type="Event")
    assert huge.error_type == "Function.ResponseSizeTooLarge"
    assert h.pids("big") == pids


@pytest.mark.parametrize("kind", ["R", "L"])  # a RESULT's own error; any other kind is ended the same way
async def test_a_worker_announcing_an_oversized_message_is_ended_before_it_is_read(
    make_pool: MakePool, kind: str,
) -> None:
    h = await make_pool(forge={"handler": "basic.forge_frame", "timeout": 20})
    started = time.monotonic()
    result = await h.pool.invoke("forge", {"size": 512 * 1024 * 1024, "kind": kind, "hold": 15})
    assert time.monotonic() - started < 5  # not left waiting for 512 MB, nor for the timeout
    assert result.error_type == ("Function.ResponseSizeTooLarge" if kind == "R" else "Runtime.ExitError")
    assert h.counted("router_worker_restarts_total", function="forge", reason="protocol") == 1
    # Small but not a message the runtime writes: the same, in a fresh environment.
    after = await h.pool.invoke("forge", {"size": 16, "kind": kind, "hold": 15})
    assert after.error_type == "Runtime.ExitError"
    assert h.counted("router_worker_restarts_total", function="forge", reason="protocol") == 2


@pytest.mark.parametrize("header", [b"[1]", b'{"id": 5}'])
async def test_a_well_framed_log_message_with_a_forged_header_ends_the_environment(
    make_pool: MakePool, header: bytes,
) -> None:
    message = bytes([protocol.LOG]) + struct.pack("!I", len(header)) + header + b"text"
    h = await make_pool(forge={"handler": "basic.forge_frame", "timeout": 20})
    started = time.monotonic()
    result = await h.pool.invoke("forge", {"raw_hex": protocol.wire(message).hex(), "hold": 15})
    assert time.monotonic() - started < 5
    assert result.error_type == "Runtime.ExitError"
    assert h.counted("router_worker_restarts_total", function="forge", reason="protocol") == 1


# ------------------------------------------------------------------------------------------------
# shutdown


async def test_close_stops_every_environment(make_pool: MakePool) -> None:
    h = await make_pool(
        counter={"handler": "basic.counter", "reserved_concurrent_executions": 2},
        sleepy={"handler": "basic.sleepy", "timeout": 60},
    )
    await asyncio.gather(*(h.pool.invoke("counter", {}) for _ in range(2)))
    busy = asyncio.create_task(h.pool.invoke("sleepy", {"seconds": 30}))
    for _ in range(100):
        if h.pool.status()["sleepy"]["busy"]:
            break
        await asyncio.sleep(0.05)
    pids = h.pids("counter") + h.pids("sleepy")
    assert len(pids) == 3 and all(running(pid) for pid in pids)
    started = time.monotonic()
    await h.pool.close()
    assert time.monotonic() - started < 6
    assert await wait_gone(pids, within=1) == []
    interrupted = await busy
    assert interrupted.error_type == "Runtime.ExitError"  # the busy one was stopped, not left behind
    assert h.pool.status()["counter"]["environments"] == 0
    with pytest.raises(PoolClosed):
        await h.pool.invoke("counter", {})


DAEMON_LIKE = """
import asyncio, json, sys
import structlog
from router.config import load_config_data
from router.runtime.pool import WorkerPool

handlers = sys.argv[1]
config = load_config_data({"functions": {
    "counter": {"handler": "basic.counter", "code_path": handlers, "reserved_concurrent_executions": 2},
    "sleepy": {"handler": "basic.sleepy", "code_path": handlers, "timeout": 120},
}})

async def main():
    pool = WorkerPool(config, log=structlog.wrap_logger(structlog.PrintLogger(sys.stderr)))
    await pool.start()
    await asyncio.gather(*(pool.invoke("counter", {}) for _ in range(2)))
    busy = asyncio.ensure_future(pool.invoke("sleepy", {"seconds": 120}))
    while not pool.status()["sleepy"]["busy"]:
        await asyncio.sleep(0.02)
    pids = [pid for fn in pool.status().values() for pid in fn["pids"]]
    print("PIDS " + json.dumps(pids), flush=True)
    await busy

asyncio.run(main())
"""


def test_no_worker_survives_a_sigkill_of_the_daemon() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", DAEMON_LIKE, str(HANDLERS)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()  # bounded by the test timeout
        assert line.startswith("PIDS "), line
        pids = json.loads(line.removeprefix("PIDS "))
        assert len(pids) == 3 and all(running(pid) for pid in pids)
        assert all(psutil.Process(pid).ppid() == owner.pid for pid in pids)
        owner.send_signal(signal.SIGKILL)
        owner.wait(5)
        deadline = time.monotonic() + 5
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if running(pid)] == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(5)
