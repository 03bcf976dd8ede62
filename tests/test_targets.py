"""Target pools: each target's own breaker and quota state, probing back, cooldowns that grow."""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import random
import re

import pytest

from buttress.errors import AllTargetsCooling, RateLimitExceeded
from buttress.events import TargetStateChanged, add_hook, remove_hook
from buttress.machines.targets import PROBE, REFUSED, TargetMachine, TargetSettings
from buttress.protocol.targets import (
    TargetPool,
    current_target,
    error_reason,
    is_context_window_error,
)
from buttress.testing import FakeClock


class HTTPError(Exception):
    def __init__(self, status: int, retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.headers = {} if retry_after is None else {"Retry-After": retry_after}


def pool(clock: FakeClock, **options: object) -> TargetPool:
    return TargetPool(
        "llm", {"primary": "P", "secondary": "S", "local": "L"}, clock=clock, **options
    )


def test_healthy_primary_is_chosen_and_its_success_changes_nothing(clock: FakeClock) -> None:
    clock.advance(1000.0)  # the monotonic clock's zero is not when the pool was made
    p = pool(clock)
    clock.advance(5.0)
    assert {state["since"] for state in p.states().values()} == {clock.wall() - 5.0}
    first = p.choose()
    assert first is not None
    assert (first.name, first.target, first.probe) == ("primary", "P", False)
    p.succeeded(first)
    assert p.choose() is first  # the common admission allocates nothing
    assert p.states()["primary"]["state"] == "healthy"
    assert current_target() is None


def test_failed_primary_is_skipped_at_once_and_probed_back_after_its_cooldown(
    clock: FakeClock,
) -> None:
    p = pool(clock, cooldown=30.0)
    choice = p.choose()
    assert choice is not None
    p.failed(choice, ConnectionError("refused"))
    assert [p.choose().name for _ in range(5)] == ["secondary"] * 5  # type: ignore[union-attr]
    clock.advance(29.9)
    assert p.choose().name == "secondary"  # type: ignore[union-attr]
    clock.advance(0.1)
    probe = p.choose()
    assert probe is not None
    assert probe.name == "primary"
    assert probe.probe
    # one probe at a time: meanwhile, the others serve
    assert p.choose().name == "secondary"  # type: ignore[union-attr]
    p.succeeded(probe)
    for _ in range(2):
        probe = p.choose()
        assert probe is not None
        assert probe.probe
        p.succeeded(probe)
    back = p.choose()
    assert back is not None
    assert back.name == "primary"
    assert not back.probe
    assert p.states()["primary"]["reason"] == "recovered"


def waits_between_failed_probes(p: TargetPool, clock: FakeClock, outcomes: str) -> list[float]:
    """Probe the primary once per letter of ``outcomes`` (``s``: it answers, ``f``: it fails),
    each as soon as it may be probed; the wait before each probe."""
    waits = []
    for outcome in outcomes:
        ready = p.earliest_ready(exclude={"secondary", "local"})
        assert ready is not None
        waits.append(round(ready - clock.now(), 6))
        clock.advance(waits[-1])
        probe = p.choose()
        assert probe is not None
        assert probe.name == "primary"
        assert probe.probe
        if outcome == "s":
            p.succeeded(probe)
        else:
            p.failed(probe, ConnectionError())
    return waits


def test_failed_probe_of_a_down_target_doubles_its_pace_up_to_max_probe_interval(
    clock: FakeClock,
) -> None:
    p = pool(clock, cooldown=0.2, max_probe_interval=1.5)
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    assert waits_between_failed_probes(p, clock, "ffffff") == [0.2, 0.4, 0.8, 1.5, 1.5, 1.5]
    assert not p.states()["primary"]["flapping"]
    # a long first cooldown: then at once the cap
    q = pool(clock, cooldown=30.0)
    q.failed(q.choose(), ConnectionError())  # type: ignore[arg-type]
    assert waits_between_failed_probes(q, clock, "fff") == [30.0, 1.5, 1.5]


def test_failed_probe_of_a_flapping_target_doubles_its_cooldown_up_to_the_cap(
    clock: FakeClock,
) -> None:
    p = pool(clock, cooldown=10.0, max_cooldown=35.0)
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    # it answers one probe, fails the next: flapping, held off for twice as long, and so on
    waits = waits_between_failed_probes(p, clock, "fsfff")
    assert waits == [10.0, 1.5, 0.0, 20.0, 35.0]
    assert p.states()["primary"]["flapping"]
    assert p.earliest_ready({"secondary", "local"}) == clock.now() + 35.0


def test_cooled_again_soon_after_a_recovery_is_flapping(clock: FakeClock) -> None:
    p = pool(clock, cooldown=10.0, probes=2)
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    assert waits_between_failed_probes(p, clock, "ss") == [10.0, 0.0]
    assert p.choose().name == "primary"  # type: ignore[union-attr]
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    assert p.states()["primary"]["flapping"]
    # its failed probes now double the hold-off, not the pace
    assert waits_between_failed_probes(p, clock, "ff") == [20.0, 40.0]


@pytest.mark.parametrize(
    ("cooldown", "outage"),
    [(1.0, 10.0), (1.0, 60.0), (1.0, 600.0), (30.0, 60.0), (30.0, 600.0), (0.3, 600.0)],
)
def test_a_recovered_primary_is_probed_within_max_probe_interval_of_its_recovery(
    clock: FakeClock, cooldown: float, outage: float
) -> None:
    """A hard outage of any length: the first probe after the recovery comes within
    ``max_probe_interval``, and traffic is back after exactly ``probes`` probes."""
    p = TargetPool("llm", {"primary": 0, "secondary": 1}, cooldown=cooldown, clock=clock)
    start = clock.now()
    recovered = start + outage
    failed_probes = 0
    back: list[tuple[float, bool]] = []  # (when, probe?) for calls the recovered primary served
    while len(back) < 10:
        choice = p.choose()
        assert choice is not None
        if choice.name == "primary":
            if clock.now() < recovered:
                assert choice.probe or clock.now() == start
                failed_probes += choice.probe
                p.failed(choice, HTTPError(503))
            else:
                back.append((clock.now(), choice.probe))
                p.succeeded(choice)
        else:
            p.succeeded(choice)
        clock.advance(0.01)
    first_probe = back[0][0]
    assert recovered <= first_probe <= recovered + 1.5 + 0.01
    assert [probe for _, probe in back] == [True] * 3 + [False] * 7
    assert back[3][0] - first_probe == pytest.approx(0.03)  # the probes go back to back
    # while down, about one failed probe per max_probe_interval
    assert failed_probes <= 3 + (outage - cooldown) / 1.5


def test_a_flapping_target_keeps_its_hold_off_until_its_cooldown_decays(clock: FakeClock) -> None:
    """What the design gives up: after flapping, an outage is waited out at the hold-off."""
    p = pool(clock, cooldown=10.0, probes=1, decay_after=5)
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    assert waits_between_failed_probes(p, clock, "s") == [10.0]
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]  # soon after: flapping
    assert waits_between_failed_probes(p, clock, "ffs") == [20.0, 40.0, 80.0]
    for _ in range(5 * 4):  # 160 -> 80 -> 40 -> 20 -> 10 (= cooldown): fresh again
        p.succeeded(p.choose())  # type: ignore[arg-type]
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    assert not p.states()["primary"]["flapping"]
    assert waits_between_failed_probes(p, clock, "ff") == [10.0, 1.5]


def test_cooldown_only_decays_after_a_sustained_healthy_period(clock: FakeClock) -> None:
    p = pool(clock, cooldown=10.0, probes=1, decay_after=5)

    def outage_then_recovery() -> float:
        p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
        wait = p.earliest_ready({"secondary", "local"}) - clock.now()  # type: ignore[operator]
        clock.advance(wait)
        p.succeeded(p.choose())  # type: ignore[arg-type]
        return wait

    assert outage_then_recovery() == 10.0
    assert outage_then_recovery() == 20.0  # failed again before the cooldown decayed
    assert outage_then_recovery() == 40.0
    for _ in range(5):
        p.succeeded(p.choose())  # type: ignore[arg-type]
    assert outage_then_recovery() == 40.0  # halved to 20 by five successes, then doubled
    for _ in range(10):
        p.succeeded(p.choose())  # type: ignore[arg-type]
    assert outage_then_recovery() == 10.0  # 40 -> 20 -> 10 -> fresh


def test_retry_after_60_gets_zero_calls_before_it_ends(clock: FakeClock) -> None:
    p = pool(clock, cooldown=5.0)
    p.failed(p.choose(), HTTPError(429, retry_after="60"))  # type: ignore[arg-type]
    assert p.states()["primary"]["reason"] == "rate_limited"
    calls = []
    while clock.now() < 60.0:
        choice = p.choose()
        assert choice is not None
        calls.append(choice.name)
        p.succeeded(choice)
        clock.advance(0.25)
    assert "primary" not in calls
    assert len(calls) == 240
    probe = p.choose()
    assert probe is not None
    assert probe.name == "primary"
    assert probe.probe


@pytest.mark.parametrize("flapping", [False, True])
def test_the_probe_clocks_never_shorten_a_retry_after_or_an_auth_cooldown(
    clock: FakeClock, flapping: bool
) -> None:
    p = pool(clock, cooldown=1.0)
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    waits_between_failed_probes(p, clock, "sf" if flapping else "ff")
    assert p.states()["primary"]["flapping"] is flapping
    clock.advance(p.earliest_ready({"secondary", "local"}) - clock.now())  # type: ignore[operator]
    probe = p.choose()
    assert probe is not None
    assert probe.probe
    p.failed(probe, HTTPError(429, retry_after="60"))
    calls = []
    end = clock.now() + 60.0
    while clock.now() < end:
        choice = p.choose()
        assert choice is not None
        calls.append(choice.name)
        p.succeeded(choice)
        clock.advance(0.25)
    assert calls == ["secondary"] * 240  # not one call, probes included
    probe = p.choose()
    assert probe is not None
    assert probe.probe
    p.failed(probe, HTTPError(401))
    assert p.earliest_ready({"secondary", "local"}) == clock.now() + 3600.0


def test_a_record_written_before_the_probe_pace_is_read() -> None:
    """A stored state without ``pace`` and ``flapping`` (as written before them) is read as a
    target on the down clock with no failed probe yet; a bad value of either is named."""
    settings = TargetSettings(cooldown=1.0, max_cooldown=600.0)
    old = {
        "v": 1,
        "healthy": False,
        "reason": "server_error",
        "since": 100.0,
        "until": 164.0,
        "failures": 7,
        "last_error": "HTTPError",
        "level": 64.0,
        "streak": 0,
        "probe_at": None,
    }
    machine = TargetMachine.from_state(old)
    assert (machine.pace, machine.flapping) == (0.0, False)
    assert (machine.level, machine.until) == (64.0, 164.0)
    assert machine.admit(163.0, settings) == REFUSED  # its cooldown is kept
    assert machine.admit(164.0, settings) == PROBE
    machine.failed(164.5, settings, reason="server_error", probe=164.0)
    assert machine.until == 164.5 + 1.5  # the pace, capped
    state = machine.to_state()
    assert state["v"] == 1
    assert set(old) < set(state)  # a process that predates the two fields still reads it
    with pytest.raises(ValueError, match="pace must be a number >= 0"):
        TargetMachine.from_state({**state, "pace": -1.0})
    with pytest.raises(ValueError, match="flapping must be true or false"):
        TargetMachine.from_state({**state, "flapping": "yes"})


def test_cooldowns_only_lengthen(clock: FakeClock) -> None:
    p = pool(clock, cooldown=5.0, threshold=1)
    p.failed(p.choose(), RateLimitExceeded("quota", retry_after=60.0))  # type: ignore[arg-type]
    inflight = p.choose()  # secondary
    assert inflight is not None
    # a shorter Retry-After, and a failure of a call admitted earlier, never shorten it
    stale = p._slots["primary"].choice
    p.failed(stale, HTTPError(503, retry_after="1"))
    p.failed(stale, ConnectionError())
    assert p.earliest_ready({"secondary", "local"}) == 60.0
    p.failed(stale, HTTPError(429, retry_after="90"))
    assert p.earliest_ready({"secondary", "local"}) == 90.0


def test_auth_error_cools_for_the_auth_cooldown(clock: FakeClock) -> None:
    p = pool(clock, auth_cooldown=3600.0)
    p.failed(p.choose(), HTTPError(401))  # type: ignore[arg-type]
    state = p.states()["primary"]
    assert state["reason"] == "auth"
    assert state["last_error"] == "HTTPError"
    assert p.earliest_ready({"secondary", "local"}) == 3600.0


def test_request_fault_does_not_cool(clock: FakeClock) -> None:
    p = pool(clock)
    choice = p.choose()
    assert choice is not None
    error = ValueError("This model's maximum context length is 8192 tokens")
    assert is_context_window_error(error)
    p.failed(choice, error, cool=False)
    assert p.states()["primary"]["state"] == "healthy"
    assert p.choose() is choice


def test_release_frees_the_probe_slot(clock: FakeClock) -> None:
    p = pool(clock, cooldown=1.0)
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    clock.advance(1.0)
    probe = p.choose()
    assert probe is not None
    assert probe.probe
    assert p.choose(exclude={"secondary", "local"}) is None
    p.release(probe)
    again = p.choose()
    assert again is not None
    assert again.name == "primary"
    assert again.probe


def test_probe_that_never_reports_is_written_off(clock: FakeClock) -> None:
    p = pool(clock, cooldown=1.0, probe_timeout=5.0)
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    clock.advance(1.0)
    lost = p.choose()
    assert lost is not None
    assert lost.probe
    clock.advance(4.9)
    assert p.choose({"secondary", "local"}) is None
    clock.advance(0.1)
    fresh = p.choose()
    assert fresh is not None
    assert fresh.probe
    assert fresh.ticket != lost.ticket
    p.succeeded(lost)  # the written-off probe proves nothing
    assert p._slots["primary"].machine.streak == 0


def test_prefer_cost_puts_the_cheapest_healthy_target_first(clock: FakeClock) -> None:
    p = TargetPool(
        "llm",
        [("openai", 1), ("anthropic", 2), ("local", 3)],
        prefer="cost",
        costs={"openai": 3.0, "anthropic": 1.5, "local": 0.1},
        clock=clock,
    )
    assert p.names == ("local", "anthropic", "openai")
    p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
    assert p.choose().name == "anthropic"  # type: ignore[union-attr]


def test_exhausted_error_lists_each_target_reason_and_expiry(clock: FakeClock) -> None:
    p = pool(clock, cooldown=30.0)
    p.failed(p.choose(), HTTPError(429, retry_after="60"))  # type: ignore[arg-type]
    p.failed(p.choose(), HTTPError(401))  # type: ignore[arg-type]
    clock.advance(10.0)
    p.failed(p.choose(), HTTPError(503))  # type: ignore[arg-type]
    assert p.choose() is None
    error = p.exhausted_error()
    assert isinstance(error, AllTargetsCooling)
    assert error.targets == (
        ("primary", "rate_limited: HTTPError", 60.0),
        ("secondary", "auth: HTTPError", 3600.0),
        ("local", "server_error: HTTPError", 40.0),
    )
    assert error.retry_after == 30.0
    assert "primary (rate_limited: HTTPError; ready in 50.0s)" in str(error)
    assert pickle.loads(pickle.dumps(error)).targets == error.targets
    assert p.earliest_ready() == 40.0


def test_state_changes_are_events(clock: FakeClock) -> None:
    seen: list[TargetStateChanged] = []

    def hook(event: object) -> None:
        if isinstance(event, TargetStateChanged):
            seen.append(event)

    add_hook(hook)
    try:
        p = pool(clock, cooldown=2.0, probes=1)
        p.failed(p.choose(), HTTPError(500))  # type: ignore[arg-type]
        clock.advance(2.0)
        p.succeeded(p.choose())  # type: ignore[arg-type]
    finally:
        remove_hook(hook)
    assert [(e.target, e.old, e.new, e.reason) for e in seen] == [
        ("primary", "healthy", "cooling", "server_error"),
        ("primary", "cooling", "healthy", "recovered"),
    ]
    assert seen[0].until == 2.0
    assert seen[0].level == logging.WARNING
    assert seen[1].level == logging.INFO


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"probes": 0}, "probes must be an integer >= 1"),
        ({"cooldown": -1}, "cooldown must be > 0"),
        ({"max_cooldown": 1.0}, "max_cooldown (1.0) must be >= cooldown (30.0)"),
        ({"max_probe_interval": 0}, "max_probe_interval must be > 0"),
        ({"prefer": "cheap"}, "prefer must be 'order' or 'cost'"),
        ({"prefer": "cost"}, "prefer='cost' needs costs"),
        ({"costs": {"nope": 1.0}}, "costs names an unknown target 'nope'"),
        ({"costs": {"primary": -1}}, "costs['primary'] must be a number >= 0"),
    ],
)
def test_bad_configuration_names_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TargetPool("llm", {"primary": 1, "secondary": 2}, **options)  # type: ignore[arg-type]


def test_bad_targets_are_named() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        TargetPool("llm", [("a", 1), ("a", 2)])
    with pytest.raises(ValueError, match="at least one"):
        TargetPool("llm", {})
    with pytest.raises(TypeError, match="pairs"):
        TargetPool("llm", ["a"])  # type: ignore[list-item]


def test_error_reasons() -> None:
    assert error_reason(HTTPError(403)) == "auth"
    assert error_reason(HTTPError(429)) == "rate_limited"
    assert error_reason(HTTPError(502)) == "server_error"
    assert error_reason(TimeoutError()) == "timeout"
    assert error_reason(ConnectionResetError()) == "connection"
    assert error_reason(KeyError()) == "error"


def test_machine_state_round_trips_and_rejects_garbage() -> None:
    machine = TargetMachine()
    machine.failed(5.0, TargetSettings(), error="E", reason="server_error")
    assert TargetMachine.from_state(machine.to_state()).to_state() == machine.to_state()
    with pytest.raises(ValueError, match="failures must be an integer"):
        TargetMachine.from_state({**machine.to_state(), "failures": -1})
    with pytest.raises(ValueError, match="lacks 'until'"):
        TargetMachine.from_state({k: v for k, v in machine.to_state().items() if k != "until"})


# -- under load ------------------------------------------------------------------------------------


def test_200_tasks_primary_gets_only_its_single_probe_and_returns_after_exactly_probes() -> None:
    """After the primary opens, its only calls are probes, one at a time; it comes back after
    exactly ``probes`` consecutive successful probes and stays (no flapping)."""

    async def main(clock: FakeClock) -> None:
        p = TargetPool("llm", {"primary": 0, "secondary": 1}, cooldown=5.0, probes=3, clock=clock)
        opened = False
        probing = 0
        most_probing = 0
        after_open: list[tuple[bool, bool]] = []  # (probe?, primary healthy at admission?)
        log: list[tuple[str, bool, bool]] = []

        async def task(seed: int) -> None:
            nonlocal most_probing, opened, probing
            rng = random.Random(seed)
            for _ in range(60):
                choice = p.choose()
                if choice is None:
                    await asyncio.sleep(0)
                    continue
                if choice.name == "primary" and opened:
                    after_open.append((choice.probe, p._slots["primary"].machine.healthy))
                if choice.probe:
                    probing += 1
                    most_probing = max(most_probing, probing)
                for _ in range(rng.randint(1, 3)):
                    await asyncio.sleep(0)  # the call takes a while: others run meanwhile
                # the primary is down for the first 20 s of virtual time
                ok = not (choice.name == "primary" and clock.now() < 20.0)
                if choice.probe:
                    probing -= 1
                log.append((choice.name, choice.probe, ok))
                if ok:
                    p.succeeded(choice)
                else:
                    p.failed(choice, ConnectionError("down"))
                    opened = True
                clock.advance(0.01)

        await asyncio.gather(*(task(seed) for seed in range(200)))
        assert opened
        # admitted to the primary after it opened: probes only, while it was unhealthy...
        unhealthy = [probe for probe, healthy in after_open if not healthy]
        assert unhealthy
        assert all(unhealthy)
        # ...and never two at a time
        assert most_probing == 1
        # it came back after exactly 3 successful probes in a row, and stayed
        probes = [(ok) for name, probe, ok in log if name == "primary" and probe]
        assert probes[-3:] == [True, True, True]
        assert p.states()["primary"]["state"] == "healthy"
        tail = [name for name, _, _ in log[-2000:]]
        assert set(tail) == {"primary"}

    with FakeClock() as clock:
        asyncio.run(main(clock))


def test_probes_are_never_concurrent_while_cooling() -> None:
    async def main(clock: FakeClock) -> None:
        p = TargetPool("llm", {"primary": 0, "secondary": 1}, cooldown=1.0, clock=clock)
        concurrent = 0
        worst = 0
        probes: list[tuple[float, float]] = []  # (admitted, failed)
        p.failed(p.choose(), ConnectionError())  # type: ignore[arg-type]
        start = clock.now()

        async def task() -> None:
            nonlocal concurrent, worst
            for _i in range(40):
                choice = p.choose()
                assert choice is not None
                if choice.name == "primary":
                    assert choice.probe
                    admitted = clock.now()
                    concurrent += 1
                    worst = max(worst, concurrent)
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    concurrent -= 1
                    probes.append((admitted, clock.now()))
                    p.failed(choice, ConnectionError())  # it never recovers
                else:
                    await asyncio.sleep(0)
                    p.succeeded(choice)
                clock.advance(0.05)

        await asyncio.gather(*(task() for _ in range(200)))
        assert worst == 1
        assert len(probes) >= 2
        assert probes[0][0] >= start + 1.0
        # each next probe waits out the pace after the last one failed (1.5 s: down, not flapping)
        for (_, failed), (admitted, _) in itertools.pairwise(probes):
            assert admitted >= failed + 1.5

    with FakeClock() as clock:
        asyncio.run(main(clock))


def test_half_broken_primary_for_10_minutes_switches_at_most_twice_per_cooldown() -> None:
    """A primary failing half its calls at random, called every 0.1 s for 10 simulated minutes.

    Traffic (the calls that are not probes) moves between targets at most twice per cooldown
    period. Probes are single calls and are counted apart: until the primary has shown it is
    flapping, it cannot be told from one that is down, so a failed probe is followed by another
    within ``max_probe_interval``; once it has, even counting every probe as two switches
    (there and back) there are at most two per cooldown period.
    """
    with FakeClock() as clock:
        cooldown = 30.0
        p = TargetPool("llm", {"primary": 0, "secondary": 1}, cooldown=cooldown, clock=clock)
        rng = random.Random(7)
        previous = previous_traffic = None
        switches: list[float] = []  # between consecutive calls, probes included
        traffic_switches: list[float] = []  # between consecutive calls that are not probes
        flapping_since: float | None = None
        primary = total = failed = 0
        while clock.now() < 600.0:
            choice = p.choose()
            assert choice is not None
            total += 1
            now = clock.now()
            if previous is not None and choice.name != previous:
                switches.append(now)
            previous = choice.name
            if not choice.probe:
                if previous_traffic is not None and choice.name != previous_traffic:
                    traffic_switches.append(now)
                previous_traffic = choice.name
            if choice.name == "primary":
                primary += 1
                if rng.random() < 0.5:
                    failed += 1
                    p.failed(choice, HTTPError(500))
                    if flapping_since is None and p.states()["primary"]["flapping"]:
                        flapping_since = clock.now()
                else:
                    p.succeeded(choice)
            else:
                p.succeeded(choice)
            clock.advance(0.1)

        def most_per_period(times: list[float]) -> int:
            buckets: dict[int, int] = {}
            for at in times:
                buckets[int(at // cooldown)] = buckets.get(int(at // cooldown), 0) + 1
            return max(buckets.values(), default=0)

        assert traffic_switches
        assert most_per_period(traffic_switches) <= 2
        assert flapping_since is not None
        assert most_per_period([at for at in switches if at > flapping_since]) <= 2
        assert primary / total < 0.005
        # a re-admission on every expiry of a 30 s cooldown would pay one per expiry: 20
        assert failed <= 20
        # a timer-based re-admission would flap on every expiry of a fixed 30 s cooldown
        assert p.states()["primary"]["cooldown"] > cooldown
