"""sd_notify: tell systemd we are ready, stopping, and still making progress.

The protocol is one datagram of `KEY=VALUE` lines to the unix socket named by `NOTIFY_SOCKET`
(a path, or an abstract socket written with a leading '@'). It is small enough that a dependency
(or libsystemd through ctypes) would cost more than it saves.

The watchdog is the point of `Type=notify` here: `WATCHDOG=1` is sent only while the progress board
shows no stall, so systemd restarts a daemon whose consumer silently stopped (after `WatchdogSec`),
not just one whose process died. A broker outage alone does not withhold it: restarting cannot
bring a broker back, and the daemon is already unready and retrying.

Outside systemd (no `NOTIFY_SOCKET`) every call is a cheap no-op, so the composition root can call
it unconditionally.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from typing import Any

import structlog

from router.observability.progress import ProgressBoard

# Without WatchdogSec there is nothing to ping, but STATUS= (shown by `systemctl status`) still
# follows readiness at this pace.
STATUS_ONLY_INTERVAL = 5.0


class SystemdNotifier:
    def __init__(
        self,
        socket_path: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        log: Any = None,
    ) -> None:
        environ = os.environ if env is None else env
        if socket_path is None:
            socket_path = environ.get("NOTIFY_SOCKET") or None
        self.socket_path = socket_path
        self.log = log if log is not None else structlog.get_logger("router.sdnotify")
        self._address = self._resolve(socket_path)
        self._watchdog_usec = self._watchdog_for_us(environ)
        self._sock: socket.socket | None = None
        self._failed: set[str] = set()

    def _resolve(self, path: str | None) -> str | None:
        if not path:
            return None
        if path.startswith("@"):
            return "\0" + path[1:]  # Linux abstract namespace
        if path.startswith("/"):
            return path
        # vsock:CID:PORT and friends are for VMs; say so once rather than fail on every notify.
        self.log.warning("sdnotify.unsupported_socket", notify_socket=path)
        return None

    @staticmethod
    def _watchdog_for_us(environ: Mapping[str, str]) -> int | None:
        usec = environ.get("WATCHDOG_USEC", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd watches; an inherited value means it is not us.
        if pid.isdigit() and int(pid) != os.getpid():
            return None
        return int(usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec, as sd_watchdog_enabled(3) advises; None when no watchdog is set."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, **fields: object) -> bool:
        """Send one datagram, e.g. notify(READY=1, STATUS="running"). Never raises; False if not sent."""
        if self._address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = "1" if value is True else "0" if value is False else str(value)
            lines.append(f"{key}={text.replace(chr(10), ' ')}")
        data = ("\n".join(lines) + "\n").encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # a wedged manager must not block the event loop
            self._sock.sendto(data, self._address)
        except OSError as exc:
            kind = type(exc).__name__
            if kind not in self._failed:  # once per kind of failure, not once per ping
                self._failed.add(kind)
                self.log.warning(
                    "sdnotify.send_failed", notify_socket=self.socket_path, error_type=kind, error=str(exc)
                )
            return False
        self._failed.clear()
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(board: ProgressBoard) -> str:
    problems = board.problems()
    if not problems:
        return "ready"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"unready: {problems[0]}{more}"


async def watchdog_loop(
    notifier: SystemdNotifier,
    board: ProgressBoard,
    interval: float | None = None,
    *,
    log: Any = None,
) -> None:
    """Ping WATCHDOG=1 every `interval` (default: half of WATCHDOG_USEC) while nothing is stalled.

    Also keeps STATUS= in step with readiness. Returns at once outside systemd; runs until cancelled.
    """
    if not notifier.enabled:
        return
    log = log if log is not None else structlog.get_logger("router.sdnotify")
    ping = True
    if interval is None:
        interval = notifier.watchdog_interval()
        if interval is None:
            ping, interval = False, STATUS_ONLY_INTERVAL
    withheld = False
    last_status: str | None = None
    while True:
        stalled = board.longest_stall()
        if stalled < board.stall_timeout:
            if ping:
                notifier.notify(WATCHDOG=1)
            if withheld:
                log.info("watchdog.resumed")
                withheld = False
        elif not withheld:
            log.error(
                "watchdog.withheld", stalled_seconds=round(stalled, 1), problems=board.problems(),
                detail="no progress with work pending; systemd restarts the daemon after WatchdogSec",
            )
            withheld = True
        status = _status_line(board)
        if status != last_status:
            notifier.notify(STATUS=status)
            last_status = status
        await asyncio.sleep(interval)
