"""The SQLite store: durable across restarts, safe across processes, never overwrites a stranger."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from buttress import RateLimitConfig, RateLimiter, RateLimitExceeded
from buttress.backends import StorageError, StorageUnavailable, open_storage
from buttress.backends.sqlite import SQLiteStore
from buttress.machines.breaker import BreakerSettings, CircuitState
from buttress.machines.ratelimit import Params, RateLimitAlgorithm
from buttress.queue import RequestQueue
from buttress.testing import FakeClock
from steps import step as _step

T0 = 1_750_000_000.0
BUCKET = Params(RateLimitAlgorithm.TOKEN_BUCKET, 0.5, 2, 1.0, 2)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SQLiteStore(path)
    settings = BreakerSettings(fail_max=1, recovery=60.0)
    gen = first.breaker("erp", settings, _step("acquire"), T0).ticket
    first.breaker("erp", settings, _step("record", ticket=gen, failed=True), T0)
    assert first.reserve("api", "k", BUCKET, 2, 0.0, T0)[0]
    first.close()

    again = SQLiteStore(path)  # a new process would do the same
    still_open = again.breaker("erp", settings, _step("acquire"), T0 + 30)
    assert not still_open.allowed
    assert still_open.state is CircuitState.OPEN
    assert still_open.retry_after == pytest.approx(30.0)
    assert again.breaker("erp", settings, _step("acquire"), T0 + 60).probe
    assert not again.reserve("api", "k", BUCKET, 1, 0.0, T0)[0]  # the bucket is still spent


def test_state_is_json_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.reserve("api", None, BUCKET, 1, 0.0, T0)
    conn = sqlite3.connect(path)
    (version,) = conn.execute(
        "SELECT value FROM buttress_meta WHERE name='schema_version'"
    ).fetchone()
    (text,) = conn.execute("SELECT state FROM buttress_state").fetchone()
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    conn.close()
    assert version == "1"
    assert json.loads(text) == {"s": [pytest.approx(T0 + 0.5)], "b": None}
    assert mode == "wal"


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        SQLiteStore(path)
    assert path.read_bytes() == before


def test_someone_elses_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match=r"of something else \(tables: users\)"):
        SQLiteStore(path)
    assert path.read_bytes() == before


def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE buttress_meta SET value = '99' WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="schema version '99'"):
        SQLiteStore(path)


def test_connections_creating_one_file_at_once_all_open_it(tmp_path: Path) -> None:
    # Two connections switching a new file to the WAL journal at once: SQLite refuses one at
    # once ("database is locked", its busy handler not consulted). SQLite locks between the
    # connections of one process as between processes, so threads meet the refusal processes
    # meet. 300 files, 4 openers each: without the store's retry, about one opener in 200 failed
    # here, so a run had several failures.
    failures: list[BaseException] = []

    def open_(path: Path, ready: threading.Barrier) -> None:
        ready.wait(10)
        try:
            SQLiteStore(path).close()
        except BaseException as exc:
            failures.append(exc)

    for i in range(300):
        ready = threading.Barrier(4)
        threads = [
            threading.Thread(target=open_, args=(tmp_path / f"{i}.db", ready)) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert failures == []
    conn = sqlite3.connect(tmp_path / "299.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_file_held_by_another_writer_at_open_is_an_outage_not_a_bad_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a new file, still in the rollback journal, write-locked
    try:
        with pytest.raises(StorageUnavailable, match=r"longer than busy_timeout \(0.2 s\)"):
            SQLiteStore(path, busy_timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    SQLiteStore(path).close()  # free again: it opens


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ('{"s": [Infinity], "b": null}', "inf is not a finite time"),
        ('{"s": [NaN], "b": null}', "nan is not a finite time"),
        ('{"s": [], "b": 1e300}', "the block's end 1e+300"),
        ('{"s": [], "b": -Infinity}', "the block's end -inf"),
        ('{"s": [1e300, 1], "b": null}', "1e+300 is not a finite time"),
        ('{"s": [1e400], "b": null}', "inf is not a finite time"),
        ('{"s": [true], "b": null}', "list of numbers"),
    ],
)
def test_a_stored_rate_limit_state_no_limiter_writes_is_named(
    tmp_path: Path, record: str, named: str
) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.reserve("api", "k", BUCKET, 1, 0.0, T0)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE buttress_state SET state = ?", (record,))
        conn.commit()
    for step in (
        lambda: store.reserve("api", "k", BUCKET, 1, 0.0, T0),
        lambda: store.block("api", "k", 5.0, T0),
    ):
        with pytest.raises(StorageError) as caught:
            step()
        message = str(caught.value)
        assert "the stored rate-limit state of 'api' (key \"k\") is malformed" in message
        assert named in message
    store.close()


def test_an_old_stored_state_is_expired_not_malformed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    store.reserve("api", "k", BUCKET, 2, 0.0, T0 - 10 * 365 * 86400)
    assert store.reserve("api", "k", BUCKET, 2, 0.0, T0) == (True, 0.0)
    with pytest.raises(ValueError, match=r"seconds of a stored block must be <= 3\.1536e"):
        store.block("api", "k", 1e12, T0)
    store.close()


def test_a_corrupt_record_is_named_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.reserve("api", "k", BUCKET, 1, 0.0, T0)
    conn = sqlite3.connect(path)
    conn.execute('UPDATE buttress_state SET state = \'{"s": "oops", "b": null}\'')
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match=r"rate-limit state of 'api' \(key \"k\"\) is malformed"):
        store.reserve("api", "k", BUCKET, 1, 0.0, T0)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT state FROM buttress_state").fetchone()[0].startswith('{"s": "oops"')
    conn.close()
    settings = BreakerSettings(fail_max=1, recovery=1.0)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO buttress_state VALUES ('breaker', 'erp', '', '{\"v\": 7}', NULL)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="breaker 'erp': breaker state version 7 is not 1"):
        store.breaker("erp", settings, _step("read"), T0)


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_storage("sqlite:///rel.db")
    assert relative.path == Path("rel.db")
    absolute = open_storage(f"sqlite:///{tmp_path}/abs.db")
    assert absolute.path == tmp_path / "abs.db"
    monkeypatch.setenv("RESILIENCE_STORAGE_PATH", str(tmp_path / "env.db"))
    assert open_storage("sqlite://").path == tmp_path / "env.db"
    # a directory (as in "RESILIENCE_STORAGE_PATH=/data/resilience") holds state.db
    (tmp_path / "resilience").mkdir()
    monkeypatch.setenv("RESILIENCE_STORAGE_PATH", str(tmp_path / "resilience"))
    assert open_storage("sqlite://").path == tmp_path / "resilience" / "state.db"
    for to_be in (f"{tmp_path}/new/", f"{tmp_path}/fresh"):  # directories to be made
        monkeypatch.setenv("RESILIENCE_STORAGE_PATH", to_be)
        assert open_storage("sqlite://").path == Path(to_be) / "state.db"
        assert (Path(to_be) / "state.db").is_file()
    monkeypatch.setenv("RESILIENCE_STORAGE_PATH", str(tmp_path / "fresh" / "state.db"))
    assert open_storage("sqlite://").path == tmp_path / "fresh" / "state.db"  # a file: itself
    (tmp_path / "blocker").write_text("a file where a directory should be")
    monkeypatch.setenv("RESILIENCE_STORAGE_PATH", str(tmp_path / "blocker" / "resilience"))
    blocked = f"RESILIENCE_STORAGE_PATH='{tmp_path}/blocker/resilience': cannot make the directory"
    with pytest.raises(StorageError, match=blocked):
        open_storage("sqlite://")
    with pytest.raises(StorageError, match=blocked):
        RequestQueue("jobs", storage="sqlite://")
    assert open_storage("memory://") is None
    monkeypatch.setenv("BUTTRESS_STORAGE_URL", "sqlite:///from-env.db")
    assert open_storage(None).path == Path("from-env.db")
    with pytest.raises(ValueError, match="unknown storage"):
        open_storage("postgres://x")
    with pytest.raises(ValueError, match="names a local file"):
        open_storage("sqlite://remotehost/x.db")
    with pytest.raises(StorageError, match="does not exist"):
        open_storage("sqlite:///no/such/dir/x.db")
    with pytest.raises(TypeError, match="storage must be a URL"):
        open_storage(42)


def test_limiters_in_two_processes_share_one_limit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    code = textwrap.dedent(
        f"""
        from buttress import RateLimiter, RateLimitConfig, RateLimitExceeded
        from buttress.testing import FakeClock
        with FakeClock():
            limiter = RateLimiter(storage={url!r})
            limiter.configure("api", RateLimitConfig(requests_per_second=1, burst_size=50))
            admitted = 0
            for _ in range(40):
                try:
                    limiter.check_limit("api")
                    admitted += 1
                except RateLimitExceeded:
                    pass
            print(admitted)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    counts = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(counts) == 50  # a fake clock that stands still: the burst, exactly, across all four


def _write_forever(path: str) -> None:
    store = SQLiteStore(path)
    settings = BreakerSettings(fail_max=3, recovery=1.0)
    i = 0
    while True:
        i += 1
        store.reserve("api", f"k{i % 100}", BUCKET, 1, 0.0, T0 + i)
        store.breaker("erp", settings, _step("force", target=CircuitState.OPEN), T0 + i)
        store.breaker("erp", settings, _step("force", target=CircuitState.CLOSED), T0 + i)


def test_sigkill_mid_write_leaves_a_sound_file(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    wal = Path(path + "-wal")
    for round_ in range(3):
        writer = ctx.Process(target=_write_forever, args=(path,))
        writer.start()
        deadline = time.monotonic() + 10  # until the writer is busy writing (bounded)
        while not (wal.exists() and wal.stat().st_size > 50_000) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(timeout=10)
        store = SQLiteStore(path)
        assert store.integrity_check() == "ok"
        reply = store.breaker("erp", BreakerSettings(fail_max=3, recovery=1.0), _step("read"), T0)
        assert reply.state in (CircuitState.OPEN, CircuitState.CLOSED)
        assert store.reserve("api", f"fresh{round_}", BUCKET, 1, 0.0, T0)[0]
        store.close()


def test_rate_limiter_over_sqlite(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path}/limits.db"
    one, two = RateLimiter(storage=url), RateLimiter(storage=url)
    for limiter in (one, two):
        limiter.configure("api", RateLimitConfig(requests_per_second=2, burst_size=2))
    one.check_limit("api", key="t")
    two.check_limit("api", key="t")
    with pytest.raises(RateLimitExceeded) as info:
        one.check_limit("api", key="t")
    assert info.value.retry_after == pytest.approx(0.5)
    assert two.acquire("api", key="t") == pytest.approx(0.5)  # waits for its reserved slot
    assert one.storage == url.replace("sqlite:///", "sqlite:///", 1)
    assert not one.degraded


@pytest.mark.parametrize("fail_mode", ["local", "open", "closed"])
def test_a_locked_store_is_an_outage_not_an_error(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture, fail_mode: str
) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path, busy_timeout=0.05)
    limiter = RateLimiter(storage=store, fail_mode=fail_mode, local_share=0.5, retry_interval=1.0)
    limiter.configure("api", RateLimitConfig(requests_per_second=10, burst_size=10))
    limiter.check_limit("api")  # the store answers
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the database
    admitted = 0
    refusals: list[float | None] = []
    with caplog.at_level("INFO", logger="buttress.storage"):
        for _ in range(20):  # 2 s of calls, 0.1 s apart
            try:
                limiter.check_limit("api")
                admitted += 1
            except RateLimitExceeded as exc:
                refusals.append(exc.retry_after)
            clock.advance(0.1)
        assert limiter.degraded
        limiter.reset("api", key="x")  # not an error during the outage either
        limiter.block("api", key="x", seconds=1.0)
        holder.execute("ROLLBACK")
        holder.close()
        clock.advance(1.0)  # a retry interval later the store is tried again, and answers
        limiter.check_limit("api", key="after")
        assert not limiter.degraded
    # local: half the limit (5/s), starting spent (what the store admitted is unknown): one
    # admission every 0.2 s from 0.2 s on
    assert admitted == {"local": 9, "open": 20, "closed": 0}[fail_mode]
    if fail_mode == "closed":
        assert refusals == [1.0] * 20
    records = [r for r in caplog.records if r.name == "buttress.storage"]
    messages = [(r.levelname, r.getMessage()) for r in records]
    assert [level for level, _ in messages] == ["WARNING", "INFO"]  # one line per outage
    assert "unavailable" in messages[0][1]
    assert "answers again" in messages[1][1]


def test_a_breaker_tripped_in_one_process_rejects_in_another(
    tmp_path: Path, clock: FakeClock
) -> None:
    from buttress import CircuitBreaker, CircuitOpenError

    url = f"sqlite:///{tmp_path}/breakers.db"
    name = f"erp-{tmp_path.name}"
    cb = CircuitBreaker(name=name, fail_max=2, timeout_duration=10, storage=url)
    seen: list[tuple[str, str, str]] = []
    cb.add_listener(lambda e: seen.append((str(e.old), str(e.new), e.reason)))
    assert cb.call(lambda: "ok") == "ok"
    code = textwrap.dedent(
        f"""
        from buttress import CircuitBreaker
        from buttress.testing import FakeClock
        with FakeClock():  # the same wall time as the test's fake clock
            cb = CircuitBreaker(name={name!r}, fail_max=2, timeout_duration=10, storage={url!r})
            for _ in range(2):
                try:
                    cb.call(lambda: 1 / 0)
                except ZeroDivisionError:
                    pass
            print(cb.state.value)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "open", out.stderr
    with pytest.raises(CircuitOpenError) as info:
        cb.call(lambda: "ok")
    assert info.value.retry_after == pytest.approx(10.0)
    assert seen == [("closed", "open", "changed by another process")]
    assert cb.state is CircuitState.OPEN
    clock.advance(10)
    assert cb.call(lambda: "probe") == "probe"  # the one probe succeeds and closes it
    assert cb.state is CircuitState.CLOSED
    assert seen[-1] == ("half_open", "closed", "half-open probes succeeded")


def test_idle_states_are_swept_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import buttress.backends.sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "SWEEP_EVERY", 10)
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    for i in range(9):  # one-off keys, each fresh again a second later
        store.reserve("api", f"once-{i}", BUCKET, 1, 0.0, T0)
    store.block("api", "blocked", 100.0, T0)  # kept until its block ends
    store.reserve("api", "drained", BUCKET, 2, 0.0, T0)  # fresh again at T0 + 1
    store.block("api", "drained", 0.1, T0)  # a short block does not shorten that
    conn = sqlite3.connect(path)
    count = "SELECT count(*) FROM buttress_state"
    assert conn.execute(count).fetchone()[0] == 11
    store.reserve("api", "late", BUCKET, 1, 0.0, T0 + 0.5)  # the 10th admission: a sweep
    assert conn.execute(count).fetchone()[0] == 12  # nothing idle yet at T0 + 0.5
    for i in range(10):
        store.reserve("api", f"later-{i}", BUCKET, 1, 0.0, T0 + 2)
    keys = {k for (k,) in conn.execute("SELECT key FROM buttress_state")}
    conn.close()
    assert '"blocked"' in keys
    assert not any(k.startswith('"once-') for k in keys)
    assert '"drained"' not in keys  # idle at T0 + 1, swept at T0 + 2


def test_one_name_cannot_be_stored_in_two_places(tmp_path: Path) -> None:
    from buttress import CircuitBreaker

    name = f"twice-{tmp_path.name}"
    CircuitBreaker(name=name)
    with pytest.raises(ValueError, match=r"already registered .*storage='sqlite:.*' vs None"):
        CircuitBreaker(name=name, storage=f"sqlite:///{tmp_path}/b.db")


def test_a_bad_storage_is_an_error_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown storage"):
        RateLimiter(storage="mongodb://localhost")
    with pytest.raises(StorageError, match="does not exist"):
        RateLimiter(storage=f"sqlite:///{tmp_path}/missing/dir/state.db")
    with pytest.raises(ValueError, match="fail_mode must be one of"):
        RateLimiter(fail_mode="maybe")
    with pytest.raises(ValueError, match="local_share must be"):
        RateLimiter(local_share=0)


def test_a_stored_breaker_as_an_async_context_manager(tmp_path: Path, clock: FakeClock) -> None:
    import asyncio

    from buttress import CircuitBreaker, CircuitOpenError

    cb = CircuitBreaker(
        name=f"actx-{tmp_path.name}", fail_max=1, storage=f"sqlite:///{tmp_path}/b.db"
    )

    async def main() -> None:
        async with cb:
            pass
        with pytest.raises(ZeroDivisionError):
            async with cb:
                1 / 0  # noqa: B018
        with pytest.raises(CircuitOpenError):
            async with cb:
                pass

    asyncio.run(main())
    assert cb.state is CircuitState.OPEN


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    assert store.reserve("api", "parent", BUCKET, 1, 0.0, T0)[0]  # the parent has a connection
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_reserve_in_child, args=(store,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert not store.reserve("api", "child", BUCKET, 2, 0.0, T0)[0]  # the child's write landed


def _reserve_in_child(store: SQLiteStore) -> None:
    ok = store.reserve("api", "child", BUCKET, 1, 0.0, T0)[0]
    assert store.integrity_check() == "ok"
    sys.exit(0 if ok else 1)


# --- closing --------------------------------------------------------------------------------------


def _open_files(directory: Path) -> list[str]:
    """The files in ``directory`` this process holds open (from /proc/self/fd)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor is gone already)
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{directory}/"):
                held.append(Path(target).name)
    return sorted(held)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_closed_stores_leave_no_file_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    stores = [open_storage(url) for _ in range(5)]  # what five limiters on one file hold
    for i, store in enumerate(stores):
        assert store.reserve("api", f"main-{i}", BUCKET, 1, 0.0, T0)[0]
    files = ["state.db", "state.db-shm", "state.db-wal"]
    assert _open_files(tmp_path) == files  # one connection for the thread, whatever the stores

    def use_all(tag: str) -> None:
        for i, store in enumerate(stores):
            store.reserve("api", f"{tag}-{i}", BUCKET, 1, 0.0, T0)

    used, finish = threading.Event(), threading.Event()

    def pool_worker() -> None:  # a thread that lives on, as in a worker pool
        use_all("pool")
        used.set()
        finish.wait(30)

    worker = threading.Thread(target=pool_worker)
    worker.start()
    try:
        assert used.wait(30)  # the worker has a connection of its own, and keeps it
        stores[0].close()
        stores[0].close()  # closing twice gives the store back once
        assert stores[1].reserve("api", "after", BUCKET, 1, 0.0, T0)[0]  # the others go on
        with pytest.raises(StorageError, match="closed"):
            stores[0].reserve("api", "after", BUCKET, 1, 0.0, T0)
        for store in stores[1:]:
            store.close()
        assert _open_files(tmp_path) == []  # the last close released every thread's connection
    finally:
        finish.set()
        worker.join(timeout=30)
    again = open_storage(url)  # and the file opens again afterwards
    assert again.reserve("api", "again", BUCKET, 1, 0.0, T0)[0]
    again.close()
    assert _open_files(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_a_thread_that_ends_releases_its_connection(tmp_path: Path) -> None:
    store = open_storage(f"sqlite:///{tmp_path}/state.db")  # opened here, used elsewhere only
    thread = threading.Thread(target=store.reserve, args=("api", "k", BUCKET, 1, 0.0, T0))
    thread.start()
    thread.join(timeout=30)
    assert _open_files(tmp_path) == []  # while the store itself stays open
    assert not store.reserve("api", "k", BUCKET, 2, 0.0, T0)[0]  # (the thread's write landed)
    store.close()


def test_a_file_replaced_under_the_process_is_the_one_used(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    limiter = RateLimiter(storage=f"sqlite:///{path}", clock=clock)
    limiter.configure("api", RateLimitConfig(requests_per_second=1, burst_size=1))
    limiter.check_limit("api")
    for suffix in ("", "-wal", "-shm"):  # an operator removes the file, or restores another
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
    limiter.check_limit("api", key="k")  # k spends its one request here ...
    with pytest.raises(RateLimitExceeded):
        limiter.check_limit("api", key="k")
    # ... in the file at the path now, which every other process opens
    conn = sqlite3.connect(path)
    try:
        keys = [row[0] for row in conn.execute("SELECT key FROM buttress_state")]
    finally:
        conn.close()
    assert keys == [json.dumps("k")]
    other = RateLimiter(storage=f"sqlite:///{path}", clock=clock)
    other.configure("api", RateLimitConfig(requests_per_second=1, burst_size=1))
    with pytest.raises(RateLimitExceeded):
        other.check_limit("api", key="k")
    other.close()
    limiter.close()
