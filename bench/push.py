"""Benchmark: MQTT bucket notifications and app events → router → handler start, next to raw aiomqtt.

    .venv/bin/python bench/push.py [--rate 1000] [--seconds 10] [--backlog 10000] [--concurrency 4]
                                   [--queue sqlite,kafka]

One run, one real Mosquitto, the real daemon (`router.app`: MQTT source, SQLite queue with fsync,
invoker, worker processes) in this process; the publisher and the raw subscriber are processes of
their own so they do not share our event loop.

1. Latency at a fixed rate: the publisher sends `--rate` notifications/s for `--seconds` (QoS 1,
   MQTT 3.1.1, as MinIO does), each carrying its publish time in its key. The router's latency is
   handler start (measured inside the worker) minus publish time: it covers the broker, parsing,
   the durable commit, the PUBACK, the dispatcher and the worker IPC. The raw subscriber's is
   receive time minus publish time. Goal: router p99 < 50 ms at 1,000/s.
2. Maximum sustained rate: `--backlog` notifications wait in the broker for both persistent
   sessions while nobody is connected; each then drains them alone. Raw rate = messages/s received
   by a bare aiomqtt client (auto-PUBACK, no work); router rates = acknowledged (durably queued)
   per second, and handler starts per second (end to end). Goal: router >= 0.5 x raw.

Both phases run twice in the same run on the same broker: for MinIO-style bucket notifications
(`bucket_notifications`, ~1.5 kB each) and for app events (`mqtt_topic`, a mobile client's ~100
byte click, invoked with the payload as the event as an IoT rule does), each against its own raw
subscriber on the same topic. And all of that once per queue (`--queue`): the SQLite queue in
state_dir, and the queue on Kafka (`async_queue: kafka://...`, a real Tansu started for the run),
each against the raw subscriber of its own run.

Logging is at WARNING by default (per-invocation INFO lines cost a few percent; --log-level info).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import aiomqtt

from router import event_loop
from router.app import Router, build, start, stop, tune_garbage_collector
from router.config import load_config_data
from router.devstack import Mosquitto, Tansu
from router.observability.logging import configure_logging

TOPIC = "minio/bench"
APP_TOPIC = "app/bench-device/clicks"
BUCKET = "bench"

HANDLER = '''
import os, time
_out = None

def handler(event, context):
    started = time.time_ns()
    global _out
    if _out is None:
        _out = open(os.path.join(os.environ["BENCH_DIR"], f"starts-{os.getpid()}.txt"), "a", buffering=1)
    key = event["key"] if "key" in event else event["Records"][0]["s3"]["object"]["key"]
    _out.write(key + " " + str(started) + "\\n")
'''


def notification(phase: str, seq: int, published_ns: int) -> bytes:
    key = f"{phase}/{seq:07d}-{published_ns}.jpg"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(published_ns / 1e9)) + ".000Z"
    record = {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": stamp,
        "eventName": "s3:ObjectCreated:Put", "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "172.18.0.1"},
        "responseElements": {"x-amz-id-2": "dd9025bab4ad464b", "x-amz-request-id": f"{published_ns:X}",
                             "x-minio-deployment-id": "4b8d2f0e-6c1a-4e3b-9f57-2d8a0c9e71b4",
                             "x-minio-origin-endpoint": "http://172.18.0.3:9000"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": BUCKET, "ownerIdentity": {"principalId": "minioadmin"},
                          "arn": f"arn:aws:s3:::{BUCKET}"},
               "object": {"key": quote_plus(key), "size": 2483917, "eTag": "961477a2b9cc9b01ddf2246c002768e8",
                          "contentType": "image/jpeg", "userMetadata": {"content-type": "image/jpeg"},
                          "sequencer": f"{published_ns:016X}"}},
        "source": {"host": "172.18.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.76"},
    }
    envelope = {"EventName": "s3:ObjectCreated:Put", "Key": f"{BUCKET}/{key}", "Records": [record]}
    return json.dumps(envelope, separators=(",", ":")).encode()


def app_event(phase: str, seq: int, published_ns: int) -> bytes:
    """A mobile client's click: what an app-event mapping delivers as the event itself."""
    key = f"{phase}/{seq:07d}-{published_ns}.jpg"
    return json.dumps({"key": key, "screen": "home", "user": f"u{seq % 50}", "button": "buy"},
                      separators=(",", ":")).encode()


def key_of(payload: bytes) -> str:
    body = json.loads(payload)
    return body["key"] if "key" in body else unquote_plus(body["Records"][0]["s3"]["object"]["key"])


# (topic, payload) for each kind of push mapping measured
KINDS: dict[str, tuple[str, Any]] = {"notifications": (TOPIC, notification), "app events": (APP_TOPIC, app_event)}


def published_ns_of(key: str) -> int:
    return int(key.rsplit("-", 1)[1].removesuffix(".jpg"))


# -- child processes -------------------------------------------------------------------------------


def publisher_main(port: int, kind: str, phase: str, count: int, rate: float | None) -> None:
    """Publish `count` messages of `kind`, at `rate`/s or as fast as PUBACKs allow (pipelined)."""
    topic, make = KINDS[kind]

    async def run() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"{time.time_ns():x}",
                                  protocol=aiomqtt.ProtocolVersion.V311, clean_session=True,
                                  max_inflight_messages=200) as client:
            client.pending_calls_threshold = 1000
            pending: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            for seq in range(count):
                if rate is not None:
                    delay = started + seq / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                task = asyncio.create_task(client.publish(topic, make(phase, seq, time.time_ns()), qos=1))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if len(pending) >= 150:
                    await asyncio.wait(set(pending), return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.gather(*pending)

    asyncio.run(run())


def raw_main(port: int, topic: str, identifier: str, clean: bool, expected: int, out: str, ready: Any) -> None:
    """A bare aiomqtt subscriber: records the receive time of each message, nothing else."""

    async def run() -> list[str]:
        lines: list[str] = []
        async with aiomqtt.Client("127.0.0.1", port, identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
                                  clean_start=clean, properties=_session_properties(clean)) as client:
            await client.subscribe(topic, qos=1)
            ready.set()
            if expected == 0:
                return lines
            async for message in client.messages:
                received = time.time_ns()
                # as much work as any consumer does: parse, find the key
                lines.append(f"{key_of(bytes(message.payload))} {received}")
                if len(lines) >= expected:
                    break
        return lines

    Path(out).write_text("\n".join(asyncio.run(run())) + "\n")


def _session_properties(clean: bool) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0 if clean else 3600
    return props


# -- measurements ----------------------------------------------------------------------------------


def read_starts(directory: Path, phase: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for path in directory.glob("starts-*.txt"):
        for line in path.read_text().splitlines():
            key, _, stamp = line.rpartition(" ")
            key = key.replace("%2F", "/")
            if key.startswith(phase + "/"):
                found.setdefault(key, int(stamp))
    return found


def read_raw(path: Path, phase: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, stamp = line.rpartition(" ")
        if key.startswith(phase + "/"):
            found.setdefault(key, int(stamp))
    return found


def latencies(times: dict[str, int]) -> list[float]:
    return sorted((stamp - published_ns_of(key)) / 1e6 for key, stamp in times.items())


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def drain_rate(times: dict[str, int]) -> float:
    stamps = sorted(times.values())
    if len(stamps) < 2:
        return float("nan")
    return (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9)


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        await asyncio.sleep(0.05)


def spawn(target: Any, *args: Any) -> multiprocessing.process.BaseProcess:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


async def join(proc: multiprocessing.process.BaseProcess, timeout: float) -> None:
    await asyncio.to_thread(proc.join, timeout)
    if proc.exitcode != 0:
        raise SystemExit(f"bench: child process failed ({proc.exitcode})")


# -- the run ---------------------------------------------------------------------------------------


def make_config(args: argparse.Namespace, work: Path, queue: str) -> Any:
    code = work / "code"
    code.mkdir(exist_ok=True)
    (code / "bench_handler.py").write_text(HANDLER)
    extra: dict[str, Any] = {}
    if queue == "kafka":
        extra = {"async_queue": f"kafka://bench-{time.time_ns():x}",
                 "kafka": {"bootstrap_servers": args.kafka, "session_timeout_ms": 3000}}
    return load_config_data({
        **extra,
        "state_dir": str(work / f"state-{queue}"),
        "functions": {"bench": {"handler": "bench_handler.handler", "code_path": str(code), "timeout": 30,
                                "reserved_concurrent_executions": args.concurrency,
                                "environment": {"variables": {"BENCH_DIR": str(work)}}}},
        # A share group per queue: the previous run's session stays subscribed (and would get a share).
        "mqtt": {"host": "127.0.0.1", "port": args.port, "client_id": f"router-bench-{queue}",
                 "shared_subscription_group": f"bench-{queue}"},
        "http": {"listen": "127.0.0.1:0", "webhook_token": "bench"},
        "event_source_mappings": {
            "bench": {"function_name": "bench", "bucket_notifications": {
                "transport": "mqtt", "topic": TOPIC, "bucket": BUCKET, "events": ["s3:ObjectCreated:*"]}},
            "bench-app": {"function_name": "bench", "mqtt_topic": "app/+/clicks"},
        },
    })


async def started(config: Any) -> Router:
    app: Router = await build(config)
    await start(app)
    tune_garbage_collector()  # as `router run` does once started
    assert app.mqtt is not None
    mqtt = app.mqtt
    await wait_for(lambda: mqtt.status()["subscribed"], 15, "the router to subscribe")
    return app


async def bench_kind(args: argparse.Namespace, config: Any, work: Path, kind: str, queue: str) -> dict[str, Any]:
    """Both phases for one kind of message; phases are named after the kind and queue so keys never collide."""
    port = args.port
    topic = KINDS[kind][0]
    tag = f"{kind.split()[0]}_{queue}"
    live, warm, backlog = f"{tag}-live", f"{tag}-warm", f"{tag}-backlog"
    results: dict[str, Any] = {}
    mp = multiprocessing.get_context("spawn")

    # 1. fixed rate, live ---------------------------------------------------------------------------
    app = await started(config)
    # warm every execution environment and the queue
    await join(spawn(publisher_main, port, kind, warm, 200, 400.0), 60)
    await wait_for(lambda: len(read_starts(work, warm)) >= 200, 60, "the warm-up")

    total = int(args.rate * args.seconds)
    ready = mp.Event()
    raw_live = work / f"raw-{live}.txt"
    raw = spawn(raw_main, port, topic, f"raw-live-{time.time_ns():x}", True, total, str(raw_live), ready)
    await asyncio.to_thread(ready.wait, 15)
    await asyncio.sleep(0.2)
    invoked = app.pool.status()["bench"]["invocations"]
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()  # the event loop's thread only (the queue's threads are not seen)
    live_cpu = time.process_time()
    began = time.monotonic()
    await join(spawn(publisher_main, port, kind, live, total, args.rate), args.seconds * 3 + 30)
    publish_seconds = time.monotonic() - began
    # The pool's invocation count is free to read; the handlers' files are read once, at the end.
    await wait_for(lambda: app.pool.status()["bench"]["invocations"] >= invoked + total, 120,
                   "every live message to be handled")
    live_cpu = time.process_time() - live_cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{args.profile}-{tag}.prof")
    await wait_for(lambda: len(read_starts(work, live)) >= total, 30, "the handlers' records of the live phase")
    await join(raw, 60)
    results["live"] = {
        "sent": total, "publish_seconds": publish_seconds,
        "router": latencies(read_starts(work, live)), "raw": latencies(read_raw(raw_live, live)),
        "daemon_cpu_us": live_cpu / total * 1e6,
    }

    # 2. backlog drain ------------------------------------------------------------------------------
    raw_id = f"raw-backlog-{time.time_ns():x}"
    ready = mp.Event()
    await join(spawn(raw_main, port, topic, raw_id, False, 0, str(work / "unused"), ready), 30)  # its session
    await stop(app)  # the router's session and $share subscriptions stay in the broker
    await join(spawn(publisher_main, port, kind, backlog, args.backlog, None), 300)

    raw_backlog = work / f"raw-{backlog}.txt"
    ready = mp.Event()
    await join(spawn(raw_main, port, topic, raw_id, False, args.backlog, str(raw_backlog), ready), 300)

    app = await build(config)
    connected_at = time.monotonic()
    daemon_cpu = time.process_time()  # this process is the daemon (the clients are processes of their own)
    await start(app)
    tune_garbage_collector()  # as `router run` does once started
    assert app.mqtt is not None
    mqtt = app.mqtt
    await wait_for(lambda: mqtt.status()["acknowledged"] >= args.backlog, 600, "the router's PUBACKs")
    ack_seconds = time.monotonic() - connected_at
    await wait_for(lambda: app.pool.status()["bench"]["invocations"] >= args.backlog, 600, "the backlog to be handled")
    daemon_cpu = time.process_time() - daemon_cpu
    await wait_for(lambda: len(read_starts(work, backlog)) >= args.backlog, 30,
                   "the handlers' records of the backlog")
    await stop(app)
    results["backlog"] = {
        "count": args.backlog,
        "raw_rate": drain_rate(read_raw(raw_backlog, backlog)),
        "router_ack_rate": args.backlog / ack_seconds,
        "router_start_rate": drain_rate(read_starts(work, backlog)),
        "daemon_cpu_us": daemon_cpu / args.backlog * 1e6,
    }
    return results


async def bench(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for queue in args.queues:
        config = make_config(args, work, queue)
        for kind in KINDS:
            results[f"{kind}, {queue} queue"] = await bench_kind(args, config, work, kind, queue)
    return results


def report(kind: str, results: dict[str, Any], args: argparse.Namespace) -> None:
    live = results["live"]
    print(f"\n{kind}, fixed rate: {args.rate:g}/s for {args.seconds:g} s ({live['sent']} messages, "
          f"published in {live['publish_seconds']:.2f} s), {args.concurrency} execution environments")
    print(f"{'':32} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'count':>7}")
    for name, values in (("raw aiomqtt subscriber (receive)", live["raw"]), ("router (handler start)", live["router"])):
        print(f"{name:32} {percentile(values, 50):8.2f} {percentile(values, 99):8.2f} {max(values):8.2f} "
              f"{len(values):7d}")
    print(f"{'router daemon CPU':32} {live['daemon_cpu_us']:8.0f} us per message (all its threads)")
    p99 = percentile(live["router"], 99)
    print(f"goal p99 < 50 ms: {'met' if p99 < 50 else 'NOT met'} ({p99:.1f} ms)")
    backlog = results["backlog"]
    print(f"\n{kind}, maximum sustained rate: a backlog of {backlog['count']} messages drained by each alone")
    print(f"{'raw aiomqtt subscriber':32} {backlog['raw_rate']:10.0f} /s")
    print(f"{'router, acknowledged (queued)':32} {backlog['router_ack_rate']:10.0f} /s  "
          f"{backlog['router_ack_rate'] / backlog['raw_rate']:.2f} x raw")
    print(f"{'router, handler started':32} {backlog['router_start_rate']:10.0f} /s  "
          f"{backlog['router_start_rate'] / backlog['raw_rate']:.2f} x raw")
    print(f"{'router daemon CPU':32} {backlog['daemon_cpu_us']:10.0f} us per message (all its threads)")
    ratio = backlog["router_start_rate"] / backlog["raw_rate"]
    print(f"goal >= 0.5 x raw (end to end): {'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--queue", default="sqlite,kafka", help="queues to measure, comma-separated")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="cProfile the event loop during each fixed-rate phase into PREFIX-<kind>.prof "
                             "(inflates the CPU figures)")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    args = parser.parse_args()
    args.queues = [q for q in args.queue.split(",") if q]
    if set(args.queues) - {"sqlite", "kafka"}:
        parser.error("--queue takes sqlite and/or kafka")
    configure_logging(args.log_level, "console")
    with tempfile.TemporaryDirectory(prefix="router-bench-push-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "mosquitto") as broker, contextlib.ExitStack() as stack:
            args.port = broker.port
            if "kafka" in args.queues:
                args.kafka = stack.enter_context(Tansu(work / "tansu")).bootstrap_servers
            results = event_loop.run(bench(args, work))  # the daemon's loop (it runs in this process)
    for kind, figures in results.items():
        report(kind, figures, args)
    if args.json:
        print(json.dumps({kind: {
            "router_p50_ms": percentile(figures["live"]["router"], 50),
            "router_p99_ms": percentile(figures["live"]["router"], 99),
            "raw_p50_ms": percentile(figures["live"]["raw"], 50), "raw_p99_ms": percentile(figures["live"]["raw"], 99),
            **figures["backlog"],
        } for kind, figures in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
