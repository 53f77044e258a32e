"""A worker's Max Memory Used is its own, not its parent's.

Linux carries the pre-exec high-water mark into a spawned child's ru_maxrss, so a large daemon
(or a test runner) once made every fresh worker look out of memory. Regression test: a parent
holding 300 MB runs a no-op handler with memory_size 128.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parents[1] / "handlers"

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from router.config import load_config_data
    from router.runtime.pool import WorkerPool

    async def main():
        ballast = bytearray(300 * 1024 * 1024)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        config = load_config_data({"functions": {"f": {"handler": "basic.echo", "code_path": sys.argv[1]}}}, {})
        pool = WorkerPool(config)
        await pool.start()
        try:
            result = await pool.invoke("f", {"a": 1})
        finally:
            await pool.close()
        print(result.ok, result.error_type, result.max_memory_used_mb)

    if __name__ == "__main__":
        asyncio.run(main())
""")


def test_a_big_parent_does_not_make_a_fresh_worker_look_out_of_memory(tmp_path: Path) -> None:
    script = tmp_path / "big_parent.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(HANDLERS)], capture_output=True, text=True, timeout=60)
    ok, error_type, used = done.stdout.split()[-3:]
    assert (ok, error_type) == ("True", "None"), done.stderr[-2000:]
    assert 0 < int(used) < 128
