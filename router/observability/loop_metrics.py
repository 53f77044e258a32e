"""Counters and histograms updated on every invocation, without a lock per update.

prometheus_client's metrics take a mutex on every inc() and observe() (they may be updated from
any thread); counting one invocation that way cost ~4 us of the daemon's ~25 us per no-op
invocation. These are only ever updated from the event loop's thread, so a plain attribute add is
enough; a scrape reads them through the registry as any other collector, with the same names,
types and labels a prometheus_client Counter or Histogram would expose.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# How prometheus_client spells a bucket bound ("0.005", "1.0", "+Inf"); untyped upstream.
_bound_text = cast(Callable[[float], str], floatToGoString)


class CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount (le is inclusive); +Inf catches the rest.
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1
        self.sum += amount


Child = TypeVar("Child", CounterChild, HistogramChild)


class _Labelled(Generic[Child]):
    """One child per combination of label values, made on first use by `_new_child`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}

    def labels(self, *values: str, **named: str) -> Child:
        """The child for these label values (by position or by name); callers keep it."""
        if values and named:
            raise ValueError("labels: pass values by position or by name, not both")
        if named:
            if set(named) != set(self._labelnames):
                raise ValueError(f"labels: expected {', '.join(self._labelnames)}, got {', '.join(named)}")
            values = tuple(named[n] for n in self._labelnames)
        if len(values) != len(self._labelnames):
            raise ValueError(f"labels: expected {len(self._labelnames)} values, got {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        """Forget every child whose labels include these (prometheus_client's method of that name)."""
        where = {self._labelnames.index(name): str(value) for name, value in labels.items()}
        for key in [k for k in self._children if all(k[i] == v for i, v in where.items())]:
            del self._children[key]

    def _new_child(self) -> Child:
        raise NotImplementedError


class LoopCounter(_Labelled[CounterChild]):
    """A labelled counter."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        super().__init__(name, documentation, labelnames)
        registry.register(self)

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in list(self._children.items()):
            family.add_metric(key, child.value, created=child.created)
        yield family


class LoopHistogram(_Labelled[HistogramChild]):
    """A labelled histogram with fixed buckets (an +Inf bucket is added)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._le = tuple(_bound_text(b) for b in bounds)
        registry.register(self)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._le, list(child.counts), strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(key, buckets, child.sum)
        yield family
