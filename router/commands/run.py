"""`router run`: the daemon. Exit 0 after a signal-driven drain, 1 on a startup failure,
2 on a bad config, 3 when `stall_exit_seconds` passed without progress."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from router.commands import add_config_argument, add_logging_arguments
from router.config import ConfigError, load_config


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("run", help="run the daemon")
    add_config_argument(parser)
    add_logging_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from router.observability.logging import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"router: config: {problem}", file=sys.stderr)
        return 2
    from router.app import run as run_app

    return run_app(config)
