"""structlog setup: one JSON object per line on stdout, or a console renderer for humans.

Stable keys (mapping, function, shard, sequence_number, request_id, duration_ms, outcome, attempt,
error_type) are bound by the code that knows them; this module only decides the rendering.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["json", "console", "auto"]


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiokafka, aiohttp) log through stdlib logging; keep them quiet unless asked.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
