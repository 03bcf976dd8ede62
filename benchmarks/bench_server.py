"""What the operator endpoints cost under load, next to a bare Starlette endpoint, same server.

Run: ``python benchmarks/bench_server.py [--seconds 1.5] [--rounds 6] [--connections 16]``.

The server runs in a child process: uvicorn serving one Starlette app with ``/bare`` (a plain
Starlette endpoint returning a cached dict as JSON: the floor) and the team's endpoints mounted at
``/`` (``create_app``). The team has 100 circuit breakers (some open, some half-open) and 50
resources checked every second, one of whose checks hangs for ever (it times out every second and
stays abandoned). A thread in the server process makes a breaker decision every millisecond and
records how long each took, so what a scrape does to policy decisions is measured too.

The load generator (this process) is a small asyncio client on raw streams: ``--connections``
keep-alive HTTP/1.1 connections, each sending its next request as soon as the previous answer is
read (a closed loop), for ``--seconds`` per endpoint, endpoints interleaved over ``--rounds``
rounds so that drift on a shared machine hits all alike. httpx cannot measure this: it tops out
near 1,000 requests/s here. Printed per endpoint: requests/s, p50 and p99 latency, the ratio to
the bare endpoint's rate (the median over the rounds of each round's ratio), and the p99 and max
of the breaker decisions made meanwhile.

Targets: ``/health`` and ``/ready`` >= 0.8x the bare rate with p99 < 5 ms; ``/metrics`` >= 0.5x;
breaker decisions during ``/metrics`` no slower than during ``/bare``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PATHS = ["/bare", "/health", "/ready", "/metrics"]


# -- the server (child process) -------------------------------------------------------------------


def serve(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from buttress import CircuitBreaker, CircuitBreakerConfig, ResilienceManager
    from buttress.degradation import DegradationManager
    from buttress.health import Reading, ResourceType
    from buttress.server import create_app

    manager = ResilienceManager(
        "bench-team",
        {"check_interval": 1.0, "check_timeout": 0.5},
        degradation=DegradationManager(name="bench-team", min_dwell=0),
    )
    breakers = [
        CircuitBreaker(CircuitBreakerConfig(name=f"bench.breaker.{i:03d}", fail_max=5))
        for i in range(100)
    ]
    for breaker in breakers[:5]:
        breaker.open()

    def usage_check(i: int) -> Any:
        async def check() -> Reading:
            return Reading(usage=20.0 + (i % 50))

        return check

    async def hung() -> Reading:
        await asyncio.get_running_loop().create_future()  # never set
        raise AssertionError("unreachable")

    for i in range(49):
        manager.register_monitor(
            ResourceType.NETWORK if i % 2 else ResourceType.API_QUOTA,
            f"resource-{i:02d}",
            usage_check(i),
            required=i < 5,
        )
    manager.register_monitor(ResourceType.NETWORK, "hung", hung, critical=False)

    decisions: list[int] = []
    lock = threading.Lock()

    def decide() -> None:
        target = breakers[50]
        while True:
            began = time.perf_counter_ns()
            target.call(int)
            spent = time.perf_counter_ns() - began
            with lock:
                decisions.append(spent)
            time.sleep(0.001)

    cached = {"status": "ok", "service": "bench", "checks": {"db": "pass", "cache": "pass"}}

    async def bare(request: Request) -> JSONResponse:
        return JSONResponse(cached)

    async def policy(request: Request) -> JSONResponse:
        with lock:
            taken = sorted(decisions)
            decisions.clear()
        if not taken:
            return JSONResponse({"count": 0})
        return JSONResponse(
            {
                "count": len(taken),
                "p50_us": taken[len(taken) // 2] / 1000,
                "p99_us": taken[int(len(taken) * 0.99)] / 1000,
                "max_us": taken[-1] / 1000,
            }
        )

    app = Starlette(
        routes=[
            Route("/bare", bare),
            Route("/bench/policy", policy),
            Mount("/", app=create_app(manager)),
        ]
    )

    async def main() -> None:
        await manager.start()
        threading.Thread(target=decide, daemon=True).start()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        await uvicorn.Server(config).serve()

    asyncio.run(main())


# -- the load generator ---------------------------------------------------------------------------


async def _connection(
    port: int, path: str, until: float, latencies: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    clock = time.perf_counter
    try:
        while clock() < until:
            began = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            if length:
                await reader.readexactly(length)
            latencies.append(clock() - began)
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load(port: int, path: str, seconds: float, connections: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    began = time.perf_counter()
    until = began + seconds
    await asyncio.gather(
        *(_connection(port, path, until, latencies, statuses) for _ in range(connections))
    )
    elapsed = time.perf_counter() - began
    return {
        "count": len(latencies),
        "elapsed": elapsed,
        "latencies": latencies,
        "statuses": statuses,
    }


async def _get(port: int, path: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


async def bench(port: int, seconds: float, rounds: int, connections: int) -> None:
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    policy: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    for path in PATHS:  # warm-up: the first renderings, the connections' first requests
        await _load(port, path, 0.5, connections)
    for _ in range(rounds):
        for path in PATHS:
            await _get(port, "/bench/policy")  # reset
            results[path].append(await _load(port, path, seconds, connections))
            policy[path].append(await _get(port, "/bench/policy"))
    import importlib.util

    parser = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, uvicorn with {parser} on "
        f"the asyncio loop; {connections} keep-alive connections, {rounds} x {seconds:g} s per "
        "endpoint, interleaved"
    )
    print()
    print(
        "| endpoint | requests/s | p50 ms | p99 ms | x bare (median of rounds) | statuses | "
        "breaker decision p99 / max µs |"
    )
    print("|---|---|---|---|---|---|---|")
    bare_runs = results[PATHS[0]]
    for path in PATHS:
        runs = results[path]
        count = sum(r["count"] for r in runs)
        elapsed = sum(r["elapsed"] for r in runs)
        rate = count / elapsed
        latencies = sorted(x for r in runs for x in r["latencies"])
        p50 = latencies[len(latencies) // 2] * 1000
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        statuses: dict[int, int] = {}
        for r in runs:
            for code, n in r["statuses"].items():
                statuses[code] = statuses.get(code, 0) + n
        decisions = [p for p in policy[path] if p.get("count")]
        p99s = max(p["p99_us"] for p in decisions) if decisions else float("nan")
        maxes = max(p["max_us"] for p in decisions) if decisions else float("nan")
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
        # Each round's rate against the bare rate of the same round: drift on a shared machine
        # moves both.
        ratio = statistics.median(
            (r["count"] / r["elapsed"]) / (b["count"] / b["elapsed"])
            for r, b in zip(runs, bare_runs, strict=True)
        )
        print(
            f"| {path} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {ratio:.2f} | "
            f"{codes} | {p99s:,.0f} / {maxes:,.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.05)
        asyncio.run(bench(port, args.seconds, args.rounds, args.connections))
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
