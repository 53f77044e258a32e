"""MaximumRecordAgeInSeconds: records too old to be worth delivering leave the front of the batch.

Lambda checks the age per record, at the head of the batch, before every attempt (AWS-recorded:
one 80 s old record followed by five fresh ones produced a RecordAgeExceeded record for the old one
alone and a normal invocation with the five). Only the leading run of expired records is split
off: Kafka CREATE_TIME timestamps are not monotonic, and dropping an old record from the middle
would deliver its successors ahead of records that were kept before it.

Age is wall-clock now minus the record's arrival time (its Kafka timestamp).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

NO_LIMIT = -1


class HasArrival(Protocol):
    @property
    def arrival(self) -> float: ...


R = TypeVar("R", bound=HasArrival)


def is_expired(record: HasArrival, now: float, max_age_seconds: int) -> bool:
    return max_age_seconds != NO_LIMIT and now - record.arrival > max_age_seconds


def split_expired(records: Sequence[R], now: float, max_age_seconds: int) -> tuple[list[R], list[R]]:
    """(expired head, the rest) of a batch in shard order."""
    if max_age_seconds == NO_LIMIT:
        return [], list(records)
    count = 0
    for record in records:
        if not is_expired(record, now, max_age_seconds):
            break
        count += 1
    return list(records[:count]), list(records[count:])
