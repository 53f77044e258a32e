"""`router shards MAPPING`: each shard's checkpoint, high watermark, lag and owner, read from Kafka.

Everything comes from the broker (the group's committed offsets, the partitions' high watermarks,
the group's members), so it works from any host while the daemons run, and shows the truth the
daemons will resume from. The checkpoint is the sequence number of the last record done (committed
offset - 1); a shard without one will start at the mapping's starting_position.

Owners come from the group's member assignments. Brokers that do not report assignments (Tansu
returns them empty) leave the owner "unknown" and the members are listed instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from router.commands import add_config_argument
from router.config import Config, ConfigError, StreamMapping, load_config
from router.events.kinesis import shard_id


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "shards", help="per shard: checkpoint, high watermark, lag, owner (read from Kafka)")
    parser.add_argument("mapping", metavar="MAPPING", help="a stream event source mapping name")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def stream_mapping(config: Config, name: str) -> StreamMapping:
    mapping = config.event_source_mappings.get(name)
    if not isinstance(mapping, StreamMapping):
        streams = ", ".join(sorted(config.stream_mappings())) or "none"
        raise ConfigError([f"event_source_mappings.{name}: not a stream mapping (stream mappings: {streams})"])
    if config.kafka is None:
        raise ConfigError(["kafka: a stream mapping needs a kafka section"])
    return mapping


async def shard_report(config: Config, name: str) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from router.kafka_client import client_options
    from router.sources.kafka import describe_group, high_watermarks, topic_partitions

    mapping = stream_mapping(config, name)
    assert config.kafka is not None
    kafka, topic, group_id = config.kafka, mapping.kafka_topic, mapping.group_id(name)
    # A consumer with the group id that never subscribes: it reads the group's commits, never joins.
    reader = AIOKafkaConsumer(**client_options(kafka), client_id=f"{kafka.client_id}-shards", group_id=group_id,
                              enable_auto_commit=False)
    await reader.start()
    try:
        partitions = await topic_partitions(reader, topic)
        if not partitions:
            raise ConfigError([f"event_source_mappings.{name}.kafka_topic: topic {topic!r} does not exist"])
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = {p: await reader.committed(TopicPartition(topic, p)) for p in partitions}
        beginning = await reader.beginning_offsets(tps)
    finally:
        await reader.stop()
    watermarks = await high_watermarks(kafka, topic, partitions)
    group = await describe_group(kafka, group_id, topic)
    shards = []
    for p in partitions:
        position = committed[p]
        owner = group.owner_of(p)
        shards.append({
            "shard": shard_id(p),
            "checkpoint": str(position - 1) if position is not None and position > 0 else None,
            "committed_offset": position,
            "trim_horizon": beginning[TopicPartition(topic, p)],
            "high_watermark": watermarks[p],
            "lag": None if position is None else max(0, watermarks[p] - position),
            "owner": owner.member_id if owner else None,
            "owner_host": owner.host if owner else None,
        })
    return {
        "mapping": name, "topic": topic, "group_id": group_id, "group_state": group.state,
        "starting_position": mapping.starting_position,
        "assignments_reported": group.assignments_known or not group.members,
        "members": [{"member_id": m.member_id, "client_id": m.client_id, "host": m.host} for m in group.members],
        "shards": shards,
    }


def _print_table(report: dict[str, Any]) -> None:
    print(f"mapping {report['mapping']}  topic {report['topic']}  group {report['group_id']} "
          f"({report['group_state']}, {len(report['members'])} members)")
    rows = [("SHARD", "CHECKPOINT", "HIGH WATERMARK", "LAG", "OWNER")]
    for s in report["shards"]:
        checkpoint = s["checkpoint"] or f"none ({report['starting_position']})"
        owner = s["owner"] or ("unknown" if report["members"] else "-")
        if s["owner"] and s["owner_host"]:
            owner = f"{owner} ({s['owner_host']})"
        rows.append((s["shard"], checkpoint, str(s["high_watermark"]), "-" if s["lag"] is None else str(s["lag"]),
                     owner))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if report["members"] and not report["assignments_reported"]:
        print("owners: the broker does not report member assignments; members of the group:")
        for m in report["members"]:
            print(f"  {m['member_id']} {m['client_id']} {m['host']}".rstrip())


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        report = asyncio.run(shard_report(config, args.mapping))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"router: {problem}", file=sys.stderr)
        return 2
    except Exception as exc:  # the broker did not answer: say so in one line
        print(f"router: kafka: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0
