"""Rate limiter: the four algorithms, per-key state, waiting, server hints, the decorator."""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import (
    RateLimitAlgorithm,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    RejectedError,
    Retry,
    UnknownRateLimit,
    events,
    get_rate_limiter,
    rate_limit,
)
from buttress.backends import MemoryStore
from buttress.machines.ratelimit import one_step, reserve
from buttress.testing import FakeClock
from conftest import make, run

ALGORITHMS = list(RateLimitAlgorithm)


def limiter_with(algorithm: RateLimitAlgorithm, rate: float = 10, burst: int = 5) -> RateLimiter:
    limiter = RateLimiter()
    limiter.configure(
        "api", RateLimitConfig(requests_per_second=rate, burst_size=burst, algorithm=algorithm)
    )
    return limiter


def admitted(limiter: RateLimiter, key: str | None = None) -> bool:
    try:
        limiter.check_limit("api", key)
    except RateLimitExceeded:
        return False
    return True


def test_token_bucket_burst_then_rate(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=10, burst=5)
    assert [admitted(limiter) for _ in range(6)] == [True] * 5 + [False]
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check_limit("api")
    assert isinstance(info.value, RejectedError)
    assert info.value.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert admitted(limiter)
    assert not admitted(limiter)


def test_leaky_bucket_spaces_requests(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.LEAKY_BUCKET, rate=10, burst=5)
    assert admitted(limiter)
    assert not admitted(limiter)  # no burst: the next slot is 0.1 s away
    clock.advance(0.1)
    assert admitted(limiter)


def test_fixed_window_opens_with_the_first_request(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.FIXED_WINDOW, rate=3)
    clock.advance(0.5)  # the window opens here, not at a multiple of its length
    assert [admitted(limiter) for _ in range(4)] == [True, True, True, False]
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check_limit("api")
    assert info.value.retry_after == pytest.approx(1.0)
    clock.advance(0.5)
    assert not admitted(limiter)
    clock.advance(0.5)  # the next window opens the moment the full one closes
    assert [admitted(limiter) for _ in range(4)] == [True, True, True, False]
    clock.advance(5.0)  # after a pause, the next request opens a fresh window
    assert [admitted(limiter) for _ in range(4)] == [True, True, True, False]


def test_a_run_of_whole_windows_admits_whole_windows(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.FIXED_WINDOW, rate=10)
    clock.advance(0.37)
    admissions = 0
    for _ in range(300):  # 3 s in steps of 10 ms, starting mid-way through a second
        admissions += admitted(limiter)
        clock.advance(0.01)
    assert admissions == 30


def test_sliding_window_is_exact(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.SLIDING_WINDOW, rate=3)
    for _ in range(3):
        assert admitted(limiter)
        clock.advance(0.3)
    assert not admitted(limiter)  # 3 admissions within the last 1 s
    clock.advance(0.1)  # the first admission (t=0) has left the window
    assert admitted(limiter)


WINDOWS = [RateLimitAlgorithm.FIXED_WINDOW, RateLimitAlgorithm.SLIDING_WINDOW]


@pytest.mark.parametrize("algorithm", WINDOWS)
def test_a_window_that_admits_no_whole_request_is_refused(algorithm: RateLimitAlgorithm) -> None:
    with pytest.raises(ValueError, match="admits no whole request") as caught:
        RateLimitConfig(requests_per_second=0.1, algorithm=algorithm, window_seconds=1)
    assert str(caught.value) == (
        "requests_per_second * window_seconds = 0.1 admits no whole request per window; "
        "use window_seconds >= 10"
    )
    # The buckets spread the same rate over time: one request every 10 s.
    RateLimitConfig(requests_per_second=0.1, algorithm=RateLimitAlgorithm.TOKEN_BUCKET)


@pytest.mark.parametrize("algorithm", WINDOWS)
def test_a_slow_rate_over_a_long_enough_window_admits_the_rate(
    algorithm: RateLimitAlgorithm, clock: FakeClock
) -> None:
    limiter = RateLimiter()
    config = RateLimitConfig(requests_per_second=0.1, algorithm=algorithm, window_seconds=10)
    limiter.configure("api", config)
    admissions = 0
    for _ in range(100):
        admissions += admitted(limiter)
        clock.advance(1)
    assert admissions == 10


@pytest.mark.parametrize("algorithm", WINDOWS)
def test_a_fractional_limit_per_window_rounds_down(
    algorithm: RateLimitAlgorithm, clock: FakeClock
) -> None:
    limiter = RateLimiter()
    limiter.configure("api", RateLimitConfig(requests_per_second=2.5, algorithm=algorithm))
    assert [admitted(limiter) for _ in range(3)] == [True, True, False]


def test_a_local_share_that_leaves_no_whole_request_per_window_is_refused() -> None:
    limiter = RateLimiter(local_share=0.25)
    config = RateLimitConfig(requests_per_second=2, algorithm=RateLimitAlgorithm.FIXED_WINDOW)
    with pytest.raises(ValueError, match=r"window_seconds \* local_share \(0.25\) = 0.5"):
        limiter.configure("api", config)
    limiter.configure("api", RateLimitConfig(requests_per_second=4, algorithm=config.algorithm))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("key", [[1], 5, object(), b"tenant"])
def test_a_key_that_is_not_a_str_or_none_is_refused_naming_it(
    algorithm: RateLimitAlgorithm, key: Any, clock: FakeClock
) -> None:
    limiter = limiter_with(algorithm)
    calls: list[Callable[[], object]] = [
        lambda: limiter.check_limit("api", key),
        lambda: limiter.check_limit("api", key, cost=2),
        lambda: limiter.acquire("api", key),
        lambda: run(limiter.aacquire("api", key)),
        lambda: run(limiter.acheck_limit("api", key)),
        lambda: limiter.block("api", key, seconds=1),
        lambda: limiter.set_remaining("api", key, remaining=1, reset_after=1),
        lambda: limiter.reset("api", key),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"key must be a str or None .*, got "):
            call()
    limiter.block("api", "other", seconds=1)  # a block elsewhere takes the checked path too
    with pytest.raises(TypeError, match="key must be a str or None"):
        limiter.check_limit("api", key)
    assert limiter.keys("api") == 0
    limiter.check_limit("api", "")  # any str is a key, the empty one too, apart from None
    limiter.check_limit("api", None)
    assert limiter.keys("api") == 2


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"name": 5}, TypeError, "name must be a non-empty string, got 5"),
        ({"name": "  "}, ValueError, "name must be a non-empty string, not only whitespace"),
        ({"wait": "yes"}, TypeError, "wait must be True or False, got 'yes'"),
        ({"limiter": 5}, TypeError, "limiter must be a RateLimiter, got 5"),
    ],
)
def test_the_decorator_checks_its_name_and_flags(
    options: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        rate_limit(**{"name": "api", **options})
    with pytest.raises(ValueError, match="name must be a non-empty string, not only whitespace"):
        RateLimiter().configure(" ", RateLimitConfig(requests_per_second=1))


def test_a_fixed_key_of_the_decorator_is_checked_at_construction() -> None:
    with pytest.raises(TypeError, match=r"key must be a str or None .*got 5"):
        rate_limit("api", key=5)  # type: ignore[arg-type]
    rate_limit("api", key=lambda tenant: tenant)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keys_are_independent(algorithm: RateLimitAlgorithm, clock: FakeClock) -> None:
    limiter = limiter_with(algorithm, rate=1, burst=1)
    assert admitted(limiter, "tenant-a")
    assert not admitted(limiter, "tenant-a")
    assert admitted(limiter, "tenant-b")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_idle_keys_are_evicted(algorithm: RateLimitAlgorithm, clock: FakeClock) -> None:
    limiter = limiter_with(algorithm, rate=100, burst=1)
    for i in range(5000):
        limiter.check_limit("api", f"k{i}")
        clock.advance(0.01)
    assert limiter.keys("api") < 2100  # swept as the key count doubled


def test_unconfigured_name_is_a_clear_error() -> None:
    limiter = RateLimiter()
    limiter.configure("known", RateLimitConfig(requests_per_second=1))
    with pytest.raises(
        UnknownRateLimit, match=r"'missing' is not configured \(configured: known\)"
    ):
        limiter.check_limit("missing")
    with pytest.raises(KeyError):
        limiter.check_limit("missing")


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"requests_per_second": 0}, "requests_per_second must be > 0"),
        ({"requests_per_second": float("inf")}, "finite"),
        ({"requests_per_second": 1, "burst_size": 0}, "burst_size must be >= 1"),
        ({"requests_per_second": 1, "algorithm": "magic"}, "algorithm must be"),
        ({"requests_per_second": 1, "window_seconds": 0}, "window_seconds must be > 0"),
        ({"requests_per_second": 1, "max_wait": -1}, "max_wait must be >= 0"),
    ],
)
def test_invalid_configuration(kwargs: dict[str, object], text: str) -> None:
    with pytest.raises((ValueError, TypeError), match=text):
        RateLimitConfig(**kwargs)  # type: ignore[arg-type]


def test_algorithm_by_name() -> None:
    config = RateLimitConfig(requests_per_second=1, algorithm="sliding_window")  # type: ignore[arg-type]
    assert config.algorithm is RateLimitAlgorithm.SLIDING_WINDOW


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_acquire_waits_for_its_slot(algorithm: RateLimitAlgorithm, clock: FakeClock) -> None:
    limiter = limiter_with(algorithm, rate=2, burst=1)
    waits = [limiter.acquire("api") for _ in range(4)]
    assert waits[0] == 0
    assert clock.now() == pytest.approx(1.5 if algorithm.name.endswith("BUCKET") else 1.0)
    assert all(w >= 0 for w in waits)


def test_acquire_refuses_past_max_wait(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=1, burst=1)
    limiter.acquire("api")
    with pytest.raises(RateLimitExceeded):
        limiter.acquire("api", max_wait=0.5)
    assert clock.now() == 0  # refused without waiting
    assert limiter.acquire("api", max_wait=1.0) == pytest.approx(1.0)


def test_waiters_are_first_come_first_served_in_tasks(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=10, burst=1)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await limiter.aacquire("api")
        order.append(i)

    async def main() -> None:
        await asyncio.gather(*(waiter(i) for i in range(20)))

    asyncio.run(main())
    assert order == list(range(20))


def test_waiters_are_first_come_first_served_in_threads(clock: FakeClock) -> None:
    # time stands still: each arrival is promised the next slot, 5 ms after the previous one
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=200, burst=1)
    slots: list[tuple[float, int]] = []
    lock = threading.Lock()
    arrivals = threading.Semaphore(0)

    def waiter(i: int) -> None:
        # A reservation is taken on arrival: record the promised wait with the arrival order.
        with lock:
            wait = limiter._reserve("api", None, 1, None)[0]
            slots.append((wait, i))
        arrivals.release()

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    waits_in_arrival_order = [w for w, _ in slots]
    assert waits_in_arrival_order == [pytest.approx(0.005 * n) for n in range(20)]


def test_block_and_set_remaining(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=10, burst=10)
    limiter.block("api", "k", seconds=2.0)
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check_limit("api", "k")
    assert info.value.retry_after == pytest.approx(2.0)
    assert admitted(limiter, "other")
    clock.advance(2.0)
    assert admitted(limiter, "k")
    limiter.set_remaining("api", "q", remaining=2, reset_after=30)
    assert [admitted(limiter, "q") for _ in range(3)] == [True, True, False]
    limiter.set_remaining("api", "z", remaining=0, reset_after=5)
    assert not admitted(limiter, "z")
    clock.advance(5)
    assert admitted(limiter, "z")


@pytest.mark.parametrize("algorithm", ALGORITHMS[2:])
def test_set_remaining_for_windows(algorithm: RateLimitAlgorithm, clock: FakeClock) -> None:
    limiter = limiter_with(algorithm, rate=10)
    limiter.set_remaining("api", remaining=1, reset_after=1)
    assert [admitted(limiter) for _ in range(2)] == [True, False]


def test_decorator_sync_and_async(mode: str, clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=1, burst=2)
    fn = rate_limit("api", limiter=limiter, key=lambda tenant: tenant)(
        make(mode, lambda tenant: tenant)
    )
    assert run(fn("a")) == "a"
    assert run(fn("a")) == "a"
    with pytest.raises(RateLimitExceeded):
        run(fn("a"))
    assert run(fn("b")) == "b"
    waiting = rate_limit("api", limiter=limiter, wait=True)(make(mode, lambda: "ok"))
    run(waiting())
    run(waiting())
    assert run(waiting()) == "ok"
    assert clock.now() == pytest.approx(1.0)


def test_retry_waits_for_the_limiters_retry_after(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=2, burst=1)
    policy = Retry(max_retries=3, base_delay=0.01, jitter=False)
    for _ in range(3):
        policy.call(limiter.check_limit, "api")
    assert clock.sleeps == [pytest.approx(0.5), pytest.approx(0.5)]


def test_process_wide_limiter() -> None:
    assert get_rate_limiter() is get_rate_limiter()


# --- properties ---------------------------------------------------------------------------------

arrivals = st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    rate=st.sampled_from([1.0, 3.0, 10.0]),
    burst=st.integers(min_value=1, max_value=6),
    gaps=arrivals,
    window=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_no_window_ever_over_admits(
    algorithm: RateLimitAlgorithm, rate: float, burst: int, gaps: list[float], window: float
) -> None:
    config = RateLimitConfig(requests_per_second=rate, burst_size=burst, algorithm=algorithm)
    params = config.params()
    state = None
    now = 0.0
    admitted_at: list[float] = []
    window_of: list[float] = []
    for gap in gaps:
        now += gap
        new_state, wait = reserve(state, now, 1, 0.0, params)
        if new_state is not None:
            state = new_state
            # admitted at now + wait: a wait within the machines' EPSILON (float noise of the
            # caller's clock) is admitted at once, and its slot is the one the window counts
            admitted_at.append(now + wait)
            if algorithm is RateLimitAlgorithm.FIXED_WINDOW:
                window_of.append(new_state[0])
    for start in admitted_at:
        # within a nanosecond of the window's end is its end (sums of float gaps round)
        inside = sum(1 for t in admitted_at if start <= t < start + window - 1e-9)
        if algorithm is RateLimitAlgorithm.TOKEN_BUCKET:
            bound = burst + rate * window
        elif algorithm is RateLimitAlgorithm.LEAKY_BUCKET:
            bound = 1 + rate * window
        elif algorithm is RateLimitAlgorithm.SLIDING_WINDOW:
            bound = params.limit * -(-window // params.window)  # limit per started window
        else:
            bound = params.limit * (-(-window // params.window) + 1)
        assert inside <= bound + 1e-9
    if algorithm is RateLimitAlgorithm.FIXED_WINDOW:
        # the windows the state opened: at least a window's length apart, at most the limit each
        assert state is not None
        starts = sorted(set(window_of))
        assert all(b - a >= params.window - 1e-9 for a, b in itertools.pairwise(starts))
        for w in starts:
            assert sum(1 for x in window_of if x == w) <= params.limit
    if algorithm is RateLimitAlgorithm.SLIDING_WINDOW:
        for start in admitted_at:  # exact: never more than the limit in ANY window
            assert sum(1 for t in admitted_at if start <= t < start + params.window) <= params.limit


@settings(max_examples=100, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    rate=st.sampled_from([1.0, 2.0, 5.0, 10.0]),
    slack=st.floats(min_value=1.0, max_value=3.0),
    offset=st.floats(min_value=0, max_value=10),
    count=st.integers(min_value=1, max_value=60),
)
def test_steady_stream_at_or_below_the_rate_is_never_rejected(
    algorithm: RateLimitAlgorithm, rate: float, slack: float, offset: float, count: int
) -> None:
    params = RateLimitConfig(requests_per_second=rate, algorithm=algorithm).params()
    state = None
    gap = slack / rate
    for i in range(count):
        new_state, retry_after = reserve(state, offset + i * gap, 1, 0.0, params)
        assert new_state is not None, f"request {i} refused, retry_after={retry_after}"
        state = new_state


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_cost_over_the_capacity_is_refused_by_name(
    algorithm: RateLimitAlgorithm, clock: FakeClock
) -> None:
    limiter = limiter_with(algorithm, rate=3, burst=3)
    with pytest.raises(ValueError, match=r"cost 4 exceeds the (burst|limit per window) of rate"):
        limiter.check_limit("api", cost=4)
    with pytest.raises(ValueError, match="cost 4 exceeds"):
        limiter.acquire("api", cost=4)


# --- one check of the cost, on every path --------------------------------------------------------


class AsyncOnlyStore(MemoryStore):
    """A memory store that serves only the async steps, as a redis.asyncio client does."""

    def reserve(self, *args: Any, **kwargs: Any) -> tuple[bool, float]:
        raise AssertionError("a sync step was taken on the async path")

    async def areserve(self, *args: Any, **kwargs: Any) -> tuple[bool, float]:
        return MemoryStore.reserve(self, *args, **kwargs)


def entry_points() -> list[tuple[str, Callable[[RateLimiter, object], object]]]:
    return [
        ("check_limit", lambda lim, cost: lim.check_limit("api", cost=cost)),  # type: ignore[arg-type]
        ("acheck_limit", lambda lim, cost: run(lim.acheck_limit("api", cost=cost))),  # type: ignore[arg-type]
        ("acquire", lambda lim, cost: lim.acquire("api", cost=cost)),  # type: ignore[arg-type]
        ("aacquire", lambda lim, cost: run(lim.aacquire("api", cost=cost))),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize(
    ("cost", "error", "text"),
    [
        (True, TypeError, "cost must be an integer, got True"),
        (1.0, TypeError, "cost must be an integer, got 1.0"),
        ("1", TypeError, "cost must be an integer"),
        (0, ValueError, "cost must be >= 1, got 0"),
        (-2, ValueError, "cost must be >= 1, got -2"),
        (6, ValueError, "cost 6 exceeds the burst of rate limit 'api' \\(5\\)"),
    ],
)
@pytest.mark.parametrize("storage", ["memory", "store"])
@pytest.mark.parametrize(("entry", "call"), entry_points())
def test_a_bad_cost_is_refused_alike_on_every_path(
    entry: str,
    call: Callable[[RateLimiter, object], object],
    storage: str,
    cost: object,
    error: type[Exception],
    text: str,
    clock: FakeClock,
) -> None:
    store = MemoryStore() if entry in ("check_limit", "acquire") else AsyncOnlyStore()
    limiter = RateLimiter(storage=None if storage == "memory" else store)
    limiter.configure("api", RateLimitConfig(requests_per_second=10, burst_size=5))
    call(limiter, 1)  # the key's state exists: in memory, the hot path is taken
    with pytest.raises(error, match=text):
        call(limiter, cost)


def test_an_async_function_under_rate_limit_takes_the_async_step(clock: FakeClock) -> None:
    limiter = RateLimiter(storage=AsyncOnlyStore())
    limiter.configure("api", RateLimitConfig(requests_per_second=1, burst_size=1))

    @rate_limit("api", limiter=limiter)
    async def call() -> str:
        return "ok"

    assert run(call()) == "ok"
    with pytest.raises(RateLimitExceeded):
        run(call())


# --- refusals: the WARNING once per interval, the event only when read -------------------------


def test_refusals_are_logged_once_then_summarised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=1, burst=1)
    limiter.check_limit("api", "tenant")
    with caplog.at_level(logging.WARNING, logger="buttress.ratelimit"):
        for _ in range(50):
            with pytest.raises(RateLimitExceeded, match=r"^rate limit api\[tenant\] exceeded"):
                limiter.check_limit("api", "tenant")
            clock.advance(0.01)  # 50 refusals of one key in 0.5 s
        limiter.reset("api", "tenant")
        clock.advance(10.0)
        limiter.check_limit("api", "tenant")
        with pytest.raises(RateLimitExceeded):
            limiter.check_limit("api", "tenant")  # the interval is over: one summary line
    lines = [r.getMessage() for r in caplog.records if r.name == "buttress.ratelimit"]
    assert lines == [
        "rate limit 'api' is refusing requests (1/s, token_bucket)",
        "50 requests refused by rate limit 'api' in the last 10 s",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_each_refusal_is_an_event_at_debug_built_only_when_read(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[events.CallRejected] = []

    class Counted(events.CallRejected):
        def __init__(self, **fields: Any) -> None:
            super().__init__(**fields)
            built.append(self)

    monkeypatch.setattr(events, "CallRejected", Counted)
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=1, burst=1)
    limiter.check_limit("api", "k")
    with caplog.at_level(logging.WARNING, logger="buttress.ratelimit"):
        for _ in range(10):
            with pytest.raises(RateLimitExceeded):
                limiter.check_limit("api", "k")
    assert built == []  # nobody reads it: not built
    heard: list[events.Event] = []
    with caplog.at_level(logging.DEBUG, logger="buttress.ratelimit"):
        with pytest.raises(RateLimitExceeded):
            limiter.check_limit("api", "k")
        events.add_hook(heard.append)
        try:
            with pytest.raises(RateLimitExceeded):
                limiter.check_limit("api", "k")
        finally:
            events.remove_hook(heard.append)
    assert len(built) == 2
    assert [e.key for e in heard] == ["k"]  # type: ignore[attr-defined]
    assert heard[0].retry_after == pytest.approx(1.0)  # type: ignore[attr-defined]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 2
    assert debug[0].key == "k"  # type: ignore[attr-defined]


def test_a_refusal_reads_and_pickles_as_its_message(clock: FakeClock) -> None:
    limiter = limiter_with(RateLimitAlgorithm.TOKEN_BUCKET, rate=2, burst=1)
    limiter.check_limit("api")
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check_limit("api")
    text = "rate limit api exceeded; retry after 0.500s"
    assert str(info.value) == text
    assert repr(info.value) == f"RateLimitExceeded({text!r})"
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.retry_after, copy.name) == (text, 0.5, "api")


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    rate=st.sampled_from([2.0, 3.0, 10.0]),  # limits of 1, 1 and 5 per window of 0.5 s
    burst=st.integers(min_value=1, max_value=6),
    gaps=arrivals,
    waiting=st.lists(st.booleans(), min_size=80, max_size=80),
)
def test_the_in_place_step_decides_exactly_as_reserve(
    algorithm: RateLimitAlgorithm,
    rate: float,
    burst: int,
    gaps: list[float],
    waiting: list[bool],
) -> None:
    """The hot path's ``one_step`` is ``reserve(state, now, 1, 0.0)``, whatever the state holds
    (waiters' reservations ahead included)."""
    params = RateLimitConfig(
        requests_per_second=rate, burst_size=burst, algorithm=algorithm, window_seconds=0.5
    ).params()
    step = one_step(params)
    state, _ = reserve(None, 0.0, 1, 0.0, params)
    assert state is not None
    now = 0.0
    for gap, waits in zip(gaps, waiting, strict=False):
        now += gap
        if waits:  # a waiter's reservation moves the state ahead of now
            ahead, _ = reserve(state, now, 1, 1.0, params)
            if ahead is not None:
                state = ahead
        copy = deque(state) if isinstance(state, deque) else list(state)
        expected, retry_after = reserve(state, now, 1, 0.0, params)
        got = step(copy, now)
        assert (got == 0.0) == (expected is not None), (now, state, got, retry_after)
        if expected is None:
            assert got == pytest.approx(retry_after)
        else:
            assert list(copy) == list(expected)
            state = expected
