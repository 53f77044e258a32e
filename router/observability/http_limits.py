"""Bounds on the HTTP listener that aiohttp leaves to whoever runs it.

aiohttp keeps a connection as long as a client likes while it sends a request head (it has no
header timeout: one byte every few seconds holds a connection for ever, the slowloris attack),
keeps idle keep-alive connections for an hour by default, and accepts connections without limit.
The listener serves the probes, metrics, webhooks, the Lambda API and websites together, so a
client that hoards connections must not take the rest down with it:

- A request head must be complete within `header_timeout` of the connection opening; otherwise
  the client gets 408 and the connection is closed. Later requests on a kept-alive connection are
  bounded by aiohttp's keep-alive timeout (set short by the caller) and by the cap below.
- At most `max_connections` connections are open at once; one over it gets 503 with
  `Connection: close` at once, before anything is read, so the kubelet's probes keep working as
  soon as connections are freed.

Written here because neither aiohttp nor the standard library offers either; the connection is
handed to aiohttp's own request handler untouched, only watched on the way in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

_HEAD_END = b"\r\n\r\n"
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
         b"Content-Length: 0\r\n\r\n")


# How long a refused connection may stay to read our answer before it is closed regardless.
_REFUSED_LINGER = 1.0


class _Refused(asyncio.Protocol):
    """A connection over the cap: answered 503 at once. What the client sends is read and dropped
    until it closes (or briefly), so the close is not a reset that could discard the answer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses: no isinstance
        transport.write(_BUSY)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(_REFUSED_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close now


class _Watched(asyncio.Protocol):
    """aiohttp's handler for one connection, with a deadline on its first request head."""

    def __init__(self, inner: Any, site: LimitedSite) -> None:
        self._inner = inner
        self._site = site
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a head end split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._site.header_timeout, self._timed_out)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            if _HEAD_END in self._tail + data[:3] or _HEAD_END in data:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = data[-3:] if len(data) >= 3 else (self._tail + data)[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._site.open -= 1
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._site.on_refused("http.header_timeout", self._peer())
            self._transport.write(_REQUEST_TIMEOUT)
            self._transport.close()

    def _peer(self) -> str | None:
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else None


class LimitedSite(web.TCPSite):
    """A TCPSite whose connections are capped and whose request heads have a deadline."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int, header_timeout: float,
        on_refused: Callable[[str, str | None], None], **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.on_refused = on_refused
        self.open = 0

    def _protocol(self) -> asyncio.Protocol:
        if self.open >= self.max_connections:
            self.on_refused("http.connection_refused", None)
            return _Refused()
        server = self._runner.server
        assert server is not None
        self.open += 1
        return _Watched(server(), self)

    async def start(self) -> None:
        # TCPSite.start, with our protocol factory in place of the runner's server.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
