"""Benchmark: no-op invocations through the worker pool next to a bare multiprocessing Pipe.

    .venv/bin/python bench/invoke.py [--invocations 5000] [--event-bytes 1024]

Everything is measured in one run on the same machine, in alternating rounds (rates are the
median of the rounds). The reference is the bare round trip: send
the event's JSON bytes to a spawned process over a Pipe and receive a 4-byte reply, nothing else.
Two more reference rows show where the pool's time goes:

* "bare + event decoded": the same, but the child json-decodes the event before replying, the one
  piece of work Lambda's contract makes unavoidable (the handler receives a dict);
* "event loop round trip": the bare echo child driven from an asyncio transport and a Future on
  the daemon's event loop (uvloop where installed, see router/event_loop.py), the floor for any
  `await pool.invoke(...)` API.

"1 env" is one caller awaiting each invocation before the next (every step of the daemon and
the worker is on the critical path); "1 env, 4 callers" keeps invocations queued for the one
environment, as a busy mapping does, so the next INVOKE goes out while the daemon is still
shaping the previous result (its latencies include that wait in the queue).

Pool rows pass the event as the same pre-encoded JSON bytes (as stream mappings do: their batch
builder encodes each batch once), use a real Metrics registry and a logger at WARNING (so the
per-invocation REPORT line is not rendered); "REPORT logged" renders it through the daemon's JSON
log pipeline to /dev/null, as a daemon at the default info level does (the pool writes it once
the caller has its result, so it overlaps the next invocation instead of delaying it, but its CPU
is in the daemon CPU column).
The pinned rows repeat "bare" and "pool, 1 env" with this process on one CPU and the worker on
another CPU, then on the same one (each against the bare round trip placed alike). Unpinned, the
scheduler picks, and the pick moves the bare round trip by a factor of four or five: a hand-over
on the same CPU is a plain context switch (~15 us here), to another CPU a cross-CPU wake-up. The
pool's own Python costs the same either way, so it weighs far more against the cheap hand-over.
"daemon CPU" is the benchmark process's CPU time per invocation: the pool's own overhead,
independent of how fast this machine wakes a sleeping process. Goal: pool rate >= 0.5 x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog

from router import event_loop
from router.app import tune_garbage_collector
from router.config import Config, load_config_data
from router.observability.logging import configure_logging
from router.observability.metrics import Metrics
from router.runtime.pool import WorkerPool, encode_event

NOOP_HANDLER = "def handler(event, context):\n    return None\n"


def make_event(size: int) -> Any:
    """A Kinesis-shaped batch padded to about `size` bytes of JSON."""
    record = {
        "kinesis": {
            "partitionKey": "user-1", "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
            "data": "", "approximateArrivalTimestamp": 1_700_000_000.123, "kinesisSchemaVersion": "1.0",
        },
        "eventSource": "aws:kinesis", "eventID": "shardId-000000000000:495903382714902566085596925383615710959",
        "eventName": "aws:kinesis:record", "eventVersion": "1.0", "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/clicks",
        "invokeIdentityArn": "arn:aws:iam::000000000000:role/metrics-role",
    }
    event = {"Records": [record]}
    pad = max(0, size - len(encode_event(event)))
    record["kinesis"]["data"] = "A" * pad  # type: ignore[index]
    return event


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ------------------------------------------------------------------------------------------------
# bare round trip


Measurement = tuple[float, list[float], float]  # invocations/s, latencies (s), daemon CPU s/invocation


def _echo(conn: Connection, decode: bool) -> None:
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            return
        if decode:
            json.loads(message)
        conn.send_bytes(b"null")


def _spawn_echo(decode: bool) -> tuple[Connection, multiprocessing.process.BaseProcess]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(target=_echo, args=(child, decode), daemon=True)
    process.start()
    child.close()
    return parent, process


def bare_round_trips(
    payload: bytes, count: int, *, decode: bool = False, place: Placement | None = None
) -> Measurement:
    parent, process = _spawn_echo(decode)
    if place is not None:
        assert process.pid is not None
        place.child(process.pid)
    for _ in range(200):
        parent.send_bytes(payload)
        parent.recv_bytes()
    latencies: list[float] = []
    cpu, started = time.process_time(), time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        parent.send_bytes(payload)
        parent.recv_bytes()
        latencies.append(time.perf_counter() - t0)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    parent.close()
    process.join(5)
    return count / elapsed, latencies, cpu / count


class _OneReply(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def asyncio_round_trips(payload: bytes, count: int) -> Measurement:
    parent, process = _spawn_echo(False)
    sock = socket.socket(fileno=os.dup(parent.fileno()))
    parent.close()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    reply = _OneReply()
    transport, _ = await loop.create_unix_connection(lambda: reply, sock=sock)
    framed = struct.pack("!i", len(payload)) + payload
    latencies: list[float] = []
    for i in range(count + 200):
        if i == 200:
            cpu, started = time.process_time(), time.perf_counter()
        t0 = time.perf_counter()
        reply.waiter = loop.create_future()
        transport.write(framed)
        await reply.waiter
        if i >= 200:
            latencies.append(time.perf_counter() - t0)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    transport.close()
    process.join(5)
    return count / elapsed, latencies, cpu / count


# ------------------------------------------------------------------------------------------------
# placement


class Placement:
    """Pins this process to one CPU and each child to `child_cpu`, for the placement rows.

    Unpinned, the scheduler decides whether the two ends of a round trip share a CPU, and that
    decides most of a bare round trip's cost: a hand-over on one CPU is a context switch, one to
    another CPU a cross-CPU wake-up several times dearer. Pinning measures each case on purpose."""

    def __init__(self, own_cpu: int, child_cpu: int) -> None:
        self._own, self._child_cpu = own_cpu, child_cpu
        self._saved: set[int] = set()

    def __enter__(self) -> Placement:
        self._saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self._own})
        return self

    def __exit__(self, *_: object) -> None:
        os.sched_setaffinity(0, self._saved)

    def child(self, pid: int) -> None:
        os.sched_setaffinity(pid, {self._child_cpu})


def placements() -> dict[str, tuple[int, int]] | None:
    """(this process's CPU, the child's CPU) per placement row, or None where CPUs can't be pinned."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {"other CPU": (cpus[0], cpus[1]), "same CPU": (cpus[0], cpus[0])}


# ------------------------------------------------------------------------------------------------
# pool


def pool_config(code_path: Path, environments: int) -> Config:
    return load_config_data({
        "functions": {"noop": {
            "handler": "bench_noop.handler", "code_path": str(code_path),
            "reserved_concurrent_executions": environments, "timeout": 30,
        }},
    })


async def pool_round_trips(
    config: Config, event: Any, count: int, concurrency: int, log: Any, place: Placement | None = None
) -> Measurement:
    pool = WorkerPool(config, metrics=Metrics(), log=log)
    await pool.start()
    try:
        # Warm every environment (cold starts are not what this measures).
        await asyncio.gather(*(pool.invoke("noop", event) for _ in range(concurrency)))
        if place is not None:
            for pid in pool.status()["noop"]["pids"]:
                place.child(pid)
        for _ in range(200):
            await pool.invoke("noop", event)
        latencies: list[float] = []

        async def client(n: int) -> None:
            for _ in range(n):
                t0 = time.perf_counter()
                result = await pool.invoke("noop", event)
                latencies.append(time.perf_counter() - t0)
                if not result.ok:
                    raise RuntimeError(f"benchmark invocation failed: {result.payload}")

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(count // concurrency) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return len(latencies) / elapsed, latencies, cpu / len(latencies)
    finally:
        await pool.close()


def loop_name() -> str:
    loop = event_loop.loop_factory()()
    try:
        return type(loop).__module__.split(".")[0]
    finally:
        loop.close()


def quiet_logger() -> Any:
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr), wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invocations", type=int, default=5000)
    parser.add_argument("--event-bytes", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; rates are their median")
    args = parser.parse_args(argv)

    tune_garbage_collector()  # as `router run` does once started (every row runs in this process)
    event = make_event(args.event_bytes)
    payload = encode_event(event)
    per_round = max(1, args.invocations // args.rounds)
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp, open(os.devnull, "w") as devnull:
        code = Path(tmp)
        (code / "bench_noop.py").write_text(NOOP_HANDLER)
        one, two = pool_config(code, 1), pool_config(code, 2)

        def report_logged() -> Measurement:
            configure_logging("info", "json", stream=devnull)
            return event_loop.run(pool_round_trips(one, payload, per_round, 1, structlog.get_logger("bench")))

        runs: dict[str, Callable[[], Measurement]] = {
            "bare Pipe round trip": lambda: bare_round_trips(payload, per_round),
            "bare + event decoded": lambda: bare_round_trips(payload, per_round, decode=True),
            "event loop round trip": lambda: event_loop.run(asyncio_round_trips(payload, per_round)),
            "pool, 1 env": lambda: event_loop.run(pool_round_trips(one, payload, per_round, 1, quiet_logger())),
            "pool, 1 env, 4 callers": lambda: event_loop.run(
                pool_round_trips(one, payload, per_round, 4, quiet_logger())),
            "pool, 2 envs": lambda: event_loop.run(pool_round_trips(two, payload, per_round, 2, quiet_logger())),
            "pool, 1 env, REPORT logged": report_logged,
        }
        for where, (own, other) in (placements() or {}).items():
            def bare_placed(own: int = own, other: int = other) -> Measurement:
                with Placement(own, other) as place:
                    return bare_round_trips(payload, per_round, place=place)

            def pool_placed(own: int = own, other: int = other) -> Measurement:
                with Placement(own, other) as place:
                    return event_loop.run(pool_round_trips(one, payload, per_round, 1, quiet_logger(), place))

            runs[f"bare, {where}"] = bare_placed
            runs[f"pool, 1 env, {where}"] = pool_placed
        # Rounds alternate between rows so that drift on a shared machine hits every row alike.
        samples: dict[str, list[Measurement]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                samples[name].append(run())
    rows = {
        name: (
            statistics.median(m[0] for m in ms),
            [latency for m in ms for latency in m[1]],
            statistics.median(m[2] for m in ms),
        )
        for name, ms in samples.items()
    }

    bare_rate, bare_latencies, _ = rows["bare Pipe round trip"]
    print(f"event: {len(payload)} bytes of JSON; {per_round * args.rounds} invocations per row "
          f"in {args.rounds} alternating rounds; "
          f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; event loop: {loop_name()}")
    print(f"{'':28} {'inv/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'daemon CPU':>11} {'x bare':>7}")
    placed = [name for name in rows if name.endswith("CPU")]
    for name, (rate, latencies, cpu) in rows.items():
        if name in placed:
            continue
        print(f"{name:28} {rate:8.0f} {percentile(latencies, 0.5) * 1000:8.3f} "
              f"{percentile(latencies, 0.99) * 1000:8.3f} {cpu * 1e6:8.0f} us {rate / bare_rate:7.2f}")
    if placed:
        print("pinned (this process on one CPU, the worker on another CPU or the same one; x its own bare):")
        for name in placed:
            rate, latencies, cpu = rows[name]
            reference = rows["bare, " + name.rsplit(", ", 1)[1]][0]
            print(f"{name:28} {rate:8.0f} {percentile(latencies, 0.5) * 1000:8.3f} "
                  f"{percentile(latencies, 0.99) * 1000:8.3f} {cpu * 1e6:8.0f} us {rate / reference:7.2f}")
    pool_rate, pool_latencies, _ = rows["pool, 1 env"]
    overhead = {q: (percentile(pool_latencies, q) - percentile(bare_latencies, q)) * 1e6 for q in (0.5, 0.99)}
    print(f"pool overhead over the bare round trip (1 env): p50 {overhead[0.5]:.0f} us, p99 {overhead[0.99]:.0f} us")
    goals = {label: rows[name][0] / bare_rate for label, name in (
        ("1 env", "pool, 1 env"), ("1 env with invocations queued", "pool, 1 env, 4 callers"),
        ("2 envs", "pool, 2 envs"), ("1 env with REPORT logged", "pool, 1 env, REPORT logged"),
    )}
    print("goal pool >= 0.5 x bare: " + ", ".join(
        f"{label} {'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f})" for label, ratio in goals.items())
        + f"; pool (1 env) / event loop round trip: {pool_rate / rows['event loop round trip'][0]:.2f}")
    print(json.dumps({name: round(rate) for name, (rate, _, _) in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
