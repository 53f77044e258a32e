"""The daemon's event loop choice: uvloop when installed (auto), the standard loop on request."""

from __future__ import annotations

import asyncio

import pytest

from router import event_loop
from router.config import load_config_data


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_auto_runs_on_uvloop_which_the_project_installs() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.run(_loop_module()) == "uvloop"
    assert event_loop.run(_loop_module(), "uvloop") == "uvloop"


def test_asyncio_forces_the_standard_loop() -> None:
    assert event_loop.run(_loop_module(), "asyncio") == "asyncio"


def test_config_defaults_to_auto_and_refuses_other_loops() -> None:
    assert load_config_data({}).event_loop == "auto"
    assert load_config_data({"event_loop": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(Exception, match="event_loop"):
        load_config_data({"event_loop": "trio"})
