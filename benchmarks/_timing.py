"""Timing helpers shared by the benchmarks: medians of repeated runs, in ns per call."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

REPEATS = 7
TARGET_SECONDS = 0.15


def _loops_for(run_once: Callable[[int], float]) -> int:
    loops = 1000
    while True:
        elapsed = run_once(loops)
        if elapsed > 0.05 or loops >= 10_000_000:
            return max(1000, int(loops * TARGET_SECONDS / max(elapsed, 1e-9)))
        loops *= 4


def ns_per_call(fn: Callable[[], Any], repeats: int = REPEATS) -> float:
    """Median ns per call of ``fn()`` over ``repeats`` timed runs."""

    def run(loops: int) -> float:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        return time.perf_counter() - start

    loops = _loops_for(run)
    return statistics.median(run(loops) / loops * 1e9 for _ in range(repeats))


def ans_per_call(fn: Callable[[], Awaitable[Any]], repeats: int = REPEATS) -> float:
    """Median ns per awaited call of ``fn()``, measured inside one event loop."""

    async def main() -> float:
        async def run_async(loops: int) -> float:
            start = time.perf_counter()
            for _ in range(loops):
                await fn()
            return time.perf_counter() - start

        loops = 1000
        while True:
            elapsed = await run_async(loops)
            if elapsed > 0.05 or loops >= 10_000_000:
                break
            loops *= 4
        loops = max(1000, int(loops * TARGET_SECONDS / max(elapsed, 1e-9)))
        results = [await run_async(loops) / loops * 1e9 for _ in range(repeats)]
        return statistics.median(results)

    return asyncio.run(main())


def table(rows: list[tuple[str, str, float, float | None]], title: str) -> str:
    """Rows of (group, name, ns, floor ns) as a Markdown table with ratios to the floor."""
    out = [
        f"### {title}",
        "",
        "| group | implementation | ns/call | x floor |",
        "|---|---|---|---|",
    ]
    for group, name, ns, floor in rows:
        ratio = f"{ns / floor:.2f}" if floor else "—"
        out.append(f"| {group} | {name} | {ns:,.0f} | {ratio} |")
    return "\n".join(out)
