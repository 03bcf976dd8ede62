"""Accuracy under real concurrency: 100 requests/s for 3 s, hammered by 8 threads or 200 tasks.

Run: ``python benchmarks/bench_ratelimit_accuracy.py [seconds]``. For each limiter: admissions in
total within the run (ideal: 300, plus a burst of 1 for bucket algorithms; an admission that
completes after the run ends is not counted) and the most admissions certainly inside one 1-s
interval (a good limiter never exceeds its design maximum: the limit, or twice it for a fixed
window, whose boundary allows a double burst).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable

from buttress import RateLimitAlgorithm, RateLimitConfig, RateLimiter, RateLimitExceeded

RATE = 100


Span = tuple[float, float]


def max_in_window(spans: list[Span], window: float = 1.0) -> int:
    """The most admissions that certainly fell inside one interval of length ``window``.

    Each admission is known only to lie between the clock reads before and after its call (a
    thread can be preempted in between), so an admission counts for an interval only when its
    whole span lies inside it. A count over the limit is therefore a real over-admission, not
    measurement noise.
    """
    best = 0
    for start, _ in spans:
        inside = sum(1 for s, e in spans if s >= start and e < start + window)
        best = max(best, inside)
    return best


def hammer_threads(admit: Callable[[], bool], seconds: float, threads: int = 8) -> list[Span]:
    spans: list[Span] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def run() -> None:
        while (before := time.monotonic()) < end:
            if admit():
                after = time.monotonic()
                with lock:
                    spans.append((before, after))
            else:
                time.sleep(0.0001)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [span for span in spans if span[1] < end]


def hammer_tasks(
    admit: Callable[[], Awaitable[bool]], seconds: float, tasks: int = 200
) -> list[Span]:
    spans: list[Span] = []

    async def main() -> None:
        end = time.monotonic() + seconds

        async def run() -> None:
            while (before := time.monotonic()) < end:
                if await admit():
                    spans.append((before, time.monotonic()))
                else:
                    await asyncio.sleep(0.001)

        await asyncio.gather(*(run() for _ in range(tasks)))
        spans[:] = [span for span in spans if span[1] < end]

    asyncio.run(main())
    return spans


def buttress_limiters() -> dict[str, RateLimiter]:
    out = {}
    for algorithm in RateLimitAlgorithm:
        limiter = RateLimiter()
        limiter.configure(
            "api", RateLimitConfig(requests_per_second=RATE, burst_size=1, algorithm=algorithm)
        )
        out[f"buttress {algorithm.name}"] = limiter
    return out


def sync_admitters() -> dict[str, Callable[[], bool]]:
    out: dict[str, Callable[[], bool]] = {}
    for name, limiter in buttress_limiters().items():

        def admit(limiter: RateLimiter = limiter) -> bool:
            try:
                limiter.check_limit("api")
            except RateLimitExceeded:
                return False
            return True

        out[name] = admit
    from limits import RateLimitItemPerSecond, storage, strategies

    item = RateLimitItemPerSecond(RATE)
    for cls in (
        strategies.FixedWindowRateLimiter,
        strategies.MovingWindowRateLimiter,
        strategies.SlidingWindowCounterRateLimiter,
    ):
        strategy = cls(storage.MemoryStorage())
        out[f"limits {cls.__name__}"] = lambda s=strategy: bool(s.hit(item, "k"))
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

    pyrate = Limiter(InMemoryBucket([Rate(1, int(Duration.SECOND) // RATE)]))
    out["pyrate-limiter InMemoryBucket"] = lambda: bool(pyrate.try_acquire("k", blocking=False))
    return out


def async_admitters() -> dict[str, Callable[[], Awaitable[bool]]]:
    out: dict[str, Callable[[], Awaitable[bool]]] = {}
    for name, limiter in buttress_limiters().items():

        async def admit(limiter: RateLimiter = limiter) -> bool:
            try:
                await limiter.acheck_limit("api")
            except RateLimitExceeded:
                return False
            return True

        out[name] = admit
    from aiolimiter import AsyncLimiter

    aio = AsyncLimiter(1, 1 / RATE)

    async def aio_admit() -> bool:
        await aio.acquire()
        return True

    out["aiolimiter (waits, burst 1)"] = aio_admit
    return out


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    ideal = RATE * seconds
    print(f"{RATE} requests/s for {seconds:.0f} s; ideal {ideal:.0f} (+1 burst for buckets)")
    print()
    print("| limiter | 8 threads: admitted | max in 1 s | 200 tasks: admitted | max in 1 s |")
    print("|---|---|---|---|---|")
    sync = sync_admitters()
    asyncs = async_admitters()
    for name in dict.fromkeys([*sync, *asyncs]):
        cells = []
        if name in sync:
            spans = hammer_threads(sync[name], seconds)
            cells += [f"{len(spans)} ({len(spans) / ideal - 1:+.1%})", str(max_in_window(spans))]
        else:
            cells += ["—", "—"]
        if name in asyncs:
            spans = hammer_tasks(asyncs[name], seconds)
            cells += [f"{len(spans)} ({len(spans) / ideal - 1:+.1%})", str(max_in_window(spans))]
        else:
            cells += ["—", "—"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
