"""`router shards` and `router reset-checkpoint` against a real broker, while a mapping runs and
after it stopped; outcomes are what the group committed and what the handler sees next."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from stream_daemon import config_data, delivered, group_of, produce, wait_until
from test_stream_delivery import running, wait_committed

from router.cli import main
from router.devstack import Tansu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def two_shards_of_five(kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> tuple[str, dict, Path]:
    """A two-partition topic with five records in each, and the mapping's config for it."""
    name = topic(partitions=2)
    await produce(kafka.bootstrap_servers, name, [(b"k", f"{i}".encode(), i % 2) for i in range(10)])
    data = config_data(kafka.bootstrap_servers, name, tmp_path)
    return name, data, write_config(tmp_path, data)


async def test_shards_reports_checkpoints_and_reset_refuses_while_running(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, data, config = await two_shards_of_five(kafka, topic, tmp_path)
    async with running(data):
        await wait_committed(kafka, name, {0: 5, 1: 5})
        await produce(kafka.bootstrap_servers, name, [(b"k", b"late", 1)] * 3)
        await wait_committed(kafka, name, {0: 5, 1: 8})
        capsys.readouterr()
        assert await cli("shards", "clicks", "--config", str(config)) == 0
        table = capsys.readouterr().out
        assert f"group {group_of(name)}" in table
        assert "shardId-000000000000  4           5               0" in table
        assert "shardId-000000000001  7           8               0" in table
        # A daemon consumes the mapping: the reset must not happen, and nothing moves.
        assert await cli("reset-checkpoint", "clicks", "--shard", "0", "--trim-horizon", "--config", str(config)) == 1
        assert "refused" in capsys.readouterr().err
        await produce(kafka.bootstrap_servers, name, [(b"k", b"later", 0)])
        await wait_committed(kafka, name, {0: 6, 1: 8})
    assert sorted(delivered(tmp_path)) == sorted({(f"shardId-00000000000{p}", o) for p, n in ((0, 6), (1, 8))
                                                  for o in range(n)})


async def test_reset_after_stopping_rewinds_one_shard(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, data, config = await two_shards_of_five(kafka, topic, tmp_path)
    async with running(data):
        await wait_committed(kafka, name, {0: 5, 1: 5})
    # Stopped: rewind shard 0 to after sequence number 1; shard 1 keeps its checkpoint.
    capsys.readouterr()
    assert await cli("reset-checkpoint", "clicks", "--shard", "shardId-000000000000", "--sequence-number", "1",
                     "--config", str(config)) == 0
    assert "checkpoint 4 -> 1" in capsys.readouterr().out
    await wait_committed(kafka, name, {0: 2, 1: 5})
    before = len(delivered(tmp_path))
    async with running(data):
        await wait_committed(kafka, name, {0: 5, 1: 5})
        await wait_until(lambda: len(delivered(tmp_path)) == before + 3, 10, "the rewound records")
    assert delivered(tmp_path)[before:] == [("shardId-000000000000", 2), ("shardId-000000000000", 3),
                                            ("shardId-000000000000", 4)]


async def test_reset_to_a_timestamp_on_a_fresh_group(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = topic(partitions=1)
    base = int(time.time() * 1000) - 60_000
    for i in range(6):
        await produce(kafka.bootstrap_servers, name, [(b"k", f"{i}".encode(), 0)], timestamp_ms=base + i * 10_000)
    config = write_config(tmp_path, config_data(kafka.bootstrap_servers, name, tmp_path))
    assert await cli("reset-checkpoint", "clicks", "--shard", "0", "--sequence-number", "99",
                     "--config", str(config)) == 1
    assert "beyond the newest record" in capsys.readouterr().err
    stamp = (base + 25_000) / 1000  # between records 2 and 3
    assert await cli("reset-checkpoint", "clicks", "--shard", "0", "--timestamp", str(stamp),
                     "--config", str(config)) == 0
    assert "(the next record read is offset 3)" in capsys.readouterr().out
    await wait_committed(kafka, name, {0: 3})
    assert await cli("shards", "nope", "--config", str(config)) == 2
