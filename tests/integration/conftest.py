"""Fixtures for the integration tests that run the whole daemon."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import Daemon


@pytest.fixture(params=["aiokafka", "confluent"])
def kafka_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a stream test on each Kafka client backend (`kafka.client`): the config builders of the
    stream tests read ROUTER_TEST_KAFKA_CLIENT (stream_daemon.kafka_client)."""
    client: str = request.param
    monkeypatch.setenv("ROUTER_TEST_KAFKA_CLIENT", client)
    return client


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Daemon]]:
    started: list[Daemon] = []

    def make(config: dict[str, Any]) -> Daemon:
        d = Daemon(config, tmp_path)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait()


