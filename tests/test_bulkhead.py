"""Bulkhead: never over-admits, FIFO waiting, refusal, run-time limit changes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from buttress import Bulkhead, BulkheadFull, RejectedError


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
