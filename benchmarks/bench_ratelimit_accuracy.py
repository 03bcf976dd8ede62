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


def redis_sync_admitters(port: int) -> dict[str, Callable[[], bool]]:
    url = f"redis://127.0.0.1:{port}/0"
    out: dict[str, Callable[[], bool]] = {}
    for algorithm in RateLimitAlgorithm:
        limiter = RateLimiter(storage=url)
        name = f"api-{algorithm.value}"
        limiter.configure(
            name, RateLimitConfig(requests_per_second=RATE, burst_size=1, algorithm=algorithm)
        )

        def admit(limiter: RateLimiter = limiter, name: str = name) -> bool:
            try:
                limiter.check_limit(name)
            except RateLimitExceeded:
                return False
            return True

        out[f"buttress {algorithm.name} (Redis)"] = admit
    for algorithm in (RateLimitAlgorithm.TOKEN_BUCKET, RateLimitAlgorithm.LEAKY_BUCKET):
        limiter = RateLimiter(storage=url)
        name = f"api-acquire-{algorithm.value}"
        config = RateLimitConfig(
            requests_per_second=RATE, burst_size=1, algorithm=algorithm, max_wait=0.05
        )
        limiter.configure(name, config)

        def wait_for_slot(limiter: RateLimiter = limiter, name: str = name) -> bool:
            try:
                limiter.acquire(name)
            except RateLimitExceeded:
                return False
            return True

        out[f"buttress {algorithm.name} acquire (Redis)"] = wait_for_slot
    from limits import RateLimitItemPerSecond, storage, strategies

    item = RateLimitItemPerSecond(RATE)
    for cls in (
        strategies.FixedWindowRateLimiter,
        strategies.MovingWindowRateLimiter,
        strategies.SlidingWindowCounterRateLimiter,
    ):
        strategy = cls(storage.RedisStorage(url))
        out[f"limits {cls.__name__} (Redis)"] = lambda s=strategy, k=cls.__name__: bool(
            s.hit(item, k)
        )
    import redis
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    bucket = RedisBucket.init(
        [Rate(1, int(Duration.SECOND) // RATE)], redis.Redis(port=port), "pyrate-accuracy"
    )
    pyrate = Limiter(bucket)
    out["pyrate-limiter RedisBucket"] = lambda: bool(pyrate.try_acquire("k", blocking=False))
    return out


def redis_async_admitters(port: int) -> dict[str, Callable[[], Awaitable[bool]]]:
    url = f"redis://127.0.0.1:{port}/0"
    out: dict[str, Callable[[], Awaitable[bool]]] = {}
    for algorithm in RateLimitAlgorithm:
        limiter = RateLimiter(storage=url)
        name = f"api-async-{algorithm.value}"
        limiter.configure(
            name, RateLimitConfig(requests_per_second=RATE, burst_size=1, algorithm=algorithm)
        )

        async def admit(limiter: RateLimiter = limiter, name: str = name) -> bool:
            try:
                await limiter.acheck_limit(name)
            except RateLimitExceeded:
                return False
            return True

        out[f"buttress {algorithm.name} (Redis)"] = admit
    for algorithm in (RateLimitAlgorithm.TOKEN_BUCKET, RateLimitAlgorithm.LEAKY_BUCKET):
        limiter = RateLimiter(storage=url)
        name = f"api-async-acquire-{algorithm.value}"
        config = RateLimitConfig(
            requests_per_second=RATE, burst_size=1, algorithm=algorithm, max_wait=0.05
        )
        limiter.configure(name, config)

        async def wait_for_slot(limiter: RateLimiter = limiter, name: str = name) -> bool:
            try:
                await limiter.aacquire(name)
            except RateLimitExceeded:
                return False
            return True

        out[f"buttress {algorithm.name} acquire (Redis)"] = wait_for_slot
    return out


def table(
    sync: dict[str, Callable[[], bool]],
    asyncs: dict[str, Callable[[], Awaitable[bool]]],
    seconds: float,
) -> None:
    ideal = RATE * seconds
    print("| limiter | 8 threads: admitted | max in 1 s | 200 tasks: admitted | max in 1 s |")
    print("|---|---|---|---|---|")
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


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "--redis" else 3.0
    print(
        f"{RATE} requests/s for {seconds:.0f} s; ideal {RATE * seconds:.0f} (+1 burst for buckets)"
    )
    print()
    if "--redis" in sys.argv:
        from bench_redis import redis_server

        with redis_server() as port:
            table(redis_sync_admitters(port), redis_async_admitters(port), seconds)
        return
    table(sync_admitters(), async_admitters(), seconds)


if __name__ == "__main__":
    main()
