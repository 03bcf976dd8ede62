"""Adaptive concurrency against fixed limits, on a real local HTTP server with a capacity.

Run: ``python benchmarks/bench_adaptive.py [--seconds S] [--only PART ...]`` (default 10 s per
row; ``--help`` lists the parts).

The server (``tests/capacity_server.py``, its own process on 127.0.0.1) serves ``GET /work`` in
40 ms while at most K requests are inside, and ``40 ms * inside / K`` beyond: requests over the
capacity queue inside it and everyone's latency grows. ``2K + 8`` asyncio workers call it in a
closed loop through each limiter (waiting in it for a slot), so the offered load is always over
the capacity. For each K, over the last two thirds of the run: requests/s, goodput (requests/s
answered within twice the uncontended latency), p50/p99 latency of the calls, and the mean
limit. Then the capacity drop: K from 64 to 8 at run time, how long the limit took to come within
30% of 8, and where it settled. Then the pure algorithms on a fake clock: a 10% overload for
10,000 windows, the highest and mean limit over the capacity. Last, the cost of a call through
each limiter beside a plain ``Bulkhead`` (best of interleaved rounds: the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from buttress import AdaptiveConcurrency, Bulkhead
from capacity_server import Client, capacity_server

SERVICE = 0.04


async def load(port: int, limiter: Bulkhead, workers: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    limits: list[int] = []
    series: list[tuple[float, int]] = []
    clients = [await Client.open(port) for _ in range(workers)]
    start = time.monotonic()
    stop = start + seconds
    warm = start + seconds / 3  # the figures leave out the first third: finding the limit

    async def worker(client: Client) -> None:
        while time.monotonic() < stop:
            async with limiter:
                began = time.monotonic()
                await client.get()
                if began >= warm:
                    latencies.append(time.monotonic() - began)

    async def watch() -> None:
        while time.monotonic() < stop:
            limits.append(limiter.max_concurrent)
            series.append((time.monotonic() - start, limiter.max_concurrent))
            await asyncio.sleep(0.02)

    await asyncio.gather(watch(), *(worker(client) for client in clients))
    for client in clients:
        client.close()
    elapsed = time.monotonic() - warm
    good = sum(1 for latency in latencies if latency < 2 * SERVICE * 1.1)
    return {
        "rps": len(latencies) / elapsed,
        "goodput": good / elapsed,
        "p50": statistics.median(latencies),
        "p99": statistics.quantiles(latencies, n=100)[98],
        "limit": statistics.mean(limits[len(limits) // 3 :]),
        "series": series,
    }


def limiters(capacity: int) -> list[tuple[str, Bulkhead]]:
    return [
        ("fixed 4", Bulkhead(4, max_wait=600)),
        ("fixed 16", Bulkhead(16, max_wait=600)),
        ("fixed 64", Bulkhead(64, max_wait=600)),
        ("fixed 128", Bulkhead(128, max_wait=600)),
        ("adaptive gradient2", AdaptiveConcurrency(max_wait=600)),
        ("adaptive aimd", AdaptiveConcurrency("aimd", max_wait=600)),
        (
            "adaptive aimd, loss only (timeout 2x)",
            AdaptiveConcurrency("aimd", max_wait=600, timeout=0.08, tolerance=None),
        ),
    ]


def capacities(seconds: float, ks: list[int], only: list[str] | None) -> None:
    print("| K | limiter | req/s | goodput/s | p50 ms | p99 ms | mean limit |")
    print("|---|---|---|---|---|---|---|")
    for capacity in ks:
        with capacity_server(capacity, SERVICE) as server:
            for label, limiter in limiters(capacity):
                if only and label not in only:
                    continue
                row = asyncio.run(load(server.port, limiter, 2 * capacity + 8, seconds))
                print(
                    f"| {capacity} | {label} | {row['rps']:,.0f} | {row['goodput']:,.0f} | "
                    f"{row['p50'] * 1000:.0f} | {row['p99'] * 1000:.0f} | {row['limit']:.1f} |",
                    flush=True,
                )


def capacity_drop() -> None:
    for label, limiter in (
        ("gradient2", AdaptiveConcurrency(max_wait=600)),
        ("aimd", AdaptiveConcurrency("aimd", max_wait=600)),
        (
            "aimd, loss only (timeout 2x)",
            AdaptiveConcurrency("aimd", max_wait=600, timeout=0.08, tolerance=None),
        ),
    ):
        with capacity_server(64, SERVICE) as server:

            async def scenario(
                port: int, limiter: Bulkhead = limiter
            ) -> tuple[float | None, float]:
                await load(port, limiter, 136, 5.0)
                await server.set_capacity(8)
                after = await load(port, limiter, 136, 15.0)
                series = after["series"]
                took = next((at for at, limit in series if limit <= 1.3 * 8), None)
                return took, statistics.mean(limit for at, limit in series if at >= 10)

            took, settled = asyncio.run(scenario(server.port))
        shown = "not within 15 s" if took is None else f"{took:.2f} s"
        print(
            f"capacity 64 -> 8, {label}: limit within 30% of 8 after {shown}; "
            f"mean limit over the last 5 s {settled:.1f}",
            flush=True,
        )


def simulated_overload() -> None:
    from test_adaptive_machines import ALGORITHMS, Server, drive

    for name, make in ALGORITHMS.items():
        for capacity in (4, 16, 64):
            limits = drive(make(min_limit=2), Server(capacity), windows=10_000, demand=1.1, dt=0.25)
            tail = limits[50:]
            print(
                f"fake clock, 10% overload, {name}, K={capacity}, 10,000 windows: highest limit "
                f"{max(tail) / capacity:.2f}x K, mean {statistics.mean(tail) / capacity:.2f}x K, "
                f"lowest {min(limits)}",
                flush=True,
            )


def overhead() -> None:
    def f(x: int) -> int:
        return x

    guarded = {
        "Bulkhead": Bulkhead(10)(f),
        "AdaptiveConcurrency gradient2": AdaptiveConcurrency(initial_limit=10, max_limit=10)(f),
        "AdaptiveConcurrency aimd": AdaptiveConcurrency("aimd", initial_limit=10, max_limit=10)(f),
    }
    best = dict.fromkeys(guarded, float("inf"))
    for _ in range(30):
        for label, call in guarded.items():
            ns = timeit.timeit(lambda call=call: call(1), number=20_000) / 20_000 * 1e9
            best[label] = min(best[label], ns)
    for label, ns in best.items():
        print(
            f"per call, {label}: {ns:,.0f} ns ({ns / best['Bulkhead']:.2f}x Bulkhead)", flush=True
        )


PARTS = {
    "capacities": "req/s, goodput, p50/p99 and mean limit per limiter for K = 4, 16, 64",
    "drop": "capacity 64 -> 8 at run time: time to follow, where the limit settles",
    "overload": "fake clock: 10% overload for 10,000 windows, both algorithms",
    "overhead": "cost per call beside a plain Bulkhead",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="parts:\n" + "\n".join(f"  {name}: {what}" for name, what in PARTS.items()),
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per row (10)")
    parser.add_argument(
        "--only", nargs="+", choices=list(PARTS), default=list(PARTS), help="parts to run (all)"
    )
    parser.add_argument(
        "--capacities",
        type=int,
        nargs="+",
        default=[4, 16, 64],
        metavar="K",
        help="capacities of the capacities part (4 16 64)",
    )
    parser.add_argument(
        "--limiter",
        nargs="+",
        metavar="LABEL",
        help="only these rows of the capacities part, by label (e.g. 'adaptive aimd')",
    )
    options = parser.parse_args()
    runs = {
        "capacities": lambda: capacities(options.seconds, options.capacities, options.limiter),
        "drop": capacity_drop,
        "overload": simulated_overload,
        "overhead": overhead,
    }
    for part in options.only:
        runs[part]()
        print()


if __name__ == "__main__":
    main()
