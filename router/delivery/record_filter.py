"""Filter criteria on a stream shard: a record that matches none of the mapping's patterns is done
without being invoked.

Lambda (reference 1.8): records that do not match are dropped silently: not invoked, not sent to
any destination, and the shard's iterator moves past them (a batch whose records are all filtered
causes no invocation). The patterns see a Kinesis record's fields (`partitionKey`,
`sequenceNumber`, `approximateArrivalTimestamp`, …) and its `data` parsed as JSON from the raw
bytes; data that is not JSON matches only patterns that do not reach into `data`. The records that
pass are the source's own objects, so what the function receives is byte-identical to the stream.

`data` is parsed only when some pattern names it, so a filter on the partition key alone costs no
JSON parsing.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.delivery.filter_criteria import CompiledFilters, stream_document
from router.events.kinesis import StreamRecord


def split_by_filters(
    filters: CompiledFilters, records: Sequence[StreamRecord]
) -> tuple[list[StreamRecord], list[StreamRecord]]:
    """(records to invoke, records filtered out), each in shard order."""
    parse = filters.needs_data
    matches = filters.matches
    kept: list[StreamRecord] = []
    dropped: list[StreamRecord] = []
    for record in records:
        document = stream_document(record.partition_key, str(record.offset), record.arrival, record.value, parse)
        if matches(document):
            kept.append(record)
        else:
            dropped.append(record)
    return kept, dropped
