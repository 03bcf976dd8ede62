"""Cost of an admitted rate-limit decision, buttress beside the peers, in one process.

Run: ``python benchmarks/bench_ratelimit.py``. Floors: a hand-written token bucket without and
with a lock. Every limiter is configured with a rate so high that every decision is admitted.
Then buttress with 1,000,000 distinct keys: memory (tracemalloc) and ns per decision.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc

from _timing import ans_per_call, ns_per_call, table
from buttress import RateLimitAlgorithm, RateLimitConfig, RateLimiter

HUGE = 10**9


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


def rows() -> list[tuple[str, str, float, float | None]]:
    out: list[tuple[str, str, float, float | None]] = []
    free = HandBucket(HUGE, HUGE, locked=False)
    locked = HandBucket(HUGE, HUGE, locked=True)
    out.append(("floor", "hand-written token bucket, no lock", ns_per_call(free.allow), None))
    floor = ns_per_call(locked.allow)
    out.append(("floor", "hand-written token bucket, with lock", floor, floor))
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
        out.append(
            (
                "buttress",
                f"check_limit {algorithm.name}",
                ns_per_call(lambda lim=limiter: lim.check_limit("api")),
                floor,
            )
        )
    from limits import RateLimitItemPerSecond, storage, strategies

    item = RateLimitItemPerSecond(HUGE)
    for cls in (strategies.FixedWindowRateLimiter, strategies.SlidingWindowCounterRateLimiter):
        strategy = cls(storage.MemoryStorage())
        out.append(
            ("limits", cls.__name__, ns_per_call(lambda s=strategy: s.hit(item, "k")), floor)
        )
    moving = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
    small = RateLimitItemPerSecond(1000)
    out.append(
        (
            "limits",
            "MovingWindowRateLimiter (1000 live entries)",
            ns_per_call(lambda: moving.hit(small, "k")),
            floor,
        )
    )
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

    pyrate = Limiter(InMemoryBucket([Rate(HUGE, Duration.SECOND)]))
    out.append(
        (
            "pyrate-limiter",
            "InMemoryBucket try_acquire",
            ns_per_call(lambda: pyrate.try_acquire("k", blocking=False)),
            floor,
        )
    )
    return out


def async_rows(floor: float) -> list[tuple[str, str, float, float | None]]:
    from aiolimiter import AsyncLimiter

    out: list[tuple[str, str, float, float | None]] = []
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

    out.append(("buttress", "await acheck_limit", ans_per_call(ours), floor))
    out.append(("buttress", "await aacquire", ans_per_call(ours_acquire), floor))
    out.append(("aiolimiter", "async with AsyncLimiter", ans_per_call(theirs), floor))
    return out


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
    sync = rows()
    floor = next(ns for group, name, ns, _ in sync if name.endswith("with lock"))
    print(table(sync, "admitted decision, ns (x = ratio to the locked hand-written bucket)"))
    print()
    print(table(async_rows(floor), "async, ns per admitted decision"))
    print()
    print(million_keys())


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
