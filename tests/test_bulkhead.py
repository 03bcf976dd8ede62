"""Bulkhead: never over-admits, FIFO waiting, refusal, run-time limit changes; refusals under
overload logged once per interval, every one seen by hooks, no event built that nobody reads."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

import pytest

from buttress import Bulkhead, BulkheadFull, RejectedError, events
from buttress.policies.adaptive import AdaptiveConcurrency
from buttress.testing import FakeClock
from conftest import make


class Gauge:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1


def test_threads_never_over_admit() -> None:
    bulkhead = Bulkhead(max_concurrent=3, max_wait=5)
    gauge = Gauge()
    barrier = threading.Barrier(50)

    def work() -> None:
        gauge.enter()
        threading.Event().wait(0.002)
        gauge.leave()

    def worker() -> None:
        barrier.wait()
        for _ in range(5):
            bulkhead.call(work)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert gauge.peak == 3
    assert bulkhead.active == 0
    assert bulkhead.waiting == 0


def test_tasks_never_over_admit() -> None:
    bulkhead = Bulkhead(max_concurrent=4, max_wait=5)
    gauge = Gauge()

    async def work() -> None:
        gauge.enter()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gauge.leave()

    async def main() -> None:
        await asyncio.gather(*(bulkhead.acall(work) for _ in range(200)))

    asyncio.run(main())
    assert gauge.peak == 4
    assert bulkhead.active == 0


def test_full_bulkhead_refuses_at_once() -> None:
    bulkhead = Bulkhead(max_concurrent=1, name="db")
    with bulkhead:
        with pytest.raises(BulkheadFull) as info:
            bulkhead.call(lambda: None)
        assert isinstance(info.value, RejectedError)
        assert info.value.name == "db"
    assert bulkhead.call(lambda: 5) == 5


def test_waiters_are_served_first_come_first_served() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_wait=5)
    order: list[int] = []

    async def main() -> None:
        await bulkhead.aacquire()

        async def waiter(i: int) -> None:
            async with bulkhead:
                order.append(i)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(waiter(i)))
            await asyncio.sleep(0)
        assert bulkhead.waiting == 5
        bulkhead.release()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == [0, 1, 2, 3, 4]


def test_wait_times_out() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_wait=0.05)
    bulkhead.acquire()
    with pytest.raises(BulkheadFull):
        bulkhead.acquire()

    async def main() -> None:
        with pytest.raises(BulkheadFull):
            await bulkhead.aacquire()

    asyncio.run(main())
    assert bulkhead.waiting == 0
    bulkhead.release()


def _interrupted_while_waiting(bulkhead: Bulkhead) -> None:
    """Take a slot in this thread, and be interrupted (``KeyboardInterrupt``) while waiting."""
    main = threading.get_ident()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def poke() -> None:
        for _ in range(10_000):
            if bulkhead.waiting:
                break
            threading.Event().wait(0.001)
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    poker = threading.Thread(target=poke)
    poker.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            bulkhead.acquire()
    finally:
        poker.join(10)
        signal.signal(signal.SIGUSR1, previous)


async def _cancelled_while_waiting(bulkhead: Bulkhead) -> None:
    waiter = asyncio.create_task(bulkhead.aacquire())
    for _ in range(100):
        if bulkhead.waiting:
            break
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
@pytest.mark.parametrize("kind", ["bulkhead", "adaptive"])
def test_a_waiter_interrupted_or_cancelled_gives_its_place_up(mode: str, kind: str) -> None:
    bulkhead = (
        Bulkhead(max_concurrent=1, max_wait=60)
        if kind == "bulkhead"
        else AdaptiveConcurrency(initial_limit=1, max_wait=60)
    )
    bulkhead.acquire()
    if mode == "sync":
        _interrupted_while_waiting(bulkhead)
    else:
        asyncio.run(_cancelled_while_waiting(bulkhead))
    assert bulkhead.waiting == 0
    bulkhead.release()  # the slot is not handed to the waiter that left
    assert bulkhead.active == 0
    bulkhead.call(lambda: None)  # and the next call is admitted at once


def test_limit_changes_at_run_time() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_wait=5)
    bulkhead.acquire()
    admitted = threading.Event()

    def waiter() -> None:
        bulkhead.acquire()
        admitted.set()

    t = threading.Thread(target=waiter)
    t.start()
    for _ in range(500):
        if bulkhead.waiting:
            break
        threading.Event().wait(0.001)
    bulkhead.set_limit(2)
    assert admitted.wait(5)
    t.join(5)
    assert bulkhead.active == 2
    bulkhead.set_limit(1)  # shrinking does not interrupt anyone
    assert bulkhead.active == 2
    bulkhead.release()
    with pytest.raises(BulkheadFull):
        Bulkhead.acquire(Bulkhead(max_concurrent=1)) or bulkhead.acquire()
    bulkhead.release()
    assert bulkhead.active == 0


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"max_concurrent": 0}, "max_concurrent must be >= 1"),
        ({"max_wait": -1}, "max_wait must be >= 0"),
        ({"max_wait": float("nan")}, "NaN"),
    ],
)
def test_invalid_configuration(kwargs: dict[str, float], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        Bulkhead(**kwargs)  # type: ignore[arg-type]


# --- refusals under overload: cheap, logged once per interval, every one seen by hooks ----------


def _full(name: str, **options: float) -> Bulkhead:
    bulkhead = Bulkhead(max_concurrent=1, name=name, **options)  # type: ignore[arg-type]
    bulkhead.acquire()
    return bulkhead


def _refuse(mode: str, bulkhead: Bulkhead, clock: FakeClock, times: int, step: float) -> None:
    """Refuse ``times`` calls through the decorated path, ``step`` virtual seconds apart."""
    guarded = bulkhead(make(mode, lambda: None))

    async def refuse_async() -> None:
        for _ in range(times):
            with pytest.raises(BulkheadFull):
                await guarded()
            clock.advance(step)

    if mode == "async":
        asyncio.run(refuse_async())
        return
    for _ in range(times):
        with pytest.raises(BulkheadFull):
            guarded()
        clock.advance(step)


def _lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "buttress.bulkhead" and r.levelno == level
    ]


def test_refusals_are_logged_once_then_summarised_per_interval(
    mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="buttress")
    bulkhead = _full("db")
    _refuse(mode, bulkhead, clock, 480, 0.125)  # 8 a second for 60 s
    assert _lines(caplog) == [
        "bulkhead 'db' is full (1 call running): call rejected",
        *["80 calls rejected by bulkhead 'db' in the last 10 s"] * 5,
    ]
    assert caplog.records[-1].policy_name == "db"  # type: ignore[attr-defined]
    assert caplog.records[-1].count == 80  # type: ignore[attr-defined]
    clock.advance(600)  # the next refusal reports the ones not yet summarised
    _refuse(mode, bulkhead, clock, 1, 0.0)
    assert _lines(caplog)[-1] == "80 calls rejected by bulkhead 'db' in the last 610 s"
    clock.advance(600)  # nothing since the last line: a first line again
    _refuse(mode, bulkhead, clock, 1, 0.0)
    assert _lines(caplog)[-1] == "bulkhead 'db' is full (1 call running): call rejected"
    assert len(_lines(caplog)) == 8


def test_hooks_see_every_refusal_and_debug_logs_each(
    mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="buttress.bulkhead")
    seen: list[events.Event] = []
    hook = events.add_hook(seen.append)
    try:
        _refuse(mode, _full("db"), clock, 50, 0.5)
    finally:
        events.remove_hook(hook)
    rejected = [e for e in seen if isinstance(e, events.CallRejected)]
    assert len(rejected) == 50
    assert {(e.policy, e.name, e.reason) for e in rejected} == {("bulkhead", "db", "bulkhead_full")}
    assert [e.at for e in rejected] == [i * 0.5 for i in range(50)]
    assert _lines(caplog, logging.DEBUG) == ["bulkhead 'db': rejected (bulkhead_full)"] * 50
    assert len(_lines(caplog)) == 1 + 2  # first line, summaries at 10 s and 20 s


def test_a_refusal_nobody_reads_builds_no_event(
    mode: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="buttress")
    built: list[dict[str, object]] = []

    class CountedRejection(events.CallRejected):
        __slots__ = ()

        def __init__(self, **fields: Any) -> None:
            built.append(fields)
            super().__init__(**fields)

    monkeypatch.setattr(events, "CallRejected", CountedRejection)
    with FakeClock() as clock:
        _refuse(mode, _full("quiet"), clock, 20, 0.0)
        assert built == []  # WARNING logging and no hook: nothing reads a per-call event
        hook = events.add_hook(lambda event: None)
        try:
            _refuse(mode, _full("heard"), clock, 20, 0.0)
        finally:
            events.remove_hook(hook)
    assert len(built) == 20


def test_a_hook_may_use_the_bulkhead_it_hears_from() -> None:
    bulkhead = _full("grows")

    def grow(event: events.Event) -> None:
        if isinstance(event, events.CallRejected) and event.name == "grows":
            bulkhead.set_limit(bulkhead.max_concurrent + 1)

    refused = threading.Event()

    def refuse() -> None:
        with pytest.raises(BulkheadFull):
            bulkhead.acquire()
        refused.set()

    hook = events.add_hook(grow)
    try:
        # Daemon: if the refusal reported under the bulkhead's lock, the hook would deadlock.
        threading.Thread(target=refuse, daemon=True).start()
        assert refused.wait(10), "the hook could not take the bulkhead's lock"
    finally:
        events.remove_hook(hook)
    assert bulkhead.max_concurrent == 2
    bulkhead.acquire()  # the slot the hook added


def test_a_refusal_after_waiting_says_how_long() -> None:
    bulkhead = _full("slow", max_wait=0.01)
    with pytest.raises(BulkheadFull, match=r"bulkhead 'slow' is full \(1 call running\) after"):
        bulkhead.acquire()
    bulkhead.set_limit(3)
    bulkhead.acquire()
    bulkhead.acquire()
    with pytest.raises(BulkheadFull, match=r"\(3 calls running\) after waiting 0.01s"):
        bulkhead.acquire()


def test_name_is_read_only() -> None:
    bulkhead = Bulkhead(name="db")
    assert bulkhead.name == "db"
    assert Bulkhead().name.startswith("bulkhead-")
    with pytest.raises(AttributeError):
        bulkhead.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "error"), [(5, TypeError), ("", ValueError), ("  ", ValueError), (None, None)]
)
def test_a_name_is_a_non_empty_string_or_left_out(name: Any, error: type[Exception] | None) -> None:
    from buttress import AdaptiveConcurrency

    for build in (lambda: Bulkhead(2, name=name), lambda: AdaptiveConcurrency(name=name)):
        if error is None:
            assert build().name  # left out: a generated one
        else:
            with pytest.raises(error, match=f"name must be a non-empty string.*got {name!r}"):
                build()
