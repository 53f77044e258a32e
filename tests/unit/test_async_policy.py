"""Lambda's async retry rules (reference 3.2) as pure decisions."""

from __future__ import annotations

from typing import Any

import pytest

from router.config import BucketMapping
from router.delivery.async_policy import (
    DESTINATION_RETRY,
    SYSTEM_RETRY,
    GiveUp,
    RetryAt,
    after_function_error,
    after_system_error,
    retry_delay,
)
from router.delivery.async_record import Condition


def mapping(**overrides: Any) -> BucketMapping:
    data: dict[str, Any] = {
        "function_name": "fn",
        "bucket_notifications": {"transport": "webhook", "bucket": "photos"},
    }
    data.update(overrides)
    return BucketMapping.model_validate(data)


def test_retry_delay_indexes_by_retry_and_repeats_the_last_value() -> None:
    assert retry_delay([60, 120], 1) == 60
    assert retry_delay([60, 120], 2) == 120
    assert retry_delay([60, 120], 5) == 120
    assert retry_delay([5], 2) == 5


def test_function_error_is_retried_with_lambdas_default_delays() -> None:
    m = mapping()
    first = after_function_error(m, invoke_count=1, accepted_at=1000.0, now=1001.0)
    assert first == RetryAt(due_at=1061.0, delay=60.0)
    second = after_function_error(m, invoke_count=2, accepted_at=1000.0, now=1062.0)
    assert second == RetryAt(due_at=1182.0, delay=120.0)


def test_retries_exhausted_after_maximum_retry_attempts_plus_one_invocations() -> None:
    m = mapping(maximum_retry_attempts=2)
    assert after_function_error(m, invoke_count=3, accepted_at=0.0, now=200.0) == GiveUp(Condition.RETRIES_EXHAUSTED)
    zero = mapping(maximum_retry_attempts=0)
    assert after_function_error(zero, invoke_count=1, accepted_at=0.0, now=1.0) == GiveUp(Condition.RETRIES_EXHAUSTED)


def test_event_age_is_checked_ahead_of_the_retry_as_aws_recorded() -> None:
    # AWS: max age 60 s, 2 retries, ~1 min delay -> EventAgeExceeded right after the first failure.
    m = mapping(maximum_event_age_in_seconds=60, retry_delays_seconds=[60, 120])
    decision = after_function_error(m, invoke_count=1, accepted_at=100.0, now=100.5)
    assert decision == GiveUp(Condition.EVENT_AGE_EXCEEDED)


def test_retry_that_fits_inside_the_age_is_scheduled() -> None:
    m = mapping(maximum_event_age_in_seconds=60, retry_delays_seconds=[10, 10])
    assert isinstance(after_function_error(m, invoke_count=1, accepted_at=100.0, now=101.0), RetryAt)
    assert after_function_error(m, invoke_count=2, accepted_at=100.0, now=155.0) == GiveUp(
        Condition.EVENT_AGE_EXCEEDED
    )


@pytest.mark.parametrize(("errors", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (50, 300.0)])
def test_system_errors_back_off_exponentially_to_five_minutes(errors: int, delay: float) -> None:
    assert SYSTEM_RETRY.delay(errors) == delay


def test_system_errors_give_up_only_when_the_event_would_expire() -> None:
    m = mapping(maximum_event_age_in_seconds=60)
    assert isinstance(after_system_error(m, consecutive_errors=3, accepted_at=0.0, now=10.0), RetryAt)
    assert after_system_error(m, consecutive_errors=7, accepted_at=0.0, now=10.0) == GiveUp(
        Condition.EVENT_AGE_EXCEEDED
    )


def test_delivery_backoff_is_capped() -> None:
    assert DESTINATION_RETRY.delay(1) == 0.5
    assert DESTINATION_RETRY.delay(2) == 1.0
    assert DESTINATION_RETRY.delay(30) == 30.0
