"""Stream mappings end to end on a real Tansu broker with real worker processes.

What each test asserts is an outcome: which records the handler saw, in which order, how many
times, what the group committed, and what landed in the on-failure destination.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from stream_daemon import (
    calls,
    committed,
    config_data,
    delivered,
    group_of,
    kafka_client,
    produce,
    read_topic,
    wait_until,
)

from router.commands.replay import replay
from router.config import Config, load_config_data
from router.delivery.dead_letter import DeadLetter
from router.delivery.destinations import DestinationFactory
from router.devstack import Tansu
from router.observability.metrics import Metrics
from router.observability.progress import ProgressBoard
from router.runtime.pool import WorkerPool
from router.sources.stream_mapping import StreamMappingRunner

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]


@dataclass
class Running:
    runner: StreamMappingRunner
    config: Config
    metrics: Metrics
    board: ProgressBoard

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


BACKEND_CLASSES = {"aiokafka": "KafkaStreamSource", "confluent": "ConfluentStreamSource"}


@asynccontextmanager
async def running(data: dict[str, Any], name: str = "clicks") -> AsyncIterator[Running]:
    config = load_config_data(data, {})
    metrics, board = Metrics(), ProgressBoard(300)
    pool = WorkerPool(config, metrics=metrics)
    destinations = DestinationFactory(config, metrics=metrics, dead_letter=DeadLetter(config.state_dir / "dead-letter"))
    mapping = config.stream_mappings()[name]
    target = mapping.destination_config.on_failure
    runner = StreamMappingRunner(name, mapping, config, pool, destinations.get(target.destination) if target else None,
                                 metrics, board)
    # The kafka_client parametrization reaches the consumer (a builder that dropped it would run
    # every "both clients" test on the default one).
    assert type(runner.source).__name__ == BACKEND_CLASSES[kafka_client()], type(runner.source)
    await pool.start()
    await runner.start()
    try:
        yield Running(runner, config, metrics, board)
    finally:
        await runner.stop(10)
        await pool.close()
        await destinations.close()


async def wait_committed(kafka: Tansu, topic: str, want: dict[int, int], timeout: float = 15) -> None:
    last: dict[int, int | None] = {}

    async def check() -> bool:
        nonlocal last
        last = await committed(kafka.bootstrap_servers, group_of(topic), topic, len(want))
        return last == want

    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"committed {last}, want {want}")
        await asyncio.sleep(0.2)


async def test_order_per_shard_and_checkpoint_after_success(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic(partitions=3)
    records = [(f"user-{i % 7}".encode(), f"v{i}".encode(), i % 3) for i in range(150)]
    await produce(kafka.bootstrap_servers, name, records)
    async with running(config_data(kafka.bootstrap_servers, name, tmp_path, mapping={"batch_size": 7})) as r:
        await wait_until(lambda: len(delivered(tmp_path)) >= 150, 30, "150 records delivered")
        await wait_committed(kafka, name, {0: 50, 1: 50, 2: 50})
        status = r.runner.status()
        assert status["state"] == "Enabled" and len(status["shards_owned"]) == 3
        assert r.metric("router_checkpoint_sequence_number", mapping="clicks", shard="shardId-000000000001") == 49
    seen = delivered(tmp_path)
    assert sorted(seen) == sorted({(f"shardId-00000000000{p}", o) for p in range(3) for o in range(50)})
    for p in range(3):
        offsets = [o for s, o in seen if s == f"shardId-00000000000{p}"]
        assert offsets == list(range(50))
    for call in calls(tmp_path):
        assert 1 <= len(call["seqs"]) <= 7
        assert len(call["shards"]) == 1  # one shard per batch
    first = calls(tmp_path)[0]["first"]
    assert first["eventSourceARN"] == f"arn:aws:kinesis:eu-west-1:123456789012:stream/{name}"
    assert first["invokeIdentityArn"] == "arn:aws:iam::123456789012:role/recorder-role"
    assert first["eventID"] == f"{first['eventID'].split(':')[0]}:{first['kinesis']['sequenceNumber']}"


async def test_parallelization_factor_keeps_per_key_order(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic(partitions=1)
    records = [(f"key-{i % 6}".encode(), f"{i}".encode(), 0) for i in range(120)]
    await produce(kafka.bootstrap_servers, name, records)
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"SLEEP": "0.05"},
                       mapping={"batch_size": 5, "parallelization_factor": 3})
    async with running(data):
        await wait_until(lambda: len(delivered(tmp_path)) >= 120, 40, "120 records delivered")
        await wait_committed(kafka, name, {0: 120})
    by_key: dict[str, list[int]] = {}
    for call in calls(tmp_path):
        for key, seq in zip(call["keys"], call["seqs"], strict=True):
            by_key.setdefault(key, []).append(int(seq))
    assert set(by_key) == {f"key-{k}" for k in range(6)}
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs) and len(seqs) == 20, key
    # Lanes really ran side by side: some invocations overlapped in time.
    spans = sorted((c["at"], c["at"] + 0.05) for c in calls(tmp_path))
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))


async def test_bad_records_never_stop_the_shard(kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name, failed = topic(partitions=1), topic(partitions=1)
    huge = b"x" * (6 * 1024 * 1024 + 10)
    binary_key = b"\xff\xfe\x00"
    records: list[tuple[bytes | None, bytes | None, int | None]] = [
        (b"k", b"", 0), (None, b"null-key", 0), (binary_key, b"\x00\x01\xff", 0), (b"k", huge, 0),
        (b"k", None, 0), (b"k", b"after", 0),
    ]
    await produce(kafka.bootstrap_servers, name, records, max_request_size=8 * 1024 * 1024)
    data = config_data(kafka.bootstrap_servers, name, tmp_path, on_failure=f"kafka://{failed}")
    async with running(data):
        await wait_committed(kafka, name, {0: 6}, timeout=30)
        [record] = await read_topic(kafka.bootstrap_servers, failed, 1)
    seen = [(c["seqs"], c["keys"], c["data"]) for c in calls(tmp_path)]
    flat = [(s, k, d) for seqs, keys, data in seen for s, k, d in zip(seqs, keys, data, strict=True)]
    assert flat == [
        ("0", "k", ""), ("1", "1", "null-key"), ("2", base64.b64encode(binary_key).decode(), "\x00\x01\xff"),
        ("4", "k", ""), ("5", "k", "after"),
    ]
    assert record["requestContext"]["condition"] == "MaximumPayloadSizeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["KinesisBatchInfo"]["startSequenceNumber"] == "3" and record["KinesisBatchInfo"]["batchSize"] == 1
    assert "responseContext" not in record


async def test_a_failure_record_too_large_for_kafka_is_sent_without_payload_and_kept_for_replay(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Six 300 KB records failing together: a 2.4 MB failure record, past a default broker's 1 MB. It
    # used to be retried for ever (the producer refuses it each time), and the shard never moved.
    name, failed = topic(partitions=1), topic(partitions=1)
    values = [f"big-{i}-".encode() + b"z" * 300_000 for i in range(6)]
    await produce(kafka.bootstrap_servers, name, [(b"k", v, 0) for v in values], max_request_size=8 * 1024 * 1024)
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"MODE": "fail"},
                       on_failure=f"kafka://{failed}",
                       mapping={"batch_size": 6, "maximum_retry_attempts": 0, "maximum_batching_window_in_seconds": 1})
    async with running(data):
        await wait_committed(kafka, name, {0: 6}, timeout=30)  # the shard moved on
        [record] = await read_topic(kafka.bootstrap_servers, failed, 1)
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["KinesisBatchInfo"]["batchSize"] == 6
    assert "payload" not in record
    omitted = record["payloadOmitted"]
    assert omitted["size"] > 2_400_000 and f"kafka://{failed}" in omitted["reason"]
    kept = json.loads((tmp_path / "state" / "dead-letter" / omitted["deadLetter"]).read_bytes())
    assert kept["KinesisBatchInfo"] == record["KinesisBatchInfo"]
    assert [base64.b64decode(r["kinesis"]["data"]) for r in kept["payload"]["Records"]] == values
    # `router replay` reads the dead letter as it reads any destination, and invokes the batch again.
    invocations = len(calls(tmp_path))
    config = load_config_data(data, {})
    assert await replay(config, "dead-letter://on-failure", None, dry_run=True) == 0
    assert await replay(config, "dead-letter://on-failure", None, dry_run=False) == 1  # still poisoned
    out = [x.split("\t") for x in capsys.readouterr().out.splitlines() if x.startswith("dead-letter/")]
    assert [x[1] for x in out] == ["would invoke recorder", "failed"]
    assert len(calls(tmp_path)) == invocations + 1
    assert calls(tmp_path)[-1]["seqs"] == [str(i) for i in range(6)]


async def test_poison_record_with_bisect_goes_to_kafka_destination(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name, failed = topic(partitions=1), topic(partitions=1)
    await produce(kafka.bootstrap_servers, name, [(b"k", f"r{i}".encode(), 0) for i in range(8)])
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"MODE": "poison", "POISON": "r5"},
                       on_failure=f"kafka://{failed}",
                       mapping={"batch_size": 8, "maximum_retry_attempts": 1, "bisect_batch_on_function_error": True,
                                "maximum_batching_window_in_seconds": 1})
    async with running(data) as r:
        await wait_committed(kafka, name, {0: 8}, timeout=30)
        [record] = await read_topic(kafka.bootstrap_servers, failed, 1)
        assert r.metric("router_bisections_total", mapping="clicks") == 3
        assert r.metric("router_on_failure_records_total", mapping="clicks") == 1
    assert [c["seqs"] for c in calls(tmp_path)] == [
        [str(i) for i in range(8)], ["0", "1", "2", "3"], ["4", "5", "6", "7"], ["4", "5"], ["4"], ["5"], ["5"],
        ["6", "7"],
    ]
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["requestContext"]["functionArn"] == "arn:aws:lambda:eu-west-1:123456789012:function:recorder"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    info = record["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == ("5", "5", 1)
    assert info["shardId"] == "shardId-000000000000" and info["streamArn"].endswith(f":stream/{name}")
    [payload_record] = record["payload"]["Records"]
    assert base64.b64decode(payload_record["kinesis"]["data"]) == b"r5"


async def test_partial_failures_retry_from_the_lowest_and_exhaust(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    # The AWS-recorded case: 6 records, batch size 3, 3 retries, record 6 always reported failed.
    name, failed = topic(partitions=1), topic(partitions=1)
    values = [b"ok1", b"ok2", b"ok3", b"ok4", b"ok5", b"fail6"]
    await produce(kafka.bootstrap_servers, name, [(b"k", v, 0) for v in values])
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"MODE": "items"}, on_failure=f"kafka://{failed}",
                       mapping={"batch_size": 3, "maximum_retry_attempts": 3,
                                "function_response_types": ["ReportBatchItemFailures"]})
    async with running(data):
        await wait_committed(kafka, name, {0: 6}, timeout=30)
        [record] = await read_topic(kafka.bootstrap_servers, failed, 1)
    counts = {str(i): 0 for i in range(6)}
    for call in calls(tmp_path):
        for seq in call["seqs"]:
            counts[seq] += 1
    assert counts == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 1, "5": 5}
    assert record["requestContext"]["approximateInvokeCount"] == 4
    assert record["responseContext"]["functionError"] is None
    assert record["KinesisBatchInfo"]["batchSize"] == 1 and record["KinesisBatchInfo"]["startSequenceNumber"] == "5"


async def test_invalid_item_failure_response_fails_the_whole_batch(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name, failed = topic(partitions=1), topic(partitions=1)
    await produce(kafka.bootstrap_servers, name, [(b"k", b"a", 0), (b"k", b"b", 0)])
    response = json.dumps({"batchItemFailures": [{"itemIdentifier": ""}]})
    data = config_data(kafka.bootstrap_servers, name, tmp_path, env={"MODE": "return", "RESPONSE": response},
                       on_failure=f"kafka://{failed}",
                       mapping={"maximum_retry_attempts": 2, "function_response_types": ["ReportBatchItemFailures"],
                                "maximum_batching_window_in_seconds": 1})
    async with running(data):
        await wait_committed(kafka, name, {0: 2}, timeout=30)
        [record] = await read_topic(kafka.bootstrap_servers, failed, 1)
    assert [c["seqs"] for c in calls(tmp_path)] == [["0", "1"]] * 3
    assert record["requestContext"]["approximateInvokeCount"] == 3 and record["KinesisBatchInfo"]["batchSize"] == 2


async def test_expired_head_record_goes_out_as_record_age_exceeded(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    # AWS: retries 0, age 60 s, one 80 s old record then 5 fresh → RecordAgeExceeded (batchSize 1,
    # approximateInvokeCount 1, no responseContext) and one invocation with the 5 fresh records.
    name, failed = topic(partitions=1), topic(partitions=1)
    now_ms = int(time.time() * 1000)
    await produce(kafka.bootstrap_servers, name, [(b"k", b"old", 0)], timestamp_ms=now_ms - 80_000)
    await produce(kafka.bootstrap_servers, name, [(b"k", f"new{i}".encode(), 0) for i in range(5)])
    data = config_data(kafka.bootstrap_servers, name, tmp_path, on_failure=f"kafka://{failed}",
                       mapping={"maximum_retry_attempts": 0, "maximum_record_age_in_seconds": 60,
                                "maximum_batching_window_in_seconds": 1})
    async with running(data):
        await wait_committed(kafka, name, {0: 6}, timeout=30)
        [record] = await read_topic(kafka.bootstrap_servers, failed, 1)
    assert [c["seqs"] for c in calls(tmp_path)] == [["1", "2", "3", "4", "5"]]
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert "responseContext" not in record
    assert record["KinesisBatchInfo"]["batchSize"] == 1 and record["KinesisBatchInfo"]["endSequenceNumber"] == "0"
    assert base64.b64decode(record["payload"]["Records"][0]["kinesis"]["data"]) == b"old"
