"""Failure-path cost of buttress's policies beside the peers and hand-written floors.

Run: ``python benchmarks/bench_failure.py`` (after ``pip install -e '.[bench]'``). Everything runs
in this one process, as a service under an outage or overload would: the application's logging is
configured at WARNING with a real handler (formatting every enabled record and writing it to
``os.devnull``), and no event hook is installed. The subjects of a group are timed in turns, 25
rounds of ~0.08 s each; a row shows the median ns per refused or failed call, the median of its
per-round ratios to the group's floor, and how many calls it made over how many seconds with how
many log lines written meanwhile (calibration included): a policy that warns once per interval
writes a line or two, one that warns per call writes one per call.

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
from bench_core import async_hand_retry, hand_retry
from buttress import events

Row = tuple[str, str, float, float, int, int, float]


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


# --- timing: rounds of short runs, each subject beside its floor ------------------------------
#
# The machine is shared and its speed drifts between seconds, so the subjects of a group are
# timed in turns, round after round, and each ratio is the median of the per-round ratios to the
# floor timed in the same round.

ROUNDS = 25
RUN_SECONDS = 0.08

Runner = Callable[[Callable[[], Any], int], float]


def run_sync(op: Callable[[], None], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        op()
    return time.perf_counter() - start


def async_runner(loop: asyncio.AbstractEventLoop) -> Runner:
    async def timed(op: Callable[[], Awaitable[None]], loops: int) -> float:
        start = time.perf_counter()
        for _ in range(loops):
            await op()
        return time.perf_counter() - start

    return lambda op, loops: loop.run_until_complete(timed(op, loops))


def compare(run: Runner, group: str, subjects: list[tuple[str, Callable[[], Any]]]) -> list[Row]:
    """Rows for ``subjects``, the first of which is the group's floor."""
    loops, calls, lines, first, last = [], [], [], [], []
    for _, op in subjects:
        begun, written = time.perf_counter(), LOG.lines
        run(op, 1)  # first-call set-up (imports, caches) is not what is measured
        n, made = 10, 11
        while (elapsed := run(op, n)) < RUN_SECONDS / 5:
            n *= 4
            made += n
        loops.append(max(10, int(n * RUN_SECONDS / max(elapsed, 1e-9))))
        calls.append(made)
        lines.append(LOG.lines - written)
        first.append(begun)
        last.append(begun)
    ns: list[list[float]] = [[] for _ in subjects]
    for _ in range(ROUNDS):
        for i, (_, op) in enumerate(subjects):
            written = LOG.lines
            ns[i].append(run(op, loops[i]) / loops[i] * 1e9)
            calls[i] += loops[i]
            lines[i] += LOG.lines - written
            last[i] = time.perf_counter()
    rows: list[Row] = []
    for i, (name, _) in enumerate(subjects):
        ratio = statistics.median(a / b for a, b in zip(ns[i], ns[0], strict=True))
        span = last[i] - first[i]
        rows.append((group, name, statistics.median(ns[i]), ratio, calls[i], lines[i], span))
    return rows


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


def rejections(sync: bool) -> list[tuple[str, Callable[[], Any]]]:
    """The rejection group: the floor, buttress's refusals, the peers' open breakers."""
    import circuitbreaker as circuitbreaker_lib

    wrap = caught if sync else acaught
    fn, failing = (f, boom) if sync else (af, aboom)
    call = "call" if sync else "acall"
    subjects: list[tuple[str, Callable[[], Any]]] = [
        (
            "hand-written raise/catch with retry_after (floor)",
            wrap((hand_guard if sync else async_hand_guard)(fn), 1),
        ),
        ("buttress @CircuitBreaker, open", wrap(open_breaker()(fn), 1)),
        (f"buttress cb.{call}(f, x), open", wrap(getattr(open_breaker(), call), fn, 1)),
        (
            f"buttress {'' if sync else 'a'}check_limit, exhausted",
            wrap(
                getattr(exhausted_limiter(), "check_limit" if sync else "acheck_limit"), "exhausted"
            ),
        ),
        (
            "buttress @rate_limit, exhausted",
            wrap(buttress.rate_limit("exhausted", limiter=exhausted_limiter())(fn), 1),
        ),
        ("buttress @Bulkhead, full", wrap(full_bulkhead()(fn), 1)),
        (f"buttress bh.{call}(f, x), full", wrap(getattr(full_bulkhead(), call), fn, 1)),
    ]
    tripped = circuitbreaker_lib.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)(failing)
    if sync:
        caught(tripped, 1)()  # the failure that opens it
        import pybreaker

        pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
        pb.open()
        peers = [
            ("circuitbreaker, open", caught(tripped, 1)),
            ("pybreaker, open", caught(pb(f), 1)),
        ]
    else:
        asyncio.run(acaught(tripped, 1)())
        import aiobreaker

        ab = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(hours=1))
        ab.open()
        peers = [
            ("circuitbreaker, open", acaught(tripped, 1)),
            ("aiobreaker, open", acaught(ab(af), 1)),
        ]
    return subjects + peers


def retries(sync: bool) -> list[tuple[str, Callable[[], Any]]]:
    """The retry group: 3 attempts that all fail, no wait between them."""
    import stamina
    import tenacity

    wrap = caught if sync else acaught
    failing = boom if sync else aboom
    return [
        (
            "hand-written loop, 3 failures (floor)",
            wrap((hand_retry if sync else async_hand_retry)(failing, 3), 1),
        ),
        (
            "buttress @retry(max_attempts=3, base_delay=0)",
            wrap(buttress.retry(max_attempts=3, base_delay=0, jitter=False)(failing), 1),
        ),
        (
            "tenacity, stop_after_attempt(3), wait_none()",
            wrap(
                tenacity.retry(
                    stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), reraise=True
                )(failing),
                1,
            ),
        ),
        (
            "stamina, attempts=3, waits 0",
            wrap(
                stamina.retry(
                    on=Exception,
                    attempts=3,
                    timeout=None,
                    wait_initial=0,
                    wait_max=0,
                    wait_jitter=0,
                )(failing),
                1,
            ),
        ),
    ]


def table(rows: list[Row], title: str) -> str:
    out = [
        f"### {title}",
        "",
        "| group | implementation | ns/call | x floor | calls | over s | log lines |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, name, ns, ratio, calls, lines, span in rows:
        out.append(
            f"| {group} | {name} | {ns:,.0f} | {ratio:.2f} | {calls:,} | {span:.0f} | {lines:,} |"
        )
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
        f"ns per refused or failed call (median of {ROUNDS} rounds), x floor (median of the "
        "per-round ratios)"
    )
    print()
    rows = compare(run_sync, "rejection", rejections(sync=True))
    rows += compare(run_sync, "retry", retries(sync=True))
    print(table(rows, "sync"))
    print()
    loop = asyncio.new_event_loop()
    try:
        arun = async_runner(loop)
        rows = compare(arun, "rejection", rejections(sync=False))
        rows += compare(arun, "retry", retries(sync=False))
    finally:
        loop.close()
    print(table(rows, "async"))


if __name__ == "__main__":
    main()
