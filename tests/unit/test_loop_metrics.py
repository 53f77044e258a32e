"""The lock-free invocation metrics expose exactly what prometheus_client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from router.observability.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.005, 0.01, 0.1, 1, 2.5, 900)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text a scrape returns, minus the _created samples (their timestamps differ)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_counter_and_histogram_scrape_like_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = LoopCounter("router_invocations", "Invocations.", ["function", "outcome"], ours)
    reference_counter = Counter("router_invocations", "Invocations.", ["function", "outcome"], registry=theirs)
    histogram = LoopHistogram("router_duration_seconds", "Durations.", ["function"], ours, BUCKETS)
    reference_histogram = Histogram(
        "router_duration_seconds", "Durations.", ["function"], buckets=BUCKETS, registry=theirs)

    for function, outcome, n in (("a", "success", 3), ("a", "error", 1), ("b", "success", 2)):
        for _ in range(n):
            counter.labels(function, outcome).inc()
            reference_counter.labels(function, outcome).inc()
    counter.labels(function="b", outcome="timeout").inc(2.5)
    reference_counter.labels(function="b", outcome="timeout").inc(2.5)
    # Values on a bound land in that bucket (le is inclusive), beyond the last in +Inf.
    for function, value in (("a", 0.0001), ("a", 0.005), ("a", 0.0051), ("a", 1.0), ("a", 901.0), ("b", 0.1)):
        histogram.labels(function).observe(value)
        reference_histogram.labels(function).observe(value)

    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("router_invocations_total", {"function": "a", "outcome": "success"}) == 3
    assert ours.get_sample_value("router_duration_seconds_bucket", {"function": "a", "le": "0.005"}) == 2
    assert ours.get_sample_value("router_duration_seconds_bucket", {"function": "a", "le": "+Inf"}) == 5
    created = ours.get_sample_value("router_invocations_created", {"function": "a", "outcome": "success"})
    assert created is not None and created > 0


def test_labels_are_checked_and_counters_only_go_up() -> None:
    counter = LoopCounter("c", "C.", ["function", "outcome"], CollectorRegistry())
    with pytest.raises(ValueError, match="expected 2 values"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="expected function, outcome"):
        counter.labels(function="f", result="x")
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("f", "success").inc(-1)
    assert counter.labels("f", "success") is counter.labels(function="f", outcome="success")


def test_a_name_clash_is_refused_as_for_any_collector() -> None:
    registry = CollectorRegistry()
    Counter("router_invocations", "Taken.", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoopCounter("router_invocations", "Again.", ["function"], registry)
