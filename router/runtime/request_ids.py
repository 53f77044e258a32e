"""Lambda request ids: random (version 4) UUID strings, drawn from the OS in batches.

uuid.uuid4() makes one getrandom system call per id; at thousands of invocations a second that is
a measurable share of the event loop, so ids are cut from one larger draw.
"""

from __future__ import annotations

import os

_BATCH = 64


def request_ids(count: int) -> list[str]:
    """`count` fresh request ids from one urandom call."""
    random = os.urandom(16 * count)
    ids: list[str] = []
    for start in range(0, 16 * count, 16):
        raw = bytearray(random[start : start + 16])
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw.hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


class RequestIds:
    """One id at a time for callers that need them singly (the worker pool), batched underneath."""

    def __init__(self) -> None:
        self._ready: list[str] = []

    def next(self) -> str:
        if not self._ready:
            self._ready = request_ids(_BATCH)
        return self._ready.pop()

    def take(self, count: int) -> list[str]:
        """`count` ids; a large batch gets its own urandom call."""
        if count <= 0:
            return []
        if count > _BATCH:
            return request_ids(count)
        if len(self._ready) < count:
            self._ready += request_ids(_BATCH)
        taken, self._ready = self._ready[-count:], self._ready[:-count]
        return taken
