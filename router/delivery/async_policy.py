"""What happens to an asynchronous event after an attempt: retry it later, or give it up.

Pure decisions, kept apart from the queue and the dispatch loop so that Lambda's rules (reference
3.2) can be checked without a clock, a database or a worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.config import AsyncInvokeSettings
from router.delivery.async_record import Condition
from router.delivery.backoff import Backoff

# Lambda retries throttles and system errors "with an interval growing exponentially from 1 s to a
# maximum of 5 min", without consuming MaximumRetryAttempts.
SYSTEM_RETRY = Backoff(first=1.0, cap=300.0)
# A destination that refused a record is retried quickly at first; the record is kept until written.
DESTINATION_RETRY = Backoff(first=0.5, cap=30.0)


@dataclass(frozen=True, slots=True)
class RetryAt:
    due_at: float
    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    condition: Condition


Decision = RetryAt | GiveUp


def retry_delay(delays: Sequence[float], retry_number: int) -> float:
    """Delay before retry `retry_number` (1 = the first retry); the last configured value repeats."""
    if not delays:
        return 0.0
    return float(delays[min(max(retry_number, 1), len(delays)) - 1])


def age_exceeded(mapping: AsyncInvokeSettings, *, accepted_at: float, at: float) -> bool:
    """True when an event would be older than MaximumEventAgeInSeconds at time `at`."""
    return at - accepted_at > mapping.maximum_event_age_in_seconds


def after_function_error(
    mapping: AsyncInvokeSettings, *, invoke_count: int, accepted_at: float, now: float
) -> Decision:
    """After the `invoke_count`-th invocation ended in a function error.

    The age is checked *ahead* of the retry, as AWS does: when waiting for the next retry would take
    the event past its maximum age, it is given up at once with EventAgeExceeded instead of waiting
    only to find it expired (AWS-recorded: max age 60 s, first failure, EventAgeExceeded with
    approximateInvokeCount 1 right away).
    """
    if invoke_count > mapping.maximum_retry_attempts:
        return GiveUp(Condition.RETRIES_EXHAUSTED)
    delay = retry_delay(mapping.retry_delays_seconds, invoke_count)
    if age_exceeded(mapping, accepted_at=accepted_at, at=now + delay):
        return GiveUp(Condition.EVENT_AGE_EXCEEDED)
    return RetryAt(due_at=now + delay, delay=delay)


def after_system_error(
    mapping: AsyncInvokeSettings, *, consecutive_errors: int, accepted_at: float, now: float
) -> Decision:
    """Throttle-like failures are retried until the event's maximum age, never counted as attempts."""
    delay = SYSTEM_RETRY.delay(consecutive_errors)
    if age_exceeded(mapping, accepted_at=accepted_at, at=now + delay):
        return GiveUp(Condition.EVENT_AGE_EXCEEDED)
    return RetryAt(due_at=now + delay, delay=delay)
