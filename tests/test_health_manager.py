"""ResourceManager: schedule, timeouts, hysteresis, thresholds, prediction, aggregation, threads.

Schedules run in virtual time (``FakeClock``): the scheduler sleeps on the fake clock, so a test
drives thousands of intervals without waiting. Only the loop-lag test runs in real time, since
what it measures is real time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from buttress.clock import get_clock
from buttress.health import (
    OverallHealth,
    Reading,
    ResourceManager,
    ResourceState,
    ResourceStatus,
    ResourceType,
    aggregate,
)
from buttress.health.manager import Monitor, resource_type
from buttress.testing import FakeClock

H, D = ResourceStatus.HEALTHY, ResourceStatus.DEGRADED
C, U = ResourceStatus.CRITICAL, ResourceStatus.UNAVAILABLE


def aio(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run an ``async def`` test body in a fresh event loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(test(*args, **kwargs))

    return run


async def until(predicate: Callable[[], bool], turns: int = 200_000) -> None:
    """Yield to the loop until ``predicate()`` holds (no real time passes under a fake clock)."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition was never reached")


class Script:
    """A check following a script of outcomes (an exception is raised, anything else returned);
    it notes the time of each call and the status the resource had when it was called."""

    def __init__(self, outcomes: Iterable[object], then: object = True) -> None:
        self.outcomes = list(outcomes)
        self.then = then
        self.calls = 0
        self.times: list[float] = []
        self.seen: list[ResourceStatus | None] = []
        self.monitor: Monitor | None = None

    async def __call__(self) -> object:
        self.times.append(get_clock().now())
        if self.monitor is not None:
            self.seen.append(self.monitor.state.status)
        outcome = self.outcomes[self.calls] if self.calls < len(self.outcomes) else self.then
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def run_script(
    outcomes: Iterable[object], checks: int | None = None, **options: Any
) -> tuple[ResourceManager, Script]:
    """Register ``outcomes`` as a check, run ``checks`` of them (default: all) and one more, so
    ``script.seen[1:]`` is the status after each scripted check."""
    script = Script(outcomes)
    manager = ResourceManager("test", check_interval=10)
    script.monitor = manager.register(ResourceType.DATABASE, "db", script, **options)
    total = (len(script.outcomes) if checks is None else checks) + 1
    async with manager:
        await until(lambda: script.calls >= total)
    return manager, script


def statuses(script: Script) -> list[ResourceStatus | None]:
    return script.seen[1:]


# -- the schedule ----------------------------------------------------------------------------------


@aio
async def test_checks_run_every_interval_in_virtual_time(clock: FakeClock) -> None:
    fast, slow = Script([]), Script([])
    manager = ResourceManager("test", check_interval=10)
    manager.register(ResourceType.NETWORK, "fast", fast)
    manager.register(ResourceType.NETWORK, "slow", slow, interval=25)
    async with manager:
        await until(lambda: slow.calls >= 4)
    assert slow.times == [0.0, 25.0, 50.0, 75.0]
    assert fast.times[:8] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]


@aio
async def test_nothing_runs_before_start_and_after_stop(clock: FakeClock) -> None:
    script = Script([])
    manager = ResourceManager("test", check_interval=10)
    manager.register(ResourceType.CPU, "cpu", script)
    for _ in range(100):
        await asyncio.sleep(0)
    assert script.calls == 0
    assert manager.state("cpu", "cpu").status is None
    await manager.start()
    await until(lambda: script.calls >= 3)
    await manager.stop()
    calls = script.calls
    for _ in range(100):
        await asyncio.sleep(0)
    assert script.calls == calls
    assert not manager.running


@aio
async def test_a_monitor_registered_while_running_is_checked_at_once(clock: FakeClock) -> None:
    manager = ResourceManager("test", check_interval=3600)
    first = Script([])
    manager.register(ResourceType.CPU, "cpu", first)
    async with manager:
        await until(lambda: first.calls == 1)
        await until(lambda: manager._sleeper is not None)  # the scheduler sleeps for an hour
        registered_at = clock.now()
        late = Script([])
        manager.register(ResourceType.NETWORK, "late", late)
        await until(lambda: late.calls == 1)
    assert late.times == [registered_at]


@aio
async def test_unregister_stops_checking_and_replace_swaps_the_check(clock: FakeClock) -> None:
    manager = ResourceManager("test", check_interval=10)
    old, new = Script([]), Script([])
    manager.register("network", "api", old)
    with pytest.raises(ValueError, match=r"network:api is already registered"):
        manager.register("network", "api", new)
    async with manager:
        await until(lambda: old.calls >= 2)
        manager.register("network", "api", new, replace=True)
        await until(lambda: new.calls >= 2)
        calls = old.calls
        assert manager.unregister("network", "api")
        for _ in range(200):
            await asyncio.sleep(0)
        assert old.calls == calls
        assert not manager.unregister("network", "api")
    assert manager.states() == {}


@aio
async def test_start_twice_is_an_error_and_a_stopped_manager_restarts(clock: FakeClock) -> None:
    manager = ResourceManager("test", check_interval=10)
    script = Script([])
    manager.register(ResourceType.CPU, "cpu", script)
    await manager.start()
    with pytest.raises(RuntimeError, match="already running"):
        await manager.start()
    manager.stop()  # plain call: requested at once
    await asyncio.sleep(0)
    assert not manager.running
    await manager.start()
    calls = script.calls
    await until(lambda: script.calls > calls)
    await manager.stop()


# -- hysteresis ------------------------------------------------------------------------------------


@aio
async def test_a_check_failing_every_third_time_never_leaves_healthy(clock: FakeClock) -> None:
    outcomes = [True, True, ConnectionError("refused")] * 20
    changes: list[tuple[ResourceStatus | None, ResourceStatus | None]] = []
    script = Script(outcomes)
    manager = ResourceManager("test", check_interval=10)
    script.monitor = manager.register(ResourceType.DATABASE, "db", script)
    manager.on_status_change(lambda state, old: changes.append((old, state.status)))
    async with manager:
        await until(lambda: script.calls > len(outcomes))
    assert statuses(script) == [H] * len(outcomes)
    assert changes == [(None, H)]


@aio
async def test_three_failures_in_a_row_make_it_unavailable(clock: FakeClock) -> None:
    boom = ConnectionError("refused")
    _, script = await run_script([True, boom, boom, boom, True, True, True])
    assert statuses(script) == [H, H, H, U, U, H, H]


@aio
async def test_the_hysteresis_thresholds_are_per_monitor(clock: FakeClock) -> None:
    boom = OSError("down")
    _, script = await run_script(
        [True, boom, True, True, True, True],
        fail_threshold=1,
        success_threshold=4,
    )
    assert statuses(script) == [H, U, U, U, U, H]


@aio
async def test_a_resource_down_at_start_is_unavailable_at_once(clock: FakeClock) -> None:
    _, script = await run_script([OSError("no route"), True, True])
    assert statuses(script) == [U, U, H]


@aio
async def test_the_state_of_a_failing_resource(clock: FakeClock) -> None:
    script = Script(
        [True, ConnectionError("postgresql://app:s3cret@db/app refused")] * 1, then=OSError("x")
    )
    manager = ResourceManager("test", check_interval=10)
    monitor = manager.register(ResourceType.DATABASE, "orders", script)
    async with manager:
        await until(lambda: script.calls >= 2)
        state = monitor.state
        assert state.status is H
        assert state.consecutive_failures == 1
        assert state.last_error == "ConnectionError: postgresql://app:***@db/app refused"
        assert "1 of 3 failed checks" in (state.reason or "")
        assert state.checked_at == clock.wall()
        await until(lambda: script.calls >= 4)
    state = monitor.state
    assert state.status is U
    assert state.last_error == "OSError: x"
    assert state.as_dict()["status"] == "unavailable"
    assert state.key == "database:orders"


# -- thresholds and what checks return ------------------------------------------------------------


@aio
async def test_usage_thresholds_with_a_margin_to_leave_them(clock: FakeClock) -> None:
    _, script = await run_script([50.0, 85.0, 96.0, 92.0, 93.0, 70.0, 70.0, 82.0, 77.0, 74.0, 74.0])
    # 92 and 93 stay CRITICAL (within 5 points of 95); leaving needs two checks below
    # the margin; 82 is DEGRADED; 77 stays DEGRADED (within 5 of 80); 74 twice is HEALTHY.
    assert statuses(script) == [H, D, C, C, C, C, H, D, D, D, H]


@aio
async def test_thresholds_per_monitor_and_per_type(clock: FakeClock) -> None:
    manager = ResourceManager(
        "test", check_interval=10, thresholds={"memory": {"degraded": 60, "critical": 70}}
    )
    memory = manager.register(ResourceType.MEMORY, "system", lambda: 65.0)
    cpu = manager.register(ResourceType.CPU, "system", lambda: 65.0)
    disk = manager.register(
        ResourceType.CPU, "strict", lambda: 65.0, degraded_at=50, critical_at=60
    )
    await manager.check_now()
    assert (memory.state.status, cpu.state.status, disk.state.status) == (D, H, C)
    assert memory.degraded_at == 60.0
    assert "65.0% >= 60%" in (memory.state.reason or "")


@aio
async def test_noise_at_a_threshold_does_not_flap(clock: FakeClock) -> None:
    rng = random.Random(11)
    outcomes = [80.0 + rng.uniform(-3.0, 3.0) for _ in range(300)]
    changes: list[ResourceStatus | None] = []
    script = Script(outcomes)
    manager = ResourceManager("test", check_interval=10)
    manager.register(ResourceType.MEMORY, "system", script)
    manager.on_status_change(lambda state, old: changes.append(state.status))
    async with manager:
        await until(lambda: script.calls > len(outcomes))
    assert changes[:2] in ([H, D], [D])
    assert len([c for c in changes if c is not None]) <= 2


@pytest.mark.parametrize(
    ("result", "status", "usage"),
    [
        (None, H, None),
        (True, H, None),
        (42, H, 42.0),
        (99.5, C, 99.5),
        (
            Reading(usage=10.0, status=ResourceStatus.CRITICAL, message="container unhealthy"),
            C,
            10.0,
        ),
        (Reading(status=ResourceStatus.DEGRADED), D, None),
        (False, U, None),
        ("fine", U, None),
    ],
)
@aio
async def test_what_a_check_may_return(
    clock: FakeClock, result: object, status: ResourceStatus, usage: float | None
) -> None:
    manager = ResourceManager("test", check_interval=10)

    async def check() -> object:
        return result

    monitor = manager.register(ResourceType.DOCKER, "app", check)
    await manager.check_now()
    assert monitor.state.status is status
    assert monitor.state.usage == usage


@aio
async def test_a_check_reporting_its_own_status_says_why(clock: FakeClock) -> None:
    manager = ResourceManager("test", check_interval=10)

    async def check() -> Reading:
        return Reading(
            status=ResourceStatus.CRITICAL, message="container unhealthy", detail={"restarts": 4}
        )

    monitor = manager.register(ResourceType.DOCKER, "app", check)
    await manager.check_now()
    assert monitor.state.reason == "container unhealthy"
    assert monitor.state.as_dict()["detail"] == {"restarts": 4}


@aio
async def test_a_check_returning_false_or_garbage_fails_with_a_reason(clock: FakeClock) -> None:
    manager = ResourceManager("test", check_interval=10)
    no = manager.register(ResourceType.NETWORK, "no", lambda: False)
    odd = manager.register(ResourceType.NETWORK, "odd", lambda: "fine")
    await manager.check_now()
    assert no.state.last_error == "the check returned False"
    assert (odd.state.last_error or "").startswith("TypeError: a check must return a Reading")


# -- prediction and latency ------------------------------------------------------------------------


@aio
async def test_a_rising_usage_is_degraded_before_it_crosses_a_threshold(clock: FakeClock) -> None:
    async def ramp() -> float:
        return 10.0 + 0.05 * clock.now()  # 0.05 points per second: 100% at t = 1800

    manager = ResourceManager("test", check_interval=30, horizon=600)
    monitor = manager.register(ResourceType.MEMORY, "system", ramp)
    seen: list[ResourceState] = []
    manager.on_status_change(lambda state, old: seen.append(state))
    async with manager:
        await until(lambda: (monitor.state.usage or 0) >= 79)
    degraded = next(s for s in seen if s.status is D)
    assert (degraded.reason or "").startswith("predicted to reach 100% in")
    assert degraded.usage is not None
    assert degraded.usage < 80
    truth = (100.0 - degraded.usage) / 0.05
    assert degraded.predicted_exhaustion == pytest.approx(truth, rel=0.05)
    state = monitor.state
    assert state.predicted_exhaustion == pytest.approx(
        (100.0 - (state.usage or 0)) / 0.05, rel=0.05
    )


@aio
async def test_noise_around_a_flat_level_never_changes_the_status(clock: FakeClock) -> None:
    rng = random.Random(5)
    outcomes = [60.0 + rng.uniform(-8.0, 8.0) for _ in range(400)]
    changes: list[ResourceStatus | None] = []
    script = Script(outcomes)
    manager = ResourceManager("test", check_interval=30, horizon=600)
    manager.register(ResourceType.MEMORY, "system", script)
    manager.on_status_change(lambda state, old: changes.append(state.status))
    async with manager:
        await until(lambda: script.calls > len(outcomes))
    assert changes == [H]


@aio
async def test_prediction_can_be_turned_off(clock: FakeClock) -> None:
    async def ramp() -> float:
        return 10.0 + 0.05 * clock.now()

    manager = ResourceManager("test", check_interval=30)
    monitor = manager.register(ResourceType.MEMORY, "system", ramp, horizon=None)
    async with manager:
        await until(lambda: (monitor.state.usage or 0) >= 70)
    assert monitor.state.status is H
    assert monitor.state.predicted_exhaustion is not None  # still reported


@aio
async def test_a_check_far_slower_than_its_baseline_is_degraded(clock: FakeClock) -> None:
    latencies = [0.05] * 20 + [0.5] + [0.05] * 3
    script_calls = 0

    async def check() -> None:
        nonlocal script_calls
        clock.advance(latencies[min(script_calls, len(latencies) - 1)])  # the check's duration
        script_calls += 1

    manager = ResourceManager("test", check_interval=10)
    monitor = manager.register(ResourceType.NETWORK, "api", check)
    history: list[ResourceState] = []
    manager.on_status_change(lambda state, old: history.append(state))
    async with manager:
        await until(lambda: script_calls >= len(latencies))
    assert [s.status for s in history] == [H, D, H]
    assert history[1].reason == "latency 500 ms, usually 50 ms"
    assert history[1].latency == pytest.approx(0.5)
    assert monitor.state.as_dict()["latency_ms"] == pytest.approx(50.0)


# -- timeouts, failures and the event loop --------------------------------------------------------


@aio
async def test_a_check_past_its_timeout_is_cancelled_and_reported(clock: FakeClock) -> None:
    cancelled: list[float] = []

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(clock.now())
            raise

    good = Script([])
    manager = ResourceManager("test", check_interval=30)
    slow = manager.register(ResourceType.NETWORK, "slow", hangs, timeout=5)
    manager.register(ResourceType.NETWORK, "good", good)
    async with manager:
        await until(lambda: len(cancelled) >= 3)
        assert slow.state.last_error == "timeout after 5s"
        assert slow.state.status is U
        assert cancelled == [5.0, 35.0, 65.0]
        assert good.times[:3] == [0.0, 30.0, 60.0]


@aio
async def test_a_timeout_equal_to_the_interval_starts_a_fresh_check(clock: FakeClock) -> None:
    # The deadline and the next due time coincide: the cancelled run ends before the due check
    # looks at it, so each interval is one more "timeout", never "still running".
    runs = 0

    async def hangs() -> None:
        nonlocal runs
        runs += 1
        await asyncio.Event().wait()

    manager = ResourceManager("test", check_interval=10)
    monitor = manager.register(ResourceType.NETWORK, "slow", hangs, timeout=10)
    errors: list[str | None] = []
    manager.on_status_change(lambda state, old: errors.append(state.last_error))
    async with manager:
        await until(lambda: monitor.state.consecutive_failures >= 4)
        await asyncio.sleep(0)
    assert runs >= 4
    assert monitor.state.last_error == "timeout after 10s"
    assert errors == ["timeout after 10s"]


@aio
async def test_a_check_ignoring_cancellation_is_abandoned_not_awaited(clock: FakeClock) -> None:
    release = asyncio.Event()
    runs = 0

    async def stubborn() -> float:
        nonlocal runs
        runs += 1
        while True:
            try:
                await release.wait()
                return 1.0
            except asyncio.CancelledError:
                continue  # swallows cancellation: the manager must not wait for it

    good = Script([])
    manager = ResourceManager("test", check_interval=10)
    stuck = manager.register(ResourceType.MCP_SERVER, "stuck", stubborn, timeout=2)
    manager.register(ResourceType.NETWORK, "good", good)
    async with manager:
        await until(lambda: good.calls >= 6)
        assert runs == 1  # never a second run while the first is alive
        assert stuck.state.status is U
        assert "still running" in (stuck.state.last_error or "")
        assert stuck.state.consecutive_failures >= 4
        release.set()
        await until(lambda: runs == 2)  # the late outcome was discarded, a new run began
        await until(lambda: stuck.state.status is H)
    assert good.times[:6] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


@aio
async def test_a_raising_check_marks_only_itself(clock: FakeClock) -> None:
    manager = ResourceManager("test", check_interval=10)

    async def raises() -> None:
        raise RuntimeError("token=abc123 rejected")

    bad = manager.register(ResourceType.API_QUOTA, "bad", raises)
    good = manager.register(ResourceType.API_QUOTA, "good", Script([]))
    await manager.check_now()
    assert bad.state.status is U
    assert bad.state.last_error == "RuntimeError: token=*** rejected"
    assert good.state.status is H
    assert manager.overall() is OverallHealth.UNHEALTHY


@aio
async def test_a_def_check_runs_in_a_worker_thread(clock: FakeClock) -> None:
    threads: list[threading.Thread] = []

    def blocking() -> float:
        threads.append(threading.current_thread())
        return 12.0

    manager = ResourceManager("test", check_interval=10)
    monitor = manager.register(ResourceType.DATABASE, "db", blocking)
    await manager.check_now()
    assert monitor.state.usage == 12.0
    assert threads[0] is not threading.current_thread()
    assert threads[0].daemon


def test_the_event_loop_is_never_blocked_by_hanging_or_raising_checks() -> None:
    """Real time: a ticker measures how late the loop runs it while bad checks run.

    The machine is shared, so the operating system alone sometimes delays a process by tens of
    milliseconds; a check that blocked the loop would delay it in every run, so the best of three
    one-second runs is what is asserted.
    """
    gate = threading.Event()

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def raises() -> None:
        raise ConnectionError("refused")

    def blocks() -> None:
        gate.wait(30)  # a blocking client that never answers

    good_runs = 0

    async def good() -> float:
        nonlocal good_runs
        good_runs += 1
        return 10.0

    async def main() -> float:
        manager = ResourceManager("lag", check_interval=0.05)
        manager.register(ResourceType.NETWORK, "hangs", hangs, timeout=0.1)
        manager.register(ResourceType.NETWORK, "raises", raises)
        manager.register(ResourceType.DATABASE, "blocks", blocks, timeout=0.1)
        manager.register(ResourceType.CPU, "good", good)
        worst = 0.0
        async with manager:
            tick = 0.005
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                before = time.monotonic()
                await asyncio.sleep(tick)
                worst = max(worst, time.monotonic() - before - tick)
        states = manager.states()
        assert states["network:hangs"].last_error == "timeout after 0.1s"
        assert states["network:raises"].last_error == "ConnectionError: refused"
        assert states["database:blocks"].status is U
        return worst

    lags = []
    try:
        for _ in range(3):
            good_runs = 0
            lags.append(asyncio.run(main()))
            assert good_runs >= 5  # the good check kept its schedule beside the bad ones
            if lags[-1] < 0.050:
                break
    finally:
        gate.set()
    assert min(lags) < 0.050, f"the event loop was late by {[round(x * 1000, 1) for x in lags]} ms"


@aio
async def test_a_hung_def_check_holds_at_most_one_thread(clock: FakeClock) -> None:
    gate = threading.Event()
    entered: list[threading.Thread] = []

    def hangs() -> None:
        entered.append(threading.current_thread())
        gate.wait(30)

    manager = ResourceManager("test", check_interval=10)
    monitor = manager.register(ResourceType.DATABASE, "db", hangs, timeout=1)
    try:
        async with manager:
            await until(lambda: bool(entered))  # the check is now blocked in its thread
            await until(lambda: "still running" in (monitor.state.last_error or ""))
            await until(lambda: monitor.state.consecutive_failures >= 6)
        assert len(entered) == 1  # no second run while the first is stuck
        assert monitor.state.status is U
    finally:
        gate.set()


# -- reading never checks; threads for sync applications ------------------------------------------


def test_a_sync_application_runs_monitors_on_one_thread_it_starts() -> None:
    # threads of earlier tests may end meanwhile: count only threads that were not there before
    before = set(threading.enumerate())

    def started() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before]

    checked = threading.Event()
    calls = 0

    async def check() -> float:
        nonlocal calls
        calls += 1
        return 20.0

    manager = ResourceManager("sync-app", check_interval=3600)
    monitor = manager.register(ResourceType.CPU, "cpu", check)
    manager.on_status_change(lambda state, old: checked.set())
    assert started() == []  # nothing starts on construction
    manager.start_in_thread()
    try:
        assert checked.wait(10)
        with pytest.raises(RuntimeError, match="already running"):
            manager.start_in_thread()
        executions = manager.executions
        for _ in range(1000):
            assert monitor.state.status is H
            manager.states()
            manager.overall()
        assert manager.executions == executions == 1
        assert calls == 1
    finally:
        manager.stop()
    assert not manager.running
    assert started() == []


def test_stopping_lets_the_worker_threads_end() -> None:
    gate = threading.Event()
    seen = threading.Event()

    def slow() -> float:
        gate.wait(10)
        return 1.0

    manager = ResourceManager("workers-end", check_interval=3600)
    manager.register(ResourceType.CPU, "quick", lambda: 1.0)
    manager.register(ResourceType.CPU, "slow", slow, timeout=3600)
    manager.on_status_change(lambda state, old: seen.set() if state.name == "quick" else None)
    manager.start_in_thread()
    assert seen.wait(10)
    workers = [t for t in threading.enumerate() if t.name == "buttress-check-workers-end"]
    assert len(workers) == 2
    manager.stop()
    gate.set()  # the busy worker ends when its job does
    for worker in workers:
        worker.join(10)
        assert not worker.is_alive()


def test_registering_from_another_thread_wakes_the_monitor_thread() -> None:
    manager = ResourceManager("sync-app", check_interval=3600)
    seen = threading.Event()
    manager.on_status_change(lambda state, old: seen.set() if state.name == "late" else None)
    manager.start_in_thread()
    try:
        manager.register(ResourceType.NETWORK, "late", lambda: True)
        assert seen.wait(10)
    finally:
        manager.stop()


def test_importing_starts_nothing() -> None:
    import subprocess
    import sys

    code = (
        "import threading, buttress, buttress.health, buttress.manager\n"
        "m = buttress.ResilienceManager('t')\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- aggregation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "overall"),
    [
        ([], "healthy"),
        ([(H, True), (H, False)], "healthy"),
        ([(None, True), (H, True)], "healthy"),  # not checked yet counts for nothing
        ([(D, True)], "degraded"),
        ([(D, False)], "degraded"),
        ([(C, True)], "unhealthy"),
        ([(U, True)], "unhealthy"),
        ([(C, False)], "degraded"),  # a non-critical member can only degrade the whole
        ([(U, False), (H, True)], "degraded"),
        ([(U, False), (D, True)], "degraded"),
        ([(D, True), (U, True)], "unhealthy"),
        ([(U, False), (C, True)], "unhealthy"),
    ],
)
def test_the_aggregation_table(
    members: list[tuple[ResourceStatus | None, bool]], overall: str
) -> None:
    assert aggregate(members).value == overall


@aio
async def test_a_non_critical_resource_only_degrades_the_whole(clock: FakeClock) -> None:
    manager = ResourceManager("test", check_interval=10)
    manager.register(ResourceType.NETWORK, "optional", lambda: False, critical=False)
    manager.register(ResourceType.DATABASE, "db", lambda: True)
    await manager.check_now()
    assert manager.overall() is OverallHealth.DEGRADED
    assert manager.ready()
    manager.register(ResourceType.DATABASE, "down", lambda: False)
    await manager.check_now()
    assert manager.overall() is OverallHealth.UNHEALTHY
    assert not manager.ready()


# -- events, logs and metrics ----------------------------------------------------------------------


@aio
async def test_one_warning_per_status_change_never_one_per_check(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    boom = ConnectionError("refused")
    outcomes = [True] * 5 + [boom] * 10 + [True] * 10
    caplog.set_level(logging.DEBUG, logger="buttress.health")
    await run_script(outcomes)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "health 'test': database:db healthy -> unavailable "
        "(3 failed checks in a row: ConnectionError: refused)",
        "health 'test': database:db unavailable -> healthy (ok)",
    ]
    assert warnings[0].event == "resource_status_changed"  # type: ignore[attr-defined]
    assert warnings[0].resource == "database:db"  # type: ignore[attr-defined]


@aio
async def test_prometheus_gauge_of_the_time_to_exhaustion(clock: FakeClock) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from buttress import enable_prometheus

    registry = prometheus_client.CollectorRegistry()
    metrics = enable_prometheus(registry, namespace="exhtest")

    async def ramp() -> float:
        return 10.0 + 0.05 * clock.now()

    try:
        manager = ResourceManager("exhaustion-team", check_interval=30)
        monitor = manager.register(ResourceType.MEMORY, "system", ramp)
        async with manager:
            await until(lambda: monitor.state.predicted_exhaustion is not None)
        labels = {"name": "exhaustion-team", "type": "memory", "resource": "system"}
        value = registry.get_sample_value("exhtest_resource_exhaustion_seconds", labels)
        assert value == pytest.approx(monitor.state.predicted_exhaustion)
    finally:
        metrics.disable()


@aio
async def test_prometheus_gauges_for_resources(clock: FakeClock) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from buttress import enable_prometheus

    registry = prometheus_client.CollectorRegistry()
    metrics = enable_prometheus(registry, namespace="restest")
    try:
        manager = ResourceManager("metrics-team", check_interval=10)
        manager.register(ResourceType.API_QUOTA, "openai", lambda: 85.5)
        manager.register(ResourceType.DATABASE, "db", lambda: False)
        await manager.check_now()
        labels = {"name": "metrics-team", "type": "api_quota", "resource": "openai"}
        assert registry.get_sample_value("restest_resource_status", labels) == 1.0
        assert registry.get_sample_value("restest_resource_usage_percent", labels) == 85.5
        assert registry.get_sample_value("restest_resource_check_latency_seconds", labels) == 0.0
        assert registry.get_sample_value("restest_resource_exhaustion_seconds", labels) is None
        db = {"name": "metrics-team", "type": "database", "resource": "db"}
        assert registry.get_sample_value("restest_resource_status", db) == 3.0
        assert registry.get_sample_value("restest_resource_usage_percent", db) is None
    finally:
        metrics.disable()


# -- several managers, check_now and bad input -----------------------------------------------------


@aio
async def test_several_managers_are_independent(clock: FakeClock) -> None:
    one = ResourceManager("one", check_interval=10)
    two = ResourceManager("two", check_interval=20)
    a, b = Script([]), Script([], then=False)
    one.register(ResourceType.DATABASE, "db", a)
    two.register(ResourceType.DATABASE, "db", b)
    async with one, two:
        await until(lambda: b.calls >= 3)
    assert one.status("database", "db") is H
    assert two.status("database", "db") is U
    assert a.calls > b.calls


@aio
async def test_check_now_waits_for_a_check_already_running() -> None:
    # The real clock: under a fake one the running scheduler would time the thread out.
    gate = threading.Event()

    def slow() -> float:
        gate.wait(10)
        return 30.0

    manager = ResourceManager("test", check_interval=3600)
    monitor = manager.register(ResourceType.DATABASE, "db", slow, timeout=3600)
    async with manager:
        await until(lambda: manager.executions == 1)
        threading.Timer(0.01, gate.set).start()
        states = await manager.check_now()
    assert manager.executions == 1
    assert states["database:db"].usage == 30.0
    assert monitor.state.status is H


def test_check_now_runs_on_the_managers_loop() -> None:
    manager = ResourceManager("test", check_interval=3600)
    manager.start_in_thread()
    try:
        with pytest.raises(RuntimeError, match="event loop the manager runs on"):
            asyncio.run(manager.check_now())
    finally:
        manager.stop()


@aio
async def test_check_now_waits_within_each_timeout(clock: FakeClock) -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    manager = ResourceManager("test", check_interval=10)
    manager.register(ResourceType.NETWORK, "hangs", hangs, timeout=0.01)
    manager.register(ResourceType.NETWORK, "ok", lambda: True)
    states = await manager.check_now()
    assert states["network:ok"].status is H
    assert states["network:hangs"].last_error == "timeout after 0.01s"


@aio
async def test_check_now_called_again_checks_a_timed_out_check_again(clock: FakeClock) -> None:
    # A script calling check_now in a row: the hung check was cancelled, so each call runs it
    # once more, and its failures add up to UNAVAILABLE as the scheduler's would.
    started = 0

    async def hangs() -> None:
        nonlocal started
        started += 1
        await asyncio.Event().wait()

    manager = ResourceManager("test", check_interval=10)
    manager.register(ResourceType.NETWORK, "hangs", hangs, timeout=0.01, fail_threshold=3)
    for _ in range(3):
        states = await manager.check_now()
    assert started == 3
    assert states["network:hangs"].consecutive_failures == 3
    assert states["network:hangs"].status is U


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m.register("disk", "d", lambda: 1), ValueError, "unknown resource type 'disk'"),
        (lambda m: m.register(ResourceType.CPU, "", lambda: 1), ValueError, "resource name"),
        (lambda m: m.register(ResourceType.CPU, "c", 42), TypeError, "cpu:c must be callable"),
        (lambda m: m.register("cpu", "c", lambda: 1, interval=-1), ValueError, "cpu:c interval"),
        (lambda m: m.register("cpu", "c", lambda: 1, timeout=0), ValueError, "cpu:c timeout"),
        (
            lambda m: m.register("cpu", "c", lambda: 1, interval=1e-9),
            ValueError,
            "cpu:c interval must be at least 0.01 seconds",
        ),
        (
            lambda m: m.register("cpu", "c", lambda: 1, critical_at=150),
            ValueError,
            "cpu:c critical_at must be <= 100",
        ),
        (
            lambda m: m.register("cpu", "c", lambda: 1, degraded_at=90, critical_at=80),
            ValueError,
            "degraded_at",
        ),
        (lambda m: m.register("cpu", "c", lambda: 1, fail_threshold=0), ValueError, "fail_thr"),
        (lambda m: m.register("cpu", "c", lambda: 1, critical="yes"), TypeError, "critical"),
        (lambda m: m.state("cpu", "nope"), KeyError, "cpu:nope"),
    ],
)
def test_bad_registrations_say_what_is_wrong(
    call: Callable[[ResourceManager], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call(ResourceManager("test", check_interval=10))


@pytest.mark.parametrize("raw", ["abc", "-5", "0", "nan", "inf", "1e-9", "0.009"])
def test_a_bad_check_interval_variable_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("RESILIENCE_CHECK_INTERVAL", raw)
    with pytest.raises(ValueError, match="RESILIENCE_CHECK_INTERVAL") as info:
        ResourceManager("test")
    assert repr(raw) in str(info.value)


def test_the_check_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENCE_CHECK_INTERVAL", "12.5")
    assert ResourceManager("test").check_interval == 12.5
    monkeypatch.delenv("RESILIENCE_CHECK_INTERVAL")
    assert ResourceManager("test").check_interval == 30.0
    assert ResourceManager("test", check_interval=7).check_interval == 7.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"check_interval": -1}, "check_interval"),
        ({"check_interval": 0}, "check_interval"),
        ({"check_timeout": 0}, "check_timeout"),
        ({"fail_threshold": 0}, "fail_threshold"),
        ({"thresholds": {"gpu": {"degraded": 1}}}, "unknown resource type 'gpu'"),
        ({"thresholds": {"cpu": {"warn": 1}}}, "unknown keys"),
        ({"thresholds": {"cpu": {"degraded": 90, "critical": 80}}}, "'degraded' must be"),
        ({"thresholds": {"cpu": 80}}, r"thresholds\[cpu\]"),
        ({"thresholds": {"cpu": {"critical": 101}}}, r"thresholds\[cpu\]\.critical must be <= 100"),
        ({"check_interval": 1e-9}, "check_interval must be at least 0.01 seconds"),
        ({"clock": object()}, "clock"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_manager_settings_say_what_is_wrong(kwargs: dict[str, Any], match: str) -> None:
    kwargs.setdefault("check_interval", 10)
    with pytest.raises((ValueError, TypeError), match=match):
        ResourceManager(**kwargs)


@pytest.mark.parametrize("value", [ResourceType.CPU, "cpu", "CPU", "K8S_POD", "k8s_pod"])
def test_resource_types_by_member_value_or_name(value: object) -> None:
    assert isinstance(resource_type(value), ResourceType)


def test_default_timeout_is_the_shorter_of_five_seconds_and_the_interval() -> None:
    manager = ResourceManager("test", check_interval=30)
    assert manager.register("cpu", "a", lambda: 1).timeout == 5.0
    assert manager.register("cpu", "b", lambda: 1, interval=2).timeout == 2.0
    assert (
        ResourceManager("t", check_interval=30, check_timeout=9)
        .register("cpu", "c", lambda: 1)
        .timeout
        == 9.0
    )
