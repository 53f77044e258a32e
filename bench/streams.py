"""Benchmark: a stream mapping draining a backlog next to raw Kafka consumer loops and a peer.

    .venv/bin/python bench/streams.py [--records 200000] [--backlog 1000000] [--bootstrap HOST:PORT]

One run, one broker (a local Tansu unless --bootstrap is given), the same data for every row:

1. `--records` records of `--size` bytes over 8 partitions are produced to a fresh topic.
2. Raw aiokafka loop: one consumer in a fresh group, `getmany` + `commit` of what it got, until
   every record is committed. This is the floor, the 1.00 of every ratio: fetching and committing,
   no processing at all.
3. Router: a StreamMappingRunner (batch size 500, no-op handler in real worker processes) in a
   child process, in a fresh group, until every shard's checkpoint is at the end; once per Kafka
   client backend (`kafka.client`: aiokafka and confluent).
4. Raw confluent-kafka loop (consume + synchronous commit) and FastStream's batch subscriber (no-op
   handler, commit after each batch: the peer a Python user would otherwise pick), when installed
   (the `bench` extra).
   Rates are measured from the partition assignment to the last commit (group joins excluded).
   Each round also runs the router with a filter that parses every record's `data` and keeps half
   (Lambda's FilterCriteria); its rate is compared with the unfiltered router's (goal >= 0.8).
   All rows run once per round for `--rounds` rounds (each in fresh groups); figures are medians.
5. Peak RSS: a fresh topic with `--backlog` records is drained by a router child process per
   backend while its RSS (the daemon process; workers are listed apart) is sampled every 50 ms.

Goals (issue 18): router >= 0.8 x raw aiokafka; daemon peak RSS < 300 MB draining 1,000,000 records.
`--records 20000 --backlog 100000` makes a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

PARTITIONS = 8
EXTRA: dict[str, Any] = json.loads(os.environ.get("BENCH_MAPPING", "{}"))  # extra mapping keys, for experiments
# BENCH_EVENT_LOOP=asyncio|uvloop|auto: the router's event_loop setting (default auto)
NOOP_HANDLER = "def handler(event, context):\n    return None\n"


# -- producing -----------------------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, count: int, size: int) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024,
                                acks=1, request_timeout_ms=60_000)
    await producer.start()
    started = time.perf_counter()
    try:
        # JSON records (as most streams carry), half of them of each kind, for the filtered row.
        pad = os.urandom(size // 2).hex()[: max(0, size - 30)]
        values = [json.dumps({"kind": kind, "pad": pad}).encode() for kind in ("even", "odd")]
        pending = []
        for i in range(count):
            pending.append(await producer.send(topic, values[i % 2], key=f"user-{i % 1000}".encode(),
                                               partition=i % PARTITIONS))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count / (time.perf_counter() - started)


# -- raw aiokafka loop ---------------------------------------------------------------------------------


async def raw_loop(bootstrap: str, topic: str, count: int) -> float:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    assigned_at: list[float] = []

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        async def on_partitions_assigned(self, assigned: Any) -> None:
            assigned_at.append(time.perf_counter())

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                session_timeout_ms=6000, heartbeat_interval_ms=1000)
    await consumer.start()
    consumer.subscribe([topic], listener=Listener())
    seen = 0
    try:
        while seen < count:
            batches = await consumer.getmany(timeout_ms=500)
            if batches:
                seen += sum(len(records) for records in batches.values())
                await consumer.commit()
        elapsed = time.perf_counter() - assigned_at[0]
    finally:
        await consumer.stop()
    return count / elapsed


# -- raw confluent-kafka (librdkafka) loop: a third column -----------------------------------------


def confluent_loop(bootstrap: str, topic: str, count: int) -> float | None:
    """The same floor with librdkafka's consumer (consume + synchronous commit); None if it did not
    drain the topic within 120 s. Shows how much of the floor is the Python client."""
    from confluent_kafka import Consumer

    assigned_at: list[float] = []
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-rdkafka-{uuid.uuid4().hex[:6]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
    })
    consumer.subscribe([topic], on_assign=lambda c, partitions: assigned_at.append(time.perf_counter()))
    seen = 0
    try:
        deadline = time.monotonic() + 120
        while seen < count and time.monotonic() < deadline:
            messages = consumer.consume(num_messages=10_000, timeout=0.5)
            got = sum(1 for m in messages if m.error() is None)
            if got:
                seen += got
                consumer.commit(asynchronous=False)
        if seen < count or not assigned_at:
            return None
        return count / (time.perf_counter() - assigned_at[0])
    finally:
        consumer.close()


# -- FastStream's batch subscriber: the peer a Python user would otherwise pick ------------------------


async def faststream_loop(bootstrap: str, topic: str, count: int) -> float | None:
    """FastStream (aiokafka underneath) with a batch subscriber, a no-op handler and the same commit
    policy as the router (commit after each batch is handled: AckPolicy.ACK, no auto-commit); None
    if it is not installed (`pip install -e .[bench]`)."""
    try:
        from aiokafka import ConsumerRebalanceListener
        from faststream import AckPolicy
        from faststream.kafka import KafkaBroker
    except ImportError:
        return None
    assigned_at: list[float] = []
    done = asyncio.Event()
    seen = 0

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        async def on_partitions_assigned(self, assigned: Any) -> None:
            assigned_at.append(time.perf_counter())

    broker = KafkaBroker(bootstrap, logger=None)

    @broker.subscriber(topic, batch=True, max_records=500, group_id=f"bench-faststream-{uuid.uuid4().hex[:6]}",
                       auto_offset_reset="earliest", ack_policy=AckPolicy.ACK, session_timeout_ms=6000,
                       heartbeat_interval_ms=1000, listener=Listener())
    async def handle(messages: list[Any]) -> None:  # FastStream decodes each body (JSON here)
        nonlocal seen
        seen += len(messages)
        if seen >= count:
            done.set()

    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - assigned_at[0]
    except TimeoutError:
        print(f"FastStream: {seen} of {count} records in 120 s", file=sys.stderr)
        return None
    finally:
        await broker.stop()
    return count / elapsed


# -- router child process ------------------------------------------------------------------------------


# A filter that parses every record's data and keeps half of them.
HALF_FILTER = {"filter_criteria": {"filters": [{"pattern": '{"data": {"kind": ["even"]}}'}]}}


def router_config(bootstrap: str, topic: str, code_path: str, concurrency: int,
                  extra: dict[str, Any] | None = None, client: str = "aiokafka") -> dict[str, Any]:
    return {
        "event_loop": os.environ.get("BENCH_EVENT_LOOP", "auto"),
        "kafka": {"bootstrap_servers": bootstrap, "session_timeout_ms": 6000,
                  "client": client},
        "functions": {"noop": {"handler": "noop.handler", "code_path": code_path, "timeout": 30,
                               "reserved_concurrent_executions": concurrency}},
        "event_source_mappings": {"bench": {
            "function_name": "noop", "kafka_topic": topic, "consumer_group_id": f"bench-router-{uuid.uuid4().hex[:6]}",
            "batch_size": 500, "starting_position": "TRIM_HORIZON", **EXTRA, **(extra or {}),
        }},
    }


def _time_aiokafka_parsing() -> list[float]:
    """CPU seconds aiokafka spends turning fetched bytes into ConsumerRecords inside getmany (what
    the raw loop does and nothing more), accumulated in the returned one-item list. A bench-only
    wrapper around aiokafka's (synchronous) FetchResult.getall."""
    from aiokafka.consumer import fetcher

    spent = [0.0]
    getall = fetcher.FetchResult.getall

    def timed(self: Any, max_records: int | None = None) -> Any:
        started = time.thread_time()
        try:
            return getall(self, max_records)
        finally:
            spent[0] += time.thread_time() - started

    fetcher.FetchResult.getall = timed
    return spent


async def child(config_path: str, total: int) -> None:
    """Run the mapping until every record is checkpointed; print one JSON line with the timings."""
    import logging

    from router.app import tune_garbage_collector
    from router.config import load_config_data
    from router.observability.logging import configure_logging
    from router.observability.metrics import Metrics
    from router.observability.progress import ProgressBoard
    from router.runtime.pool import WorkerPool
    from router.sources.stream_mapping import StreamMappingRunner

    configure_logging(level=os.environ.get("BENCH_LOG_LEVEL", "warning"), fmt="json", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    parsing = _time_aiokafka_parsing()
    config = load_config_data(json.loads(Path(config_path).read_text()), {})
    metrics = Metrics()
    pool = WorkerPool(config, metrics=metrics)
    runner = StreamMappingRunner("bench", config.stream_mappings()["bench"], config, pool, None, metrics,
                                 ProgressBoard(300))
    await pool.start()
    await runner.start()
    tune_garbage_collector()  # as `router run` does once started
    print(json.dumps({"started": True}), flush=True)
    import psutil

    me = psutil.Process()

    def cpu() -> tuple[float, float]:
        own = me.cpu_times()
        workers = 0.0
        for child_process in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child_process.cpu_times()
                workers += times.user + times.system
        return own.user + own.system, workers

    def threads() -> dict[str, float]:
        """CPU seconds per kind of daemon thread: the event loop, the confluent poll thread,
        librdkafka's own threads, the rest (executor)."""
        kinds: dict[str, float] = {}
        main = threading.get_native_id()
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                spent = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                kind = ("loop" if int(task.name) == main else "poll thread" if name.startswith("rdkafka-poll")
                        else "librdkafka" if name.startswith("rdk:") else "other")
                kinds[kind] = kinds.get(kind, 0.0) + spent
        return kinds

    first: float | None = None
    cpu_first = (0.0, 0.0)
    threads_first: dict[str, float] = {}
    parsing_first = 0.0
    # ROUTER_BENCH_PROFILE=PATH: cProfile the daemon's loop while it drains (inflates its CPU).
    profile_path = os.environ.get("ROUTER_BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_path else None
    while True:
        checkpoints = runner.checkpoints().values()
        if first is None and checkpoints:
            first = time.perf_counter()  # shards assigned: fetching starts
            cpu_first = cpu()
            threads_first = threads()
            parsing_first = parsing[0]
            if profiler is not None:
                profiler.enable()
        if sum(max(0, cp.committed) for cp in checkpoints) >= total:
            break
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    cpu_last = cpu()
    threads_last = threads()
    if profiler is not None and profile_path:
        profiler.disable()
        profiler.dump_stats(profile_path)
    print(json.dumps({"rate": total / elapsed, "elapsed": elapsed, "daemon_cpu": cpu_last[0] - cpu_first[0],
                      "workers_cpu": cpu_last[1] - cpu_first[1], "aiokafka_parsing": parsing[0] - parsing_first,
                      "threads": {k: round(v - threads_first.get(k, 0.0), 2) for k, v in threads_last.items()}}),
          flush=True)
    await runner.stop(10)
    await pool.close()


async def run_router(bootstrap: str, topic: str, total: int, workdir: Path, concurrency: int,
                     sample_rss: bool, extra: dict[str, Any] | None = None, client: str = "aiokafka") -> dict[str, Any]:
    import psutil

    config_path = workdir / f"router-{topic}.json"
    config_path.write_text(json.dumps(router_config(bootstrap, topic, str(workdir), concurrency, extra, client)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", str(config_path), str(total),
        stdout=asyncio.subprocess.PIPE,
        stderr=None if os.environ.get("BENCH_CHILD_STDERR") else asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    daemon = psutil.Process(proc.pid)
    peak, peak_workers = 0, 0

    async def sample() -> None:
        nonlocal peak, peak_workers
        while True:
            try:
                peak = max(peak, daemon.memory_info().rss)
                workers = sum(c.memory_info().rss for c in daemon.children(recursive=True))
                peak_workers = max(peak_workers, workers)
            except psutil.Error:
                return
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample()) if sample_rss else None
    result: dict[str, Any] = {}
    try:
        while line := await proc.stdout.readline():
            result.update(json.loads(line))
            if "rate" in result:
                break
        await proc.wait()
    finally:
        if sampler is not None:
            sampler.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    result["peak_rss_mb"] = peak / 2**20
    result["peak_workers_rss_mb"] = peak_workers / 2**20
    return result


# -- main ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """CPU time of a process so far (0 when unknown): the broker shares this machine's cores."""
    import psutil

    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


async def bench(args: argparse.Namespace, bootstrap: str, create_topic: Any, workdir: Path,
                broker_pid: int | None = None) -> None:
    (workdir / "noop.py").write_text(NOOP_HANDLER)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    await create_topic(topic, PARTITIONS)
    rate = await produce(bootstrap, topic, args.records, args.size)
    print(f"produced {args.records} records of {args.size} bytes over {PARTITIONS} partitions ({rate:,.0f}/s)")
    clients = ["aiokafka", "confluent"]
    # Each round runs every row once (fresh groups, same data), so drift on a shared machine hits
    # them all alike; the figures are the medians.
    raws: list[float] = []
    raw_cpus: list[float] = []  # the raw loop's process CPU (group join included)
    rdkafkas: list[float] = []
    peers: list[float] = []
    routers: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    filtered: list[float] = []
    for _ in range(args.rounds):
        broker_cpu = cpu_seconds(broker_pid)
        raw_cpu = time.process_time()
        raws.append(await raw_loop(bootstrap, topic, args.records))
        raw_cpus.append(time.process_time() - raw_cpu)
        for client in clients:
            routed = await run_router(bootstrap, topic, args.records, workdir, args.concurrency, sample_rss=False,
                                      client=client)
            routed["broker_cpu"] = cpu_seconds(broker_pid) - broker_cpu
            routers[client].append(routed)
        rdkafka = await asyncio.to_thread(confluent_loop, bootstrap, topic, args.records)
        if rdkafka is not None:
            rdkafkas.append(rdkafka)
        peer = await faststream_loop(bootstrap, topic, args.records)
        if peer is not None:
            peers.append(peer)
        half = await run_router(bootstrap, topic, args.records, workdir, args.concurrency, sample_rss=False,
                                extra=HALF_FILTER)
        filtered.append(float(half["rate"]))
        print(f"  round {len(raws)}: raw {raws[-1]:>10,.0f} records/s, "
              + ", ".join(f"router/{c} {routers[c][-1]['rate']:>10,.0f}" for c in clients))
    raw = statistics.median(raws)
    print(f"raw aiokafka getmany+commit : {raw:>12,.0f} records/s (median of {args.rounds}; the 1.00 of the ratios)")
    if rdkafkas:
        rd = statistics.median(rdkafkas)
        print(f"raw confluent-kafka loop    : {rd:>12,.0f} records/s  {rd / raw:.2f} x (consume + commit)")
    else:
        print("raw confluent-kafka loop    :          n/a   (did not drain the topic within 120 s)")
    if peers:
        peer = statistics.median(peers)
        print(f"FastStream batch subscriber : {peer:>12,.0f} records/s  {peer / raw:.2f} x (no-op handler, "
              "commit after each batch)")
    else:
        print("FastStream batch subscriber :          n/a   (not installed: pip install -e .[bench])")
    medians: dict[str, dict[str, Any]] = {}
    for client in clients:
        routed = sorted(routers[client], key=lambda r: float(r["rate"]))[len(routers[client]) // 2]
        medians[client] = routed
        print(f"router, kafka.client {client:<9}: {routed['rate']:>9,.0f} records/s  {routed['rate'] / raw:.2f} x "
              f"(batch size 500, no-op handler, {args.concurrency} environments; goal >= 0.8)")
        print(f"  CPU while draining: daemon {routed['daemon_cpu']:.2f} s (its threads included), workers "
              f"{routed['workers_cpu']:.2f} s, wall {routed['elapsed']:.2f} s "
              f"({routed['daemon_cpu'] / args.records * 1e6:.1f} us of daemon CPU per record)")
        print("  daemon threads: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(routed["threads"].items())))
    aio = medians["aiokafka"]
    print(f"  of the aiokafka daemon's CPU, aiokafka parsing records in getmany: {aio['aiokafka_parsing']:.2f} s "
          f"({aio['aiokafka_parsing'] / args.records * 1e6:.1f} us per record, "
          f"{aio['aiokafka_parsing'] / aio['daemon_cpu']:.0%}); the raw loop used "
          f"{statistics.median(raw_cpus) / args.records * 1e6:.1f} us of CPU per record in all")
    half_rate = statistics.median(filtered)
    print(f"router, filter keeps half   : {half_rate:>12,.0f} records/s  (pattern on data: every record parsed; "
          "aiokafka; median)")
    print(f"ratio filtered / unfiltered : {half_rate / aio['rate']:>12.2f}   (goal >= 0.8)")
    if args.backlog:
        backlog = f"bench-backlog-{uuid.uuid4().hex[:8]}"
        await create_topic(backlog, PARTITIONS)
        await produce(bootstrap, backlog, args.backlog, args.size)
        for client in clients:
            drained = await run_router(bootstrap, backlog, args.backlog, workdir, args.concurrency, sample_rss=True,
                                       client=client)
            print(f"backlog of {args.backlog:,} records, kafka.client {client}: drained at "
                  f"{drained['rate']:,.0f} records/s")
            print(f"  peak RSS, daemon process  : {drained['peak_rss_mb']:>9.1f} MB   (goal < 300 MB)")
            print(f"  peak RSS, worker processes: {drained['peak_workers_rss_mb']:>9.1f} MB   (all environments)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=1_000_000, help="0 skips the RSS measurement")
    parser.add_argument("--concurrency", type=int, default=2, help="reserved concurrency of the no-op function")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/router rounds; figures are medians")
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of starting Tansu")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "TOTAL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from router import event_loop

        loop = json.loads(Path(args.child[0]).read_text()).get("event_loop", "auto")
        event_loop.run(child(args.child[0], int(args.child[1])), loop)  # the loop `router run` would use
        return
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        workdir = Path(tmp)
        if args.bootstrap:
            async def create(name: str, partitions: int) -> None:
                from aiokafka.admin import AIOKafkaAdminClient, NewTopic

                admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
                await admin.start()
                try:
                    await admin.create_topics([NewTopic(name, partitions, 1)])
                finally:
                    await admin.close()

            asyncio.run(bench(args, args.bootstrap, create, workdir))
            return
        from router.devstack import Tansu

        with Tansu(workdir / "tansu") as broker:
            print(f"broker: Tansu at {broker.bootstrap_servers} (memory storage)")
            asyncio.run(bench(args, broker.bootstrap_servers, broker.acreate_topic, workdir, broker.pid))


if __name__ == "__main__":
    main()
