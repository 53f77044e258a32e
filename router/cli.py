"""The `router` console script.

Each subcommand is its own module in `router.commands` exposing `register(subparsers)`, which adds
its parser and sets `func(args) -> int`. Commands are imported lazily so that `router validate`
does not pay for aiokafka or the worker pool.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = (
    "run",
    "validate",
    "invoke",
    "dev",
    "status",
    "intake",
    "shards",
    "reset_checkpoint",
    "replay",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router",
        description="Lambda's event-source model on self-hosted Kafka, MQTT and S3.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"router.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
