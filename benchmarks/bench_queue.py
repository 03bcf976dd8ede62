"""Queue throughput: buttress's RequestQueue beside plain-SQL floors, persist-queue and huey.

Every queue runs in one process on a fresh SQLite file in WAL mode at the same ``synchronous``
setting (``--synchronous``, default ``normal``, buttress's default: a committed step survives
the process dying; a power loss may take the last commits. ``full`` fsyncs every commit and is
what persist-queue and huey use unless told otherwise).

The floors do the least a durable queue can: enqueue is one ``INSERT`` committed per item;
consume is, per item, a select of the oldest row and its delete, committed. They come written
two ways:

* "floor: INSERT, commit()" is how that is written in Python: the item encoded with
  ``json.dumps``, the ``INSERT`` run on a connection with the ``sqlite3`` module's default
  transaction handling (it opens the transaction), ``commit()`` after each item; the consumer
  decodes what it took. The targets are stated against it; persist-queue and huey measure
  against it the ratios they were first measured at (enqueue about 0.8x and 0.55x, consume
  about 0.2x and 0.25x).
* "bare floor" is the least SQLite itself can do: each statement its own transaction on an
  autocommit connection, a payload written by an f-string. It shows what is left of the
  storage when Python does nothing else.

A third floor adds the one thing an idempotent queue cannot do without, a unique request key (a
hash, as derived keys are), to the bare one: it shows what the key costs apart from the queue;
its rowid-numbered variant writes the pages a buttress put writes (the row and its key's index
entry: AUTOINCREMENT adds a third, its counter). "its store's put alone" times buttress's
storage layer without the request's checks, JSON and key, built before the clock starts (its
consume is the queue's, as above). Rates are items per second, the best of the rounds; each
round runs every queue once, in an order shuffled per round, and ratios are the median over the
rounds of the ratio to a floor of the same round (compare ratios: the machine is shared and its
disk's speed drifts).

Durability is the same for all: a put is committed when it returns. A buttress consumer commits
the acknowledgements of a batch with its next claim (one commit per batch, not per item): a crash
re-runs the requests handled since (at least once, under their idempotency keys), where the
floors, which delete before they handle, would lose one.

    PYTHONPATH=src python benchmarks/bench_queue.py [--items 2000] [--synchronous normal|full]
        [--repeat 25] [--redis-port PORT]   (a redis-server of your own on 127.0.0.1; it is flushed)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buttress.queue import RequestQueue
from buttress.queue.sqlite import SQLiteQueueStore

Timings = tuple[float, float]  # seconds to enqueue n items, seconds to handle them


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def take_oldest(conn: sqlite3.Connection) -> None:
    """The consume floor: per item, one transaction that selects the oldest row and deletes it."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT id, payload FROM q ORDER BY id LIMIT 1").fetchone()
        if row is None:
            conn.execute("COMMIT")
            return
        conn.execute("DELETE FROM q WHERE id = ?", (row[0],))
        conn.execute("COMMIT")


def floor(path: Path, n: int, sync: str) -> Timings:
    """The bare floor: each statement its own transaction, the payload an f-string."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync}")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT)")

    def put() -> None:
        for i in range(n):
            conn.execute("INSERT INTO q (payload) VALUES (?)", (f'{{"args":[{i}]}}',))

    return timed(put), timed(lambda: take_oldest(conn))


def python_floor(path: Path, n: int, sync: str) -> Timings:
    """The floor as Python writes it: ``json.dumps``, ``INSERT`` in the transaction the
    ``sqlite3`` module opens, ``commit()`` per item; the consumer decodes each item it takes."""
    conn = sqlite3.connect(path)  # the module's default transaction handling
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync}")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT)")
    conn.commit()

    def put() -> None:
        for i in range(n):
            conn.execute("INSERT INTO q (payload) VALUES (?)", (json.dumps({"args": [i]}),))
            conn.commit()

    def take() -> None:
        while True:
            row = conn.execute("SELECT id, payload FROM q ORDER BY id LIMIT 1").fetchone()
            if row is None:
                conn.commit()
                return
            conn.execute("DELETE FROM q WHERE id = ?", (row[0],))
            conn.commit()
            json.loads(row[1])

    return timed(put), timed(take)


def keyed_floor(path: Path, n: int, sync: str, *, rowid: bool = False) -> Timings:
    """The floor with what an idempotent queue cannot do without: a unique request key (a hash,
    as derived keys are), so that a put of a key already queued adds nothing. ``rowid``: numbered
    by the rowid instead of AUTOINCREMENT (as buttress numbers its items), so that a put writes
    the two pages a buttress put writes, the row and its key's index entry."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync}")
    numbered = "INTEGER PRIMARY KEY" if rowid else "INTEGER PRIMARY KEY AUTOINCREMENT"
    conn.execute(f"CREATE TABLE q (id {numbered}, key TEXT UNIQUE, payload TEXT)")

    def put() -> None:
        for i in range(n):
            payload = f'{{"args":[{i}]}}'
            key = hashlib.sha256(payload.encode()).hexdigest()[:32]
            conn.execute("INSERT OR IGNORE INTO q (key, payload) VALUES (?, ?)", (key, payload))

    return timed(put), timed(lambda: take_oldest(conn))


def buttress_queue(path: Path, n: int, sync: str, *, prebuilt: bool = False) -> Timings:
    """``prebuilt``: the requests are built (checked, encoded, keyed) before the clock starts
    and go straight to the store's ``put``, the storage layer alone."""
    store = SQLiteQueueStore(path, synchronous=sync)
    q = RequestQueue("bench", storage=store)  # the default depth bound, checked per put
    seen = 0

    @q.handler
    def work(i: int) -> None:
        nonlocal seen
        seen += 1

    if prebuilt:
        rows = [q._row("work", [i], None, None, None, None, None) for i in range(n)]
        depth = q.max_depth
        enqueue = timed(
            lambda: [store.put_row("bench", row, depth, row[4]) for row in rows] and None
        )
    else:
        enqueue = timed(lambda: [q.put("work", [i]) for i in range(n)] and None)
    consume = timed(lambda: q.process() and None)
    assert seen == n, seen
    q.close()
    store.close()
    return enqueue, consume


def persist_queue(path: Path, n: int, sync: str) -> Timings | None:
    try:
        from persistqueue import SQLiteAckQueue
    except ImportError:
        return None
    q = SQLiteAckQueue(str(path), auto_commit=True, multithreading=False)
    for conn in (q._putter, q._getter):
        conn.execute(f"PRAGMA synchronous = {sync}")

    def take() -> None:
        for _ in range(n):
            item = q.get(block=False)
            q.ack(item)

    enqueue = timed(lambda: [q.put({"args": [i]}) for i in range(n)] and None)
    consume = timed(take)
    return enqueue, consume


def huey_queue(path: Path, n: int, sync: str) -> Timings | None:
    try:
        from huey import SqliteHuey
        from huey.storage import SqliteStorage
    except ImportError:
        return None

    class AtSetting(SqliteStorage):  # type: ignore[misc]
        """huey's own storage, at the run's setting (its fsync flag offers only off and full)."""

        def _create_connection(self) -> Any:
            conn = super()._create_connection()
            conn.execute(f"PRAGMA synchronous = {sync}")
            return conn

    huey = SqliteHuey(filename=str(path), storage_class=AtSetting, results=False)
    seen = 0

    @huey.task()
    def work(i: int) -> None:
        nonlocal seen
        seen += 1

    def take() -> None:
        while True:
            task = huey.dequeue()
            if task is None:
                return
            huey.execute(task)

    enqueue = timed(lambda: [work(i) for i in range(n)] and None)
    consume = timed(take)
    assert seen == n, seen
    return enqueue, consume


def redis_floor(client: Any, n: int) -> Timings:
    client.flushdb()
    client.xgroup_create("floor", "g", id="0", mkstream=True)

    def put() -> None:
        for i in range(n):
            client.xadd("floor", {"a": f'{{"args":[{i}]}}'})

    def take() -> None:
        while True:
            got = client.xreadgroup("g", "c", {"floor": ">"}, count=1)
            if not got:
                return
            ((_, ((sid, _fields),)),) = got
            pipe = client.pipeline(transaction=False)
            pipe.xack("floor", "g", sid)
            pipe.xdel("floor", sid)
            pipe.execute()

    return timed(put), timed(take)


def redis_queue(client: Any, n: int, storage: object = None) -> Timings:
    """The queue on the Redis store, through ``storage`` (a URL: buttress's wire; else the
    redis-py ``client``): one script per put, one per claim of a batch, one per ack."""
    client.flushdb()
    q = RequestQueue("bench", storage=client if storage is None else storage, max_depth=None)
    seen = 0

    @q.handler
    def work(i: int) -> None:
        nonlocal seen
        seen += 1

    enqueue = timed(lambda: [q.put("work", [i]) for i in range(n)] and None)
    consume = timed(lambda: q.process() and None)
    assert seen == n, seen
    q.close()
    return enqueue, consume


def redis_table(port: int, n: int, repeat: int) -> None:
    import redis

    client = redis.Redis(port=port)
    url = f"redis://127.0.0.1:{port}/0"
    floor_name = "floor (XADD / XREADGROUP+XACK)"
    runners: dict[str, Callable[[Any, int], Timings | None]] = {
        floor_name: redis_floor,
        "buttress RequestQueue, redis://": lambda c, k: redis_queue(c, k, url),
        "buttress RequestQueue, redis-py": redis_queue,
    }
    rounds = []
    for r in range(repeat):
        got = {name: runners[name](client, n) for name in shuffled(list(runners), r)}
        rounds.append({name: got[name] for name in runners})
    client.flushdb()
    client.close()
    report(f"{n} items, Redis on 127.0.0.1:{port}", rounds, [floor_name], n)


def report(title: str, rounds: list[dict[str, Timings | None]], bases: list[str], n: int) -> None:
    """Rates are the best of the rounds; ratios are the median over the rounds of each round's
    ratio to a floor timed beside it (a drift of the machine's speed moves both), with the
    lowest and highest; one column of ratios per floor in ``bases``."""
    print(f"{title}, {len(rounds)} rounds")
    heads = "".join(f" {'x ' + chr(ord('A') + k) + ' (range)':>18}" for k in range(len(bases)))
    print(f"{'queue':34} {'enqueue/s':>10}{heads} {'consume/s':>10}{heads}")
    for name in rounds[0]:
        got = [r[name] for r in rounds]
        cells = []
        for step in (0, 1):
            times = [g[step] for g in got if g is not None]
            if not times:
                cells.append(f"{'n/a':>10}" + " " * (19 * len(bases)))
                continue
            cell = f"{n / min(times):10.0f}"
            for base in bases:
                ratios = sorted(
                    r[base][step] / g[step]  # type: ignore[index]
                    for r, g in zip(rounds, got, strict=True)
                    if g is not None
                )
                mid = statistics.median(ratios)
                cell += f" {f'{mid:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})':>18}"
            cells.append(cell)
        print(f"{name:34} {cells[0]} {cells[1]}")
    for k, base in enumerate(bases):
        print(f"  x {chr(ord('A') + k)}: the ratio to {base.strip()!r}")


def shuffled(names: list[str], r: int) -> list[str]:
    """The order of round ``r``: ``names`` shuffled with the round's number as the seed. A
    queue's time depends on what ran just before it (whose writes the kernel may still be
    flushing): in one fixed order, rotated or not, each queue always follows the same other."""
    order = names[:]
    random.Random(r).shuffle(order)
    return order


def run_round(
    runners: dict[str, Callable[[Path, int, str], Timings | None]],
    r: int,
    path: Callable[[int], Path],
    n: int,
    sync: str,
) -> dict[str, Timings | None]:
    """Round ``r``: every queue once, in the round's own order (:func:`shuffled`)."""
    names = list(runners)
    got = {name: runners[name](path(names.index(name)), n, sync) for name in shuffled(names, r)}
    return {name: got[name] for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--synchronous", choices=["off", "normal", "full"], default="normal")
    parser.add_argument("--repeat", type=int, default=25, help="rounds (each runs every queue)")
    parser.add_argument("--redis-port", type=int, default=0, help="also run on this Redis")
    opts = parser.parse_args()
    n, sync = opts.items, opts.synchronous
    floor_name = "floor: INSERT, commit()"
    bare_name = "bare floor (autocommit statements)"
    runners: dict[str, Callable[[Path, int, str], Timings | None]] = {
        floor_name: python_floor,
        bare_name: floor,
        "floor with a unique key": keyed_floor,
        "  the same, rowid-numbered": lambda p, n, sync: keyed_floor(p, n, sync, rowid=True),
        "buttress RequestQueue": buttress_queue,
        "  its store's put alone": lambda p, n, sync: buttress_queue(p, n, sync, prebuilt=True),
        "persist-queue SQLiteAckQueue": persist_queue,
        "huey SqliteHuey": huey_queue,
    }
    with tempfile.TemporaryDirectory() as tmp:
        rounds = [
            run_round(runners, r, lambda index, r=r: Path(tmp) / f"{r}-{index}.db", n, sync)
            for r in range(opts.repeat)
        ]
    report(f"{n} items, SQLite WAL, synchronous={sync}", rounds, [floor_name, bare_name], n)
    if opts.redis_port:
        redis_table(opts.redis_port, n, opts.repeat)


if __name__ == "__main__":
    main()
