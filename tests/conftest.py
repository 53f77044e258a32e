"""Shared fixtures: real brokers from router.devstack, started once per session and always torn down.

Brokers start lazily: a run of unit tests alone never pays for them. Session brokers are shared by
every test, so tests isolate themselves by name (unique topics, buckets, client ids), never by
restarting a shared broker: a test that needs an outage takes `fresh_mosquitto` instead.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router import event_loop
from router.devstack import Mosquitto, SeaweedFS, Tansu

DEFAULT_TEST_TIMEOUT = 120.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test a default timeout when pytest-timeout is installed and none is set.

    A hung broker call then fails one test (with its fixtures torn down) instead of the whole run.
    """
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if config.getoption("timeout", None) or config.getini("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on the loop `router run` runs on (uvloop where installed)."""
    return {"daemon-loop": event_loop.loop_factory()}


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own, for tests that stop or restart it."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    with Tansu(tmp_path_factory.mktemp("tansu")) as broker:
        yield broker


@pytest.fixture
def topic(kafka: Tansu, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory: `topic(partitions=1)` creates a uniquely named topic on the session broker."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")

    def create(partitions: int = 1) -> str:
        name = f"t-{stem}-{uuid.uuid4().hex[:8]}"
        kafka.create_topic(name, partitions)
        return name

    return create


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as store:
        yield store


@pytest.fixture
def seaweedfs_webhook(tmp_path: Path) -> Iterator[Callable[..., SeaweedFS]]:
    """Factory: `seaweedfs_webhook(url, token)` starts a SeaweedFS whose filer POSTs to `url`."""
    started: list[SeaweedFS] = []

    def start(url: str, token: str | None = None) -> SeaweedFS:
        store = SeaweedFS(tmp_path / f"seaweedfs-{len(started)}", webhook_url=url, webhook_token=token)
        started.append(store)
        store.start()
        return store

    yield start
    for store in reversed(started):
        store.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
