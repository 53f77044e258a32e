"""One bad notification must never stall intake: whatever a payload does to the parser, the key
encoder or the event builder, it is dead-lettered (or ignored) and the payloads behind it go on.

10,000 generated hostile payloads (random bytes, deep nesting, huge numbers, lone surrogates,
oversize fields, and every MinIO and SeaweedFS fixture with its leaves mutated) go through the
router both push transports share, in MQTT-sized batches; none may raise (a raise means a withheld
PUBACK on MQTT, a 503 on the webhook, retried forever), and a valid notification after them is queued.
"""

from __future__ import annotations

import random
from pathlib import Path

from hostile_payloads import COUNT, fixture, hostile_payloads, lone_surrogate_key
from test_s3_routing import Harness

from router.sources.bucket_notifications import NotificationRouter


async def _accept_all(router: NotificationRouter, payloads: list[bytes], *, store: str = "auto") -> None:
    for start in range(0, len(payloads), 20):
        await router.accept_batch([(p, "minio/events") for p in payloads[start:start + 20]], transport="mqtt",
                                  store=store)  # type: ignore[arg-type]


async def test_a_lone_surrogate_in_a_key_is_dead_lettered_and_the_batch_goes_on(harness: Harness) -> None:
    good = fixture("mqtt_put_encoded_key.json")
    result = await harness.router.accept_batch([(lone_surrogate_key(), "minio/events"), (good, "minio/events")],
                                               transport="mqtt")
    assert result.outcome == "accepted" and result.queued >= 1
    assert harness.dead_letter.count() == 1
    assert harness.metric("router_notifications_total", source="mqtt", outcome="malformed") == 1


async def test_ten_thousand_hostile_payloads_never_stall_intake(harness: Harness, tmp_path: Path) -> None:
    payloads = hostile_payloads()
    assert len(payloads) == COUNT
    await _accept_all(harness.router, payloads)
    await _accept_all(harness.router, payloads[:2000], store="seaweedfs")
    for source, sent in (("mqtt", COUNT), ("seaweedfs", 2000)):  # each payload counted once, by its outcome
        assert sum(harness.metric("router_notifications_total", source=source, outcome=o)
                   for o in ("malformed", "ignored", "unmatched", "accepted")) == sent
    assert harness.metric("router_notifications_total", source="mqtt", outcome="malformed") > COUNT / 3
    before = len(await harness.queued("photos-audit"))
    result = await harness.router.accept(fixture("mqtt_put_encoded_key.json"), transport="mqtt",
                                         topic="minio/events")
    assert result.outcome == "accepted"
    assert len(await harness.queued("photos-audit")) > before or result.duplicates


async def test_hostile_app_events_are_dead_lettered_one_by_one_and_the_rest_are_queued(tmp_path: Path) -> None:
    from router.config import AppEventMapping, load_config_data
    from router.delivery.async_queue import AsyncQueue
    from router.delivery.dead_letter import DeadLetter
    from router.observability.metrics import Metrics
    from router.sources.app_events import AppEventRouter

    config = load_config_data({
        "state_dir": str(tmp_path), "functions": {"f": {"handler": "m.h"}}, "mqtt": {},
        "event_source_mappings": {
            "by-id": {"function_name": "f", "mqtt_topic": "app/#", "deduplication_id": {"user_property": "id"}},
            "filtered": {"function_name": "f", "mqtt_topic": "app/+/clicks", "topic_key": "topic", "filter_criteria": {
                "filters": [{"pattern": '{"n": [{"numeric": [">", 1]}]}'}]}},
            "batched": {"function_name": "f", "mqtt_topic": "app/#", "batch_size": 10},
        }}, {})
    metrics = Metrics()
    queue = AsyncQueue(tmp_path / "queue.sqlite3", metrics=metrics)
    await queue.open()
    dead_letter = DeadLetter(tmp_path / "dead-letter", metrics=metrics)
    router = AppEventRouter(queue, dead_letter, metrics=metrics, on_enqueued=lambda: None)
    router.set_mappings({name: m for name, m in config.event_source_mappings.items() if isinstance(m, AppEventMapping)})
    rng = random.Random(7)
    try:
        for payload in hostile_payloads(seed=11)[:2000]:
            prop = rng.choice(["a", "\ud800", "x" * 70_000, ""])
            await router.accept_batch([(payload, rng.choice(["app/u1/clicks", "app/\udfff/clicks"]), [("id", prop)])])
        assert dead_letter.count() > 0
        queued = await queue.claim("by-id", "invoke", 10_000)
        before = len(queued.events)
        assert before > 0
        for event in queued.events:
            await queue.release(event.id)
        assert await router.accept_batch([(b'{"n": 5}', "app/u1/clicks", [("id", "fresh")])]) == 3
        assert len((await queue.claim("by-id", "invoke", 10_000)).events) == before + 1
    finally:
        await queue.close()
