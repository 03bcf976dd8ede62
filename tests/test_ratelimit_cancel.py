"""Waiters that give up hand their slot back: the machine's step, and the limiter's use of it.

The asyncio scenarios run on an event loop whose clock is virtual: when nothing is ready, it jumps
to the next timer, so ``wait_for(..., 0.3)`` and the limiter's sleeps happen in exact virtual time,
deterministically and in microseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import selectors
from collections import deque
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import (
    OperationTimeout,
    RateLimitAlgorithm,
    RateLimitConfig,
    RateLimiter,
    timeout,
)
from buttress.machines.ratelimit import (
    Held,
    Params,
    State,
    cancel,
    reserve,
    reserve_held,
    take_hole,
)
from buttress.testing import FakeClock

ALGORITHMS = list(RateLimitAlgorithm)
TOKEN, LEAKY, FIXED, SLIDING = ALGORITHMS


# --- a virtual-time event loop ------------------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):
    """Instead of waiting ``timeout`` seconds for I/O, move the loop's clock on by that much."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("every task waits and no timer is due: the test deadlocked")
        self.now += max(0.0, timeout)
        return super().select(0)


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


class LoopClock:
    """The running loop's (virtual) time as a buttress clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return 1_750_000_000.0 + self.now()

    def sleep(self, seconds: float) -> None:
        raise AssertionError("the async scenarios never sleep synchronously")

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def virtual(main: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=VirtualLoop) as runner:
        return runner.run(main)


def limiter_with(algorithm: RateLimitAlgorithm, rate: float = 10, burst: int = 1) -> RateLimiter:
    limiter = RateLimiter(clock=LoopClock())  # type: ignore[arg-type]
    limiter.configure(
        "api", RateLimitConfig(requests_per_second=rate, burst_size=burst, algorithm=algorithm)
    )
    return limiter


# --- the limiter --------------------------------------------------------------------------------


def test_clients_that_give_up_after_a_timeout_are_not_starved() -> None:
    # 10/s, five clients each calling wait_for(aacquire(), 0.3) in a loop for 3 s: a waiter
    # that times out used to keep its slot, so the queue grew past 0.3 s and almost nobody got in.
    limiter = limiter_with(TOKEN, rate=10, burst=1)
    admitted: list[float] = []

    async def client() -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < 3.0:
            try:
                await asyncio.wait_for(limiter.aacquire("api"), 0.3)
            except TimeoutError:
                continue
            if loop.time() < 3.0:
                admitted.append(loop.time())

    async def main() -> None:
        await asyncio.gather(*(client() for _ in range(5)))

    virtual(main())
    assert 28 <= len(admitted) <= 31  # 1 + 10/s over 3 s at most
    for start in admitted:  # and never more than the bucket allows in any second
        assert sum(1 for t in admitted if start <= t < start + 1.0) <= 1 + 10


@pytest.mark.parametrize("order", ["first-first", "last-first", "interleaved"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_after_ten_cancelled_waiters_the_next_caller_does_not_wait_for_them(
    algorithm: RateLimitAlgorithm, order: str
) -> None:
    # rate 10/s, burst 10 (the leaky bucket's queue depth), one unit of window per 0.1 s
    limiter = RateLimiter(clock=LoopClock())  # type: ignore[arg-type]
    window = 1.0 if algorithm in (TOKEN, LEAKY) else 0.1
    limiter.configure(
        "api",
        RateLimitConfig(
            requests_per_second=10, burst_size=10, algorithm=algorithm, window_seconds=window
        ),
    )

    async def main() -> float:
        while not (await limiter.aacquire("api")):  # until a request had to wait: the queue
            pass  # is then exactly at its head, with the next slot 0.1 s away
        waiters = [asyncio.create_task(limiter.aacquire("api")) for _ in range(10)]
        await asyncio.sleep(0.01)
        if order == "last-first":
            waiters.reverse()
        elif order == "interleaved":
            waiters = waiters[::2] + waiters[1::2]
        for task in waiters:
            task.cancel()
            await asyncio.sleep(0)
        await asyncio.gather(*waiters, return_exceptions=True)
        return await limiter.aacquire("api")

    # as if the ten had never come: the next slot is 0.1 s after the last admission
    assert virtual(main()) == pytest.approx(0.09)


def test_a_slot_given_back_in_the_middle_goes_to_the_next_arrival() -> None:
    limiter = limiter_with(TOKEN, rate=10, burst=1)

    async def main() -> list[float]:
        await limiter.aacquire("api")  # t=0, the burst
        first = asyncio.create_task(limiter.aacquire("api"))  # slot 0.1
        second = asyncio.create_task(limiter.aacquire("api"))  # slot 0.2
        third = asyncio.create_task(limiter.aacquire("api"))  # slot 0.3
        await asyncio.sleep(0.05)
        second.cancel()  # not the latest: 0.3 stays taken, 0.2 becomes free
        await asyncio.sleep(0)  # (the task sees its cancellation)
        newcomer = await limiter.aacquire("api")  # takes 0.2: waits 0.15
        after = await limiter.aacquire("api")  # then behind 0.3: slot 0.4
        assert await first == pytest.approx(0.1)
        assert await third == pytest.approx(0.3)
        return [newcomer, after]

    assert virtual(main()) == [pytest.approx(0.15), pytest.approx(0.2)]


def test_a_cancelled_waiter_on_a_fake_clock_deadline_gives_its_slot_back(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter()
    limiter.configure("api", RateLimitConfig(requests_per_second=10, burst_size=1))
    limiter.acquire("api")  # t=0

    @timeout(timeout_seconds=0.01)
    def impatient() -> float:
        return limiter.acquire("api")  # its slot is at 0.1, past the deadline

    for _ in range(5):
        with pytest.raises(OperationTimeout):
            impatient()  # the clock stops at each deadline: 0.01, 0.02, ...
    assert clock.now() == pytest.approx(0.05)
    assert limiter.acquire("api") == pytest.approx(0.05)  # not 0.55: the five gave theirs back


def test_a_reset_while_waiting_gives_nothing_back(clock: FakeClock) -> None:
    limiter = RateLimiter()
    limiter.configure("api", RateLimitConfig(requests_per_second=10, burst_size=1))

    @timeout(timeout_seconds=0.05)
    def impatient() -> float:
        limiter.acquire("api")  # t=0
        limiter.acquire("api")  # slot 0.1
        limiter.reset("api")  # (never reached)
        return 0.0

    with pytest.raises(OperationTimeout):
        impatient()
    limiter.reset("api")
    limiter.acquire("api")  # the fresh state's burst
    assert limiter.acquire("api") == pytest.approx(0.1)  # nothing stale was given back


# --- the machine ---------------------------------------------------------------------------------


def params(algorithm: RateLimitAlgorithm, limit: int = 3, burst: int = 3) -> Params:
    return Params(algorithm, 0.1, burst, 0.3 if algorithm in (FIXED, SLIDING) else 1.0, limit)


def copy(state: State | None) -> State | None:
    if state is None:
        return None
    return deque(state) if isinstance(state, deque) else list(state)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_giving_back_the_latest_reservation_undoes_it(algorithm: RateLimitAlgorithm) -> None:
    p = params(algorithm)
    state: State | None = None
    for _ in range(3):  # fill the capacity at t=0
        state, _ = reserve(state, 0.0, 1, 0.0, p)
    assert state is not None
    before = copy(state)
    new_state, wait, held = reserve_held(state, 0.0, 1, math.inf, p)
    assert new_state is not None
    assert held is not None
    assert wait > 0
    holes: list[Held] = []
    cancel(new_state, holes, held, 0.01, p)
    assert holes == []
    # the next request is served exactly as if the cancelled one had never come
    assert reserve(new_state, 0.01, 1, math.inf, p)[1] == reserve(before, 0.01, 1, math.inf, p)[1]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_earlier_reservation_becomes_a_hole_for_the_next_arrival(
    algorithm: RateLimitAlgorithm,
) -> None:
    p = params(algorithm, limit=1, burst=3)
    state, _ = reserve(None, 0.0, 1 if algorithm is not TOKEN else 3, 0.0, p)
    assert state is not None
    state, wait_a, a = reserve_held(state, 0.0, 1, math.inf, p)
    assert state is not None
    assert a is not None
    state, wait_b, b = reserve_held(state, 0.0, 1, math.inf, p)
    assert b is not None
    assert wait_b > wait_a
    holes: list[Held] = []
    cancel(state, holes, a, 0.01, p)  # b was placed behind a: a cannot be undone
    assert holes == [a]
    assert take_hole(holes, 0.02, 1, 0.0) is None  # a non-waiting request cannot wait for it
    taken = take_hole(holes, 0.02, 1, math.inf)
    assert taken == a
    assert holes == []
    cancel(state, holes, taken, 0.03, p)  # the newcomer gives up too: a hole again
    cancel(state, holes, b, 0.03, p)  # b is the latest: undone, and a with it
    assert holes == []
    fresh, _ = reserve(None, 0.0, 1 if algorithm is not TOKEN else 3, 0.0, p)
    assert reserve(state, 0.03, 1, math.inf, p)[1] == reserve(fresh, 0.03, 1, math.inf, p)[1]


def test_a_larger_hole_is_taken_whole_and_given_back_whole() -> None:
    p = params(LEAKY, burst=3)
    state, _ = reserve(None, 0.0, 1, 0.0, p)  # slot 0; the next at 0.1
    state, _, big = reserve_held(state, 0.0, 2, math.inf, p)  # 0.1 to 0.3
    state, _, last = reserve_held(state, 0.0, 1, math.inf, p)  # 0.3
    assert state is not None
    assert big is not None
    assert last is not None
    holes: list[Held] = []
    cancel(state, holes, big, 0.0, p)
    assert take_hole(holes, 0.0, 1, math.inf) is big  # one unit at 0.1, the other unused
    assert holes == []
    assert take_hole(holes, 0.0, 1, math.inf) is None  # never two requests in one leaky slot
    cancel(state, holes, big, 0.0, p)  # its taker gives up: a hole again, whole
    cancel(state, holes, last, 0.0, p)  # the latest: undone, and the hole behind it too
    assert state == [0.1]
    assert holes == []


def test_holes_past_their_time_are_dropped() -> None:
    p = params(TOKEN, burst=1)
    state, _ = reserve(None, 0.0, 1, 0.0, p)
    state, _, a = reserve_held(state, 0.0, 1, math.inf, p)
    state, _, b = reserve_held(state, 0.0, 1, math.inf, p)
    assert state is not None
    assert a is not None
    assert b is not None
    holes: list[Held] = []
    cancel(state, holes, a, 0.0, p)
    assert take_hole(holes, a.start + 0.01, 1, math.inf) is None
    assert holes == []


# Steps of a random schedule: (time advance, what happens) where what happens is an arrival
# (cost, longest wait) or a cancellation of one of the waiters whose slot has not come. Time
# mostly stands still, so that queues form and waiters give up from their middle.
arrival = st.tuples(
    st.just("arrive"), st.integers(1, 2), st.sampled_from([0.0, 0.15, 0.5, math.inf, math.inf])
)
steps = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.sampled_from([0.01, 0.05]), st.floats(0, 0.3)),
        st.one_of(arrival, arrival, st.tuples(st.just("cancel"), st.integers(0, 50), st.just(0.0))),
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    burst=st.integers(min_value=2, max_value=4),
    script=steps,
)
def test_giving_back_never_lets_more_through(
    algorithm: RateLimitAlgorithm, burst: int, script: list[tuple[float, tuple[str, int, float]]]
) -> None:
    """Whatever waiters give up, and whenever: the requests that run keep the algorithm's bound."""
    p = Params(algorithm, 0.1, burst, 0.5, burst)
    state: State | None = None
    holes: list[Held] = []
    runs: dict[int, tuple[float, int, float]] = {}  # id -> (run time, cost, fixed window start)
    waiting: dict[int, Held] = {}
    now = 0.0
    for number, (advance, (what, value, max_wait)) in enumerate(script):
        now += advance
        if what == "cancel":
            pending = sorted(i for i, held in waiting.items() if held.start > now)
            if not pending or state is None:
                continue
            victim = pending[value % len(pending)]
            cancel(state, holes, waiting.pop(victim), now, p)
            del runs[victim]
            continue
        cost = value
        held = take_hole(holes, now, cost, max_wait) if max_wait > 0 else None
        if held is not None:
            wait, window = max(0.0, held.start - now), held.until - p.window
        else:
            new_state, wait, held = reserve_held(state, now, cost, max_wait, p)
            if new_state is None:
                continue
            state, window = new_state, new_state[0]
        runs[number] = (now + wait, cost, window)
        if held is not None:
            waiting[number] = held
    events = sorted(runs.values())
    if algorithm is FIXED:
        # at most the limit in each window, and the windows a window apart
        per_window: dict[float, int] = {}
        for _, c, w in events:
            per_window[round(w, 6)] = per_window.get(round(w, 6), 0) + c
        assert all(units <= p.limit for units in per_window.values())
        starts = sorted(per_window)
        assert all(b - a >= p.window - 1e-6 for a, b in itertools.pairwise(starts))
        return
    # The requests that ran, replayed at the times they ran, are each admitted without waiting:
    # the schedule is one the algorithm itself allows (an exact test, not a loose bound).
    replay: State | None = None
    for t, c, _ in events:
        replay, retry_after = reserve(replay, t, c, 0.0, p)
        assert replay is not None, f"{c} unit(s) ran at {t} but were due {retry_after}s later"
