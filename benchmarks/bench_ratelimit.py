"""Cost of an admitted rate-limit decision, buttress beside the peers, in one process.

Run: ``python benchmarks/bench_ratelimit.py``. Floors: a hand-written token bucket without and
with a lock. Every limiter is configured with a rate so high that every decision is admitted.
The subjects are timed in turns, round after round (the machine's speed drifts between seconds),
and a row shows the median ns per call and the median of its per-round ratios to the locked
floor timed in the same round. Then buttress with 1,000,000 distinct keys: memory (tracemalloc)
and ns per decision.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from buttress import RateLimitAlgorithm, RateLimitConfig, RateLimiter

HUGE = 10**9
ROUNDS = 15
RUN_SECONDS = 0.03

Row = tuple[str, str, float, float]
Subject = tuple[str, str, Callable[[], Any]]


def _loops(run: Callable[[int], float]) -> int:
    loops = 100
    while (elapsed := run(loops)) < 0.01:
        loops *= 4
    return max(100, int(loops * RUN_SECONDS / elapsed))


def in_turns(subjects: list[Subject]) -> list[Row]:
    """Time the subjects in turns; the first is the floor. Rows of (group, name, ns, ratio)."""

    def runner(fn: Callable[[], Any]) -> Callable[[int], float]:
        def run(loops: int) -> float:
            start = time.perf_counter()
            for _ in range(loops):
                fn()
            return time.perf_counter() - start

        return run

    runs = [runner(fn) for _, _, fn in subjects]
    return _rounds(subjects, runs)


def async_in_turns(subjects: list[tuple[str, str, Callable[[], Awaitable[Any]]]]) -> list[Row]:
    """:func:`in_turns` for coroutines, all awaited in one event loop."""
    loop = asyncio.new_event_loop()

    def runner(fn: Callable[[], Awaitable[Any]]) -> Callable[[int], float]:
        async def run(loops: int) -> float:
            start = time.perf_counter()
            for _ in range(loops):
                await fn()
            return time.perf_counter() - start

        return lambda loops: loop.run_until_complete(run(loops))

    try:
        return _rounds(subjects, [runner(fn) for _, _, fn in subjects])
    finally:
        loop.close()


def _rounds(subjects: list[Any], runs: list[Callable[[int], float]]) -> list[Row]:
    loops = [_loops(run) for run in runs]
    results: list[list[float]] = [[] for _ in subjects]
    for _ in range(ROUNDS):
        for i, run in enumerate(runs):
            results[i].append(run(loops[i]) / loops[i] * 1e9)
    return _summary(subjects, results)


def _summary(subjects: list[Any], results: list[list[float]]) -> list[Row]:
    floor = results[0]
    rows: list[Row] = []
    for (group, name, _), ns in zip(subjects, results, strict=True):
        ratio = statistics.median(a / b for a, b in zip(ns, floor, strict=True))
        rows.append((group, name, statistics.median(ns), ratio))
    return rows


def table(rows: list[Row], title: str) -> str:
    """Rows as a Markdown table (ratio: the median per-round ratio to the floor)."""
    out = [
        f"### {title}",
        "",
        "| group | implementation | ns/call | x floor |",
        "|---|---|---|---|",
    ]
    for group, name, ns, ratio in rows:
        out.append(f"| {group} | {name} | {ns:,.0f} | {ratio:.2f} |")
    return "\n".join(out)


class HandBucket:
    """The textbook token bucket: refill on read."""

    def __init__(self, rate: float, capacity: float, locked: bool) -> None:
        self.rate, self.capacity, self.tokens = rate, capacity, capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock() if locked else None

    def _take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def allow(self) -> bool:
        if self.lock is None:
            return self._take()
        with self.lock:
            return self._take()


def subjects() -> list[Subject]:
    locked = HandBucket(HUGE, HUGE, locked=True)
    free = HandBucket(HUGE, HUGE, locked=False)
    out: list[Subject] = [
        ("floor", "hand-written token bucket, with lock", locked.allow),
        ("floor", "hand-written token bucket, no lock", free.allow),
    ]
    for algorithm in RateLimitAlgorithm:
        limiter = RateLimiter()
        burst = HUGE if algorithm is RateLimitAlgorithm.TOKEN_BUCKET else None
        rate = 1e12 if algorithm.name.endswith("BUCKET") else 1e6
        limiter.configure(
            "api",
            RateLimitConfig(
                requests_per_second=rate, burst_size=burst, algorithm=algorithm, window_seconds=1.0
            ),
        )
        check = limiter.check_limit
        out.append(("buttress", f"check_limit {algorithm.name}", lambda c=check: c("api")))
    from limits import RateLimitItemPerSecond, storage, strategies

    item = RateLimitItemPerSecond(HUGE)
    for cls in (strategies.FixedWindowRateLimiter, strategies.SlidingWindowCounterRateLimiter):
        strategy = cls(storage.MemoryStorage())
        out.append(("limits", cls.__name__, lambda s=strategy: s.hit(item, "k")))
    moving = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
    small = RateLimitItemPerSecond(1000)
    out.append(
        ("limits", "MovingWindowRateLimiter (1000 live entries)", lambda: moving.hit(small, "k"))
    )
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

    pyrate = Limiter(InMemoryBucket([Rate(HUGE, Duration.SECOND)]))
    out.append(
        (
            "pyrate-limiter",
            "InMemoryBucket try_acquire",
            lambda: pyrate.try_acquire("k", blocking=False),
        )
    )
    return out


def async_subjects() -> list[tuple[str, str, Callable[[], Awaitable[Any]]]]:
    from aiolimiter import AsyncLimiter

    locked = HandBucket(HUGE, HUGE, locked=True)

    async def floor() -> None:
        locked.allow()

    limiter = RateLimiter()
    limiter.configure("api", RateLimitConfig(requests_per_second=1e12, burst_size=HUGE))

    async def ours() -> None:
        await limiter.acheck_limit("api")

    async def ours_acquire() -> None:
        await limiter.aacquire("api")

    aio = AsyncLimiter(HUGE, 1)

    async def theirs() -> None:
        async with aio:
            pass

    return [
        ("floor", "hand-written token bucket, with lock (in a coroutine)", floor),
        ("buttress", "await acheck_limit", ours),
        ("buttress", "await aacquire", ours_acquire),
        ("aiolimiter", "async with AsyncLimiter", theirs),
    ]


def million_keys() -> str:
    keys = [f"tenant-{i}" for i in range(1_000_000)]

    def run(traced: bool) -> tuple[float, int, int, int]:
        limiter = RateLimiter()
        limiter.configure("api", RateLimitConfig(requests_per_second=10.0, burst_size=20))
        gc.collect()
        if traced:
            tracemalloc.start()
        start = time.perf_counter()
        for key in keys:
            limiter.check_limit("api", key)
        elapsed = time.perf_counter() - start
        current, peak = tracemalloc.get_traced_memory() if traced else (0, 0)
        if traced:
            tracemalloc.stop()
        return elapsed, limiter.keys("api"), current, peak

    elapsed, held, _, _ = run(traced=False)
    _, held_traced, current, peak = run(traced=True)
    return (
        f"1,000,000 distinct keys, token bucket 10/s burst 20: "
        f"{elapsed / len(keys) * 1e9:,.0f} ns/decision; {held:,} keys still held at the end "
        f"(idle ones are swept); memory held {current / 2**20:,.1f} MiB, peak "
        f"{peak / 2**20:,.1f} MiB ({held_traced:,} keys in the traced run)"
    )


def main() -> None:
    print(table(in_turns(subjects()), "admitted decision (x: median per-round ratio to the floor)"))
    print()
    print(table(async_in_turns(async_subjects()), "async, per admitted decision"))
    print()
    print(million_keys())


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
