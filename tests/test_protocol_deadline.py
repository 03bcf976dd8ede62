"""A protocol never takes a call past its deadline, whatever its steps meet (property test).

Each example builds a random protocol (retries with random backoffs, switches over random
targets, degrade, cache, scale down, circuit break) with a random overall ``timeout`` on a fake
clock, and a random script of attempt outcomes: each attempt costs a fixed 10 ms of work the
clock cannot interrupt (``advance``) plus a random wait on the clock (I/O, cut at the deadline),
then answers, fails with a resource error (with or without ``Retry-After``) or times out. Whatever
happens, the clock has not moved past the deadline when the call ends: the engine never sleeps
past it and never starts an attempt that cannot fit, so the only time spent after it would be an
attempt started too late. The same script runs as ``def`` and as ``async def``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buttress import (
    FallbackAction,
    FallbackProtocol,
    FallbackStrategy,
    RateLimitExceeded,
    ResilienceManager,
    ResourceType,
    circuit_breakers,
    with_fallback,
)
from buttress.testing import FakeClock

S = FallbackStrategy
WORK = 0.01  # the uninterruptible part of every attempt
_teams = itertools.count()

actions = st.one_of(
    st.builds(
        lambda n, base, cap: FallbackAction(
            S.RETRY, attempts=n, base_delay=base, max_delay=max(base, cap), jitter=False
        ),
        st.integers(1, 4),
        st.floats(0.0, 20.0),
        st.floats(0.0, 60.0),
    ),
    st.builds(
        lambda wait, max_wait: FallbackAction(S.SWITCH_PROVIDER, wait=wait, max_wait=max_wait),
        st.booleans(),
        st.floats(0.0, 120.0),
    ),
    st.just(FallbackAction(S.DEGRADE_SERVICE)),
    st.just(FallbackAction(S.USE_CACHE)),
    st.just(FallbackAction(S.SCALE_DOWN)),
    st.just(FallbackAction(S.CIRCUIT_BREAK)),
)
outcomes = st.lists(
    st.tuples(
        st.sampled_from(["ok", "fail", "retry_after", "slow"]),
        st.floats(0.0, 30.0),
    ),
    max_size=30,
)


def _protocol(chain: list[FallbackAction], timeout: float) -> FallbackProtocol:
    caches = [a for a in chain if a.strategy is S.USE_CACHE]
    chain = [a for a in chain if a.strategy is not S.USE_CACHE] + caches[:1]
    return FallbackProtocol(ResourceType.API_QUOTA, chain, timeout=timeout)


class Team:
    def __init__(self, clock: FakeClock, script: list[tuple[str, float]]) -> None:
        self.resilience = ResilienceManager(f"deadline-{next(_teams)}", clock=clock)
        self.clock = clock
        self.script = list(script)

    def attempt(self) -> tuple[str, float]:
        self.clock.advance(WORK)
        return self.script.pop(0) if self.script else ("fail", 1.0)

    @staticmethod
    def settle(kind: str) -> str:
        if kind == "fail":
            raise ConnectionError("refused")
        if kind == "retry_after":
            raise RateLimitExceeded("slow down", retry_after=15.0)
        return "answer"

    @with_fallback(ResourceType.API_QUOTA)
    def sync_call(self, prompt: str) -> str:
        kind, wait = self.attempt()
        self.clock.sleep(wait * (10 if kind == "slow" else 1))
        return self.settle(kind)

    @with_fallback(ResourceType.API_QUOTA)
    async def async_call(self, prompt: str) -> str:
        kind, wait = self.attempt()
        await self.clock.asleep(wait * (10 if kind == "slow" else 1))
        return self.settle(kind)


@pytest.mark.parametrize("mode", ["sync", "async"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chain=st.lists(actions, min_size=1, max_size=6),
    timeout=st.floats(0.5, 120.0),
    targets=st.integers(0, 3),
    script=outcomes,
    calls=st.integers(1, 3),
)
def test_a_protocol_never_exceeds_the_calls_deadline(
    mode: str,
    chain: list[FallbackAction],
    timeout: float,
    targets: int,
    script: list[tuple[str, float]],
    calls: int,
) -> None:
    clock = FakeClock()
    team = Team(clock, script)
    team.resilience.set_protocol(ResourceType.API_QUOTA, _protocol(chain, timeout))
    if targets:
        team.resilience.register_targets(
            ResourceType.API_QUOTA, [f"t{i}" for i in range(targets)], cooldown=20.0
        )
    try:
        for _ in range(calls):
            started = clock.now()
            try:
                if mode == "sync":
                    team.sync_call("x")
                else:
                    asyncio.run(team.async_call("x"))
            except Exception:
                pass
            assert clock.now() - started <= timeout + 1e-9
            clock.advance(1.0)
    finally:
        for name, breaker in circuit_breakers().items():
            if name.startswith(team.resilience.team):
                breaker.dispose()


def test_sync_and_async_take_the_same_steps() -> None:
    """One script, two shells: the same steps with the same outcomes at the same times."""
    seen: dict[str, list[Any]] = {}
    chain = [
        FallbackAction(S.RETRY, attempts=2, base_delay=1.0, jitter=False),
        FallbackAction(S.SWITCH_PROVIDER),
        FallbackAction(S.DEGRADE_SERVICE),
        FallbackAction(S.USE_CACHE),
    ]
    script = [("ok", 0.5), ("fail", 1.0), ("retry_after", 0.2), ("fail", 2.0), ("ok", 0.1)]
    for mode in ("sync", "async"):
        clock = FakeClock()
        team = Team(clock, script)
        team.resilience.set_protocol(ResourceType.API_QUOTA, _protocol(chain, 100.0))
        team.resilience.register_targets(ResourceType.API_QUOTA, ["a", "b"])
        answers = []
        for _ in range(3):
            try:
                if mode == "sync":
                    answers.append(team.sync_call("x"))
                else:
                    answers.append(asyncio.run(team.async_call("x")))
            except Exception as exc:
                answers.append(type(exc).__name__)
        steps = team.resilience.health_report()["protocols"]["last_steps"]
        seen[mode] = [
            answers,
            [(s["strategy"], s["target"], s["outcome"], s["at"]) for s in steps],
            clock.now(),
        ]
    assert seen["sync"] == seen["async"]
    assert seen["sync"][1]  # steps were taken
