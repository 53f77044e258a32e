"""sd_notify against a real unix datagram socket, as systemd's manager would receive it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.observability.progress import ProgressBoard
from router.observability.sdnotify import SystemdNotifier, watchdog_loop

pytestmark = pytest.mark.integration


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


class Manager:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        assert data.endswith("\n")
        return dict(line.split("=", 1) for line in data.splitlines())

    def drain(self) -> list[dict[str, str]]:
        found = []
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                found.append(dict(line.split("=", 1) for line in self.sock.recv(4096).decode().splitlines()))
        self.sock.settimeout(2.0)
        return found


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[Manager, str]]:
    path = str(tmp_path / "notify.sock")
    receiver = Manager(path)
    yield receiver, path
    receiver.sock.close()


def test_ready_status_stopping_over_a_path_socket(manager: tuple[Manager, str]) -> None:
    receiver, path = manager
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.notify(READY=1, STATUS="running")
    assert receiver.receive() == {"READY": "1", "STATUS": "running"}
    assert notifier.notify(STATUS="line one\nline two")  # a newline would start a bogus field
    assert receiver.receive() == {"STATUS": "line one line two"}
    assert notifier.notify(STOPPING=True)
    assert receiver.receive() == {"STOPPING": "1"}
    notifier.close()


def test_abstract_socket_with_at_sign() -> None:
    name = f"router-test-{uuid.uuid4().hex}"
    receiver = Manager("\0" + name)
    try:
        notifier = SystemdNotifier(f"@{name}")
        assert notifier.notify(READY=1)
        assert receiver.receive() == {"READY": "1"}
        notifier.close()
    finally:
        receiver.sock.close()


def test_socket_path_defaults_to_the_environment(
    manager: tuple[Manager, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, path = manager
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier()
    assert notifier.watchdog_interval() == 30.0  # half of WatchdogSec=60
    assert notifier.notify(WATCHDOG=1)
    assert receiver.receive() == {"WATCHDOG": "1"}


def test_without_systemd_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier(env={})
    assert not notifier.enabled
    assert notifier.notify(READY=1) is False
    assert notifier.watchdog_interval() is None


def test_watchdog_for_another_pid_is_ignored(manager: tuple[Manager, str]) -> None:
    _, path = manager
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval() is None


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"))
    assert notifier.notify(READY=1) is False
    assert notifier.notify(READY=1) is False


async def test_watchdog_pings_only_while_progress_is_made(manager: tuple[Manager, str]) -> None:
    receiver, path = manager
    clock = FakeClock()
    board = ProgressBoard(stall_timeout=300, clock=clock)
    shard = board.tracker("clicks/shardId-000000000000")
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": path})
    task = asyncio.create_task(watchdog_loop(notifier, board, interval=0.02))
    try:
        await asyncio.sleep(0.15)
        sent = receiver.drain()
        assert {"STATUS": "ready"} in sent
        assert sum(1 for d in sent if d == {"WATCHDOG": "1"}) >= 3

        shard.set_pending(True)
        clock.now += 301  # the shard had work and did not move for longer than the stall timeout
        await asyncio.sleep(0.05)
        receiver.drain()  # anything sent before the loop saw the stall
        await asyncio.sleep(0.15)
        assert not any("WATCHDOG" in d for d in receiver.drain())

        shard.advanced()
        await asyncio.sleep(0.1)
        sent = receiver.drain()
        assert {"WATCHDOG": "1"} in sent
        assert {"STATUS": "ready"} in sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_broker_outage_keeps_the_watchdog_but_changes_status(manager: tuple[Manager, str]) -> None:
    """Restarting cannot bring a broker back, so an outage alone must not get us killed."""
    receiver, path = manager
    board = ProgressBoard(stall_timeout=300)
    board.tracker("kafka").set_up(False, "connection refused")
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": path})
    task = asyncio.create_task(watchdog_loop(notifier, board, interval=0.02))
    try:
        await asyncio.sleep(0.1)
        sent = receiver.drain()
        assert {"STATUS": "unready: kafka: down: connection refused"} in sent
        assert {"WATCHDOG": "1"} in sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watchdog_interval_comes_from_watchdog_usec(manager: tuple[Manager, str]) -> None:
    receiver, path = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}  # 100 ms
    task = asyncio.create_task(watchdog_loop(SystemdNotifier(env=env), ProgressBoard(300)))
    try:
        await asyncio.sleep(0.27)
        pings = sum(1 for d in receiver.drain() if d == {"WATCHDOG": "1"})
        assert 4 <= pings <= 7  # every 50 ms, half of WATCHDOG_USEC (at 100 ms there would be 3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watchdog_loop_returns_outside_systemd() -> None:
    await asyncio.wait_for(watchdog_loop(SystemdNotifier(env={}), ProgressBoard(300)), timeout=1)
