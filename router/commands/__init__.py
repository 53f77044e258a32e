"""One module per `router` subcommand; see router.cli."""

from __future__ import annotations

import argparse


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=None,
        help="config file (default: $ROUTER_CONFIG, then ./config/router.yaml)",
    )


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format", default="auto", choices=["auto", "json", "console"],
        help="json lines (default when stdout is not a terminal) or a readable console format",
    )
