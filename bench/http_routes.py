"""Benchmark: an HTTP route to a no-op function next to an aiohttp server answering directly.

    .venv/bin/python bench/http_routes.py [--requests 5000] [--concurrency 16] [--rounds 3] [--environments 2]

Both servers run in a child process of their own (the same layout for both), and one aiohttp
client in this process drives them with `--concurrency` keep-alive connections:

* raw: an aiohttp application whose handler returns "ok": the floor of serving HTTP in Python here;
* router: `router run` semantics (the app's build/start) with one route `GET /noop` to a function
  returning `{"statusCode": 200, "body": "ok"}` in `--environments` worker processes: request
  parsing, the API Gateway v2.0 event, the invocation over the worker protocol and the response.

Rounds alternate between the two after a warm-up, so drift on a shared machine hits both alike;
the figures are medians. Printed: requests/s and p50/p99 latency of each, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

NOOP = 'def handler(event, context):\n    return {"statusCode": 200, "body": "ok"}\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve_raw(port: int) -> None:
    from aiohttp import web

    async def noop(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/noop", noop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_router(config_path: str) -> None:
    from router.app import build, start
    from router.config import load_config_data
    from router.observability.logging import configure_logging

    configure_logging(level="warning", fmt="json", stream=sys.stderr)
    app = await build(load_config_data(json.loads(Path(config_path).read_text()), {}))
    await start(app)
    await app.pool.invoke("noop", {})  # the environments are warm before the first round
    print("ready", flush=True)
    await asyncio.Event().wait()


async def drive(url: str, requests: int, concurrency: int) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    remaining = requests
    failures = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.get(url) as answer:
                await answer.read()
                if answer.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{url}: {failures} requests failed")
    latencies.sort()
    return {"rate": requests / elapsed, "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000}


async def child(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise SystemExit(f"server {args} did not start")
    return proc


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        (workdir / "noop.py").write_text(NOOP)
        router_port, raw_port = free_port(), free_port()
        config = {
            "state_dir": str(workdir / "state"), "http": {"listen": f"127.0.0.1:{router_port}"},
            "functions": {"noop": {"handler": "noop.handler", "code_path": str(workdir), "timeout": 30,
                                   "reserved_concurrent_executions": args.environments}},
            "http_routes": {"noop": {"function_name": "noop", "method": "GET", "path": "/noop"}},
        }
        (workdir / "router.json").write_text(json.dumps(config))
        servers = [await child("--serve-raw", str(raw_port)),
                   await child("--serve-router", str(workdir / "router.json"))]
        try:
            urls = {"raw": f"http://127.0.0.1:{raw_port}/noop", "router": f"http://127.0.0.1:{router_port}/noop"}
            for url in urls.values():  # warm-up: connections, caches, the environments
                await drive(url, min(500, args.requests), args.concurrency)
            results: dict[str, list[dict[str, float]]] = {"raw": [], "router": []}
            for n in range(args.rounds):
                for name, url in urls.items():
                    results[name].append(await drive(url, args.requests, args.concurrency))
                print(f"  round {n + 1}: raw {results['raw'][-1]['rate']:>8,.0f} req/s, "
                      f"router {results['router'][-1]['rate']:>8,.0f} req/s")
        finally:
            for proc in servers:
                proc.kill()
                await proc.wait()
    med = {name: {key: statistics.median(r[key] for r in rounds) for key in ("rate", "p50", "p99")}
           for name, rounds in results.items()}
    print(f"{args.requests} requests x {args.rounds} rounds, {args.concurrency} connections, "
          f"{args.environments} environments (medians)")
    for name, label in (("raw", "aiohttp answering directly"), ("router", "route -> no-op function")):
        m = med[name]
        print(f"{label:<28}: {m['rate']:>9,.0f} req/s   p50 {m['p50']:6.2f} ms   p99 {m['p99']:6.2f} ms")
    print(f"ratio router / raw req/s    : {med['router']['rate'] / med['raw']['rate']:>9.2f}")
    print(f"ratio router / raw p99      : {med['router']['p99'] / med['raw']['p99']:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--environments", type=int, default=2, help="reserved concurrency of the no-op function")
    parser.add_argument("--serve-raw", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-router", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        asyncio.run(serve_raw(args.serve_raw))
    elif args.serve_router:
        from router.event_loop import run as run_loop  # the daemon's own loop choice (uvloop where there)

        run_loop(serve_router(args.serve_router))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
