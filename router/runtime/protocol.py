"""Messages between the daemon and an execution environment, one message per step.

The worker speaks through a blocking `multiprocessing.connection.Connection` (send_bytes/recv_bytes);
the daemon reads the same socket through an asyncio transport, so it needs to cut the byte stream
into the Connection's messages itself: a 4-byte big-endian signed length, or -1 followed by an
8-byte length for messages over 2 GiB. `FrameDecoder` does exactly that, incrementally.

Inside a message: one kind byte, a 4-byte header length, a small JSON header and an opaque body.
The body is the event or the response, already JSON bytes: the event is serialised once in the
daemon and never wrapped or re-encoded on the way to the handler.

This module is imported by the worker process before the handler is, so it stays free of anything
heavier than the standard library.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    header: dict[str, Any]
    body: bytes


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to become one execution environment of one function.

    Pickled to the spawned process, so plain data only."""

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


def encode(kind: int, header: dict[str, Any], body: bytes = b"") -> bytes:
    """One message as the worker's Connection.send_bytes expects it (no length prefix)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((bytes((kind,)), _HEADER_LENGTH.pack(len(head)), head, body))


def decode(message: bytes) -> Frame:
    (size,) = _HEADER_LENGTH.unpack_from(message, 1)
    header = json.loads(message[5 : 5 + size])
    return Frame(message[0], header, message[5 + size :])


def wire(message: bytes) -> list[bytes]:
    """The bytes the daemon writes so that the worker's Connection.recv_bytes returns `message`."""
    if len(message) > _MAX_SHORT:
        return [_LENGTH.pack(-1), _LONG_LENGTH.pack(len(message)), message]
    return [_LENGTH.pack(len(message)), message]


class FrameDecoder:
    """Incremental reader of Connection-framed messages from a byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message they complete, in order."""
        buf = self._buffer
        if not buf and len(data) >= 4:
            # Fast path: the common case of whole small messages arriving in one read.
            (size,) = _LENGTH.unpack_from(data, 0)
            if size >= 0 and len(data) == 4 + size:
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
