"""Failure-path cost of buttress's policies beside the peers and hand-written floors.

Run: ``python benchmarks/bench_failure.py`` (after ``pip install -e '.[bench]'``). Everything runs
in this one process, as a service under an outage or overload would: the application's logging is
configured at WARNING with a real handler (formatting every enabled record and writing it to
``os.devnull``), and no event hook is installed. Each figure is the median of repeated timed runs,
printed as ns per refused or failed call and as a ratio to the hand-written floor of its group,
with the number of log lines written during the row's run (calibration included).

The floors: a hand-written guard raising a custom exception that carries ``retry_after`` (what
every rejection at least costs: raising and catching one exception), and a hand-written loop
calling a failing function 3 times with no wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import buttress
from _timing import REPEATS, TARGET_SECONDS
from buttress import events

Row = tuple[str, str, float, float, int, int]


class CountingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A real handler (formats and writes every record it gets) that counts the lines."""

    def __init__(self) -> None:
        super().__init__(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1
        super().emit(record)


LOG = CountingHandler()


def f(x: int) -> int:
    return x + 1


async def af(x: int) -> int:
    return x + 1


def boom(x: int) -> int:
    raise ConnectionError("down")


async def aboom(x: int) -> int:
    raise ConnectionError("down")


# --- timing: ns per call, and the calls and log lines of the whole measurement -----------------


def measure(op: Callable[[], None]) -> tuple[float, int, int]:
    calls, lines = 0, LOG.lines

    def run(loops: int) -> float:
        nonlocal calls
        calls += loops
        start = time.perf_counter()
        for _ in range(loops):
            op()
        return time.perf_counter() - start

    loops = 1000
    while (elapsed := run(loops)) <= 0.05 and loops < 10_000_000:
        loops *= 4
    loops = max(1000, int(loops * TARGET_SECONDS / max(elapsed, 1e-9)))
    ns = statistics.median(run(loops) / loops * 1e9 for _ in range(REPEATS))
    return ns, calls, LOG.lines - lines


def ameasure(op: Callable[[], Awaitable[None]]) -> tuple[float, int, int]:
    async def main() -> tuple[float, int, int]:
        calls, lines = 0, LOG.lines

        async def run(loops: int) -> float:
            nonlocal calls
            calls += loops
            start = time.perf_counter()
            for _ in range(loops):
                await op()
            return time.perf_counter() - start

        loops = 1000
        while (elapsed := await run(loops)) <= 0.05 and loops < 10_000_000:
            loops *= 4
        loops = max(1000, int(loops * TARGET_SECONDS / max(elapsed, 1e-9)))
        ns = statistics.median([await run(loops) / loops * 1e9 for _ in range(REPEATS)])
        return ns, calls, LOG.lines - lines

    return asyncio.run(main())


def caught(fn: Callable[..., Any], *args: Any) -> Callable[[], None]:
    """``fn(*args)``, which raises, called and caught as a caller would."""

    def op() -> None:
        try:
            fn(*args)
        except Exception:
            pass
        else:
            raise AssertionError(f"{fn!r} did not raise")

    return op


def acaught(fn: Callable[..., Awaitable[Any]], *args: Any) -> Callable[[], Awaitable[None]]:
    async def op() -> None:
        try:
            await fn(*args)
        except Exception:
            pass
        else:
            raise AssertionError(f"{fn!r} did not raise")

    return op


# --- floors -------------------------------------------------------------------------------------


class Refused(Exception):
    """A hand-written rejection carrying ``retry_after``."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def hand_guard(fn: Any) -> Any:
    state = {"open": True}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if state["open"]:
            raise Refused("refused", retry_after=30.0)
        return fn(*args, **kwargs)

    return wrapper


def async_hand_guard(fn: Any) -> Any:
    state = {"open": True}

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if state["open"]:
            raise Refused("refused", retry_after=30.0)
        return await fn(*args, **kwargs)

    return wrapper


def hand_retry(fn: Any, attempts: int = 3) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception:
                if attempt == attempts - 1:
                    raise
        raise AssertionError

    return wrapper


def async_hand_retry(fn: Any, attempts: int = 3) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(attempts):
            try:
                return await fn(*args, **kwargs)
            except Exception:
                if attempt == attempts - 1:
                    raise
        raise AssertionError

    return wrapper


# --- subjects, each fresh per row so one row's warnings do not silence the next's --------------


def open_breaker() -> buttress.CircuitBreaker:
    cb = buttress.CircuitBreaker(name=None, timeout_duration=3600)
    cb.open()
    return cb


def exhausted_limiter() -> buttress.RateLimiter:
    limiter = buttress.RateLimiter(storage="memory://")
    limiter.configure(
        "exhausted", buttress.RateLimitConfig(requests_per_second=0.001, burst_size=1)
    )
    limiter.check_limit("exhausted")  # the one token
    return limiter


def full_bulkhead() -> buttress.Bulkhead:
    bh = buttress.Bulkhead(max_concurrent=1)
    bh.acquire()  # held for the life of the benchmark
    return bh


def buttress_retry(fn: Any) -> Any:
    return buttress.retry(max_attempts=3, base_delay=0, jitter=False)(fn)


def sync_rows() -> list[Row]:
    import circuitbreaker as circuitbreaker_lib
    import pybreaker
    import stamina
    import tenacity

    rows: list[Row] = []

    def row(group: str, name: str, op: Callable[[], None], floor: float | None) -> float:
        ns, calls, lines = measure(op)
        rows.append((group, name, ns, floor or ns, calls, lines))
        return ns

    floor = row(
        "rejection",
        "hand-written raise/catch with retry_after (floor)",
        caught(hand_guard(f), 1),
        None,
    )

    cb = open_breaker()
    row("breaker", "buttress @CircuitBreaker, open", caught(cb(f), 1), floor)
    cb = open_breaker()
    row("breaker", "buttress cb.call(f, x), open", caught(cb.call, f, 1), floor)
    cbl = circuitbreaker_lib.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    tripped = cbl(boom)
    caught(tripped, 1)()  # the failure that opens it
    row("breaker", "circuitbreaker, open", caught(tripped, 1), floor)
    pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    pb.open()
    row("breaker", "pybreaker, open", caught(pb(f), 1), floor)

    limiter = exhausted_limiter()
    row(
        "rate limit",
        "buttress check_limit, exhausted",
        caught(limiter.check_limit, "exhausted"),
        floor,
    )
    limiter = exhausted_limiter()
    limited = buttress.rate_limit("exhausted", limiter=limiter)(f)
    row("rate limit", "buttress @rate_limit, exhausted", caught(limited, 1), floor)

    bh = full_bulkhead()
    row("bulkhead", "buttress @Bulkhead, full", caught(bh(f), 1), floor)
    bh = full_bulkhead()
    row("bulkhead", "buttress bh.call(f, x), full", caught(bh.call, f, 1), floor)

    retry_floor = row(
        "retry", "hand-written loop, 3 failures (floor)", caught(hand_retry(boom), 1), None
    )
    row(
        "retry",
        "buttress @retry, 3 failures, no wait",
        caught(buttress_retry(boom), 1),
        retry_floor,
    )
    row(
        "retry",
        "tenacity, 3 failures, no wait",
        caught(
            tenacity.retry(
                stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), reraise=True
            )(boom),
            1,
        ),
        retry_floor,
    )
    row(
        "retry",
        "stamina, 3 failures, no wait",
        caught(
            stamina.retry(
                on=Exception, attempts=3, timeout=None, wait_initial=0, wait_max=0, wait_jitter=0
            )(boom),
            1,
        ),
        retry_floor,
    )
    return rows


def async_rows() -> list[Row]:
    import aiobreaker
    import circuitbreaker as circuitbreaker_lib
    import stamina
    import tenacity

    rows: list[Row] = []

    def row(group: str, name: str, op: Callable[[], Awaitable[None]], floor: float | None) -> float:
        ns, calls, lines = ameasure(op)
        rows.append((group, name, ns, floor or ns, calls, lines))
        return ns

    floor = row(
        "rejection",
        "hand-written raise/catch with retry_after (floor)",
        acaught(async_hand_guard(af), 1),
        None,
    )

    cb = open_breaker()
    row("breaker", "buttress @CircuitBreaker, open", acaught(cb(af), 1), floor)
    cb = open_breaker()
    row("breaker", "buttress cb.acall(af, x), open", acaught(cb.acall, af, 1), floor)
    cbl = circuitbreaker_lib.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    tripped = cbl(aboom)
    asyncio.run(acaught(tripped, 1)())  # the failure that opens it
    row("breaker", "circuitbreaker, open", acaught(tripped, 1), floor)
    ab = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(hours=1))
    ab.open()
    row("breaker", "aiobreaker, open", acaught(ab(af), 1), floor)

    limiter = exhausted_limiter()
    row(
        "rate limit",
        "buttress acheck_limit, exhausted",
        acaught(limiter.acheck_limit, "exhausted"),
        floor,
    )
    limiter = exhausted_limiter()
    limited = buttress.rate_limit("exhausted", limiter=limiter)(af)
    row("rate limit", "buttress @rate_limit, exhausted", acaught(limited, 1), floor)

    bh = full_bulkhead()
    row("bulkhead", "buttress @Bulkhead, full", acaught(bh(af), 1), floor)
    bh = full_bulkhead()
    row("bulkhead", "buttress bh.acall(af, x), full", acaught(bh.acall, af, 1), floor)

    retry_floor = row(
        "retry", "hand-written loop, 3 failures (floor)", acaught(async_hand_retry(aboom), 1), None
    )
    row(
        "retry",
        "buttress @retry, 3 failures, no wait",
        acaught(buttress_retry(aboom), 1),
        retry_floor,
    )
    row(
        "retry",
        "tenacity, 3 failures, no wait",
        acaught(
            tenacity.retry(
                stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), reraise=True
            )(aboom),
            1,
        ),
        retry_floor,
    )
    row(
        "retry",
        "stamina, 3 failures, no wait",
        acaught(
            stamina.retry(
                on=Exception, attempts=3, timeout=None, wait_initial=0, wait_max=0, wait_jitter=0
            )(aboom),
            1,
        ),
        retry_floor,
    )
    return rows


def table(rows: list[Row], title: str) -> str:
    out = [
        f"### {title}",
        "",
        "| group | implementation | ns/call | x floor | calls | log lines |",
        "|---|---|---|---|---|---|",
    ]
    for group, name, ns, floor, calls, lines in rows:
        out.append(f"| {group} | {name} | {ns:,.0f} | {ns / floor:.2f} | {calls:,} | {lines:,} |")
    return "\n".join(out)


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[LOG],
        force=True,
    )
    if events.listening():
        raise SystemExit("an event hook is installed; this benchmark measures the path without")
    print(
        f"Python {sys.version.split()[0]}; logging at WARNING to {os.devnull}, no event hook; "
        "medians of repeated runs, ns per refused or failed call"
    )
    print()
    print(table(sync_rows(), "sync"))
    print()
    print(table(async_rows(), "async"))


if __name__ == "__main__":
    main()
