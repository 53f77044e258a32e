"""`router intake pause|resume`: stop or restart one replica's intake (router.intake).

Scaling a SQLite-queue replica down for good: pause it, wait until `router status` shows its
queue depth at 0 for every push mapping, then remove it. The URL and admin token are found as
`router status` finds them (--url, $ROUTER_ADMIN_TOKEN, the config's http section).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from router.commands import add_config_argument
from router.commands.status import StatusError, admin_address, admin_request


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "intake", help="pause or resume a running daemon's intake of push events (before a scale-down)")
    parser.add_argument("action", choices=["pause", "resume"])
    parser.add_argument("--url", default=None, help="the daemon's base URL (default: from http.listen in the config)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        status_url, token = admin_address(args)
        url = status_url.rstrip("/").removesuffix("/status") + f"/intake/{args.action}"
        answer = admin_request(url, token, args.timeout, method="POST")
    except StatusError as exc:
        print(f"router intake: {exc}", file=sys.stderr)
        return exc.exit_code
    state = answer.get("intake")
    print(f"intake {state}" + ("; queued events keep running (router status shows the depth)"
                               if state == "paused" else ""))
    return 0
