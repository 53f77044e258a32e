"""structlog setup: one JSON object per line on stdout, or a console renderer for humans.

Stable keys (mapping, function, shard, sequence_number, request_id, duration_ms, outcome, attempt,
error_type) are bound by the code that knows them; this module decides the rendering and enforces
two rules no call site can forget:

* Secrets never reach the output. Any key whose name contains password, secret, token, sasl,
  credential, authorization (and a few more, see `SECRET_KEY_PARTS`) is masked at any depth, pydantic
  `SecretStr` values render as pydantic masks them, and credentials embedded in strings (URL userinfo,
  `Bearer ...` headers) are scrubbed, including in tracebacks.
* Payloads (keys in `PAYLOAD_KEYS`) are logged only at debug level and truncated; at any other level
  only their size is shown, so a handler's event never lands in journald by accident.

Libraries that log through stdlib `logging` (aiokafka, aiohttp, botocore) go through the same chain
and the same handler, so every line on stdout has the same shape and the same redaction.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import IO, Any, Literal

import orjson
import structlog
from pydantic import BaseModel, SecretBytes, SecretStr

LogFormat = Literal["json", "console", "auto"]

MASK = "**********"  # what pydantic shows for a SecretStr, so both look the same in a line
SECRET_KEY_PARTS = (
    "password", "passwd", "secret", "token", "sasl", "credential", "authorization",
    "access_key", "api_key", "private_key", "cookie",
)
PAYLOAD_KEYS = frozenset({"payload", "body", "records", "event_payload"})
DEBUG_PAYLOAD_LIMIT = 512
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}
# Loggers that narrate every poll or request at INFO; kept at WARNING unless we run at debug.
CHATTY_LIBRARIES = ("aiokafka", "aiohttp.access", "botocore", "aiobotocore", "urllib3", "asyncio", "PIL")

_HANDLER_NAME = "router-structlog"
_MAX_DEPTH = 8
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_AUTH_HEADER = re.compile(r"(?i)\b(?P<kind>bearer|basic)\s+(?P<cred>[A-Za-z0-9._~+/=-]{4,})")
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>[\w-]*(?:" + "|".join(SECRET_KEY_PARTS) + r")[\w-]*)(?P<sep>['\"]?\s*[=:]\s*['\"]?)"
    r"(?P<value>[^\s'\",;&)}\]]+)"
)


# Logging is on the hot path (a REPORT line per invocation), and most values are ids, names and
# numbers. Each substitution below needs '@' (userinfo), whitespace (an auth header) or '=' / ':'
# (key=value), so one character-class scan rules all three out for most strings; only then is the
# slower search for secret words worth running.
_MAYBE_SEPARATOR = re.compile(r"[@=:\s]")
_MAYBE_CREDENTIAL = re.compile(r"(?i)@|bearer|basic|" + "|".join(SECRET_KEY_PARTS))


@functools.lru_cache(maxsize=4096)
def _is_secret_name(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def is_secret_key(key: object) -> bool:
    return _is_secret_name(key if type(key) is str else str(key))


def scrub_text(text: str) -> str:
    """Mask credentials that hide inside free text: URLs with userinfo, auth headers, key=value."""
    if not _MAYBE_SEPARATOR.search(text) or not _MAYBE_CREDENTIAL.search(text):
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m['kind']} {MASK}", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


def _mask(value: Any) -> Any:
    # None and booleans say whether something is set, not what it is; keep them readable.
    return value if value is None or isinstance(value, bool) else MASK


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of `value` that is safe to log: secret-named keys masked at any depth."""
    kind = type(value)
    if kind is str:
        return scrub_text(value)
    if value is None or kind is int or kind is float or kind is bool:
        return value
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, str):
        return scrub_text(value)
    if _depth >= _MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, BaseModel):
        # mode="json" renders SecretStr as pydantic's mask; the key rule catches plain-str secrets.
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {
            k: _mask(v) if is_secret_key(k) else redact(v, _depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return scrub_text(bytes(value).decode("utf-8", "replace"))
    if value is None or isinstance(value, int | float):
        return value
    # Exceptions, paths, dataclasses: their text may quote a secret (a DSN, a repr with password=...).
    return scrub_text(str(value))


def truncate_payload(payload: Any, limit: int = DEBUG_PAYLOAD_LIMIT) -> str:
    """Render a payload for a debug line: compact JSON, secrets masked, cut to `limit` characters."""
    if isinstance(payload, bytes | bytearray):
        text = bytes(payload).decode("utf-8", "replace")
        try:
            text = json.dumps(redact(json.loads(text)), separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            text = scrub_text(text)
    elif isinstance(payload, str):
        text = scrub_text(payload)
    else:
        text = json.dumps(redact(payload), separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more chars]"


def _size_of(value: Any) -> int:
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return len(repr(value))


# Values that cannot carry a secret: kept as they are without a call per key.
_PLAIN = frozenset({int, float, bool, type(None)})
# Keys the chain itself added; they carry no user data.
_CHAIN_KEYS = frozenset({"timestamp", "level", "logger"})


def redact_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets everywhere; payloads only at debug, truncated."""
    debug = method_name == "debug" or event_dict.get("level") == "debug"
    # Assigning to existing keys while iterating is safe: the dict does not change size.
    for key, value in event_dict.items():
        if key in _CHAIN_KEYS:
            continue
        if _is_secret_name(key) if type(key) is str else is_secret_key(key):
            event_dict[key] = _mask(value)
        elif type(value) in _PLAIN:
            continue
        elif key in PAYLOAD_KEYS:
            event_dict[key] = truncate_payload(value) if debug else f"<{_size_of(value)} bytes, debug only>"
        elif type(value) is str:
            event_dict[key] = scrub_text(value)
        else:
            event_dict[key] = redact(value)
    return event_dict


class _LineHead:
    """The first three keys of every line, timestamp, level and event, in that order (a human
    scanning journald finds them first), the timestamp as ISO 8601 UTC with microseconds.

    One step instead of three processors: this runs for every line, a REPORT per invocation
    among them. The date and time up to the second are formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = int((now - second) * 1_000_000)
        head: dict[str, Any] = {
            "timestamp": f"{self._prefix}.{micros:06d}Z",
            "level": _LEVEL_NAMES.get(method_name, method_name),
        }
        if "event" in event_dict:
            head["event"] = event_dict.pop("event")
        head.update(event_dict)
        return head


# structlog's method names where they differ from the level they log at.
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


def _add_stdlib_logger_name(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Name the library a stdlib record came from (aiokafka, aiohttp...); our own events say
    what they are through their `event` and bound keys."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger"] = record.name
    return event_dict


def _json_default(value: Any) -> Any:
    return str(value)


# One encoder for every line: json.dumps with options builds a new JSONEncoder per call.
_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False)


def _render_json(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """One line of JSON. orjson renders a line in a fifth of json's time; what it refuses
    (integers past 64 bits, lone surrogates) json renders, so no event is ever lost to rendering.
    By now redaction has turned every value into str, number, bool, None, dict or list."""
    try:
        return orjson.dumps(event_dict, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _ENCODER.encode(event_dict)


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}") from None


def configure_logging(level: str | int = "info", fmt: LogFormat = "auto", stream: IO[str] | None = None) -> None:
    """Route structlog and stdlib logging through one chain to `stream` (default: stdout).

    Safe to call again (tests, `router dev`): it replaces only the handler it installed itself.
    """
    out = sys.stdout if stream is None else stream
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    numeric = parse_level(level)
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty()) if fmt == "console" else _render_json
    )
    tail: list[structlog.types.Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    # structlog events are rendered directly (no hop through stdlib logging: it doubled the cost of
    # a line); stdlib records from libraries go through the same processors via the formatter below.
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _LineHead(), *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_LineHead(), _add_stdlib_logger_name, *tail],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    logging.captureWarnings(True)


def configure_from_args(args: Any) -> None:
    """Apply `--log-level`/`--log-format` (see router.commands.add_logging_arguments)."""
    configure_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "auto"))
