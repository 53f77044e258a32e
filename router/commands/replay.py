"""`router replay DESTINATION_URI`: re-invoke what the on-failure destination kept.

Every failure record router writes carries the whole invocation event: `payload` for stream
batches, `requestPayload` for asynchronous events. Replay reads those records back (an S3 prefix
or a Kafka topic, from its beginning to its current end, or the local dead letter of records a
destination could not take), invokes the function named in the record
(or `--function`) in a real worker, and prints one line per record with its outcome. Nothing is
deleted or committed: replay is safe to repeat, and `--dry-run` only lists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from router.commands import add_config_argument
from router.config import Config, ConfigError, load_config


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "replay", help="re-invoke the payloads stored in on-failure records")
    parser.add_argument("destination", metavar="DESTINATION_URI",
                        help="s3://BUCKET/PREFIX, kafka://TOPIC, or dead-letter://on-failure for the records a "
                             "destination could not take")
    parser.add_argument("--function", default=None, help="invoke this function instead of the recorded one")
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    add_config_argument(parser)
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class FailureRecord:
    source: str  # the S3 key or topic/partition/offset it was read from
    function: str | None
    condition: str | None
    event: Any
    invocation_type: str  # RequestResponse for stream batches, Event for async events


def parse_failure_record(source: str, body: bytes) -> FailureRecord | None:
    try:
        record = json.loads(body)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    context = record.get("requestContext") or {}
    arn = str(context.get("functionArn") or "")
    # arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]
    parts = arn.split(":")
    function = parts[6] if len(parts) >= 7 and parts[5] == "function" else None
    if "payload" in record:
        return FailureRecord(source, function, context.get("condition"), record["payload"], "RequestResponse")
    if "requestPayload" in record:
        return FailureRecord(source, function, context.get("condition"), record["requestPayload"], "Event")
    return None


async def _read_s3(config: Config, bucket: str, prefix: str) -> AsyncIterator[tuple[str, bytes]]:
    from aiobotocore.session import get_session

    s3 = config.s3
    if s3 is None:
        raise ConfigError(["s3: replaying from s3:// needs an s3 section"])
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region or config.region,
        aws_access_key_id=s3.access_key_id.get_secret_value() if s3.access_key_id else None,
        aws_secret_access_key=s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
    ) as client:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                response = await client.get_object(Bucket=bucket, Key=item["Key"])
                async with response["Body"] as stream:
                    yield item["Key"], await stream.read()


async def _read_kafka(config: Config, topic: str) -> AsyncIterator[tuple[str, bytes]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    if config.kafka is None:
        raise ConfigError(["kafka: replaying from kafka:// needs a kafka section"])
    from router.kafka_client import client_options

    consumer = AIOKafkaConsumer(
        **client_options(config.kafka), enable_auto_commit=False, group_id=None, auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            await consumer.client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp] > await consumer.position(tp)}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset < ends[tp]:
                        yield f"{topic}/{tp.partition}/{message.offset}", message.value or b""
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def _read_dead_letter(config: Config, source: str) -> AsyncIterator[tuple[str, bytes]]:
    """Records a destination could not take, kept whole under `<state_dir>/dead-letter/<source>/`
    (destination_fallback), oldest first."""
    folder = Path(config.state_dir) / "dead-letter" / source
    if not folder.is_dir():
        raise ConfigError([f"dead-letter://{source}: no such folder {folder}"])
    for path in sorted(folder.glob("*.payload"), key=lambda p: (p.stat().st_mtime, p.name)):
        yield f"dead-letter/{source}/{path.name}", path.read_bytes()


def _records(config: Config, uri: str) -> AsyncIterator[tuple[str, bytes]]:
    parts = urlsplit(uri)
    if parts.scheme == "dead-letter":
        return _read_dead_letter(config, parts.netloc or "on-failure")
    if parts.scheme == "s3":
        return _read_s3(config, parts.netloc, parts.path.lstrip("/"))
    if parts.scheme == "kafka":
        return _read_kafka(config, parts.netloc)
    raise ConfigError([f"{uri}: replay reads s3://BUCKET/PREFIX, kafka://TOPIC or dead-letter://on-failure"])


async def replay(config: Config, uri: str, function: str | None, dry_run: bool) -> int:
    from router.runtime.pool import WorkerPool

    pool = WorkerPool(config)
    await pool.start()
    counts = {"succeeded": 0, "failed": 0, "skipped": 0}
    try:
        async for source, body in _records(config, uri):
            record = parse_failure_record(source, body)
            target = function or (record.function if record else None)
            if record is None or target is None or target not in config.functions:
                why = "not a failure record" if record is None else f"unknown function {target!r}"
                print(f"{source}\tskipped\t{why}")
                counts["skipped"] += 1
                continue
            if dry_run:
                print(f"{source}\twould invoke {target}\t{record.condition or ''}")
                continue
            result = await pool.invoke(target, record.event, invocation_type=record.invocation_type)  # type: ignore[arg-type]
            outcome = "succeeded" if result.ok else "failed"
            counts[outcome] += 1
            detail = "" if result.ok else f"{result.error_type}"
            print(f"{source}\t{outcome}\t{target}\t{result.request_id}\t{detail}")
    finally:
        await pool.close()
    print(f"replayed: {counts['succeeded']} succeeded, {counts['failed']} failed, {counts['skipped']} skipped",
          file=sys.stderr)
    return 1 if counts["failed"] else 0


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        return asyncio.run(replay(config, args.destination, args.function, args.dry_run))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"router: {problem}", file=sys.stderr)
        return 2
