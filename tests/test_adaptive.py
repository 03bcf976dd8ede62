"""AdaptiveConcurrency as a policy: it is a bulkhead (never over-admits threads or tasks, the same
BulkheadFull refusal), its limit follows the algorithm, changes are events and a reading,
scale_down/restore, what counts as a drop, and bad settings."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Any

import pytest

from buttress import (
    AdaptiveConcurrency,
    Bulkhead,
    BulkheadFull,
    CircuitOpenError,
    OperationTimeout,
    RejectedError,
    adaptive_concurrency,
    events,
)
from buttress.machines.limit import AIMD, Gradient2
from buttress.testing import FakeClock


@pytest.fixture
def seen() -> Any:
    got: list[events.Event] = []
    hook = events.add_hook(got.append)
    yield got
    events.remove_hook(hook)


def aimd(clock: FakeClock, **settings: Any) -> AdaptiveConcurrency:
    options: dict[str, Any] = {"window": 1.0, "min_samples": 1, "initial_limit": 4}
    options.update(settings)
    return AdaptiveConcurrency("aimd", clock=clock, name="db", **options)


def test_a_full_limiter_refuses_with_bulkhead_full_naming_itself() -> None:
    limiter = aimd(FakeClock(), initial_limit=1)
    limiter.acquire()
    with pytest.raises(BulkheadFull, match="adaptive concurrency limit 'db' is full") as caught:
        limiter.call(lambda: None)
    assert isinstance(caught.value, RejectedError)
    limiter.release()


def test_clean_windows_at_the_limit_grow_it_and_a_timeout_cuts_it(seen: list[Any]) -> None:
    clock = FakeClock()
    limiter = aimd(clock, initial_limit=1)

    def work() -> None:
        clock.advance(1.0)

    limiter.call(work)
    assert limiter.limit == 2
    assert limiter.reason == "increase"

    def slow() -> None:
        clock.advance(1.0)
        raise OperationTimeout("too slow")

    with pytest.raises(OperationTimeout):
        limiter.call(slow)
    assert limiter.limit == 1
    assert limiter.reason == "drop"
    changes = [(e.old, e.new, e.reason) for e in seen if isinstance(e, events.LimitChanged)]
    assert changes == [(1, 2, "increase"), (2, 1, "drop")]
    assert all(e.policy == "adaptive" and e.name == "db" for e in seen)


def test_a_rejection_from_inside_is_a_drop_and_other_errors_are_not_measured() -> None:
    clock = FakeClock()
    limiter = aimd(clock, initial_limit=10)

    def refused() -> None:
        clock.advance(1.0)
        raise CircuitOpenError("open", name="erp")

    def broken() -> None:
        clock.advance(1.0)
        raise ValueError("bad input")

    with pytest.raises(CircuitOpenError):
        limiter.call(refused)
    assert limiter.limit == 9
    for _ in range(5):
        with pytest.raises(ValueError, match="bad input"):
            limiter.call(broken)
    assert limiter.limit == 9
    assert limiter.active == 0


def test_drops_can_be_chosen() -> None:
    clock = FakeClock()
    limiter = aimd(clock, initial_limit=10, drops=(ConnectionError,))

    def reset() -> None:
        clock.advance(1.0)
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        limiter.call(reset)
    assert limiter.limit == 9


def test_scale_down_holds_a_share_until_restore(seen: list[Any]) -> None:
    clock = FakeClock()
    limiter = aimd(clock, initial_limit=20, min_limit=3)
    limiter.scale_down(0.5)
    assert limiter.limit == 10
    limiter.scale_down(0.5)
    assert limiter.limit == 5
    limiter.scale_down(0.1)
    assert limiter.limit == 3  # never under min_limit
    assert limiter.scale == pytest.approx(0.025)
    limiter.restore()
    assert limiter.limit == 20
    reasons = [e.reason for e in seen if isinstance(e, events.LimitChanged)]
    assert reasons == ["scaled_down", "scaled_down", "scaled_down", "restored"]


def test_the_algorithm_keeps_learning_under_a_scale_down() -> None:
    clock = FakeClock()
    limiter = aimd(clock, initial_limit=10)
    limiter.scale_down(0.5)
    assert limiter.limit == 5

    def slow() -> None:
        clock.advance(1.0)
        raise TimeoutError

    with pytest.raises(TimeoutError):
        limiter.call(slow)
    assert limiter.algorithm.limit == 9
    assert limiter.limit == 4
    limiter.restore()
    assert limiter.limit == 9


def test_set_limit_takes_an_integer_within_the_bounds_as_a_bulkhead_does() -> None:
    limiter = aimd(FakeClock(), initial_limit=10, min_limit=2, max_limit=100)
    for value in (1.5, True, "5"):
        with pytest.raises(TypeError, match=f"max_concurrent must be an integer, got {value!r}"):
            limiter.set_limit(value)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="max_concurrent must be an integer"):
            Bulkhead(5).set_limit(value)  # type: ignore[arg-type]
    for value in (5000, 1):
        with pytest.raises(ValueError, match=f"from min_limit 2 to max_limit 100 .*got {value}"):
            limiter.set_limit(value)
    assert limiter.limit == 10
    limiter.set_limit(100)
    assert limiter.limit == 100


def test_lowering_the_limit_never_interrupts_running_calls() -> None:
    limiter = aimd(FakeClock(), initial_limit=3)
    for _ in range(3):
        limiter.acquire()
    limiter.set_limit(1)
    assert limiter.active == 3
    with pytest.raises(BulkheadFull):
        limiter.acquire()
    for _ in range(3):
        limiter.release()
    assert limiter.active == 0
    limiter.call(lambda: None)
    assert limiter.limit == 1


def test_threads_never_over_admit_while_the_limit_moves() -> None:
    limiter = AdaptiveConcurrency("aimd", initial_limit=3, max_limit=6, max_wait=30, min_samples=1)
    lock = threading.Lock()
    inside = 0
    over: list[tuple[int, int]] = []

    def work() -> None:
        nonlocal inside
        with lock:
            inside += 1
            if inside > limiter.limit:
                over.append((inside, limiter.limit))
        threading.Event().wait(0.001)
        with lock:
            inside -= 1

    def worker() -> None:
        for _ in range(20):
            limiter.call(work)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # A limit only ever grows here (no drops), so nobody can be inside above it.
    assert over == []
    assert limiter.active == 0
    assert limiter.waiting == 0


def test_tasks_and_async_with_are_measured_per_task() -> None:
    clock = FakeClock()
    limiter = aimd(clock, initial_limit=4, max_wait=30)

    async def one() -> None:
        async with limiter:
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(20)))

    asyncio.run(main())
    assert limiter.active == 0


def test_every_form_of_use_reports_its_calls() -> None:
    """Drops close a window at once, so each form's report shows as one cut."""
    clock = FakeClock()
    limiter = aimd(clock, initial_limit=10)

    def timeout() -> None:
        clock.advance(1.0)
        raise TimeoutError

    async def atimeout() -> None:
        clock.advance(1.0)
        raise TimeoutError

    def via_with() -> None:
        with limiter:
            timeout()

    async def via_async_with() -> None:
        async with limiter:
            await atimeout()

    with pytest.raises(TimeoutError):
        limiter(timeout)()
    assert limiter.limit == 9
    with pytest.raises(TimeoutError):
        via_with()
    assert limiter.limit == 8
    with pytest.raises(TimeoutError):
        asyncio.run(limiter(atimeout)())
    assert limiter.limit == 7
    with pytest.raises(TimeoutError):
        asyncio.run(via_async_with())
    assert limiter.limit == 6
    with pytest.raises(TimeoutError):
        asyncio.run(limiter.acall(atimeout))
    assert limiter.limit == 5
    with pytest.raises(TimeoutError):
        limiter.call(timeout)
    assert limiter.limit == 4
    assert limiter.active == 0

    @limiter
    def fine() -> str:
        return "done"

    assert fine() == "done"
    assert fine.__name__ == "fine"


def test_the_limit_is_published_as_a_reading() -> None:
    limiter = AdaptiveConcurrency(initial_limit=7, name="reading-test")
    assert ("reading-test", 7.0) in events.readings("adaptive_limit")
    del limiter
    gc.collect()
    assert ("reading-test", 7.0) not in events.readings("adaptive_limit")


def test_an_algorithm_instance_is_used_as_given() -> None:
    machine = Gradient2(initial_limit=5, min_limit=2, max_limit=9)
    limiter = AdaptiveConcurrency(machine)
    assert limiter.algorithm is machine
    assert limiter.limit == 5
    assert adaptive_concurrency(AIMD(initial_limit=3)).limit == 3


def test_the_default_initial_limit_is_pulled_into_the_bounds() -> None:
    assert AdaptiveConcurrency(max_limit=8).limit == 8
    assert AdaptiveConcurrency(min_limit=30).limit == 30


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: AdaptiveConcurrency("vegas"), ValueError, "algorithm must be one of"),
        (
            lambda: AdaptiveConcurrency(AIMD(), max_limit=5),
            TypeError,
            "max_limit cannot be given with an algorithm instance",
        ),
        (
            lambda: AdaptiveConcurrency("aimd", min_gradient=0.5),
            TypeError,
            "aimd does not take 'min_gradient'",
        ),
        (lambda: AdaptiveConcurrency(tolerance=None), ValueError, "tolerance must be a number"),
        (lambda: AdaptiveConcurrency(min_limit=0), ValueError, "min_limit must be >= 1"),
        (lambda: AdaptiveConcurrency(drops=ValueError), TypeError, "drops must be a tuple"),
        (lambda: AdaptiveConcurrency(max_wait=-1), ValueError, "max_wait must be >= 0"),
        (lambda: AdaptiveConcurrency().scale_down(0), ValueError, "factor must be > 0"),
        (lambda: AdaptiveConcurrency().scale_down(2), ValueError, "factor must be <= 1"),
    ],
)
def test_bad_settings_are_refused_by_name(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_prometheus_exports_the_limit_as_a_gauge() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from buttress.instrumentation.prometheus import enable_prometheus

    registry = prometheus_client.CollectorRegistry()
    metrics = enable_prometheus(registry, namespace="adaptive_test")
    limiter = AdaptiveConcurrency(initial_limit=12, name="orders")
    try:
        value = registry.get_sample_value("adaptive_test_adaptive_limit", {"name": "orders"})
        assert value == 12.0
        limiter.scale_down(0.5)
        value = registry.get_sample_value("adaptive_test_adaptive_limit", {"name": "orders"})
        assert value == 6.0
        reason = registry.get_sample_value(
            "adaptive_test_adaptive_limit_reason", {"name": "orders", "reason": "scaled_down"}
        )
        assert reason == 1.0
    finally:
        metrics.disable()


def test_cuts_are_logged_at_info_without_debug_logging(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = aimd(clock, initial_limit=1)
    caplog.set_level(logging.INFO, logger="buttress.adaptive")

    def work() -> None:
        clock.advance(1.0)

    def timeout() -> None:
        clock.advance(1.0)
        raise TimeoutError

    limiter.call(work)  # growth: DEBUG, not shown
    with pytest.raises(TimeoutError):
        limiter.call(timeout)
    messages = [r.getMessage() for r in caplog.records if r.name == "buttress.adaptive"]
    assert messages == ["adaptive 'db': limit 2 -> 1 (drop)"]
