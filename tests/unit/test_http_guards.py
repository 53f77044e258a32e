"""The listener's small guards: the loopback Host check and the ceiling on refusal log lines."""

from __future__ import annotations

from typing import Any

import pytest

from router.observability.host_check import is_loopback_host
from router.observability.log_limit import LogLimiter


@pytest.mark.parametrize("host", [
    "localhost", "localhost:9000", "LOCALHOST.", "app.localhost:80", "127.0.0.1", "127.0.0.1:9000",
    "127.1.2.3:1", "[::1]", "[::1]:9000",
])
def test_loopback_hosts_are_accepted(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", [
    None, "", "evil.example", "evil.example:9000", "127.0.0.1.evil.example", "localhost.evil.example",
    "10.0.0.1:9000", "[2001:db8::1]:9000", "0.0.0.0", "[::1", "2130706433", "localhost:9000:1",
])
def test_other_hosts_are_refused(host: str | None) -> None:
    assert not is_loopback_host(host)


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_refusal_lines_are_capped_per_event_and_say_how_many_were_skipped() -> None:
    now = [0.0]
    log = _Log()
    limiter = LogLimiter(log, burst=3, interval=10, clock=lambda: now[0])
    for i in range(1000):
        limiter.warning("http.unauthorized", n=i)
    limiter.warning("webhook.unauthorized", n=0)  # another event has its own allowance
    assert [(e, f["n"]) for e, f in log.lines] == [
        ("http.unauthorized", 0), ("http.unauthorized", 1), ("http.unauthorized", 2), ("webhook.unauthorized", 0)]
    now[0] = 10.5
    limiter.warning("http.unauthorized", n=1000)
    assert log.lines[-1] == ("http.unauthorized", {"n": 1000, "suppressed": 997})
    limiter.warning("http.unauthorized", n=1001)
    assert log.lines[-1] == ("http.unauthorized", {"n": 1001})
