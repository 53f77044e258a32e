"""Init fails the first time (module-level error), succeeds once FLAKY_INIT_MARKER exists."""

import os
from pathlib import Path
from typing import Any

_marker = Path(os.environ["FLAKY_INIT_MARKER"])
if not _marker.exists():
    _marker.write_text("failed once")
    raise RuntimeError("first init fails")


def handler(event: Any, context: Any) -> str:
    return "initialised"
