"""Messages between the daemon and an execution environment, one message per step.

Both ends share one Unix socket and frame messages as `multiprocessing.connection.Connection`
does (a 4-byte big-endian signed length, or -1 followed by an 8-byte length for messages over
2 GiB): the worker reads and writes it with plain blocking system calls, the daemon through an
asyncio transport, and both cut the byte stream with `FrameDecoder`, incrementally. The daemon's
decoder refuses a message larger than its kind may be before reading it (see FrameDecoder).

Inside a message: one kind byte first. The two messages of every invocation (INVOKE, RESULT) have
fixed binary headers, because JSON headers would cost more than the round trip itself; the rare
ones (READY, LOG, STOP) carry a 4-byte header length and a small JSON header. Bodies are opaque:
the event is encoded once in the daemon (JSON, or a stream batch as columns, see EVENT_*) and never
wrapped or re-encoded on its way to the handler, and the response comes back as the handler's JSON.

This module is imported by the worker process before the handler is, so it stays free of anything
heavier than the standard library.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

# Lambda's limit on a synchronous invocation's response (6 MB as Lambda counts it).
MAX_RESPONSE_BYTES = 6_291_556
# The largest RESULT body a worker sends. Up to it, the daemon applies Lambda's limit (to
# synchronous invocations only); past it the worker answers Function.ResponseSizeTooLarge itself,
# and the daemon ends a worker whose messages exceed their limits (environment.FRAME_LIMITS).
MAX_RESULT_BODY = MAX_RESPONSE_BYTES + 32 * 1024

# daemon -> worker
INVOKE = ord("I")
STOP = ord("S")
# worker -> daemon
READY = ord("Y")
LOG = ord("L")
RESULT = ord("R")

_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
_HEADER_LENGTH = struct.Struct("!I")
_MAX_SHORT = 0x7FFFFFFF
# kind, event format, deadline (epoch ms), then the lengths of: request id, invoked ARN, client
# context JSON.
_INVOKE = struct.Struct("!BBqHHI")
# kind, duration ms, peak RSS KiB, flags, then the length of the error type.
_RESULT = struct.Struct("!BdqBH")
_RAW = 1  # the body is bytes the handler returned, not JSON
_RETIRE = 2  # the worker exits after this result (memory exhausted)


# The per-invocation records below are plain slotted dataclasses, treated as immutable: a frozen
# dataclass costs a microsecond more to build, and each is built once per invocation.

# How an INVOKE's event is encoded: JSON, or a stream batch as columns (router.runtime.kinesis_batch).
EVENT_JSON = 0
EVENT_KINESIS_BATCH = 1


@dataclass(slots=True)
class PackedEvent:
    """An event already encoded in one of the formats above; the pool passes it through as is."""

    format: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    header: dict[str, Any]
    body: bytes


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to become one execution environment of one function.

    Pickled as the first message to the exec'd worker (launch.py), so plain data only."""

    function_name: str
    handler: str
    memory_size_mb: int
    timeout_seconds: int
    environment: dict[str, str]
    log_stream_name: str
    parent_pid: int
    task_root: str
    code_path: str | None = None
    # Backstop for allocations too fast for the daemon's RSS watchdog; see worker._limit_memory.
    data_limit_bytes: int | None = None


@dataclass(slots=True)
class Invoke:
    request_id: str
    deadline_ms: int
    invoked_function_arn: str
    client_context: dict[str, Any] | None
    event: bytes
    event_format: int = EVENT_JSON


@dataclass(slots=True)
class Result:
    duration_ms: float
    max_rss_kb: int
    error_type: str | None  # set when the body is Lambda's error JSON
    raw: bool
    retire: bool
    body: bytes


def encode_invoke(
    request_id: str, deadline_ms: int, arn: str, client_context: bytes, event: bytes,
    event_format: int = EVENT_JSON,
) -> bytes:
    """An INVOKE message ready for the wire, length prefix included: the event (for a stream
    mapping, a whole batch) is copied once, here, on its way to the worker. `client_context` is
    its JSON, b"" for none."""
    rid, arn_b, cc = request_id.encode(), arn.encode(), client_context
    head = _INVOKE.pack(INVOKE, event_format, deadline_ms, len(rid), len(arn_b), len(cc))
    size = len(head) + len(rid) + len(arn_b) + len(cc) + len(event)
    return b"".join((length_prefix(size), head, rid, arn_b, cc, event))


def decode_invoke(message: bytes) -> Invoke:
    _, event_format, deadline_ms, n_id, n_arn, n_cc = _INVOKE.unpack_from(message)
    a = _INVOKE.size
    b = a + n_id
    c = b + n_arn
    d = c + n_cc
    client_context = json.loads(message[c:d]) if n_cc else None
    return Invoke(message[a:b].decode(), deadline_ms, message[b:c].decode(), client_context, message[d:], event_format)


def encode_result(
    duration_ms: float, max_rss_kb: int, error_type: str | None, body: bytes, *, raw: bool = False,
    retire: bool = False,
) -> bytes:
    error = b"" if error_type is None else error_type.encode()
    flags = (_RAW if raw else 0) | (_RETIRE if retire else 0)
    return b"".join((_RESULT.pack(RESULT, duration_ms, max_rss_kb, flags, len(error)), error, body))


def decode_result(message: bytes) -> Result:
    _, duration_ms, max_rss_kb, flags, n_error = _RESULT.unpack_from(message)
    start = _RESULT.size + n_error
    error_type = message[_RESULT.size : start].decode() if n_error else None
    return Result(duration_ms, max_rss_kb, error_type, bool(flags & _RAW), bool(flags & _RETIRE), message[start:])


def encode(kind: int, header: dict[str, Any], body: bytes = b"") -> bytes:
    """One message as the worker's Connection.send_bytes expects it (no length prefix)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((bytes((kind,)), _HEADER_LENGTH.pack(len(head)), head, body))


def decode(message: bytes) -> Frame:
    """A READY, LOG or STOP message (INVOKE and RESULT have their own decoders)."""
    (size,) = _HEADER_LENGTH.unpack_from(message, 1)
    header = json.loads(message[5 : 5 + size])
    return Frame(message[0], header, message[5 + size :])


def length_prefix(size: int) -> bytes:
    """What precedes a message of `size` bytes on the wire."""
    if size > _MAX_SHORT:
        return _LENGTH.pack(-1) + _LONG_LENGTH.pack(size)
    return _LENGTH.pack(size)


def wire(message: bytes) -> bytes:
    """The bytes the daemon writes so that the worker's Connection.recv_bytes returns `message`."""
    return length_prefix(len(message)) + message


class FrameError(Exception):
    """The peer broke the framing: a length no sender of ours writes."""


class FrameTooLarge(FrameError):
    """A message declared larger than its kind may be; raised before its body is buffered."""

    def __init__(self, kind: int, size: int, limit: int) -> None:
        super().__init__(f"{chr(kind) if 32 < kind < 127 else kind!r} message of {size} bytes (limit {limit})")
        self.kind = kind
        self.size = size
        self.limit = limit


class FrameDecoder:
    """Incremental reader of Connection-framed messages from a byte stream.

    With `limits` (the largest size of a message by its kind byte, and `default_limit` for any
    other kind), a message is refused by `FrameTooLarge` as soon as its length and kind have
    arrived: whoever sends it cannot make the reader buffer more than the limit, and a length no
    sender writes is a `FrameError`."""

    def __init__(self, limits: dict[int, int] | None = None, default_limit: int = 0) -> None:
        self._buffer = bytearray()
        self._limits = limits
        self._default_limit = default_limit

    def _check(self, kind: int, size: int) -> None:
        assert self._limits is not None
        limit = self._limits.get(kind, self._default_limit)
        if size > limit:
            raise FrameTooLarge(kind, size, limit)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message they complete, in order."""
        buf = self._buffer
        if not buf and len(data) >= 5:
            # Fast path: the common case of whole small messages arriving in one read.
            (size,) = _LENGTH.unpack_from(data, 0)
            if size >= 0 and len(data) == 4 + size:
                if self._limits is not None:
                    self._check(data[4], size)
                return [data[4:]]
        buf += data
        messages: list[bytes] = []
        offset = 0
        while True:
            available = len(buf) - offset
            if available < 4:
                break
            (size,) = _LENGTH.unpack_from(buf, offset)
            head = 4
            if size == -1:
                if available < 12:
                    break
                (size,) = _LONG_LENGTH.unpack_from(buf, offset + 4)
                head = 12
            if self._limits is not None:
                if size <= 0:  # every message has a kind byte; a negative length would loop here
                    raise FrameError(f"message length {size}")
                if available > head:
                    self._check(buf[offset + head], size)
            if available < head + size:
                break
            start = offset + head
            messages.append(bytes(buf[start : start + size]))
            offset = start + size
        if offset:
            del buf[:offset]
        return messages

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)
