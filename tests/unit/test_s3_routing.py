"""NotificationRouter on a real SQLite queue: what gets queued, deduplicated, dropped or dead-lettered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import S3Model

from router.config import Config, load_config_data
from router.delivery.async_queue import AsyncQueue, StoredEvent
from router.delivery.dead_letter import DeadLetter
from router.observability.metrics import Metrics
from router.sources.bucket_notifications import NO_MAPPING, NotificationRouter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def fixture(name: str) -> bytes:
    return next(FIXTURES.glob(f"*/{name}")).read_bytes()


def make_config(tmp_path: Path) -> Config:
    return load_config_data({
        "region": "eu-central-1",
        "state_dir": str(tmp_path),
        "functions": {"thumbnail": {"handler": "m.h"}, "audit": {"handler": "m.h"}},
        "mqtt": {},
        "http": {"webhook_token": "secret"},
        "event_source_mappings": {
            "photos-mqtt": {"function_name": "thumbnail", "bucket_notifications": {
                "transport": "mqtt", "topic": "minio/events", "bucket": "photos", "suffix": ".jpg",
                "prefix": "albums/summer 2024/"}},
            "photos-audit": {"function_name": "audit", "bucket_notifications": {
                "transport": "mqtt", "topic": "minio/events", "bucket": "photos",
                "events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"], "event_format": "minio"}},
            "uploads-webhook": {"function_name": "thumbnail", "bucket_notifications": {
                "transport": "webhook", "bucket": "uploads"}},
            "seaweed-webhook": {"function_name": "thumbnail", "bucket_notifications": {
                "transport": "webhook", "bucket": "photos", "prefix": "x/"}},
        },
    })


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.config = make_config(tmp_path)
        self.metrics = Metrics()
        self.queue = AsyncQueue(tmp_path / "queue.sqlite3", metrics=self.metrics)
        self.dead_letter = DeadLetter(tmp_path / "dead-letter", metrics=self.metrics)
        self.wakes = 0

        def wake() -> None:
            self.wakes += 1

        self.router = NotificationRouter(self.config, self.queue, self.dead_letter, metrics=self.metrics,
                                         on_enqueued=wake)

    async def queued(self, mapping: str) -> list[StoredEvent]:
        claim = await self.queue.claim(mapping, "invoke", 100)
        for event in claim.events:
            await self.queue.release(event.id)
        return claim.events

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


async def test_matching_record_is_queued_in_aws_shape_for_each_mapping(harness: Harness) -> None:
    payload = fixture("mqtt_put_encoded_key.json")
    result = await harness.router.accept(payload, transport="mqtt", topic="minio/events")

    assert (result.outcome, result.records, result.queued, result.duplicates) == ("accepted", 1, 2, 0)
    assert harness.wakes == 1
    [thumb] = await harness.queued("photos-mqtt")
    assert thumb.function == "thumbnail"
    S3Model.model_validate(thumb.event)
    record = thumb.event["Records"][0]
    assert record["awsRegion"] == "eu-central-1"
    assert record["s3"]["configurationId"] == "photos-mqtt"
    assert record["s3"]["object"]["key"] == "albums/summer+2024/caf%C3%A9+%2B+friends+%C3%BC.jpg"
    [audit] = await harness.queued("photos-audit")
    assert audit.event == {"Records": [json.loads(payload)["Records"][0]]}  # event_format: minio
    assert harness.metric("router_notifications_total", source="mqtt", outcome="accepted") == 1
    assert harness.metric("router_async_events_received_total", mapping="photos-mqtt") == 1


async def test_redelivered_notification_is_a_duplicate(harness: Harness) -> None:
    payload = fixture("mqtt_put_encoded_key.json")
    await harness.router.accept(payload, transport="mqtt", topic="minio/events")
    again = await harness.router.accept(payload, transport="mqtt", topic="minio/events")

    assert (again.outcome, again.queued, again.duplicates) == ("accepted", 0, 2)
    assert harness.wakes == 1
    assert len(await harness.queued("photos-mqtt")) == 1
    assert harness.metric("router_duplicate_notifications_total", mapping="photos-mqtt") == 1


async def test_rules_filter_on_event_type_and_decoded_prefix(harness: Harness) -> None:
    # A delete: photos-mqtt wants creates only, photos-audit wants removals too.
    result = await harness.router.accept(fixture("mqtt_delete.json"), transport="mqtt", topic="minio/events")
    assert result.queued == 1
    assert await harness.queued("photos-mqtt") == []
    assert len(await harness.queued("photos-audit")) == 1
    # Outside the prefix: only the audit mapping.
    result = await harness.router.accept(fixture("mqtt_put_zero_byte_object.json"), transport="mqtt",
                                         topic="minio/events")
    assert result.queued == 1
    assert harness.metric("router_filtered_out_records_total", mapping="photos-mqtt") == 2


async def test_unknown_bucket_and_wrong_transport_are_counted_and_dropped(harness: Harness) -> None:
    result = await harness.router.accept(fixture("kafka_value_put.json"), transport="mqtt", topic="minio/events")
    assert (result.outcome, result.records, result.unmatched, result.queued) == ("unmatched", 1, 1, 0)
    # the uploads bucket is mapped, but for webhooks only
    result = await harness.router.accept(fixture("webhook_body_put.json"), transport="mqtt", topic="minio/events")
    assert result.outcome == "unmatched"
    # a topic no mapping names
    result = await harness.router.accept(fixture("mqtt_put_encoded_key.json"), transport="mqtt", topic="elsewhere")
    assert result.outcome == "unmatched"
    assert harness.wakes == 0
    assert harness.metric("router_notifications_total", source="mqtt", outcome="unmatched") == 3
    assert harness.metric("router_filtered_out_records_total", mapping=NO_MAPPING) == 3


async def test_webhook_records_route_by_bucket(harness: Harness) -> None:
    result = await harness.router.accept(fixture("webhook_body_put.json"), transport="webhook")
    assert result.queued == 1
    [event] = await harness.queued("uploads-webhook")
    assert event.event["Records"][0]["s3"]["object"]["key"] == "invoices/2025/06/INV-0042+%28final%29.pdf"


async def test_seaweedfs_body_on_its_own_endpoint(harness: Harness) -> None:
    result = await harness.router.accept(fixture("webhook_create_object.json"), transport="webhook",
                                         store="seaweedfs")
    assert result.queued == 1
    [event] = await harness.queued("seaweed-webhook")
    S3Model.model_validate(event.event)
    assert harness.metric("router_notifications_total", source="seaweedfs", outcome="accepted") == 1
    directory = json.dumps({"event_type": "create", "key": "/buckets/photos/x", "message": {
        "new_entry": {"name": "x", "is_directory": True}}}).encode()
    ignored = await harness.router.accept(directory, transport="webhook", store="seaweedfs")
    assert ignored.outcome == "ignored"
    assert harness.metric("router_notifications_total", source="seaweedfs", outcome="ignored") == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"definitely not json", "not JSON"),
        (b'{"hello": "world"}', "JSON object without Records"),
        (b"[" * 100_000 + b"]" * 100_000, "unreadable notification (RecursionError)"),
    ],
)
async def test_malformed_payload_is_dead_lettered_with_its_raw_bytes(
    harness: Harness, payload: bytes, reason: str
) -> None:
    result = await harness.router.accept(payload, transport="mqtt", topic="minio/events")
    assert result.outcome == "malformed"
    assert result.reason is not None and reason in result.reason
    assert result.dead_letter is not None
    meta = json.loads(result.dead_letter.read_text())
    assert meta["source"] == "mqtt" and meta["topic"] == "minio/events" and reason in meta["reason"]
    assert (result.dead_letter.parent / meta["payload_file"]).read_bytes() == payload
    # the same bytes again: counted again, kept once
    await harness.router.accept(payload, transport="mqtt", topic="minio/events")
    assert harness.dead_letter.count() == 1
    assert harness.dead_letter.written == 2
    assert harness.metric("router_notifications_total", source="mqtt", outcome="malformed") == 2
    assert harness.wakes == 0


async def test_closed_queue_raises_so_the_sender_retries(harness: Harness) -> None:
    await harness.queue.close()
    with pytest.raises(Exception, match="not open"):
        await harness.router.accept(fixture("mqtt_put_encoded_key.json"), transport="mqtt", topic="minio/events")


def _all_fixture_payloads() -> list[Any]:
    return sorted((FIXTURES / "minio").glob("*.json"))


async def test_every_minio_fixture_routes_to_the_audit_mapping_when_its_bucket_is_photos(harness: Harness) -> None:
    photos = [p for p in _all_fixture_payloads() if json.loads(p.read_bytes())["Key"].startswith("photos/")]
    for path in photos:
        await harness.router.accept(path.read_bytes(), transport="mqtt", topic="minio/events")
    audit = await harness.queued("photos-audit")
    assert len(audit) == len(photos)
