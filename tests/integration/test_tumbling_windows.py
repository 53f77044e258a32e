"""Tumbling windows on a real Tansu broker with real worker processes and real time (windows of a
few seconds): the fields of every invocation, records in the window of their timestamp, state
carried from one invocation to the next, the final invocation when no record comes, an answer
without state retried, and a SIGKILL in the middle of a window rebuilt from the checkpoint.

The handler (tests/stream_handlers/window_recorder.py) keeps the sequence numbers it saw as its
state, so a final state listing every record once proves exactly-once as the final invocation sees
it.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stream_daemon import committed, config_data, group_of, produce, wait_until
from test_stream_delivery import running, wait_committed
from test_stream_replicas import daemon

from router.devstack import Tansu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]

KEYS = ["Records", "window", "state", "shardId", "eventSourceARN", "isFinalInvokeForWindow",
        "isWindowTerminatedEarly"]


def windowed(kafka: Tansu, name: str, tmp_path: Path, seconds: int, **mapping: Any) -> dict[str, Any]:
    env = mapping.pop("env", None)
    data = config_data(kafka.bootstrap_servers, name, tmp_path,
                       mapping={"tumbling_window_in_seconds": seconds, **mapping}, env=env)
    data["functions"]["recorder"]["handler"] = "window_recorder.handler"
    return data


def invocations(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def finals(tmp_path: Path) -> list[dict[str, Any]]:
    return [c for c in invocations(tmp_path) if c["final"]]


def epoch(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


async def fresh_window(seconds: int, room: float) -> float:
    """Wait, if need be, until the current window has `room` seconds left; its start."""
    now = time.time()
    start = now - now % seconds
    if start + seconds - now < room:
        await asyncio.sleep(start + seconds - now + 0.05)
        start += seconds
    return start


async def test_fields_state_carried_checkpoint_held_and_a_final_without_new_records(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic()
    start = await fresh_window(4, room=3)
    async with running(windowed(kafka, name, tmp_path, 4, batch_size=2)):
        await produce(kafka.bootstrap_servers, name, [(b"k", f"r{i}".encode(), 0) for i in range(5)])
        await wait_until(lambda: sum(len(c["seqs"]) for c in invocations(tmp_path)) >= 5, 15, "five records")
        if not finals(tmp_path):  # the window is still open: nothing of it is checkpointed yet
            assert (await committed(kafka.bootstrap_servers, group_of(name), name, 1))[0] in (None, 0)
        await wait_until(lambda: bool(finals(tmp_path)), 15, "the final invocation")
        await wait_committed(kafka, name, {0: 5})
    calls = invocations(tmp_path)
    final = calls[-1]
    assert final["final"] is True and final["seqs"] == []  # no record came after the window's end
    assert sorted(final["state"]["seqs"], key=int) == [str(i) for i in range(5)]
    assert final["at"] >= epoch(final["window"]["end"])  # made once the window was over
    returned: list[str] = []
    for call in calls:
        assert call["keys"] == KEYS
        assert call["types"] == {"Records": "list", "window": "dict", "state": "dict", "shardId": "str",
                                 "eventSourceARN": "str", "isFinalInvokeForWindow": "bool",
                                 "isWindowTerminatedEarly": "bool"}
        assert call["window"] == {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
                                  "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 4))}
        assert call["shardId"] == "shardId-000000000000"
        assert call["eventSourceARN"] == f"arn:aws:kinesis:eu-west-1:123456789012:stream/{name}"
        assert call["early"] is False and len(call["seqs"]) <= 2
        assert call["state"] == ({"seqs": returned} if returned else {})  # what the previous one returned
        returned = [*returned, *call["seqs"]]
        for arrival in call["arrivals"]:
            assert start <= arrival < start + 4


async def test_records_go_to_the_window_of_their_timestamp_and_batches_never_span_two(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic()
    now = time.time()
    a = now - now % 5 - 20  # two windows in the past: both are over once read
    b = a + 10
    stamps = [a + 1, a + 2, a + 3, b + 1, b + 2, a + 4, b + 3]  # the sixth went back in time: it joins b
    await produce(kafka.bootstrap_servers, name, [(b"k", f"r{i}".encode(), 0) for i in range(7)],
                  timestamps=[int(t * 1000) for t in stamps])
    async with running(windowed(kafka, name, tmp_path, 5, batch_size=10)):
        await wait_committed(kafka, name, {0: 7})
    by_window: dict[str, list[dict[str, Any]]] = {}
    for call in invocations(tmp_path):
        by_window.setdefault(call["window"]["start"], []).append(call)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a))
    assert sorted(by_window) == [iso, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b))]
    first, second = (by_window[k] for k in sorted(by_window))
    assert [s for c in first for s in c["seqs"]] == ["0", "1", "2"]
    assert [s for c in second for s in c["seqs"]] == ["3", "4", "5", "6"]
    assert first[-1]["final"] is True and second[-1]["final"] is True
    for calls, want in ((first, ["0", "1", "2"]), (second, ["3", "4", "5", "6"])):
        assert calls[-1]["state"].get("seqs", []) + calls[-1]["seqs"] == want  # what the final counted


async def test_an_answer_without_state_is_retried_with_the_same_input_state(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic()
    await fresh_window(4, room=3)
    async with running(windowed(kafka, name, tmp_path, 4, batch_size=2, env={"MODE": "nostate_once"})):
        await produce(kafka.bootstrap_servers, name, [(b"k", f"r{i}".encode(), 0) for i in range(4)])
        await wait_until(lambda: bool(finals(tmp_path)), 20, "the final invocation")
        await wait_committed(kafka, name, {0: 4})
    calls = invocations(tmp_path)
    assert calls[0]["seqs"] == calls[1]["seqs"] and calls[0]["state"] == calls[1]["state"] == {}
    assert sorted(finals(tmp_path)[-1]["state"]["seqs"] + finals(tmp_path)[-1]["seqs"], key=int) == \
        ["0", "1", "2", "3"]


async def test_sigkill_mid_window_replays_the_window_from_its_first_record(
        kafka: Tansu, topic: Callable[..., str], tmp_path: Path) -> None:
    name = topic()
    data = windowed(kafka, name, tmp_path, 6, batch_size=2, env={"SLEEP": "0.3"})
    await fresh_window(6, room=5)
    await produce(kafka.bootstrap_servers, name, [(b"k", f"r{i}".encode(), 0) for i in range(8)])
    async with daemon(tmp_path, data, "first") as first:
        await wait_until(lambda: len(invocations(tmp_path)) >= 2, 20, "two invocations of the window")
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
    killed = invocations(tmp_path)
    assert not any(c["final"] for c in killed)
    assert (await committed(kafka.bootstrap_servers, group_of(name), name, 1))[0] in (None, 0)  # held
    async with daemon(tmp_path, data, "second"):
        await wait_committed(kafka, name, {0: 8}, timeout=60)
    replayed = [c for c in invocations(tmp_path) if c["replica"] == "second"]
    assert replayed[0]["seqs"][0] == "0" and replayed[0]["state"] == {}  # from the window's first record, fresh
    final = replayed[-1]
    assert final["final"] is True
    counted = final["state"].get("seqs", []) + final["seqs"]
    assert sorted(counted, key=int) == [str(i) for i in range(8)]  # every record once, as the final sees it
