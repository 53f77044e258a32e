"""`router status`: what every mapping and shard is doing, read from a running daemon's /status.

The URL defaults to the config's `http.listen` (a wildcard address is asked on loopback), and the
admin token is sent when one is known: `$ROUTER_ADMIN_TOKEN` first (an operator's shell rarely has
the daemon's whole environment), then `http.admin_token` from the config. The document's shape is
defined in router.observability.http.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

from router.commands import add_config_argument
from router.config import CONFIG_ENV_VAR, ConfigError, HttpConfig, load_config, resolve_config_path

TOKEN_ENV_VAR = "ROUTER_ADMIN_TOKEN"
ERROR_WIDTH = 60

STREAM_COLUMNS = ("MAPPING", "FUNCTION", "STATE", "SHARD", "CHECKPOINT", "LAG", "ITERATOR AGE",
                  "IN FLIGHT", "LAST ERROR")
BUCKET_COLUMNS = ("MAPPING", "FUNCTION", "STATE", "TRANSPORT", "QUEUE DEPTH", "OLDEST AGE", "LAST ERROR")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show mappings, shards, checkpoints and lag of a running daemon")
    parser.add_argument("--url", default=None,
                        help="the daemon's base URL or /status URL (default: from http.listen in the config)")
    parser.add_argument("--json", action="store_true", help="print the raw status document")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    add_config_argument(parser)
    parser.set_defaults(func=run)


class StatusError(Exception):
    """One line for the operator; the command exits 1 with it."""

    exit_code = 1


class StatusConfigError(StatusError):
    """The config could not be read and no --url says where to ask instead (exit 2, as validate)."""

    exit_code = 2


# -- where to ask ---------------------------------------------------------------------------------


def url_for(http: HttpConfig) -> str:
    host = http.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{http.port}/status"


def status_url(url: str) -> str:
    """Accept a base URL (http://host:9000) or the full /status URL."""
    if "://" not in url:
        url = f"http://{url}"
    return url if url.rstrip("/").endswith("/status") else url.rstrip("/") + "/status"


def admin_address(args: argparse.Namespace) -> tuple[str, str | None]:
    """The URL to ask and the token to send, from the flags, the environment and the config."""
    token = os.environ.get(TOKEN_ENV_VAR) or None
    explicit = bool(args.config or os.environ.get(CONFIG_ENV_VAR))
    path = resolve_config_path(args.config)
    http: HttpConfig | None = None
    if explicit or path.exists():
        try:
            http = load_config(path).http
        except ConfigError as exc:
            if args.url is None:
                raise StatusConfigError(f"{path}: {'; '.join(exc.problems)} (or pass --url)") from None
            # With --url the config only supplies the token; say why it is not used and go on.
            print(f"router status: not using {path}: {exc.problems[0]}", file=sys.stderr)
    if token is None and http is not None and http.admin_token is not None:
        token = http.admin_token.get_secret_value()
    if args.url is not None:
        return status_url(args.url), token
    return url_for(http or HttpConfig()), token


def admin_request(url: str, token: str | None, timeout: float, *, method: str = "GET") -> dict[str, Any]:
    """A JSON admin document of a running daemon: GET /status, or POST an action (`router intake`)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"}, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            document = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            hint = "set ROUTER_ADMIN_TOKEN or http.admin_token" if not token else "the admin token was refused"
            raise StatusError(f"{url}: 401 unauthorized ({hint})") from None
        raise StatusError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        raise StatusError(f"{url}: cannot connect ({reason}); is the daemon running?") from None
    except (TimeoutError, OSError) as exc:
        raise StatusError(f"{url}: no answer ({exc})") from None
    except ValueError:
        raise StatusError(f"{url}: the answer is not JSON; is this a router admin address?") from None
    if not isinstance(document, dict):
        raise StatusError(f"{url}: the answer is not a JSON object")
    return document


# -- rendering ------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return _cell(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _error(value: Any) -> str:
    text = _cell(value).replace("\n", " ")
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 3] + "..."


def _table(columns: Sequence[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def _shard_order(shard_id: str) -> tuple[int, str]:
    digits = shard_id.rpartition("-")[2]
    return (int(digits) if digits.isdigit() else -1, shard_id)


def render(document: dict[str, Any], out: TextIO) -> None:
    mappings: dict[str, Any] = document.get("mappings") or {}
    streams: list[list[str]] = []
    buckets: list[list[str]] = []
    for name in sorted(mappings):
        m = mappings[name] or {}
        base = [name, _cell(m.get("function")), _cell(m.get("state"))]
        if m.get("kind") == "bucket":
            queue = m.get("queue") or {}
            buckets.append([*base, _cell(m.get("transport")), _cell(queue.get("depth")),
                            format_age(queue.get("oldest_age_seconds")), _error(m.get("last_error"))])
            continue
        shards: dict[str, Any] = m.get("shards") or {}
        if not shards:
            streams.append([*base, "-", "-", "-", "-", "-", _error(m.get("last_error"))])
        for i, shard_id in enumerate(sorted(shards, key=_shard_order)):
            s = shards[shard_id] or {}
            row = base if i == 0 else ["", "", ""]
            streams.append([*row, shard_id, _cell(s.get("checkpoint")), _cell(s.get("lag")),
                            format_age(s.get("iterator_age_seconds")), _cell(s.get("in_flight")),
                            _error(s.get("last_error", m.get("last_error") if i == 0 else None))])
    lines: list[str] = []
    brokers: dict[str, Any] = document.get("brokers") or {}
    if brokers:
        parts = []
        for name in sorted(brokers):
            b = brokers[name] or {}
            up = b.get("up", True)
            parts.append(f"{name} up" if up else f"{name} DOWN" + (f" ({b['detail']})" if b.get("detail") else ""))
        lines.append("brokers: " + ", ".join(parts))
    problems = document.get("problems") or []
    lines.append("ready" if not problems else "UNREADY: " + "; ".join(str(p) for p in problems))
    if streams:
        lines += ["", "stream mappings", *_table(STREAM_COLUMNS, streams)]
    if buckets:
        lines += ["", "bucket-notification mappings", *_table(BUCKET_COLUMNS, buckets)]
    if not mappings:
        lines += ["", "no event source mappings"]
    out.write("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    try:
        url, token = admin_address(args)
        document = admin_request(url, token, args.timeout)
    except StatusError as exc:
        print(f"router status: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        json.dump(document, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        render(document, sys.stdout)
    return 0
