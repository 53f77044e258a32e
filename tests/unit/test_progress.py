"""The progress board decides readiness and the watchdog; drive it with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from router.observability.progress import ProgressBoard


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def board(clock: FakeClock) -> ProgressBoard:
    return ProgressBoard(stall_timeout=300, clock=clock)


def test_idle_tracker_never_stalls(board: ProgressBoard, clock: FakeClock) -> None:
    board.tracker("clicks/shardId-000000000000")
    clock.advance(10_000)
    assert board.problems() == []
    assert board.longest_stall() == 0.0


def test_pending_work_without_progress_stalls_after_timeout(board: ProgressBoard, clock: FakeClock) -> None:
    shard = board.tracker("clicks/shardId-000000000001")
    shard.set_pending(True)
    clock.advance(299)
    assert board.problems() == []
    clock.advance(1)
    assert board.problems() == ["clicks/shardId-000000000001: no progress for 300s with work pending"]
    assert board.longest_stall() == pytest.approx(300)


def test_progress_clears_the_stall(board: ProgressBoard, clock: FakeClock) -> None:
    shard = board.tracker("clicks/shardId-000000000001")
    shard.set_pending(True)
    clock.advance(400)
    assert board.problems()
    shard.advanced()
    assert board.problems() == []
    clock.advance(299)
    assert board.problems() == []


def test_going_pending_after_idle_restarts_the_stall_clock(board: ProgressBoard, clock: FakeClock) -> None:
    shard = board.tracker("clicks/shardId-000000000002")
    clock.advance(1000)  # idle for a long time: no stall may be charged for it
    shard.set_pending(True)
    assert shard.stalled_for() == 0.0
    clock.advance(10)
    shard.set_pending(True)  # still pending: the clock keeps running
    assert shard.stalled_for() == pytest.approx(10)
    shard.set_pending(False)
    assert shard.stalled_for() == 0.0


def test_broker_down_is_a_problem_at_once_and_clears_when_up(board: ProgressBoard) -> None:
    kafka = board.tracker("kafka")
    assert kafka.kind == "broker"
    kafka.set_up(False, "connection refused")
    assert board.problems() == ["kafka: down: connection refused"]
    kafka.set_up(True)
    assert board.problems() == []


def test_named_trackers_are_shared_and_removable(board: ProgressBoard, clock: FakeClock) -> None:
    queue = board.tracker("photos/async-queue")
    assert board.tracker("photos/async-queue") is queue
    assert queue.kind == "work"
    queue.set_pending(True)
    clock.advance(301)
    assert len(board.problems()) == 1
    board.remove("photos/async-queue")  # e.g. a revoked shard
    assert board.problems() == []
    assert board.trackers() == []


def test_every_problem_is_named(board: ProgressBoard, clock: FakeClock) -> None:
    board.tracker("mqtt").set_up(False)
    for shard in ("a/shardId-000000000000", "a/shardId-000000000001"):
        board.tracker(shard).set_pending(True)
    clock.advance(600)
    problems = board.problems()
    assert problems[0] == "mqtt: down"
    assert {p.split(":")[0] for p in problems[1:]} == {"a/shardId-000000000000", "a/shardId-000000000001"}
