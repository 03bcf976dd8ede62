"""Database replicas: reads fail over to a streaming replica, writes never do.

A real PostgreSQL primary and a streaming replica of it (``pg_basebackup -R``, read-only). A team
registers them as the DATABASE targets ``primary`` -> ``replica1``, watches the primary with a
database monitor, and queues what its protocol cannot serve in a durable SQLite queue. Under a
read load the primary is stopped: every read must still answer (from the replica), every write
must be queued (never sent to the replica), and once the primary is back the queue must replay
each write exactly once. Each write runs in one transaction that inserts its row under an
idempotency key (``ON CONFLICT DO NOTHING``) and a row in an ``executions`` table, so a write
applied twice would show there even though the row itself would not double.

The write handler is a module function, not a method: a method's queued calls replay on the
instance whose call registered the handler, so a test through a method would prove nothing more.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import buttress
from buttress import (
    FallbackAction,
    FallbackStrategy,
    RequestQueue,
    RequestQueued,
    ResilienceManager,
    ResourceStatus,
    ResourceType,
    current_target,
    use_manager,
    with_fallback,
)
from buttress.testing import FakeClock
from conftest import run

psycopg = pytest.importorskip("psycopg")

S = FallbackStrategy
DB = ResourceType.DATABASE
WRITES = 20
READERS = 6


def _until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {seconds}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, Any]]:
    """A primary and its streaming replica, with the tables the writes go to."""
    import os

    from postgres_server import PostgresUnavailable, start, start_replica

    try:
        primary = start()
    except PostgresUnavailable as exc:
        if os.environ.get("BUTTRESS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"BUTTRESS_REQUIRE_POSTGRES=1 but no PostgreSQL server: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (key text PRIMARY KEY, value int NOT NULL)")
            conn.execute("CREATE TABLE executions (id serial PRIMARY KEY, key text NOT NULL)")
        replica = start_replica(primary)
    except BaseException:
        primary.destroy()
        raise
    try:
        yield primary, replica
    finally:
        replica.destroy()
        primary.destroy()


def _count(dsn: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return row[0]


class Ledger:
    """What the calls saw: targets of reads (before/after the stop), write attempts, errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phase = "before"
        self.reads: dict[str, list[str | None]] = {"before": [], "down": [], "back": []}
        self.errors: list[BaseException] = []
        self.write_targets: list[str | None] = []
        self.read_only_refusals = 0

    def read(self, phase: str, target: str | None) -> None:
        with self.lock:
            self.reads[phase].append(target)

    def count(self, phase: str) -> int:
        with self.lock:
            return len(self.reads[phase])


def _team(tmp_path: Path, primary: Any, replica: Any, name: str) -> ResilienceManager:
    queue = RequestQueue(name, storage=f"sqlite:///{tmp_path / 'queue.db'}", retry_delay=0.2)
    manager = ResilienceManager(name, queue=queue)
    # A short cooldown: the recovered primary is probed back within the test's bounded waits.
    manager.register_targets(
        DB, {"primary": primary.dsn, "replica1": replica.dsn}, cooldown=0.5, max_cooldown=1.0
    )
    manager.set_protocol(
        DB,
        [
            FallbackAction(S.RETRY, attempts=3),
            FallbackAction(S.SWITCH_PROVIDER),
            FallbackAction(S.USE_CACHE),
            FallbackAction(S.QUEUE_REQUEST),
            FallbackAction(S.CIRCUIT_BREAK),
        ],
    )
    manager.register_database_monitor(
        "primary",
        primary.dsn,
        interval=0.2,
        timeout=5.0,
        fail_threshold=1,
        success_threshold=1,
        latency_baseline=False,
    )
    return manager


def _check_outcome(
    ledger: Ledger, manager: ResilienceManager, primary: Any, replica: Any, prefix: str
) -> None:
    assert ledger.errors == []  # no error reached any reader
    assert ledger.reads["down"]
    assert set(ledger.reads["down"]) == {"replica1"}
    assert "primary" in ledger.reads["before"]
    # Writes: only ever sent to the primary; the replica refused none because it got none.
    assert ledger.write_targets
    assert set(ledger.write_targets) == {"primary"}
    assert ledger.read_only_refusals == 0
    # Zero lost, none duplicated: each key once, each applied by exactly one execution.
    like = f"{prefix}-%"
    assert _count(primary.dsn, "SELECT count(*) FROM items WHERE key LIKE %s", like) == WRITES
    assert _count(primary.dsn, "SELECT count(*) FROM executions WHERE key LIKE %s", like) == WRITES
    assert (
        _count(
            primary.dsn,
            "SELECT count(*) FROM (SELECT key FROM executions WHERE key LIKE %s "
            "GROUP BY key HAVING count(*) > 1) d",
            like,
        )
        == 0
    )
    queue = manager.queue
    assert queue is not None
    stats = queue.stats()
    assert (stats.depth, stats.dead) == (0, 0)
    # The replica follows the primary again: it has every replayed row.
    _until(
        lambda: _count(replica.dsn, "SELECT count(*) FROM items WHERE key LIKE %s", like) == WRITES,
        "the replica to stream the replayed rows",
    )


def test_sync_reads_fail_over_and_writes_are_queued_then_replayed_once(
    cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    primary, replica = cluster
    manager = _team(tmp_path, primary, replica, "orders-sync")
    ledger = Ledger()

    @with_fallback(DB)
    def read(n: int, target: str) -> tuple[str | None, int]:
        with psycopg.connect(target, connect_timeout=2) as conn:
            row = conn.execute("SELECT %s::int", (n,)).fetchone()
        assert row is not None
        return current_target(), row[0]

    @with_fallback(DB, write=True)
    def record(key: str, value: int, target: str) -> str | None:
        with ledger.lock:
            ledger.write_targets.append(current_target())
        try:
            with (
                psycopg.connect(target, connect_timeout=2, autocommit=True) as conn,
                conn.transaction(),
            ):
                conn.execute("INSERT INTO executions (key) VALUES (%s)", (key,))
                conn.execute(
                    "INSERT INTO items (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (key, value),
                )
        except psycopg.errors.ReadOnlySqlTransaction:
            with ledger.lock:
                ledger.read_only_refusals += 1
            raise
        return current_target()

    stop = threading.Event()

    def reader(index: int) -> None:
        with use_manager(manager):  # a thread starts with an empty context
            read_until(index)

    def read_until(index: int) -> None:
        n = 0
        while not stop.is_set() and n < 100_000:
            n += 1
            phase = ledger.phase
            try:
                target, value = read(index * 1_000_000 + n)
                assert value == index * 1_000_000 + n
            except BaseException as exc:
                with ledger.lock:
                    ledger.errors.append(exc)
                return
            ledger.read(phase, target)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
    manager.start_in_thread()
    context = use_manager(manager)
    context.__enter__()
    try:
        _until(lambda: manager.get_resource_status(DB, "primary") is ResourceStatus.HEALTHY,
               "the primary's first healthy check")  # fmt: skip
        for thread in threads:
            thread.start()
        _until(lambda: ledger.count("before") >= 50 or bool(ledger.errors), "reads on the primary")
        assert ledger.errors == []
        primary.stop()
        ledger.phase = "down"
        _until(lambda: ledger.count("down") >= 200, "reads on the replica")
        _until(lambda: manager.get_resource_status(DB, "primary") is ResourceStatus.UNAVAILABLE,
               "the monitor to see the primary down")  # fmt: skip
        tickets = set()
        for i in range(WRITES):
            with pytest.raises(RequestQueued) as queued:
                record(f"sync-{i}", i)
            tickets.add(queued.value.ticket)
        assert len(tickets) == WRITES
        assert set(ledger.write_targets) <= {"primary"}  # not one write reached the replica
        queue = manager.queue
        assert queue is not None
        assert queue.stats().waiting == WRITES
        assert ledger.errors == []
        primary.start()
        ledger.phase = "back"
        _until(lambda: queue.stats().depth == 0, "the queue to replay")
        _until(lambda: ledger.count("back") >= 50, "reads after the primary is back")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        context.__exit__(None, None, None)
        manager.stop()
        if not primary.running():
            primary.start()
    _check_outcome(ledger, manager, primary, replica, "sync")
    assert manager.provider_states()["database"]["replica1"]["state"] == "healthy"
    assert manager.queue is not None
    manager.queue.close()


def test_async_reads_fail_over_and_writes_are_queued_then_replayed_once(
    cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    primary, replica = cluster
    manager = _team(tmp_path, primary, replica, "orders-async")
    ledger = Ledger()

    @with_fallback(DB)
    async def read(n: int, target: str) -> tuple[str | None, int]:
        async with await psycopg.AsyncConnection.connect(target, connect_timeout=2) as conn:
            cursor = await conn.execute("SELECT %s::int", (n,))
            row = await cursor.fetchone()
        assert row is not None
        return current_target(), row[0]

    # A fresh connection per call: the queue replays on a thread and event loop of its own.
    @with_fallback(DB, write=True)
    async def record(key: str, value: int, target: str) -> str | None:
        with ledger.lock:
            ledger.write_targets.append(current_target())
        try:
            async with (
                await psycopg.AsyncConnection.connect(
                    target, connect_timeout=2, autocommit=True
                ) as conn,
                conn.transaction(),
            ):
                await conn.execute("INSERT INTO executions (key) VALUES (%s)", (key,))
                await conn.execute(
                    "INSERT INTO items (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (key, value),
                )
        except psycopg.errors.ReadOnlySqlTransaction:
            with ledger.lock:
                ledger.read_only_refusals += 1
            raise
        return current_target()

    async def until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"gave up after {seconds}s waiting for {what}")
            await asyncio.sleep(0.02)

    async def main() -> None:
        stop = asyncio.Event()

        async def reader(index: int) -> None:
            n = 0
            while not stop.is_set() and n < 100_000:
                n += 1
                phase = ledger.phase
                try:
                    target, value = await read(index * 1_000_000 + n)
                    assert value == index * 1_000_000 + n
                except BaseException as exc:
                    ledger.errors.append(exc)
                    return
                ledger.read(phase, target)

        await manager.start()
        tasks: list[asyncio.Task[None]] = []
        context = use_manager(manager)  # the reader tasks inherit it
        context.__enter__()
        try:
            await until(
                lambda: manager.get_resource_status(DB, "primary") is ResourceStatus.HEALTHY,
                "the primary's first healthy check",
            )
            tasks = [asyncio.create_task(reader(i)) for i in range(READERS)]
            await until(lambda: ledger.count("before") >= 50, "reads on the primary")
            await asyncio.to_thread(primary.stop)
            ledger.phase = "down"
            await until(lambda: ledger.count("down") >= 200, "reads on the replica")
            await until(
                lambda: manager.get_resource_status(DB, "primary") is ResourceStatus.UNAVAILABLE,
                "the monitor to see the primary down",
            )
            tickets = set()
            for i in range(WRITES):
                with pytest.raises(RequestQueued) as queued:
                    await record(f"async-{i}", i)
                tickets.add(queued.value.ticket)
            assert len(tickets) == WRITES
            assert set(ledger.write_targets) <= {"primary"}
            queue = manager.queue
            assert queue is not None
            assert queue.stats().waiting == WRITES
            assert ledger.errors == []
            await asyncio.to_thread(primary.start)
            ledger.phase = "back"
            await until(lambda: queue.stats().depth == 0, "the queue to replay")
            await until(lambda: ledger.count("back") >= 50, "reads after the primary is back")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            context.__exit__(None, None, None)
            await manager.stop()
            if not primary.running():
                await asyncio.to_thread(primary.start)

    asyncio.run(main())
    _check_outcome(ledger, manager, primary, replica, "async")
    assert manager.queue is not None
    manager.queue.close()


# -- the rules behind it, on the fake clock --------------------------------------------------


class Database:
    """Stand-in targets by name: ``down`` ones refuse connections, as a stopped server does."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: list[tuple[str, str | None]] = []

    def run(self, kind: str, sql: str, target: str | None = None) -> str:
        self.calls.append((kind, current_target()))
        assert target == current_target()  # the target's client is handed in as target=
        if target in self.down:
            raise ConnectionRefusedError(f"{target} is down")
        return f"{target}:{sql}"


def _manager(clock: FakeClock, name: str, **pool: Any) -> tuple[ResilienceManager, Database]:
    queue = RequestQueue(name, storage="memory://", clock=clock, retry_delay=1.0)
    manager = ResilienceManager(name, clock=clock, queue=queue)
    manager.register_targets(DB, ["primary", "replica1"], **pool)
    return manager, Database()


def _calls(manager: ResilienceManager, db: Database, mode: str) -> tuple[Any, Any]:
    if mode == "sync":

        def read(sql: str, target: str) -> str:
            return db.run("read", sql, target)

        def write(sql: str, target: str) -> str:
            return db.run("write", sql, target)

    else:

        async def read(sql: str, target: str) -> str:
            await asyncio.sleep(0)
            return db.run("read", sql, target)

        async def write(sql: str, target: str) -> str:
            await asyncio.sleep(0)
            return db.run("write", sql, target)

    guarded_read = with_fallback(DB, name=f"{manager.team}.read")(read)
    guarded_write = with_fallback(DB, name=f"{manager.team}.write", write=True)(write)

    def call(fn: Any, *args: Any) -> Any:
        with use_manager(manager):
            return run(fn(*args))

    return (lambda sql: call(guarded_read, sql)), (lambda sql: call(guarded_write, sql))


def test_a_write_goes_to_the_first_registered_target_whatever_the_pool_prefers(
    mode: str, clock: FakeClock
) -> None:
    # The replica is cheaper, so reads prefer it; the primary is still where writes go.
    manager, db = _manager(
        clock, f"cost-{mode}", prefer="cost", costs={"primary": 2.0, "replica1": 1.0}
    )
    pool = manager.protocol_host.pool(DB)
    assert pool is not None
    assert pool.names == ("replica1", "primary")
    assert pool.primary == "primary"
    read, write = _calls(manager, db, mode)
    assert read("select") == "replica1:select"
    assert write("insert") == "primary:insert"
    assert db.calls == [("read", "replica1"), ("write", "primary")]


def test_a_write_is_never_answered_from_the_cache_nor_opens_the_breaker_reads_need(
    mode: str, clock: FakeClock
) -> None:
    manager, db = _manager(clock, f"cache-{mode}")  # the default protocol: ... cache -> break
    read, write = _calls(manager, db, mode)
    assert write("insert 1") == "primary:insert 1"
    db.down.add("primary")
    with buttress.deadline(5.0, clock=clock), pytest.raises(ConnectionRefusedError):
        write("insert 1")  # the same arguments: a cached answer would report a lost write
    assert {target for kind, target in db.calls if kind == "write"} == {"primary"}
    # The failed write opened no breaker: reads go on, from the replica.
    assert read("select") == "replica1:select"
    assert read("select") == "replica1:select"


def test_a_queued_write_replays_on_the_primary_with_its_target_once_it_is_back(
    mode: str, clock: FakeClock
) -> None:
    manager, db = _manager(clock, f"replay-{mode}", cooldown=1.0)
    manager.set_protocol(DB, [FallbackAction(S.SWITCH_PROVIDER), FallbackAction(S.QUEUE_REQUEST)])
    queue = manager.queue
    assert queue is not None
    read, write = _calls(manager, db, mode)
    db.down.add("primary")
    with pytest.raises(RequestQueued):
        write("insert 1")
    assert read("select") == "replica1:select"
    # A replay while the primary is still down fails and is left to the queue's retry: it is
    # neither sent to the replica nor queued a second time.
    clock.advance(2.0)
    queue.replay()
    assert (queue.stats().delayed, queue.stats().waiting, queue.counts["retried"]) == (1, 0, 1)
    db.down.clear()
    clock.advance(5.0)
    assert queue.replay() == 1
    assert queue.stats().depth == 0
    writes = [target for kind, target in db.calls if kind == "write"]
    assert writes == ["primary", "primary", "primary"]


def test_a_retry_does_not_sleep_out_the_lease_of_another_calls_probe(clock: FakeClock) -> None:
    manager, db = _manager(clock, "lease", cooldown=1.0)
    manager.set_protocol(DB, [FallbackAction(S.RETRY, attempts=1)])
    pool = manager.protocol_host.pool(DB)
    assert pool is not None
    _, write = _calls(manager, db, "sync")
    db.down.add("primary")
    with pytest.raises(ConnectionRefusedError):
        write("insert 1")
    clock.advance(2.0)
    probe = pool.choose(exclude={"replica1"})  # another call's probe, in flight
    assert probe is not None
    assert probe.probe
    began = clock.now()
    with pytest.raises(buttress.AllTargetsCooling):
        write("insert 2")
    # Not the probe's 60 s lease: the retry backed off and looked again.
    assert clock.now() - began < pool.settings.probe_timeout / 2


def _readme_protocol(manager: ResilienceManager) -> None:
    """The README's database protocol: retry (3, 1 s apart) -> switch -> queue -> break."""
    manager.set_protocol(
        DB,
        [
            FallbackAction(S.RETRY, attempts=3, base_delay=1.0, jitter=False),
            FallbackAction(S.SWITCH_PROVIDER),
            FallbackAction(S.QUEUE_REQUEST),
            FallbackAction(S.CIRCUIT_BREAK),
        ],
    )


def test_a_write_whose_primary_cools_down_is_queued_after_its_backoff_not_the_cooldown(
    mode: str, clock: FakeClock
) -> None:
    # The README's protocol: retry -> switch -> queue -> break, a primary that cools for 30 s.
    manager, db = _manager(clock, f"cool-{mode}", cooldown=30.0)
    _readme_protocol(manager)
    _, write = _calls(manager, db, mode)
    db.down.add("primary")
    began = clock.now()
    with pytest.raises(RequestQueued):
        write("insert 1")
    # one backoff (1 s) and one more look as long: not the primary's 30 s cooldown
    assert clock.now() - began <= 2.0
    assert [target for kind, target in db.calls if kind == "write"] == ["primary"]


def test_writes_while_the_primary_cools_down_are_queued_after_a_backoff_not_the_cooldown(
    mode: str, clock: FakeClock
) -> None:
    # The primary failed a read and cools for 30 s: the writes that follow are queued (or
    # refused) after the retry's backoff, not held until the cooldown ends.
    manager, db = _manager(clock, f"cooling-{mode}", cooldown=30.0)
    _readme_protocol(manager)
    read, write = _calls(manager, db, mode)
    db.down.add("primary")
    assert read("select") == "replica1:select"
    for n in range(2):
        began = clock.now()
        with pytest.raises(RequestQueued):
            write(f"insert {n}")
        assert clock.now() - began <= 2.0
    assert [target for kind, target in db.calls if kind == "write"] == []
    # Without a queue the write fails as fast, saying when the primary can be tried again.
    manager.set_protocol(DB, [FallbackAction(S.RETRY, attempts=1, base_delay=1.0, jitter=False)])
    began = clock.now()
    with pytest.raises(buttress.AllTargetsCooling) as refused:
        write("insert 2")
    assert clock.now() - began <= 2.0
    assert "primary" in str(refused.value)
    assert "replica1" not in str(refused.value)
