"""`router dev --demo`: the newcomer's path, end to end on the real local stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_dev_demo_runs_every_example_and_exits_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "dev", "--demo", "--state-dir", str(tmp_path), "--timeout", "120"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "photos-thumbnails/uploads/demo.jpg 128x96" in done.stderr
    assert "800x600 -> 128x96" in done.stderr  # the MinIO MQTT path
    summary = next(json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"thumbnail"'))
    shards = summary["shards"]
    assert sorted(shards) == [f"shardId-{p:012d}" for p in range(4)]
    assert sum(s["records"] for s in shards.values()) == 1000
    for shard in shards.values():
        assert shard["checkpoint"] == shard["records"] - 1  # fresh topic: offsets 0..n-1 all checkpointed
    # The checkpoints moved only once each window's final invocation wrote its metrics object.
    windows = summary["windows"]
    assert sum(w["records"] for w in windows) == 1000
    assert sum(w["counts"].get("click", 0) for w in windows) == 250
    assert {w["shardId"] for w in windows} == set(shards)
    for window in windows:
        assert window["records"] == sum(window["counts"].values()) and window["malformed"] == 0
    assert "window 20" in done.stderr  # the demo printed the windows it read back
    # Mobile apps: three simulated devices, one malformed message each, one resend suppressed by its id.
    taps = summary["app_clicks"]
    assert taps["sent"] == 27 and taps["messages"] == 27 and taps["malformed"] == 3
    assert sum(e["clicks"] for e in taps["screens"].values()) == 24
    assert taps["invocations"] < 27  # batched
    # Ctrl-C/exit tears the stack down: no broker of ours is left running.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
