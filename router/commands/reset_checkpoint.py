"""`router reset-checkpoint MAPPING --shard N (--sequence-number S | --trim-horizon | --latest |
--timestamp T)`: move one shard's checkpoint, only while no daemon consumes the mapping.

A checkpoint names the last record done, so `--sequence-number S` makes the shard resume *after*
S (as a KCL checkpoint does); `--trim-horizon` resumes at the oldest record, `--latest` after the
newest, `--timestamp T` at the first record whose arrival time is at or after T (epoch seconds or
ISO-8601). The other shards keep their checkpoints.

Refusing while the group is active takes two steps, because brokers differ. If DescribeGroups
reports members with assignments (Kafka does), we refuse at once. Otherwise (an empty group, or a
broker such as Tansu that reports members without assignments and keeps departed members listed
for a while) we join the group ourselves: only if the group hands us *every* shard is nobody else
consuming, and the commit is then made with our own generation, so a daemon that joins meanwhile
cannot be overwritten by it. Joining an active group causes one rebalance there before we leave.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from datetime import datetime
from typing import Any

from router.commands import add_config_argument
from router.commands.shards import stream_mapping
from router.config import Config, ConfigError, KafkaConfig, load_config
from router.events.kinesis import offset_of, partition_of, shard_id

JOIN_TIMEOUT_SECONDS = 30.0


class Refused(Exception):
    """The reset cannot be done now; the message says why and what to do."""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "reset-checkpoint", help="move a shard's checkpoint while the mapping's group has no members")
    parser.add_argument("mapping", metavar="MAPPING", help="a stream event source mapping name")
    parser.add_argument("--shard", required=True, help="partition number or shard id (shardId-000000000003)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--sequence-number", metavar="S", help="resume after this record")
    target.add_argument("--trim-horizon", action="store_true", help="resume at the oldest record")
    target.add_argument("--latest", action="store_true", help="resume after the newest record")
    target.add_argument("--timestamp", metavar="T", help="resume at the first record at/after T (epoch s or ISO-8601)")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def parse_shard(text: str) -> int:
    if text.isdigit():
        return int(text)
    return partition_of(text)


def parse_timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} needs a time zone (e.g. a trailing Z)")
    return moment.timestamp()


async def first_offset_at(kafka: KafkaConfig, topic: str, partition: int, stamp: float, end: int) -> int:
    """The first offset whose timestamp is at or after `stamp` (`end` if none), checked by reading:
    the broker's offset-for-time answer is only a starting hint (Tansu's is too early)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from router.kafka_client import client_options

    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(**client_options(kafka), client_id=f"{kafka.client_id}-reset",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        millis = int(stamp * 1000)
        hint = (await consumer.offsets_for_times({tp: millis})).get(tp)
        start = (await consumer.beginning_offsets([tp]))[tp]
        if hint is None:
            return end
        consumer.seek(tp, max(hint.offset, start))
        while await consumer.position(tp) < end:
            records = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
            for record in records:
                if record.timestamp >= millis:
                    return int(record.offset)
        return end
    finally:
        await consumer.stop()


async def _target_offset(config: Config, topic: str, partition: int, args: argparse.Namespace) -> int:
    from router.sources.kafka import high_watermarks

    assert config.kafka is not None
    end = (await high_watermarks(config.kafka, topic, [partition]))[partition]
    if args.latest:
        return end
    if args.trim_horizon:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from router.kafka_client import client_options

        consumer = AIOKafkaConsumer(**client_options(config.kafka), enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            return int((await consumer.beginning_offsets([tp]))[tp])
        finally:
            await consumer.stop()
    if args.timestamp is not None:
        return await first_offset_at(config.kafka, topic, partition, parse_timestamp(args.timestamp), end)
    offset = offset_of(args.sequence_number) + 1
    if offset > end:
        raise Refused(f"sequence number {args.sequence_number} is beyond the newest record of "
                      f"{shard_id(partition)} (high watermark {end})")
    return offset


def _join_listener() -> Any:
    """A rebalance listener whose `assigned` event is set while we hold partitions (aiokafka is
    imported here, not at module level: `router validate` must not pay for it)."""
    from aiokafka import ConsumerRebalanceListener

    class Joined(ConsumerRebalanceListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.assigned = asyncio.Event()

        async def on_partitions_revoked(self, revoked: set[Any]) -> None:
            self.assigned.clear()

        async def on_partitions_assigned(self, assigned: set[Any]) -> None:
            if assigned:
                self.assigned.set()

    return Joined()


async def reset_checkpoint(config: Config, name: str, partition: int, args: argparse.Namespace) -> str:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from router.sources.kafka import consumer_options, describe_group

    mapping = stream_mapping(config, name)
    assert config.kafka is not None
    topic, group_id = mapping.kafka_topic, mapping.group_id(name)
    group = await describe_group(config.kafka, group_id, topic)
    active = [m for m in group.members if m.partitions]
    if active:
        raise Refused(f"group {group_id} has {len(active)} active member(s) consuming {topic}; "
                      "stop the daemons running this mapping first")
    offset = await _target_offset(config, topic, partition, args)
    options = consumer_options(config, name, mapping)
    options["client_id"] = f"{config.kafka.client_id}-reset"
    claim = AIOKafkaConsumer(**options)
    await claim.start()
    try:
        joined = _join_listener()
        claim.subscribe([topic], listener=joined)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(joined.assigned.wait(), JOIN_TIMEOUT_SECONDS)
        mine = {tp.partition for tp in claim.assignment()}
        every = set(claim.partitions_for_topic(topic) or ())
        if not mine:
            raise Refused(f"the broker did not let us join group {group_id} within {JOIN_TIMEOUT_SECONDS:.0f}s; "
                          "members may still be registered (some brokers, e.g. Tansu, keep departed members "
                          "for a while): make sure no daemon runs this mapping and try again")
        if mine != every:
            raise Refused(f"group {group_id} has other live members (we were given {sorted(mine)} of "
                          f"{sorted(every)}); stop the daemons running this mapping first")
        if partition not in every:
            raise Refused(f"{topic} has no partition {partition}")
        tp = TopicPartition(topic, partition)
        before = await claim.committed(tp)
        await claim.commit({tp: offset})
    finally:
        await claim.stop()
    old = "none" if before is None or before <= 0 else str(before - 1)
    new = "none" if offset <= 0 else str(offset - 1)
    return (f"{shard_id(partition)} of {name}: checkpoint {old} -> {new} "
            f"(the next record read is offset {offset})")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        partition = parse_shard(args.shard)
        message = asyncio.run(reset_checkpoint(config, args.mapping, partition, args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"router: {problem}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"router: refused: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"router: kafka: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0
