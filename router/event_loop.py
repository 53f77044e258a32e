"""Which asyncio event loop the daemon runs on.

The daemon's hot paths are round trips on sockets: a worker's pipe per invocation, a broker's
socket per fetch or notification. uvloop (libuv) runs them with markedly less CPU than the standard
selector loop (bench/invoke.py prints both), so `event_loop: auto` uses it where it is installed,
as uvicorn does. `asyncio` forces the standard loop (to rule the loop out when chasing a problem).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

EventLoopKind = Literal["auto", "uvloop", "asyncio"]
T = TypeVar("T")


def loop_factory(kind: EventLoopKind = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "asyncio" or (kind == "auto" and importlib.util.find_spec("uvloop") is None):
        return asyncio.new_event_loop
    import uvloop  # "uvloop" asked for explicitly: an ImportError says what is missing

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], kind: EventLoopKind = "auto") -> T:
    """asyncio.run on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
