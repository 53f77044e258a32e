"""The worker's peak-RSS reading: exact when memory was touched, cheap when it was not."""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection

from router.runtime.worker import _PeakRss

_MB = 1024 * 1024


def _measure(conn: Connection) -> None:
    peak = _PeakRss(limit_kb=4096 * 1024)
    before = peak.kb()
    again = peak.kb()  # nothing touched in between: the last reading stands
    blob = bytearray(64 * _MB)
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    grown = peak.kb()
    del blob
    conn.send((before, again, grown, peak.kb()))


def test_peak_follows_touched_memory_in_a_spawned_process() -> None:
    # Spawned, like an execution environment: ru_maxrss there starts at the parent's peak.
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_measure, args=(child,))
    process.start()
    before, again, grown, after_free = parent.recv()
    process.join(10)
    assert again == before
    assert grown - before >= 60 * 1024  # KiB: the 64 MB touched show up
    assert after_free == grown  # a peak, not the current size


def test_limit_near_forces_an_exact_reading() -> None:
    peak = _PeakRss(limit_kb=1)  # any possible growth could cross this limit
    first = peak.kb()
    assert first > 0
    assert peak.kb() >= first
