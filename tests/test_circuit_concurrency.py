"""Circuit breaker invariants under real concurrency and against a model."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from buttress import CircuitBreaker, CircuitOpenError, CircuitState
from buttress.events import CircuitStateChanged
from buttress.testing import FakeClock

LEGAL = {
    (CircuitState.CLOSED, CircuitState.OPEN),
    (CircuitState.OPEN, CircuitState.HALF_OPEN),
    (CircuitState.HALF_OPEN, CircuitState.OPEN),
    (CircuitState.HALF_OPEN, CircuitState.CLOSED),
}


@pytest.mark.parametrize("probes", [1, 3])
def test_threads_exactly_n_half_open_probes(probes: int, clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, timeout_duration=10, half_open_max_calls=probes)
    with pytest.raises(ConnectionError):
        cb.call(_fail)
    clock.advance(10)
    barrier = threading.Barrier(50)
    release = threading.Event()
    entered = []
    rejected = []
    lock = threading.Lock()

    def probe() -> None:
        with lock:
            entered.append(1)
        release.wait(10)

    def caller() -> None:
        barrier.wait()
        try:
            cb.call(probe)
        except CircuitOpenError:
            with lock:
                rejected.append(1)

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    for _ in range(2000):
        with lock:
            if len(entered) + len(rejected) == 50 or len(rejected) == 50 - probes:
                break
        threading.Event().wait(0.002)
    release.set()
    for t in threads:
        t.join(10)
    assert len(entered) == probes
    assert len(rejected) == 50 - probes
    assert cb.state is CircuitState.CLOSED


def test_tasks_exactly_one_half_open_probe(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, timeout_duration=10)
    with pytest.raises(ConnectionError):
        cb.call(_fail)
    clock.advance(10)
    entered = 0

    async def probe() -> None:
        nonlocal entered
        entered += 1
        await asyncio.sleep(0.01)

    async def caller() -> bool:
        try:
            await cb.acall(probe)
        except CircuitOpenError:
            return False
        return True

    async def main() -> list[bool]:
        return await asyncio.gather(*(caller() for _ in range(50)))

    results = asyncio.run(main())
    assert entered == 1
    assert results.count(True) == 1


def test_stress_no_lost_or_illegal_transitions() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(fail_max=3, timeout_duration=0.5, half_open_max_calls=2, clock=clock)
    seen: list[CircuitStateChanged] = []
    lock = threading.Lock()

    def listen(event: CircuitStateChanged) -> None:
        with lock:
            seen.append(event)

    cb.add_listener(listen)
    in_probe = 0
    peak_probes = 0

    def worker(seed: int) -> None:
        nonlocal in_probe, peak_probes
        rng = random.Random(seed)
        for _ in range(400):
            clock.advance(rng.random() * 0.01)
            fails = rng.random() < 0.4
            half_open = cb._core.local.machine.state is CircuitState.HALF_OPEN

            def body(half_open: bool = half_open, fails: bool = fails) -> None:
                nonlocal in_probe, peak_probes
                if half_open:
                    with lock:
                        probes_now = cb._core.local.machine.probes_in_flight()
                        peak_probes = max(peak_probes, probes_now)
                if fails:
                    raise ConnectionError

            with contextlib.suppress(ConnectionError, CircuitOpenError):
                cb.call(body)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen, "the load should have moved the breaker"
    for event in seen:
        assert (event.old, event.new) in LEGAL
    # Listeners run outside the lock, so their order may interleave; the counts may not: every
    # state is entered as often as it is left, except the initial and the final one.
    final = cb._core.local.machine.state
    for state in CircuitState:
        entered = sum(e.new is state for e in seen)
        left = sum(e.old is state for e in seen)
        assert entered - left == (state is final) - (state is CircuitState.CLOSED)
    assert peak_probes <= 2


def _fail() -> None:
    raise ConnectionError("down")


class BreakerModel(RuleBasedStateMachine):
    """The breaker against a few lines of reference logic, driven by a fake clock."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cb = CircuitBreaker(fail_max=3, timeout_duration=10, clock=self.clock)
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0

    def _model_admit(self) -> bool:
        if self.state is CircuitState.OPEN:
            if self.clock.now() < self.opened_at + 10:  # (not now - opened_at: float rounding)
                return False
            self.state = CircuitState.HALF_OPEN
        return True

    def _model_outcome(self, failed: bool) -> None:
        if self.state is CircuitState.HALF_OPEN:
            if failed:
                self.state, self.opened_at = CircuitState.OPEN, self.clock.now()
            else:
                self.state, self.failures = CircuitState.CLOSED, 0
            return
        self.failures = self.failures + 1 if failed else 0
        if self.failures >= 3:
            self.state, self.opened_at, self.failures = CircuitState.OPEN, self.clock.now(), 0

    @rule(failed=st.booleans())
    def call(self, failed: bool) -> None:
        admitted = self._model_admit()
        try:
            self.cb.call(_fail if failed else lambda: None)
            ran, raised = True, False
        except ConnectionError:
            ran, raised = True, True
        except CircuitOpenError:
            ran, raised = False, False
        assert ran == admitted
        if admitted:
            assert raised == failed
            self._model_outcome(failed)

    @rule(seconds=st.floats(min_value=0, max_value=15))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.state is not CircuitState.OPEN)
    @rule()
    def open_manually(self) -> None:
        self.cb.open()
        self.state, self.opened_at, self.failures = CircuitState.OPEN, self.clock.now(), 0

    @invariant()
    def same_state(self) -> None:
        assert self.cb._core.local.machine.state is self.state


TestBreakerModel = BreakerModel.TestCase
TestBreakerModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
