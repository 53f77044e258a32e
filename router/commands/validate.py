"""`router validate`: exit 0 with a one-line summary, or exit 2 with one line per problem."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from router.commands import add_config_argument
from router.config import ConfigError, load_config, resolve_config_path


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("validate", help="check a config file")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    streams, buckets = len(config.stream_mappings()), len(config.bucket_mappings())
    print(
        f"{path}: valid: {len(config.functions)} functions, {streams} stream mappings, "
        f"{buckets} bucket-notification mappings"
    )
    return 0
