"""The socket side of the paho-to-asyncio adapter in `sources/mqtt.py`: reads served from one
large recv, so paho's several small reads per packet cost one system call.

Kept apart from the MQTT source, whose subject is the ordered-acknowledgement semantics; this is
plumbing about sockets and nothing about MQTT.
"""

from __future__ import annotations

import ssl
from typing import Any


class BufferedReads:
    """paho reads a packet with several small recv calls (the type byte, each length byte, then the
    body): three or four system calls per notification, a measurable share of the push path. This
    stands in for paho's socket and serves those calls from one large read; everything else goes
    to the real socket. It never reads the socket while it still holds bytes (a short answer is
    what a socket would give too), so it cannot block, and `buffered` tells the reader callback
    to go on without waiting for the selector, which cannot see these bytes.
    """

    __slots__ = ("_data", "_pos", "_sock")

    _READ_SIZE = 65536

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        data, pos = self._data, self._pos
        if pos >= len(data):
            data = self._sock.recv(max(size, self._READ_SIZE))
            if len(data) <= size:  # all of it wanted (or EOF): nothing to keep
                self._data, self._pos = b"", 0
                return bytes(data)
            pos = 0
            self._data = data
        end = min(pos + size, len(data))
        self._pos = end
        return bytes(data[pos:end])

    def buffered(self) -> int:
        """Bytes received but not yet handed to paho, including what TLS decrypted but we did not read."""
        pending = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
        return len(self._data) - self._pos + pending

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffered_bytes(sock: Any) -> int:
    """Bytes in hand that the event loop's selector cannot see."""
    if isinstance(sock, BufferedReads):
        return sock.buffered()
    if isinstance(sock, ssl.SSLSocket):
        return sock.pending()
    return 0
