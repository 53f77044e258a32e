"""`router run`: the daemon. Exit 0 after a signal-driven drain, 1 on a startup failure,
2 on a bad config, 3 when `stall_exit_seconds` passed without progress."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from router.commands import add_config_argument, add_logging_arguments
from router.config import ConfigError, load_config, resolve_config_path


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("run", help="run the daemon")
    add_config_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from router.observability.logging import configure_logging

    configure_logging(args.log_level, args.log_format)
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"router: config: {problem}", file=sys.stderr)
        return 2
    from router.app import run as run_app

    # SIGHUP re-reads the same file (the path is resolved once: a changed $ROUTER_CONFIG or working
    # directory does not move it).
    return run_app(config, lambda: load_config(path))
