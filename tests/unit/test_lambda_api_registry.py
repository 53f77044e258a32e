"""The file registry (one instance): entries survive a reopen, a write is atomic, a bad entry is
skipped with the rest kept; revisions move with every change."""

from __future__ import annotations

import json
from pathlib import Path

from router.config import StreamMapping
from router.lambda_api.registry import FILE_NAME, Entry, FileRegistry


def _mapping(topic: str, **extra: object) -> StreamMapping:
    return StreamMapping.model_validate({"function_name": "f", "kafka_topic": topic, **extra})


async def test_entries_survive_a_reopen_and_deletes_stick(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path)
    await registry.open()
    changes: list[int] = []
    registry.on_change = lambda: changes.append(registry.revision)
    first = await registry.put(Entry("u1", _mapping("a", batch_size=7), 1.5, "Creating"))
    await registry.put(Entry("u2", _mapping("b"), 2.5, "Creating"))
    assert first.revision == 1 and registry.revision == 2
    assert await registry.delete("u2") == 3
    assert changes == [1, 2, 3]
    assert not list(tmp_path.glob("*.tmp"))

    again = FileRegistry(tmp_path)
    await again.open()
    assert list(again.entries()) == ["u1"]
    entry = again.entries()["u1"]
    assert entry.mapping.batch_size == 7 and entry.last_modified == 1.5 and entry.transition == "Creating"


async def test_an_entry_that_does_not_validate_is_skipped(tmp_path: Path) -> None:
    good = json.loads(Entry("ok", _mapping("a"), 1.0, "Creating").encode())
    bad = {"UUID": "bad", "Mapping": {"function_name": "f", "kafka_topic": "a", "batch_size": 0}, "LastModified": 1}
    (tmp_path / FILE_NAME).write_text(json.dumps({"EventSourceMappings": [bad, good]}))
    registry = FileRegistry(tmp_path)
    await registry.open()
    assert list(registry.entries()) == ["ok"]
