"""Success-path cost of buttress's policies beside the peers and hand-written floors.

Run: ``python benchmarks/bench_core.py`` (after ``pip install -e '.[bench]'``). Everything runs in
this one process; each figure is the median of repeated timed runs, printed as ns per call and as
a ratio to the hand-written floor of its group.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import buttress
from _timing import ans_per_call, ns_per_call, table


def f(x: int) -> int:
    return x + 1


async def af(x: int) -> int:
    return x + 1


# --- floors: hand-written wrappers ------------------------------------------------------------


def plain_wrapper(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            raise

    return wrapper


def hand_retry(fn: Any, attempts: int = 4) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception:
                if attempt == attempts - 1:
                    raise
        raise AssertionError

    return wrapper


def hand_breaker(fn: Any, fail_max: int = 5) -> Any:
    state = {"open": False, "failures": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if state["open"]:
            raise RuntimeError("open")
        try:
            result = fn(*args, **kwargs)
        except Exception:
            state["failures"] += 1
            if state["failures"] >= fail_max:
                state["open"] = True
            raise
        state["failures"] = 0
        return result

    return wrapper


def hand_pipeline(fn: Any) -> Any:
    """retry + breaker + fallback(default), hand-written."""
    inner = hand_retry(hand_breaker(fn))

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except Exception:
            return None

    return wrapper


def async_plain_wrapper(fn: Any) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except Exception:
            raise

    return wrapper


def async_hand_retry(fn: Any, attempts: int = 4) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(attempts):
            try:
                return await fn(*args, **kwargs)
            except Exception:
                if attempt == attempts - 1:
                    raise
        raise AssertionError

    return wrapper


def async_hand_breaker(fn: Any, fail_max: int = 5) -> Any:
    state = {"open": False, "failures": 0}

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if state["open"]:
            raise RuntimeError("open")
        try:
            result = await fn(*args, **kwargs)
        except Exception:
            state["failures"] += 1
            if state["failures"] >= fail_max:
                state["open"] = True
            raise
        state["failures"] = 0
        return result

    return wrapper


def async_hand_fallback(fn: Any, default: Any = None) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except Exception:
            return default

    return wrapper


def async_hand_pipeline(fn: Any) -> Any:
    """retry + breaker + fallback(default), hand-written, async."""
    inner = async_hand_retry(async_hand_breaker(fn))

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await inner(*args, **kwargs)
        except Exception:
            return None

    return wrapper


# --- buttress -----------------------------------------------------------------------------------


def buttress_pipeline(fn: Any) -> Any:
    return buttress.Pipeline(
        buttress.Retry(max_retries=3),
        buttress.CircuitBreaker(name=None),
        buttress.Fallback(strategy=buttress.FallbackStrategy.DEFAULT, default_value=None),
    )(fn)


def sync_rows() -> list[tuple[str, str, float, float | None]]:
    rows: list[tuple[str, str, float, float | None]] = []
    direct = ns_per_call(lambda: f(1))
    wrapper_floor = ns_per_call(lambda g=plain_wrapper(f): g(1))
    rows.append(("call", "direct call f(x)", direct, None))
    rows.append(("call", "hand-written try/except wrapper (floor)", wrapper_floor, wrapper_floor))

    retry_floor = ns_per_call(lambda g=hand_retry(f): g(1))
    rows.append(("retry", "hand-written for-loop retry (floor)", retry_floor, retry_floor))
    rows.append(
        ("retry", "buttress @retry", ns_per_call(lambda g=buttress.retry(f): g(1)), retry_floor)
    )
    import backoff as backoff_lib
    import stamina
    import tenacity

    peers_retry = {
        "backoff": backoff_lib.on_exception(backoff_lib.expo, Exception, max_tries=4)(f),
        "stamina": stamina.retry(on=Exception, attempts=4)(f),
        "tenacity": tenacity.retry(stop=tenacity.stop_after_attempt(4))(f),
    }
    for name, g in peers_retry.items():
        rows.append(("retry", name, ns_per_call(lambda g=g: g(1)), retry_floor))
    policy = buttress.Retry(max_retries=3)
    rows.append(
        ("retry", "buttress Retry.call(f, x)", ns_per_call(lambda: policy.call(f, 1)), retry_floor)
    )
    rows += fallback_rows()
    rows += call_rows()
    rows += failure_rows()

    breaker_floor = ns_per_call(lambda g=hand_breaker(f): g(1))
    rows.append(("breaker", "hand-written breaker (floor)", breaker_floor, breaker_floor))
    cb = buttress.CircuitBreaker(fail_max=5)
    rows.append(
        ("breaker", "buttress @CircuitBreaker", ns_per_call(lambda g=cb(f): g(1)), breaker_floor)
    )
    rows.append(
        ("breaker", "buttress cb.call(f, x)", ns_per_call(lambda: cb.call(f, 1)), breaker_floor)
    )
    import circuitbreaker as circuitbreaker_lib
    import pybreaker

    pb = pybreaker.CircuitBreaker(fail_max=5)
    rows.append(("breaker", "pybreaker", ns_per_call(lambda g=pb(f): g(1)), breaker_floor))
    cbl = circuitbreaker_lib.CircuitBreaker(failure_threshold=5)
    rows.append(("breaker", "circuitbreaker", ns_per_call(lambda g=cbl(f): g(1)), breaker_floor))

    bh = buttress.Bulkhead(max_concurrent=10)
    sem = threading.BoundedSemaphore(10)

    def sem_wrapper(x: int) -> int:
        with sem:
            return f(x)

    bulk_floor = ns_per_call(lambda: sem_wrapper(1))
    rows.append(("bulkhead", "hand-written semaphore (floor)", bulk_floor, bulk_floor))
    rows.append(("bulkhead", "buttress Bulkhead", ns_per_call(lambda g=bh(f): g(1)), bulk_floor))

    pipe_floor = ns_per_call(lambda g=hand_pipeline(f): g(1))
    rows.append(("pipeline", "hand-written retry+breaker+fallback (floor)", pipe_floor, pipe_floor))
    rows.append(
        (
            "pipeline",
            "buttress retry+breaker+fallback(DEFAULT)",
            ns_per_call(lambda g=buttress_pipeline(f): g(1)),
            pipe_floor,
        )
    )
    return rows


def hand_fallback(fn: Any, default: Any = None) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            return default

    return wrapper


def fallback_rows() -> list[tuple[str, str, float, float | None]]:
    floor = ns_per_call(lambda g=hand_fallback(f): g(1))
    default = buttress.Fallback(strategy=buttress.FallbackStrategy.DEFAULT, default_value=None)
    cached = buttress.Fallback(strategy=buttress.FallbackStrategy.CACHED)
    return [
        ("fallback", "hand-written try/except default (floor)", floor, floor),
        ("fallback", "buttress @fallback(DEFAULT)", ns_per_call(lambda g=default(f): g(1)), floor),
        (
            "fallback",
            "buttress Fallback.call(f, x)",
            ns_per_call(lambda: default.call(f, 1)),
            floor,
        ),
        ("fallback", "buttress @fallback(CACHED)", ns_per_call(lambda g=cached(f): g(1)), floor),
    ]


def call_rows() -> list[tuple[str, str, float, float | None]]:
    """``policy.call(f, x)`` against the same policy decorating ``f`` (the floor of each pair)."""
    rows: list[tuple[str, str, float, float | None]] = []
    policies = {
        "Retry": buttress.Retry(max_retries=3),
        "Fallback": buttress.Fallback(strategy=buttress.FallbackStrategy.DEFAULT),
        "Timeout": buttress.Timeout(timeout_seconds=10),
    }
    for name, policy in policies.items():
        decorated = ns_per_call(lambda g=policy(f): g(1))
        called = ns_per_call(lambda p=policy: p.call(f, 1))
        rows.append((f"{name}.call", f"@{name.lower()} decorated (floor)", decorated, decorated))
        rows.append((f"{name}.call", f"{name}.call(f, x)", called, decorated))
    return rows


class Boom(Exception):
    pass


def boom(x: int) -> int:
    raise Boom


def failure_rows() -> list[tuple[str, str, float, float | None]]:
    """A retry failing 3 times with no wait, logging configured at WARNING (to nowhere)."""
    import io
    import logging

    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    level, root.level = root.level, logging.WARNING
    try:

        def hand() -> None:
            for attempt in range(3):
                try:
                    boom(1)
                except Boom:
                    if attempt == 2:
                        return

        guarded = buttress.retry(max_attempts=3, base_delay=0)(boom)

        def ours() -> None:
            try:  # noqa: SIM105 (a try, as in the floor: suppress() costs more)
                guarded(1)
            except Boom:
                pass

        floor = ns_per_call(hand)
        return [
            ("retry x3 failing", "hand-written loop, no wait (floor)", floor, floor),
            ("retry x3 failing", "buttress @retry, no wait", ns_per_call(ours), floor),
        ]
    finally:
        root.removeHandler(handler)
        root.level = level


def async_rows() -> list[tuple[str, str, float, float | None]]:
    rows: list[tuple[str, str, float, float | None]] = []
    bare = ans_per_call(lambda: af(1))
    floor = ans_per_call(lambda g=async_plain_wrapper(af): g(1))
    rows.append(("call", "bare await af(x)", bare, None))
    rows.append(("call", "hand-written async wrapper (floor)", floor, floor))

    retry_floor = ans_per_call(lambda g=async_hand_retry(af): g(1))
    rows.append(("retry", "hand-written async retry (floor)", retry_floor, retry_floor))
    rows.append(
        ("retry", "buttress @retry", ans_per_call(lambda g=buttress.retry(af): g(1)), retry_floor)
    )
    import backoff as backoff_lib
    import stamina
    import tenacity

    peers = {
        "backoff": backoff_lib.on_exception(backoff_lib.expo, Exception, max_tries=4)(af),
        "stamina": stamina.retry(on=Exception, attempts=4)(af),
        "tenacity": tenacity.retry(stop=tenacity.stop_after_attempt(4))(af),
    }
    for name, g in peers.items():
        rows.append(("retry", name, ans_per_call(lambda g=g: g(1)), retry_floor))
    policy = buttress.Retry(max_retries=3)
    rows.append(
        (
            "retry",
            "buttress Retry.acall(af, x)",
            ans_per_call(lambda: policy.acall(af, 1)),
            retry_floor,
        )
    )
    fallback_floor = ans_per_call(lambda g=async_hand_fallback(af): g(1))
    default = buttress.Fallback(strategy=buttress.FallbackStrategy.DEFAULT, default_value=None)
    rows.append(
        ("fallback", "hand-written try/except default (floor)", fallback_floor, fallback_floor)
    )
    rows.append(
        (
            "fallback",
            "buttress @fallback(DEFAULT)",
            ans_per_call(lambda g=default(af): g(1)),
            fallback_floor,
        )
    )
    rows.append(
        (
            "fallback",
            "buttress Fallback.acall(af, x)",
            ans_per_call(lambda: default.acall(af, 1)),
            fallback_floor,
        )
    )

    breaker_floor = ans_per_call(lambda g=async_hand_breaker(af): g(1))
    rows.append(("breaker", "hand-written async breaker (floor)", breaker_floor, breaker_floor))
    cb = buttress.CircuitBreaker(fail_max=5)
    rows.append(
        ("breaker", "buttress @CircuitBreaker", ans_per_call(lambda g=cb(af): g(1)), breaker_floor)
    )
    import aiobreaker
    import circuitbreaker as circuitbreaker_lib

    ab = aiobreaker.CircuitBreaker(fail_max=5)
    rows.append(("breaker", "aiobreaker", ans_per_call(lambda g=ab(af): g(1)), breaker_floor))
    cbl = circuitbreaker_lib.CircuitBreaker(failure_threshold=5)
    rows.append(("breaker", "circuitbreaker", ans_per_call(lambda g=cbl(af): g(1)), breaker_floor))

    bh = buttress.Bulkhead(max_concurrent=10)
    rows.append(("bulkhead", "buttress Bulkhead", ans_per_call(lambda g=bh(af): g(1)), floor))

    async def asyncio_timeout(x: int) -> int:
        async with asyncio.timeout(10):
            return await af(x)

    timeout_floor = ans_per_call(lambda: asyncio_timeout(1))
    rows.append(
        ("timeout", "asyncio.timeout around the call (floor)", timeout_floor, timeout_floor)
    )
    rows.append(
        (
            "timeout",
            "buttress @timeout",
            ans_per_call(lambda g=buttress.timeout(timeout_seconds=10)(af): g(1)),
            timeout_floor,
        )
    )
    limit = buttress.Timeout(timeout_seconds=10)
    rows.append(
        (
            "timeout",
            "buttress Timeout.acall(af, x)",
            ans_per_call(lambda: limit.acall(af, 1)),
            timeout_floor,
        )
    )

    pipe_floor = ans_per_call(lambda g=async_hand_pipeline(af): g(1))
    rows.append(("pipeline", "hand-written retry+breaker+fallback (floor)", pipe_floor, pipe_floor))
    rows.append(
        (
            "pipeline",
            "buttress retry+breaker+fallback(DEFAULT)",
            ans_per_call(lambda g=buttress_pipeline(af): g(1)),
            pipe_floor,
        )
    )
    return rows


def main() -> None:
    print(f"Python {sys.version.split()[0]}; medians of repeated runs, ns per successful call")
    print()
    print(table(sync_rows(), "sync"))
    print()
    print(table(async_rows(), "async"))


if __name__ == "__main__":
    main()
