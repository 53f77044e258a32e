"""`router invoke FUNCTION [--event FILE|-]`: one invocation in a real worker, like `sam local invoke`.

The response (or Lambda's error JSON) is the only thing on stdout, so it can be piped to jq; the
function's logs and the START/END/REPORT lines go to stderr in Lambda's own text format. Exit 0 on
success, 1 on a function error, 2 when the config, the function name or the event is unusable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from router.commands import add_config_argument
from router.config import ConfigError, load_config
from router.runtime.context import report_line

EXIT_OK = 0
EXIT_FUNCTION_ERROR = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "invoke", help="run one invocation of a function in a real worker (like sam local invoke)"
    )
    parser.add_argument("function", metavar="FUNCTION", help="a function name from the config")
    parser.add_argument(
        "--event", "-e", default=None, metavar="FILE",
        help="JSON event file, or - to read it from stdin (default: {})",
    )
    add_config_argument(parser)
    parser.set_defaults(func=run)


def lambda_text(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog renderer turning the pool's events into the lines Lambda writes to a log stream."""
    event = event_dict.pop("event", "")
    request_id = event_dict.get("request_id")
    if event == "function.log":
        return str(event_dict.get("message", ""))
    if event == "invocation.start":
        return f"START RequestId: {request_id} Version: {event_dict.get('version', '$LATEST')}"
    if event == "invocation.end":
        return f"END RequestId: {request_id}"
    if event == "invocation.report":
        return report_line(str(request_id), duration_ms=event_dict["duration_ms"],
                           billed_duration_ms=event_dict["billed_duration_ms"],
                           memory_size_mb=event_dict["memory_size_mb"],
                           max_memory_used_mb=event_dict["max_memory_used_mb"],
                           init_duration_ms=event_dict.get("init_duration_ms"), error_type=event_dict.get("error_type"))
    if method_name == "debug":
        import structlog

        raise structlog.DropEvent  # the pool's own bookkeeping; not part of a Lambda log stream
    details = " ".join(f"{k}={v}" for k, v in event_dict.items() if k != "function")
    return f"router: {event} {details}".rstrip()


def _read_event(source: str | None) -> bytes:
    if source is None:
        return b"{}"
    if source == "-":
        return sys.stdin.buffer.read()
    return Path(source).read_bytes()


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"router: config: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.function not in config.functions:
        known = ", ".join(sorted(config.functions)) or "none"
        print(f"router: unknown function {args.function!r} (configured: {known})", file=sys.stderr)
        return EXIT_USAGE
    where = "stdin" if args.event == "-" else args.event
    try:
        event = _read_event(args.event)
    except OSError as exc:
        print(f"router: --event {where}: cannot read ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_USAGE
    try:
        json.loads(event)
    except ValueError as exc:
        print(f"router: --event {where}: not valid JSON ({exc})", file=sys.stderr)
        return EXIT_USAGE

    import structlog

    from router.runtime.pool import invoke_once

    log = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[lambda_text],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    result = invoke_once(config, args.function, event, log=log)
    sys.stderr.flush()
    if isinstance(result.payload, bytes):
        sys.stdout.buffer.write(result.payload + b"\n")
    else:
        print(json.dumps(result.payload))
    sys.stdout.flush()
    return EXIT_OK if result.ok else EXIT_FUNCTION_ERROR
