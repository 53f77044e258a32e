"""Handlers for the worker-pool tests: each one exercises one part of Lambda's contract.

They are ordinary Lambda handlers; the tests put this directory on code_path."""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

INIT_PID = os.getpid()
INIT_TIME = time.time()
STATE = {"count": 0, "value": 0}
_MB = 1024 * 1024

log = logging.getLogger(__name__)


def noop(event: Any, context: Any) -> None:
    return None


def echo(event: Any, context: Any) -> Any:
    return {"event": event, "request_id": context.aws_request_id}


def counter(event: Any, context: Any) -> dict[str, int]:
    STATE["count"] += 1
    return {"count": STATE["count"], "pid": os.getpid()}


def context_info(event: Any, context: Any) -> dict[str, Any]:
    first = context.get_remaining_time_in_millis()
    time.sleep(0.05)
    second = context.get_remaining_time_in_millis()
    cc = context.client_context
    client = None if cc is None or cc.client is None else {
        name: getattr(cc.client, name)
        for name in ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")
    }
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "memory_limit_type": type(context.memory_limit_in_mb).__name__,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "identity_is_none": context.identity is None,
        "cognito_identity_id": context.identity.cognito_identity_id,
        "cognito_identity_pool_id": context.identity.cognito_identity_pool_id,
        "client_context_is_none": cc is None,
        "client": client,
        "custom": None if cc is None else cc.custom,
        "env": None if cc is None else cc.env,
        "tenant_id": context.tenant_id,
        "remaining": [first, second],
        "remaining_type": type(first).__name__,
    }


def env_info(event: Any, context: Any) -> dict[str, Any]:
    keys = [
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "_HANDLER", "TZ", "GREETING",
        "ROUTER_TEST_SECRET",
    ]
    return {
        "env": {key: os.environ.get(key) for key in keys},
        "cwd": os.getcwd(),
        "sys_path_0": sys.path[0],
        "localtime_is_utc": time.localtime().tm_gmtoff == 0,
        "pgid_is_pid": os.getpgid(0) == os.getpid(),
    }


def boom(event: Any, context: Any) -> None:
    raise ValueError(f"boom {event.get('n', 0)}")


def unmarshalable(event: Any, context: Any) -> Any:
    return {"ids": {1, 2, 3}}


def sleepy(event: Any, context: Any) -> dict[str, float]:
    """Sleeps; with marker_dir, leaves start/end timestamps to measure overlap from inside."""
    marker_dir = event.get("marker_dir")
    start = time.time()
    time.sleep(float(event.get("seconds", 0.1)))
    end = time.time()
    if marker_dir:
        Path(marker_dir, context.aws_request_id).write_text(f"{start} {end} {os.getpid()}")
    return {"start": start, "end": end}


def remember(event: Any, context: Any) -> dict[str, Any]:
    """action "set": a global and a file in /tmp; "hang": outlive the timeout; "read": report both."""
    action = event["action"]
    if action == "set":
        STATE["value"] = 42
        Path(event["tmp_file"]).write_text("kept")
    elif action == "hang":
        time.sleep(60)
    return {
        "value": STATE["value"],
        "tmp_file_kept": Path(event["tmp_file"]).exists(),
        "pid": os.getpid(),
    }


def spawn_and_hang(event: Any, context: Any) -> None:
    """Starts a grandchild process, records its pid, then outlives the timeout."""
    child = subprocess.Popen(["sleep", "60"])
    Path(event["pid_file"]).write_text(str(child.pid))
    time.sleep(60)


def crash(event: Any, context: Any) -> None:
    print("about to exit", flush=True)
    os._exit(int(event.get("status", 3)))


def segfault(event: Any, context: Any) -> None:
    ctypes.string_at(0)


def system_exit(event: Any, context: Any) -> None:
    sys.exit(2)


def hog(event: Any, context: Any) -> int:
    """Touches `mb` megabytes, then holds them long enough for the daemon's watchdog to see."""
    blob = bytearray(int(event["mb"]) * _MB)
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    time.sleep(float(event.get("hold", 1.0)))
    return len(blob)


def child_hog(event: Any, context: Any) -> int:
    """Leaves the memory to a child process (as a handler running ffmpeg does) and waits for it."""
    code = (f"blob = bytearray({int(event['mb'])} * 1024 * 1024)\n"
            "for i in range(0, len(blob), 4096): blob[i] = 1\n"
            f"import time; time.sleep({float(event.get('hold', 1.0))})")
    return subprocess.run([sys.executable, "-c", code], check=True).returncode


def quick_hog(event: Any, context: Any) -> int:
    """Touches `mb` megabytes and returns at once: too fast for a watchdog, not for peak RSS."""
    blob = b"x" * (int(event["mb"]) * _MB)
    return len(blob)


def huge_allocation(event: Any, context: Any) -> int:
    """One allocation far beyond the memory size: MemoryError inside the handler."""
    blob = bytearray(8 * 1024 * _MB)
    return len(blob)


def chatty(event: Any, context: Any) -> str:
    print("hello from stdout")
    print("two\nlines")
    print("to stderr", file=sys.stderr)
    log.warning("a warning via logging")
    log.info("an info record, below the root logger's WARNING level")
    context.log("via context.log\n")
    sys.stdout.write("no newline at the end")
    return "done"


def many_lines(event: Any, context: Any) -> int:
    n = int(event.get("n", 10000))
    for i in range(n):
        print(f"line {i}")
    return n


def big_response(event: Any, context: Any) -> str:
    return "x" * int(event["size"])


def forge_frame(event: Any, context: Any) -> None:
    """Bypasses the runtime: writes the header of a huge message straight to the worker's socket
    (as a compromised or buggy handler could), then waits for the body nobody should read."""
    import stat
    import struct

    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                if "raw_hex" in event:  # exactly these bytes
                    os.write(fd, bytes.fromhex(event["raw_hex"]))
                else:
                    os.write(fd, struct.pack("!i", int(event["size"])) + event["kind"].encode() + b"x" * 1024)
        except OSError:
            continue
    time.sleep(float(event.get("hold", 10)))


def slow_marked(event: Any, context: Any) -> dict[str, Any]:
    """Leaves a start marker in MARKER_DIR, then sleeps SLEEP seconds (any event shape)."""
    Path(os.environ["MARKER_DIR"], context.aws_request_id).write_text(str(time.time()))
    time.sleep(float(os.environ.get("SLEEP", "30")))
    return {"statusCode": 200, "body": "slept"}
