"""The running daemon's collector settings: startup objects frozen, young collections rarer."""

from __future__ import annotations

import gc

from router.app import GC_THRESHOLDS, tune_garbage_collector


def test_startup_objects_leave_the_collector_and_thresholds_rise() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_freeze_count() > 1000  # at least the imported modules' objects
        assert gc.get_threshold() == GC_THRESHOLDS
        # Cycles made afterwards are still found.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
