"""The request queue's contract, on every store: the same tests on memory and SQLite."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buttress import events
from buttress.errors import RejectedError, StorageError, StorageUnavailable
from buttress.machines.breaker import CircuitState
from buttress.queue import (
    MemoryQueueStore,
    QueueFull,
    QueueStore,
    RequestQueue,
    UnknownHandler,
    current_request,
    idempotency_key,
)
from buttress.queue.sqlite import SQLiteQueueStore
from buttress.queue.store import Item
from buttress.testing import FakeClock

MakeQueue = Callable[..., RequestQueue]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueStore]:
    made: QueueStore
    if request.param == "memory":
        made = MemoryQueueStore()
    elif request.param == "sqlite":
        made = SQLiteQueueStore(tmp_path / "q.db")
    else:
        import redis

        from buttress.queue.redis import RedisQueueStore

        client = redis.Redis(port=request.getfixturevalue("redis_port"))
        client.flushdb()
        made = RedisQueueStore(client)
    yield made
    made.close()


@pytest.fixture
def virtual_leases(store: QueueStore) -> None:
    """Tests whose leases follow the test clock: Redis measures leases itself."""
    if type(store).__name__ == "RedisQueueStore":
        pytest.skip("Redis measures leases by its own clock")


@pytest.fixture
def make(store: QueueStore, clock: FakeClock) -> Iterator[MakeQueue]:
    queues: list[RequestQueue] = []

    def build(**options: Any) -> RequestQueue:
        options.setdefault("clock", clock)
        q = RequestQueue("jobs", storage=store, **options)
        queues.append(q)
        return q

    yield build
    for q in queues:
        q.close()


def with_log(q: RequestQueue, log: list[tuple[str, Any, int]], name: str = "work") -> None:
    @q.handler(name)
    def work(x: Any) -> None:
        log.append((current_request().key, x, current_request().attempt))


def test_refuses_unknown_handler_and_non_json(make: MakeQueue) -> None:
    q = make()
    with_log(q, [])
    with pytest.raises(UnknownHandler, match=r"no handler named 'nope'.*registered: work"):
        q.put("nope", [1])
    with pytest.raises(TypeError, match="must be JSON"):
        q.put("work", [object()])
    with pytest.raises(TypeError, match="must be JSON"):
        q.put("work", [float("nan")])
    circular: list[Any] = [1]
    circular.append(circular)
    with pytest.raises(TypeError, match="must be JSON: they are circular or nested too deeply"):
        q.put("work", circular)
    with pytest.raises(TypeError, match="must be JSON: they are circular or nested too deeply"):
        q.put("work", [circular], {"a": 1})
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        q.put("work", [1], key="")
    # JSON would turn these keys into strings: the handler would get another dict
    for args, kwargs, key in (
        ([{1: "a"}], None, "1"),
        ([["x", {"ok": {None: 0}}]], None, "None"),
        (["z"], {"n": {2.5: 1}}, "2.5"),
        (["z"], {1: 2}, "1"),
    ):
        with pytest.raises(TypeError, match=f"must be JSON.*dict key {key} is not a string"):
            q.put("work", args, kwargs)
    assert q.put("work", [{"{": "}", "a": [{"b": 1}]}], {"k": {"v": [1]}}).added  # str keys
    assert q.stats().depth == 1


def test_full_queue_is_a_rejection(make: MakeQueue) -> None:
    q = make(max_depth=2)
    with_log(q, [])
    q.put("work", [1])
    q.put("work", [2])
    with pytest.raises(QueueFull, match="full \\(2 requests\\)") as caught:
        q.put("work", [3])
    assert isinstance(caught.value, RejectedError)
    assert q.stats().depth == 2


def test_keys_derived_and_deduplicated(make: MakeQueue) -> None:
    q = make()
    log: list[tuple[str, Any, int]] = []
    with_log(q, log)
    first = q.put("work", kwargs={"b": 1, "a": [1, 2]})
    assert first.key == idempotency_key("work", a=[1, 2], b=1)
    again = q.put("work", kwargs={"a": [1, 2], "b": 1})
    assert (again.id, again.added) == (first.id, False)
    assert q.process() == 1
    assert q.put("work", kwargs={"a": [1, 2], "b": 1}).added is False  # done already
    assert q.put("work", kwargs={"a": [1, 2], "b": 1}, key="other").added is True


def test_derived_keys_stay_what_stored_requests_were_queued_under() -> None:
    # the sha256 of the handler and the canonical JSON {"args":[...],"kwargs":{...}} (sorted
    # keys, no spaces, UTF-8): queues and done keys on disk hold keys made this way
    assert idempotency_key("work", "é", 1.5, b=None, a=[1, 2]) == "a965f6038c564349d724d064583b20b0"
    assert idempotency_key("work") == "4fd0ad438fd226c5a93d68ec4c682af3"
    # put derives the same keys, whichever way its arguments come (a list of them is encoded on
    # a path of its own)
    with RequestQueue("keys", storage="memory://") as q:
        q.handler("work")(print)
        args: list[Any] = ["é", 1.5, {"b": None, "a": [1, 2]}, "{not a dict}"]
        key = idempotency_key("work", *args)
        assert key == "4197e8f2f53e3b04decaaaadd34ebba4"
        assert q.put("work", args).key == key
        assert q.put("work", tuple(args), {}, key=None).key == key
        assert q.put("work", [], {"a": 1}).key == idempotency_key("work", a=1)
        assert q.put("work").key == "4fd0ad438fd226c5a93d68ec4c682af3"
        assert q.put("work", []).key == "4fd0ad438fd226c5a93d68ec4c682af3"


def test_handles_in_order_and_passes_the_key(make: MakeQueue) -> None:
    q = make()
    log: list[tuple[str, Any, int]] = []
    with_log(q, log)
    keys = [q.put("work", [i]).key for i in range(40)]
    assert q.process() == 40
    assert [x for _, x, _ in log] == list(range(40))
    assert [k for k, _, _ in log] == keys
    assert q.stats().depth == 0


@pytest.mark.usefixtures("virtual_leases")
def test_lease_expiry_redelivers_to_another_consumer(make: MakeQueue, clock: FakeClock) -> None:
    a, b = make(visibility_timeout=10), make(visibility_timeout=10)
    log: list[tuple[str, Any, int]] = []
    with_log(b, log)
    item = a.put("work", ["x"]) if with_log(a, []) is None else None
    assert item is not None
    held = a._claim()  # a's worker dies holding it: no ack, no heartbeat
    a._heartbeat.release(held[0].id)
    assert b.process() == 0  # the lease holds
    clock.advance(9.9)
    assert b.process() == 0
    clock.advance(0.2)
    assert b.process() == 1
    assert log == [(item.key, "x", 2)]


@pytest.mark.usefixtures("virtual_leases")
def test_a_request_handled_after_its_item_was_buried_elsewhere_stays_done(
    make: MakeQueue, clock: FakeClock
) -> None:
    # a's handler outlives its lease (no heartbeat); b takes the item, fails its last attempt
    # and buries it; a's handler then succeeds: its acknowledgement finds no item, yet the
    # request ran, so its key is done and the dead letter it left is never run again
    a, b = make(visibility_timeout=10, max_attempts=2), make(visibility_timeout=10, max_attempts=2)
    runs: list[str] = []

    @b.handler("work")
    def fails(x: str) -> None:
        runs.append("b")
        raise RuntimeError("down")

    @a.handler("work")
    def slow(x: str) -> None:
        runs.append("a")
        a._heartbeat.stop()
        clock.advance(10.1)
        assert b.process() == 1  # delivered to b, failed on its last attempt: buried
        assert b.stats().dead == 1

    item = a.put("work", ["x"])
    assert a.process() == 1
    assert a.store.is_done(a.name, item.key, clock.wall())
    assert b.requeue_dead() == 1
    assert b.process() == 0
    assert runs == ["a", "b"]


@pytest.mark.usefixtures("virtual_leases")
def test_heartbeat_keeps_a_handler_of_ten_leases_leased(make: MakeQueue, clock: FakeClock) -> None:
    # The test clock drives the lease: the first consumer's handler runs for ten visibility
    # timeouts, beating a third of one apart, while the second polls at every step.
    a, b = make(visibility_timeout=10), make(visibility_timeout=10)
    taken: list[int] = []
    polls = 0

    @b.handler("work")
    def other(x: int) -> None:
        taken.append(x)

    @a.handler("work")
    def slow(x: int) -> None:
        nonlocal polls
        if x == 1:  # heartbeats go on: 30 beats over 100 s
            for _ in range(30):
                clock.advance(10 / 3)
                a._heartbeat.beat()
                polls += 1
                assert b.process() == 0, "redelivered while its handler ran and beat"
        else:  # the heartbeat stops (its thread died): the lease runs out, the other takes it
            a._heartbeat.stop()
            clock.advance(9.9)
            assert b.process() == 0
            clock.advance(0.2)
            assert b.process() == 1

    a.put("work", [1])
    assert a.process() == 1
    assert (polls, taken) == (30, [])
    assert a.stats().depth == 0
    a.put("work", [2])
    assert a.process() == 1
    assert taken == [2]
    assert a.stats().depth == 0


def test_heartbeat_keeps_a_long_handler_leased_on_redis(store: QueueStore) -> None:
    # Redis measures leases by its own clock: real time, a 0.3 s lease (renewed every 0.1 s, so
    # a stall of the machine shorter than 0.2 s cannot end it) and a handler that works for ten
    # of them while a peer polls (memory and SQLite: the test above, on the test clock)
    if "redis" not in store.url:
        pytest.skip("the test clock drives this on memory and SQLite")
    a = RequestQueue("jobs", storage=store, visibility_timeout=0.3)
    b = RequestQueue("jobs", storage=store, visibility_timeout=0.3)
    stolen: list[int] = []
    polls = 0

    @b.handler("work")
    def taken(x: int) -> None:
        stolen.append(x)

    @a.handler("work")
    def slow(x: int) -> None:
        nonlocal polls
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            polls += 1
            assert b.process() == 0
            threading.Event().wait(0.01)  # the handler's work, not a wait for state

    a.put("work", [1])
    assert a.process() == 1
    assert stolen == []
    assert polls > 10
    assert a.stats().depth == 0
    a.close()
    b.close()


def test_poison_goes_to_dead_letters_while_the_rest_flows(
    make: MakeQueue, clock: FakeClock
) -> None:
    q = make(retry_delay=1, max_attempts=5)
    done: list[int] = []

    @q.handler
    def work(x: int) -> None:
        if x == 3:
            raise ValueError(f"bad {x} on attempt {current_request().attempt}")
        done.append(x)

    for i in range(6):
        q.put("work", [i])
    assert q.process() == 6
    assert (sorted(done), q.stats().delayed) == ([0, 1, 2, 4, 5], 1)  # the rest went by
    for i in range(6, 9):  # and what comes while the poison waits for its retry goes by too
        q.put("work", [i])
    assert q.process() == 3
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7, 8]
    rounds = 0
    while q.stats().depth and rounds < 20:
        q.process()
        clock.advance(100)
        rounds += 1
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7, 8]
    (dead,) = q.dead_letters()
    assert dead.attempts == 5
    assert dead.first_error == "ValueError: bad 3 on attempt 1"
    assert dead.last_error == "ValueError: bad 3 on attempt 5"
    assert dead.first_error_at is not None
    assert dead.last_error_at is not None
    assert dead.first_error_at < dead.last_error_at
    assert q.stats().dead == 1
    assert q.counts["dead"] == 1
    assert q.counts["retried"] == 4


def test_the_backlog_is_the_depth_and_dead_letters_of_the_stats(
    make: MakeQueue, clock: FakeClock
) -> None:
    q = make(retry_delay=5, max_attempts=1)

    @q.handler
    def work(x: int) -> None:
        if x < 2:
            raise ValueError("dead")  # one attempt: a dead letter

    for i in range(6):
        q.put("work", [i])
    assert q.backlog() == (6, 0)
    assert q.process(limit=4) == 4  # 0 and 1 dead, 2 and 3 done
    q.put("work", [9], delay=30)  # delayed
    stats = q.stats()
    assert (stats.depth, stats.dead, stats.done) == (3, 2, 2)
    assert q.backlog() == (3, 2)  # the done keys are not part of it


def test_retries_back_off(make: MakeQueue, clock: FakeClock) -> None:
    q = make(retry_delay=2)
    calls: list[int] = []

    @q.handler
    def flaky() -> None:
        calls.append(current_request().attempt)
        if len(calls) < 3:
            raise ConnectionError("down")

    q.put("flaky")
    assert q.process() == 1
    assert q.stats().delayed == 1
    clock.advance(1.9)
    assert q.process() == 0
    clock.advance(0.2)
    assert q.process() == 1  # second attempt fails: now 4 s
    clock.advance(3.9)
    assert q.process() == 0
    clock.advance(0.2)
    assert q.process() == 1
    assert calls == [1, 2, 3]
    assert q.stats().depth == 0


@pytest.mark.usefixtures("virtual_leases")
def test_a_worker_dying_every_time_ends_in_dead_letters(make: MakeQueue, clock: FakeClock) -> None:
    q = make(visibility_timeout=5, max_attempts=3)
    with_log(q, [])
    q.put("work", [1])
    for _ in range(3):
        held = q._claim()
        assert len(held) == 1
        q._heartbeat.release(held[0].id)
        clock.advance(6)
    assert q._claim() == []
    (dead,) = q.dead_letters()
    assert dead.attempts == 3
    assert dead.last_error is not None
    assert "lease ran out" in dead.last_error


@pytest.mark.usefixtures("virtual_leases")
def test_a_batch_whose_worker_died_comes_back_one_item_per_claim(
    make: MakeQueue, clock: FakeClock
) -> None:
    q = make(visibility_timeout=5, max_attempts=3, batch=4)
    with_log(q, [])
    for i in range(6):
        q.put("work", [i])
    held = q._claim()  # a worker dies holding a batch of four, again and again
    assert [item.attempts for item in held] == [1, 1, 1, 1]
    q._heartbeat.release_all([item.id for item in held])
    for attempt in (2, 3):
        clock.advance(6)
        (alone,) = q._claim()  # the first of them, alone: perhaps it is what kills the worker
        assert (alone.id, alone.attempts) == (held[0].id, attempt)
        q._heartbeat.release(alone.id)
    clock.advance(6)
    rest = [q._claim() for _ in range(4)]  # the first is buried; its batch-mates one by one
    assert [[item.id for item in got] for got in rest] == [[item.id] for item in held[1:]] + [
        [held[-1].id + 1, held[-1].id + 2]
    ]
    assert [item.attempts for got in rest[:3] for item in got] == [2, 2, 2]
    (dead,) = q.dead_letters()
    assert dead.id == held[0].id


def test_expired_items_are_dropped_and_counted(make: MakeQueue, clock: FakeClock) -> None:
    q = make(ttl=60)
    log: list[tuple[str, Any, int]] = []
    with_log(q, log)
    q.put("work", [1])
    q.put("work", [2], ttl=600)
    clock.advance(61)
    assert q.process() == 1
    assert [x for _, x, _ in log] == [2]
    assert q.stats().expired == 1
    assert q.counts["expired"] == 1


def test_fifo_per_resource_one_at_a_time(make: MakeQueue, clock: FakeClock) -> None:
    q = make(retry_delay=10)
    order: list[str] = []
    fail_once = {"a1"}

    @q.handler
    def work(tag: str) -> None:
        if tag in fail_once:
            fail_once.discard(tag)
            raise ConnectionError(tag)
        order.append(tag)

    for tag in ("a1", "b1", "a2", "x", "b2", "a3"):
        q.put("work", [tag], resource=None if tag == "x" else tag[0])
    held = q._claim()
    assert [i.args for i in held] == [
        '{"args":["a1"],"kwargs":{}}',
        '{"args":["b1"],"kwargs":{}}',
        '{"args":["x"],"kwargs":{}}',
    ]
    for item in held:
        q._run_sync(item)
    q.process()
    assert order == ["b1", "x", "b2"]  # a1 backs off and holds a2, a3 back
    clock.advance(11)
    q.process()
    assert order == ["b1", "x", "b2", "a1", "a2", "a3"]


def one_dead_letter(make: MakeQueue) -> tuple[RequestQueue, list[int]]:
    """A queue whose request under key "k" failed once and went to the dead letters; the runs."""
    q = make(max_attempts=1)
    runs: list[int] = []

    @q.handler
    def work(x: int) -> None:
        runs.append(x)
        if len(runs) == 1:
            raise RuntimeError("down")

    q.put("work", [1], key="k")
    q.process()
    assert q.stats().dead == 1
    return q, runs


def test_done_key_is_acknowledged_without_running(make: MakeQueue) -> None:
    q, runs = one_dead_letter(make)
    q.put("work", [1], key="k")  # queued again by its producer and handled
    assert q.process() == 1
    assert q.requeue_dead() == 1  # the dead letter's key is done already
    assert q.process() == 0
    assert runs == [1, 1]
    # dropped at its requeue by every store: nothing is claimed to be skipped
    assert q.counts["skipped"] == 0
    assert q.stats().depth == 0


def test_a_dead_letter_requeued_while_its_request_is_queued_again_runs_once(
    make: MakeQueue,
) -> None:
    q, runs = one_dead_letter(make)
    assert q.put("work", [1], key="k").added  # queued again by its producer, not yet handled
    q.requeue_dead()
    assert q.stats().dead == 0
    assert q.stats().depth == 1  # one request under one key
    assert q.process() == 1
    assert runs == [1, 1]


def test_dead_letters_requeue_and_purge(make: MakeQueue, clock: FakeClock) -> None:
    q = make(max_attempts=1)
    healthy = False

    @q.handler
    def work(x: int) -> None:
        if not healthy:
            raise RuntimeError("down")

    for i in range(3):
        q.put("work", [i])
    q.process()
    assert [d.attempts for d in q.dead_letters()] == [1, 1, 1]
    ids = [d.id for d in q.dead_letters()]
    assert q.purge_dead([ids[0]]) == 1
    healthy = True
    assert q.requeue_dead() == 2
    assert q.stats().dead == 0
    assert q.process() == 2
    assert q.stats().depth == 0


def test_requeued_dead_letters_go_behind_what_is_queued_in_the_order_they_died(
    make: MakeQueue,
) -> None:
    q = make(max_attempts=1)
    order: list[str] = []
    healthy = False

    @q.handler
    def work(x: str) -> None:
        if not healthy:
            raise RuntimeError("down")
        order.append(x)

    q.put("work", ["d1"])
    q.put("work", ["d2"])
    q.process()
    assert q.stats().dead == 2
    healthy = True
    q.put("work", ["new"])
    assert q.requeue_dead() == 2
    assert [item.id for item in q.items()] == sorted(item.id for item in q.items())
    assert q.process() == 3
    assert order == ["new", "d1", "d2"]


def test_replay_when_breaker_closes_is_paced(make: MakeQueue, clock: FakeClock) -> None:
    q = make(retry_delay=100, replay_rate=10)
    down = True
    handled: list[int] = []

    @q.handler
    def work(x: int) -> None:
        if down:
            raise ConnectionError("down")
        handled.append(x)

    for i in range(5):
        q.put("work", [i])
    q.process()
    assert q.stats().delayed == 5
    remove = q.replay_when(breaker="payments", background=False)
    down = False
    events.emit(
        events.CircuitStateChanged(
            policy="circuit_breaker",
            name="other",
            at=0,
            old=CircuitState.OPEN,
            new=CircuitState.CLOSED,
        )
    )
    assert handled == []
    events.emit(
        events.CircuitStateChanged(
            policy="circuit_breaker",
            name="payments",
            at=0,
            old=CircuitState.HALF_OPEN,
            new=CircuitState.CLOSED,
        )
    )
    assert handled == [0, 1, 2, 3, 4]
    assert sum(clock.sleeps) == pytest.approx(0.4)  # 10 per second: 4 waits of 0.1 s
    remove()


def test_replay_when_resource_healthy(make: MakeQueue) -> None:
    q = make(retry_delay=100)
    log: list[tuple[str, Any, int]] = []
    with_log(q, log)
    q.put("work", [1], delay=50)
    with pytest.raises(ValueError, match="needs a breaker, a resource or a service"):
        q.replay_when()
    q.replay_when(resource="database:orders", background=False)
    events.emit(
        events.ResourceStatusChanged(
            policy="resources",
            name="m",
            at=0,
            resource="database:orders",
            old="critical",
            new="healthy",
        )
    )
    assert [x for _, x, _ in log] == [1]


@pytest.mark.usefixtures("virtual_leases")
def test_replay_starts_at_the_first_healthy_check_and_keeps_its_pace(
    make: MakeQueue, clock: FakeClock
) -> None:
    from buttress.health.manager import ResourceManager
    from buttress.health.types import ResourceType

    q = make(retry_delay=1000, replay_rate=5)
    up = False
    handled: list[tuple[int, float]] = []

    def check() -> bool:
        if not up:
            raise ConnectionError("orders database down")
        return True

    @q.handler
    def work(x: int) -> None:
        if not up:
            raise ConnectionError("down")
        handled.append((x, clock.now()))

    manager = ResourceManager("queue", check_interval=10, fail_threshold=1, success_threshold=1)
    manager.register(ResourceType.DATABASE, "orders", check)
    q.replay_when(resource="database:orders", background=False)
    asyncio.run(manager.check_now())  # down: unavailable
    for i in range(6):
        q.put("work", [i])
    assert q.process() == 6
    assert q.stats().delayed == 6  # waiting 1000 s for their retry
    clock.advance(10)
    asyncio.run(manager.check_now())  # still down: no replay
    assert handled == []
    up = True
    clock.advance(10)
    turned = clock.now()
    asyncio.run(manager.check_now())  # the first check that finds it healthy replays
    assert [x for x, _ in handled] == [0, 1, 2, 3, 4, 5]
    assert handled[0][1] == pytest.approx(turned)
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(handled)]
    assert gaps == pytest.approx([0.2] * 5)  # 5 per second
    assert q.stats().depth == 0


def test_a_request_for_a_handler_this_process_lacks_is_a_failed_delivery(
    make: MakeQueue,
) -> None:
    producer, consumer = make(max_attempts=1), make(max_attempts=1)
    with_log(producer, [])
    producer.put("work", [1])
    assert consumer.process() == 1
    (dead,) = consumer.dead_letters()
    assert dead.last_error is not None
    assert dead.last_error.endswith("UnknownHandler: no handler named 'work' in this process")


def test_async_api(make: MakeQueue) -> None:
    q = make()
    seen: list[tuple[int, str]] = []

    @q.handler
    async def work(x: int) -> None:
        await asyncio.sleep(0)
        seen.append((x, current_request().key))

    @q.handler(with_request=True)
    def plain(request: Any, x: int) -> None:
        seen.append((x, request.key))

    async def main() -> int:
        a = await q.aput("work", [1], key="k1")
        b = await q.aput("plain", [2], key="k2")
        assert a.added
        assert b.added
        return await q.aprocess()

    assert asyncio.run(main()) == 2
    assert seen == [(1, "k1"), (2, "k2")]


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="visibility_timeout must be a positive number"):
        RequestQueue(storage="memory://", visibility_timeout=0)
    with pytest.raises(ValueError, match="max_attempts must be an integer >= 1"):
        RequestQueue(storage="memory://", max_attempts=0)
    with pytest.raises(ValueError, match=r"max_retry_delay \(1\) is below retry_delay \(10\)"):
        RequestQueue(storage="memory://", retry_delay=10, max_retry_delay=1)
    assert RequestQueue(storage="memory://").max_retry_delay == 300
    assert RequestQueue(storage="memory://", retry_delay=3600).max_retry_delay == 3600
    with pytest.raises(ValueError, match="name must be a non-empty string, not only whitespace"):
        RequestQueue(" ", storage="memory://")
    with pytest.raises(TypeError, match="name must be a non-empty string, got 5"):
        RequestQueue(5, storage="memory://")  # type: ignore[arg-type]
    q = RequestQueue(storage="memory://")
    for call in (q.process, q.items, q.dead_letters, q.replay):
        with pytest.raises(ValueError, match="limit must be an integer >= 1, got 'x'"):
            call("x")
    with pytest.raises(ValueError, match="limit must be an integer >= 1, got 0"):
        asyncio.run(q.aprocess(0))
    with pytest.raises(TypeError, match="ids must be a list of item ids or None, got '12'"):
        q.requeue_dead("12")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ids must be integers"):
        q.purge_dead([1, "2"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="a queue is stored in"):
        RequestQueue(storage="ftp://x")
    with pytest.raises(TypeError, match="lacks put"):
        RequestQueue(storage=object())
    with pytest.raises(LookupError, match="only available inside a queue handler"):
        current_request()


def test_corrupt_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        RequestQueue(storage=f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_a_file_locked_by_another_writer_at_open_is_an_outage(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the rollback journal: readers wait too
    try:
        with pytest.raises(StorageUnavailable, match=r"longer than busy_timeout \(0.2 s\)"):
            SQLiteQueueStore(path, busy_timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_the_sqlite_store_puts_an_item_as_the_queue_puts_its_row(tmp_path: Path) -> None:
    # A queue hands the SQLite store a row (put_row); put, the store protocol's step, takes an
    # Item: both store the same fields and refuse the same way.
    store = SQLiteQueueStore(tmp_path / "q.db")
    try:
        item = Item(0, "k1", "work", '{"args":[1],"kwargs":{}}', "db", 100.0, 500.0, 0, 150.0)
        assert store.put("jobs", item, 2, 120.0) == (1, True)
        assert store.put("jobs", item, 2, 120.0) == (1, False)  # queued already
        row = ("k2", "work", '{"args":[2],"kwargs":{}}', None, 130.0, None, 130.0)
        assert store.put_row("jobs", row, 2, 130.0) == (2, True)
        assert store.put_row("jobs", ("k3", *row[1:]), 2, 130.0) == (-1, False)  # full
        got = [store.get("jobs", i) for i in (1, 2)]
        assert [
            (g.key, g.handler, g.args, g.resource, g.enqueued, g.expires, g.visible)
            for g in got
            if g is not None
        ] == [
            ("k1", "work", '{"args":[1],"kwargs":{}}', "db", 100.0, 500.0, 150.0),
            ("k2", "work", '{"args":[2],"kwargs":{}}', None, 130.0, None, 130.0),
        ]
    finally:
        store.close()


def test_a_put_that_cannot_open_its_connection_is_an_outage(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    store = SQLiteQueueStore(folder / "q.db")
    try:
        body = ("work", '{"args":[],"kwargs":{}}', None, 1.0, None, 0, 1.0)
        assert store.put("jobs", Item(0, "k1", *body), None, 1.0) == (1, True)
        shutil.rmtree(folder)  # a thread's first put opens a connection: there is no file now
        raised: list[BaseException] = []

        def put() -> None:
            try:
                store.put("jobs", Item(0, "k2", *body), None, 1.0)
            except BaseException as exc:
                raised.append(exc)

        thread = threading.Thread(target=put)
        thread.start()
        thread.join(10)
        assert len(raised) == 1
        assert isinstance(raised[0], StorageUnavailable), raised
    finally:
        store.close()


def test_foreign_schema_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="something else \\(tables: orders\\)"):
        RequestQueue(storage=f"sqlite:///{path}")
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stored_request_that_does_not_decode_goes_to_the_dead_letters_alone(
    tmp_path: Path, clock: FakeClock, mode: str
) -> None:
    path = tmp_path / "q.db"
    q = RequestQueue("orders", storage=f"sqlite:///{path}", clock=clock, batch=16)
    ran: list[str] = []
    q.handler("charge")(ran.append)
    tampered = {
        "not json": "its arguments are not JSON: 'not json'",
        "[1, 2]": "not an object with an 'args' list and a 'kwargs' object: [1, 2]",
        "null": "not an object with an 'args' list and a 'kwargs' object: None",
        '{"args": "abc", "kwargs": {}}': "an 'args' list and a 'kwargs' object: {'args': 'abc',",
        "[" * 100_000 + "]" * 100_000: "its arguments are JSON nested too deeply to read",
    }
    ids = [q.put("charge", [f"o-{i}"]).id for i in range(len(tampered) + 2)]
    with sqlite3.connect(path) as conn:  # written over, as by a bad migration or by hand
        for item_id, text in zip(ids[1:], tampered, strict=False):
            conn.execute(
                "UPDATE buttress_queue SET args = ? WHERE key = ?",
                (text, q.items()[ids.index(item_id)].key),
            )
    handled = q.process() if mode == "sync" else asyncio.run(q.aprocess())
    assert handled == len(ids)  # one claim held them all: the good ones ran
    assert ran == ["o-0", f"o-{len(ids) - 1}"]
    stats = q.stats()
    assert (stats.depth, stats.in_flight, stats.dead) == (0, 0, len(tampered))
    errors = [item.last_error or "" for item in q.dead_letters()]
    for error, expected in zip(errors, tampered.values(), strict=True):
        assert error.startswith("buttress.errors.StorageError: queue 'orders' item #")
        assert expected in error
    assert all(item.attempts == 1 for item in q.dead_letters())  # not round the retries
    assert q.counts["dead"] == len(tampered)
    q.close()


def test_a_stored_row_with_a_field_of_another_type_goes_to_the_dead_letters(
    tmp_path: Path, clock: FakeClock
) -> None:
    # text where a count or a time goes: a count made every claim of the queue raise TypeError,
    # and a text `visible` was never claimed (counted as delayed for ever)
    path = tmp_path / "q.db"
    q = RequestQueue("orders", storage=f"sqlite:///{path}", clock=clock)
    ran: list[str] = []
    q.handler("charge")(ran.append)
    tampered = {
        "attempts = 'abc'": "its stored field 'attempts' is 'abc', not integer",
        "visible = 'soon'": "its stored field 'visible' is 'soon', not integer or real",
        "enqueued = x'00ff'": "its stored field 'enqueued' is b'\\x00\\xff', not integer or real",
        "expires = 'never'": "its stored field 'expires' is 'never', not NULL or integer or real",
        "owner = 7": "",  # a TEXT column turns a number into text: nothing wrong to see
        "last_error_at = 'late'": "its stored field 'last_error_at' is 'late', not NULL",
    }
    keys = [q.put("charge", [f"o-{i}"]).key for i in range(len(tampered) + 1)]
    with sqlite3.connect(path) as conn:  # written over, as by a bad migration or by hand
        for key, change in zip(keys, tampered, strict=False):
            conn.execute(f"UPDATE buttress_queue SET {change} WHERE key = ?", (key,))
    assert q.process() == len(keys)
    assert ran == ["o-4", f"o-{len(keys) - 1}"]  # the sound rows ran
    stats = q.stats()
    assert (stats.depth, stats.in_flight, stats.dead) == (0, 0, len(tampered) - 1)
    errors = [item.last_error or "" for item in q.dead_letters()]
    for error, expected in zip(errors, [e for e in tampered.values() if e], strict=True):
        assert error.startswith("buttress.errors.StorageError: queue 'orders' item #")
        assert expected in error
    assert all(item.attempts == 1 for item in q.dead_letters())  # not round the retries
    q.close()


def test_queue_schema_versions(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    SQLiteQueueStore(path).close()
    conn = sqlite3.connect(path)
    # what version 1 had on top of version 2: a depth counted by triggers on every put
    conn.execute(
        "CREATE TRIGGER buttress_queue_added AFTER INSERT ON buttress_queue BEGIN "
        "INSERT INTO buttress_queue_counts (queue, name, value) VALUES (NEW.queue, 'depth', 1) "
        "ON CONFLICT (queue, name) DO UPDATE SET value = value + 1; END"
    )
    conn.execute("UPDATE buttress_meta SET value = '1' WHERE name = 'queue_schema_version'")
    conn.commit()
    with RequestQueue(storage=f"sqlite:///{path}") as q:  # brought to version 3
        with_log(q, [])
        q.put("work", [1])
        assert q.process() == 1
    triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    assert triggers == []
    version = "SELECT value FROM buttress_meta WHERE name = 'queue_schema_version'"
    assert conn.execute(version).fetchone() == ("3",)
    conn.execute("UPDATE buttress_meta SET value = '4' WHERE name = 'queue_schema_version'")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="schema version '4'"):
        RequestQueue(storage=f"sqlite:///{path}")
    assert path.read_bytes() == before


# the queue tables as version 2 made them (buttress_queue_counts is unchanged since)
VERSION_2 = """
CREATE TABLE buttress_queue (
    id INTEGER PRIMARY KEY, queue TEXT NOT NULL, key TEXT NOT NULL, handler TEXT NOT NULL,
    args TEXT NOT NULL, resource TEXT, enqueued REAL NOT NULL, expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0, visible REAL NOT NULL, owner TEXT, first_error TEXT,
    first_error_at REAL, last_error TEXT, last_error_at REAL, UNIQUE (queue, key)
);
CREATE INDEX buttress_queue_resource ON buttress_queue (queue, resource, id)
    WHERE resource IS NOT NULL;
CREATE INDEX buttress_queue_expires ON buttress_queue (queue, expires) WHERE expires IS NOT NULL;
CREATE TABLE buttress_queue_dead (
    id INTEGER PRIMARY KEY, queue TEXT NOT NULL, key TEXT NOT NULL, handler TEXT NOT NULL,
    args TEXT NOT NULL, resource TEXT, enqueued REAL NOT NULL, expires REAL,
    attempts INTEGER NOT NULL, visible REAL NOT NULL, owner TEXT, first_error TEXT,
    first_error_at REAL, last_error TEXT, last_error_at REAL, died REAL NOT NULL
);
CREATE TABLE buttress_queue_done (
    queue TEXT NOT NULL, key TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE TABLE buttress_queue_counts (
    queue TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (queue, name)
) WITHOUT ROWID;
INSERT INTO buttress_meta (name, value) VALUES ('queue_schema_version', '2');
"""


def test_a_version_2_file_is_upgraded_in_order_with_its_done_keys(
    tmp_path: Path, clock: FakeClock
) -> None:
    from buttress.backends.sqlite import SQLiteStore

    path = tmp_path / "q.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.executescript(VERSION_2)
    # version 2 numbered every queue's items in one sequence: a, b, a, b, ...
    for i in range(1, 7):
        conn.execute(
            "INSERT INTO buttress_queue (id, queue, key, handler, args, enqueued, visible) "
            "VALUES (?, ?, ?, 'work', ?, 0, 0)",
            (i, "ab"[i % 2], f"k{i}", f'{{"args":[{i}],"kwargs":{{}}}}'),
        )
    now = clock.wall()
    conn.executemany(
        "INSERT INTO buttress_queue_done (queue, key, until) VALUES (?, ?, ?)",
        [
            ("a", "done", now + 100),  # remembered: refuses its request
            ("a", "old", now - 1),  # past its time: forgotten
            ("b", "k5", now + 100),  # done while queued again: the claim would skip it
        ],
    )
    conn.commit()
    store = SQLiteQueueStore(path)
    try:
        tables = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "buttress_queue_done" not in tables
        assert conn.execute(version_query()).fetchone() == ("3",)
        for name, expected in (("a", [2, 4, 6]), ("b", [1, 3])):
            items = store.items(name, 10)
            assert [item.id for item in items] == list(range(1, len(expected) + 1))
            assert [item.key for item in items] == [f"k{i}" for i in expected]  # in order
            q = RequestQueue(name, storage=store, clock=clock)
            log: list[tuple[str, Any, int]] = []
            with_log(q, log)
            assert q.put("work", [7], key=f"{name}7").id == len(expected) + 1
            assert q.process() == len(expected) + 1
            assert [x for _, x, _ in log] == [*expected, 7]
            q.close()
        a = RequestQueue("a", storage=store, clock=clock)
        with_log(a, [])
        assert a.put("work", [0], key="done").added is False
        assert a.put("work", [0], key="old").added is True
        a.close()
    finally:
        conn.close()
        store.close()


def version_query() -> str:
    return "SELECT value FROM buttress_meta WHERE name = 'queue_schema_version'"


def test_a_claim_walks_its_own_queue_only(tmp_path: Path) -> None:
    # queue a holds many items; a claim from b reads b's rows, not a's: counted in SQLite
    # virtual-machine steps, which grow with every row a claim walks past
    store = SQLiteQueueStore(tmp_path / "q.db")
    a = RequestQueue("a", storage=store, max_depth=None)
    b = RequestQueue("b", storage=store)
    with_log(a, [])
    log: list[tuple[str, Any, int]] = []
    with_log(b, log)
    try:
        b.put("work", ["first"])
        for i in range(3000):
            a.put("work", [i])
        b.put("work", ["second"])
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        conn = store._conn()
        conn.set_progress_handler(count, 100)
        assert b.process() == 2
        conn.set_progress_handler(None, 0)
        assert [x for _, x, _ in log] == ["first", "second"]
        assert steps[0] < 30  # a walk past a's 3,000 rows took 181 (of 100 steps each)
        assert a.stats().depth == 3000
    finally:
        a.close()
        b.close()
        store.close()


def test_a_full_queue_counts_exactly_when_ids_are_spread(tmp_path: Path) -> None:
    # ids spread wider than max_depth (an old item still queued): the span no longer bounds the
    # depth below the limit, so the put counts, and admits up to the limit exactly
    with RequestQueue(storage=f"sqlite:///{tmp_path / 'q.db'}", max_depth=3) as q:
        with_log(q, [])
        q.put("work", [0], delay=3600)  # stays queued while the rest come and go
        for i in range(1, 10):
            q.put("work", [i])
            assert q.process() == 1
        q.put("work", [10])
        q.put("work", [11])
        with pytest.raises(QueueFull):
            q.put("work", [12])
        assert q.stats().depth == 3


def test_a_queue_that_never_empties_keeps_its_depth_bound(tmp_path: Path) -> None:
    # the ids climb past max_depth while the queue is never empty: each put is judged by the
    # span of the ids still queued, then by the exact count, never by the largest id alone
    log: list[tuple[str, Any, int]] = []
    with RequestQueue(storage=f"sqlite:///{tmp_path / 'q.db'}", max_depth=3, batch=1) as q:
        with_log(q, log)
        q.put("work", [0])
        for i in range(1, 8):
            q.put("work", [i])
            assert q.process(limit=1) == 1  # the oldest goes, one stays behind
        assert q.stats().depth == 1
        q.put("work", [8])
        q.put("work", [9])
        with pytest.raises(QueueFull):
            q.put("work", [10])
        assert q.stats().depth == 3
        assert q.process() == 3
        assert [x for _, x, _ in log] == list(range(10))


def test_shares_the_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buttress.backends import open_storage

    monkeypatch.setenv("RESILIENCE_STORAGE_PATH", str(tmp_path / "state.db"))
    with RequestQueue(storage=None) as q:
        assert q.store.url == f"sqlite:///{tmp_path / 'state.db'}"
    store = open_storage("sqlite://")  # the breaker/rate-limit store opens the same file
    store.close()


def test_replay_on_a_schedule(store: QueueStore) -> None:
    q = RequestQueue("jobs", storage=store, retry_delay=3600)
    handled = threading.Event()
    down = True

    @q.handler
    def work() -> None:
        if down:
            raise ConnectionError("down")
        handled.set()

    q.put("work")
    q.process()
    down = False
    stop = q.replay_every(0.01)
    assert handled.wait(30)
    stop()
    assert q.stats().depth == 0
    q.close()


def test_sqlite_sweeps_done_keys_past_their_time_a_bounded_slice_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    import buttress.queue.sqlite as queue_sqlite

    monkeypatch.setattr(queue_sqlite, "SWEEP_EVERY", 10)  # a sweep per 10 acknowledgements
    monkeypatch.setattr(queue_sqlite, "SWEEP_SPAN", 15)  # of the 15 oldest done keys
    path = tmp_path / "q.db"
    store = SQLiteQueueStore(path)
    q = RequestQueue("jobs", storage=store, clock=clock, done_for=60)

    @q.handler
    def work(x: int) -> None:
        pass

    def batch(prefix: str) -> None:
        for i in range(10):
            q.put("work", [i], key=f"{prefix}{i}")
        q.process()

    conn = sqlite3.connect(path)

    def done_keys() -> list[str]:
        return [
            k
            for (k,) in conn.execute(
                "SELECT key FROM buttress_queue WHERE done_until IS NOT NULL ORDER BY id"
            )
        ]

    def keys(prefix: str, indices: range = range(10)) -> list[str]:
        return [f"{prefix}{i}" for i in indices]

    try:
        batch("a")  # a sweep of a0-a9: none past its time
        batch("b")  # a sweep of a0-a9, b0-b4: none past its time
        clock.advance(61.0)  # a and b are past their time
        batch("c")  # a sweep of a0-b4: gone; b5-b9 are not looked at
        assert done_keys() == keys("b", range(5, 10)) + keys("c")
        batch("d")  # a sweep of b5-b9 (gone) and c0-c9 (kept)
        assert done_keys() == keys("c") + keys("d")
        assert q.stats().done == 20
        clock.advance(61.0)
        assert q.stats().done == 0  # past their time, swept or not
        q.put("work", [0], key="c0")  # a done key past its time does not refuse its request
        assert q.process() == 1
        assert done_keys() == keys("c", range(1, 10)) + keys("d") + ["c0"]
    finally:
        conn.close()
        q.close()
        store.close()


def test_sqlite_checkpoints_on_a_thread_of_its_own_and_stops_it_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import buttress.queue.sqlite as queue_sqlite

    monkeypatch.setattr(queue_sqlite, "CHECKPOINT_EVERY", 5)
    path = tmp_path / "q.db"
    store = SQLiteQueueStore(path)
    q = RequestQueue("jobs", storage=store)

    @q.handler
    def work(text: str) -> None:
        pass

    try:
        before = path.stat().st_size
        for i in range(4):
            q.put("work", [f"{i}" * 3000])  # a page of its own each
        assert not store.checkpointer.running
        assert store.checkpointer.runs == 0
        q.put("work", ["4" * 3000])  # the fifth commit wakes the thread
        assert store.checkpointer.wait_for(1, timeout=30)
        assert store.checkpointer.running
        assert store.checkpointer.failures == 0
        # the pages reached the database file: the writers' own checkpoint is 1000 pages away
        assert path.stat().st_size >= before + 5 * 3000
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM buttress_queue").fetchone() == (5,)
    finally:
        q.close()
        store.close()
    assert not store.checkpointer.running


def test_a_queue_that_used_up_its_ids_refuses_puts_until_it_empties(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import buttress.queue.sqlite as queue_sqlite

    monkeypatch.setattr(queue_sqlite, "_QUEUED_LAST", 3)  # three queued ids instead of 2**45
    with RequestQueue("jobs", storage=f"sqlite:///{tmp_path / 'q.db'}", max_depth=None) as q:
        log: list[tuple[str, Any, int]] = []
        with_log(q, log)
        assert [q.put("work", [i]).id for i in range(3)] == [1, 2, 3]
        with pytest.raises(QueueFull, match="no ids left until it empties"):
            q.put("work", [3])
        assert q.process() == 3
        assert q.put("work", [3]).id == 1  # empty: numbered from the start again
        assert q.process() == 1
        assert [x for _, x, _ in log] == [0, 1, 2, 3]


def test_a_used_up_done_half_is_renumbered_from_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    import buttress.queue.sqlite as queue_sqlite

    monkeypatch.setattr(queue_sqlite, "_LAST", queue_sqlite._DONE_FIRST + 7)  # 8 done ids
    monkeypatch.setattr(queue_sqlite, "SWEEP_EVERY", 1)
    path = tmp_path / "q.db"
    with RequestQueue("jobs", storage=f"sqlite:///{path}", clock=clock, done_for=60) as q:
        with_log(q, [])
        start = queue_sqlite._range("jobs") + queue_sqlite._DONE_FIRST
        for round_ in range(4):  # 12 keys done through 8 ids, the oldest swept each round
            clock.advance(61.0)  # the last round's keys are past their time
            for i in range(3):
                q.put("work", [i], key=f"{round_}-{i}")
            assert q.process() == 3
        with sqlite3.connect(path) as conn:
            ids = [i for (i,) in conn.execute("SELECT id FROM buttress_queue ORDER BY id")]
        assert len(ids) == 3
        assert all(start <= i <= start + 7 for i in ids)
        assert q.put("work", [0], key="3-0").added is False  # the last round's keys: done
