"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_s3_routing import Harness


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """A NotificationRouter on a real SQLite queue and dead-letter store (see test_s3_routing)."""
    h = Harness(tmp_path)
    await h.queue.open()
    yield h
    await h.queue.close()
