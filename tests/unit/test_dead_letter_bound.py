"""The dead-letter store is bounded: past dead_letter_max_bytes an unreadable payload keeps only
its metadata, and a destination record (which must be kept whole) is refused, to be retried."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from router.delivery.dead_letter import DeadLetter, DeadLetterFull
from router.delivery.destination import DestinationError
from router.delivery.destination_fallback import FallbackDestination
from router.observability.metrics import Metrics


async def test_past_the_bound_garbage_keeps_its_metadata_and_real_data_is_refused(tmp_path: Path) -> None:
    metrics = Metrics()
    store = DeadLetter(tmp_path / "dl", max_bytes=100, metrics=metrics)
    first = await store.write(b"a" * 60, reason="unreadable", source="mqtt")
    assert (first.parent / json.loads(first.read_text())["payload_file"]).read_bytes() == b"a" * 60
    again = await store.write(b"a" * 60, reason="unreadable", source="mqtt")  # the same bytes: no growth
    assert again == first
    second = await store.write(b"b" * 60, reason="unreadable", source="webhook", topic="/webhooks/s3")
    meta = json.loads(second.read_text())
    assert meta["payload_file"] is None and meta["size"] == 60 and "full" in meta["payload_dropped"]
    assert not list(second.parent.glob("*.payload"))
    with pytest.raises(DeadLetterFull):
        await store.write(b"c" * 60, reason="too large for kafka", source="on-failure", required=True)
    assert metrics.registry.get_sample_value("router_dead_letter_bytes") == 60
    assert metrics.registry.get_sample_value("router_dead_letter_payloads_dropped_total", {"source": "webhook"}) == 1
    # A restarted daemon counts what is already on disk.
    restarted = DeadLetter(tmp_path / "dl", max_bytes=100)
    with pytest.raises(DeadLetterFull):
        await restarted.write(b"d" * 50, reason="x", source="on-failure", required=True)
    kept = await restarted.write(b"e" * 40, reason="x", source="on-failure", required=True)
    assert json.loads(kept.read_text())["payload_file"] is not None


class _Refusing:
    uri = "kafka://failed"
    max_record_bytes = None

    async def send(self, record: Mapping[str, Any], *, key: str, body: bytes | None = None) -> None:
        raise DestinationError("kafka://failed: TopicAuthorizationFailedError", permanent=True)


async def test_a_destination_record_that_cannot_be_kept_anywhere_is_retried_not_dropped(tmp_path: Path) -> None:
    destination = FallbackDestination(_Refusing(), DeadLetter(tmp_path / "dl", max_bytes=1024 * 1024))
    await destination.send({"requestContext": {}, "payload": "x"}, key="k")  # kept: returns
    full = FallbackDestination(_Refusing(), DeadLetter(tmp_path / "full", max_bytes=10))
    with pytest.raises(DestinationError) as retry:
        await full.send({"requestContext": {}, "payload": "x" * 100}, key="k")
    assert not retry.value.permanent and "full" in str(retry.value)
