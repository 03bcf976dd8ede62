"""The queue on Redis Streams with real (short) leases against a real redis-server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from buttress.queue import RequestQueue, current_request

redis = pytest.importorskip("redis")


@pytest.fixture
def client(redis_port: int) -> Iterator[Any]:
    c = redis.Redis(port=redis_port)
    c.flushdb()
    yield c
    c.close()


def drain(q: RequestQueue, rounds: int = 400) -> None:
    pause = threading.Event()
    for _ in range(rounds):
        q.process()
        if q.stats().depth == 0:
            return
        pause.wait(0.02)  # leases are real here: poll until they run out
    raise AssertionError(f"not drained: {q.stats()}")


def test_dead_consumers_entries_are_claimed_page_by_page(client: Any) -> None:
    a = RequestQueue("jobs", storage=client, visibility_timeout=0.2, batch=40)
    b = RequestQueue("jobs", storage=client, visibility_timeout=0.2, batch=5)
    seen: list[tuple[str, int]] = []

    @b.handler
    def work(x: int) -> None:
        seen.append((current_request().key, current_request().attempt))

    a.handler(work)
    keys = {a.put("work", [i]).key for i in range(40)}
    held = a._claim()  # a dies holding all 40: no heartbeat, no acknowledgement
    assert len(held) == 40
    for item in held:
        a._heartbeat.release(item.id)
    assert b.process() == 0  # their leases hold
    drain(b)  # then XAUTOCLAIM pages through them, five at a time
    assert {k for k, _ in seen} == keys
    assert len(seen) == 40
    assert {attempt for _, attempt in seen} == {2}
    a.close()
    b.close()


def test_poison_goes_to_dead_letters(client: Any) -> None:
    q = RequestQueue(
        "jobs", storage=client, visibility_timeout=0.2, retry_delay=0.05, max_attempts=3
    )
    done: list[int] = []

    @q.handler
    def work(x: int) -> None:
        if x == 2:
            raise ValueError(f"bad {current_request().attempt}")
        done.append(x)

    for i in range(5):
        q.put("work", [i])
    drain(q)
    assert sorted(done) == [0, 1, 3, 4]
    (dead,) = q.dead_letters()
    assert (dead.attempts, dead.first_error, dead.last_error) == (
        3,
        "ValueError: bad 1",
        "ValueError: bad 3",
    )
    assert q.requeue_dead() == 1
    assert q.stats().depth == 1
    q.close()


def test_url_and_errors(client: Any, redis_port: int) -> None:
    with RequestQueue("jobs", storage=f"redis://127.0.0.1:{redis_port}/0") as q:
        assert q.store.url == f"redis://127.0.0.1:{redis_port}/0"
        assert q.stats().depth == 0
