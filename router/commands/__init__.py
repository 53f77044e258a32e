"""One module per `router` subcommand; see router.cli."""

from __future__ import annotations

import argparse


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=None,
        help="config file (default: $ROUTER_CONFIG, then ./config/router.yaml)",
    )
