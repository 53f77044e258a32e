"""The one backoff rule every retry loop uses."""

from __future__ import annotations

import pytest

from router.delivery.backoff import Backoff


@pytest.mark.parametrize(("n", "delay"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0),
                                          (10_000, 300.0)])
def test_delay_doubles_from_first_to_the_cap(n: int, delay: float) -> None:
    assert Backoff(1.0, 300.0).delay(n) == delay


def test_equal_jitter_stays_in_the_upper_half_of_the_nominal_delay() -> None:
    assert Backoff(2.0, 100.0, jitter=True, rng=lambda: 0.0).delay(3) == 4.0
    assert Backoff(2.0, 100.0, jitter=True, rng=lambda: 0.999).delay(3) == pytest.approx(7.996)
    assert Backoff(2.0, 100.0, jitter=True).nominal(3) == 8.0
