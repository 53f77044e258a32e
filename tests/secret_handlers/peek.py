"""A handler that looks for the daemon's secrets where a curious one would: its own exec-time
environment, its parent's (the daemon's), and the daemon's memory map."""

from __future__ import annotations

import json
import os
import resource
from typing import Any


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"unreadable: {type(exc).__name__}"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    parent = os.getppid()
    found = {
        "pid": os.getpid(),
        "ppid": parent,
        "self_environ": _read("/proc/self/environ"),
        "parent_environ": _read(f"/proc/{parent}/environ"),
        "parent_cmdline": _read(f"/proc/{parent}/cmdline"),
        "os_environ": dict(os.environ),
        "oom_score_adj": _read("/proc/self/oom_score_adj").strip(),
        "core_limit": list(resource.getrlimit(resource.RLIMIT_CORE)),
    }
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(found)}
