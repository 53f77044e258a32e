"""Handlers written the way powertools' documentation writes them, unmodified for router.

Each appends what it saw to RECORD_FILE (one JSON line per record), so the tests judge what
router delivered by what powertools parsed.

kinesis_batch: BatchProcessor(EventType.KinesisDataStreams) + process_partial_response; a record
whose data starts with "fail" fails once (a marker file next to RECORD_FILE remembers it), so its
batch item failure must make router retry from it.
s3_objects: the S3Event data class through the event_source decorator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


def _append(line: dict[str, Any]) -> None:
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def record_handler(record: KinesisStreamRecord) -> None:
    data = record.kinesis.data_as_text()
    marker = Path(os.environ["RECORD_FILE"]).with_name(f"failed-{data}")
    first_time = data.startswith("fail") and not marker.exists()
    _append({"data": data, "sequence": record.kinesis.sequence_number, "failed": first_time})
    if first_time:
        marker.touch()
        raise ValueError(f"{data} fails once")


def kinesis_batch(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)


@event_source(data_class=S3Event)
def s3_objects(event: S3Event, context: LambdaContext) -> None:
    for record in event.records:
        # As powertools' documentation does: S3 form-encodes the key in events.
        _append({"bucket": record.s3.bucket.name, "key": unquote_plus(record.s3.get_object.key),
                 "size": record.s3.get_object.size, "event": record.event_name})
