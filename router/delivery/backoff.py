"""Capped exponential backoff: the one delay rule every retry loop in router uses.

Stream batches, destination writes, asynchronous system errors, Kafka fetches and MQTT reconnects
all wait "a little, then twice as long, up to a cap" between attempts. Lambda documents the shape
only for asynchronous throttles and system errors ("an interval growing exponentially from 1 s to a
maximum of 5 min"); its stream backoff is undocumented and AWS recorded ~8 attempts in 60 s, which
is what a 1 s base doubling with jitter gives. Written once so the loops cannot drift apart.

`delay(n)` is the wait before retry `n` (1 = the first): `min(cap, first * 2 ** (n - 1))`. With
`jitter`, the delay is drawn from the upper half of that ("equal jitter", [d/2, d]), so retries of
many shards or replicas that failed together do not hit a recovering broker in step, and a retry
never comes sooner than half the nominal delay.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

# 2 ** 62 already dwarfs any cap; larger exponents only risk an OverflowError on floats.
_MAX_EXPONENT = 62


@dataclass(frozen=True, slots=True)
class Backoff:
    first: float
    cap: float
    jitter: bool = False
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def nominal(self, n: int) -> float:
        """The delay before retry `n` without jitter."""
        return float(min(self.cap, self.first * 2.0 ** min(max(n, 1) - 1, _MAX_EXPONENT)))

    def delay(self, n: int) -> float:
        ceiling = self.nominal(n)
        if not self.jitter:
            return ceiling
        return ceiling / 2 + self.rng() * ceiling / 2
