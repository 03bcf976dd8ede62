"""Killed workers: what a SIGKILL mid-queue costs buttress's RequestQueue, huey and persist-queue.

Theory of operation. For each queue and each kill, a fresh queue file gets N items, each with a
key (``k0`` ... ``k{N-1}``), put by a producer process. A worker process then takes them one at a
time; its handler writes, in one transaction of a separate SQLite effects database, a ``runs``
row (every execution: what a handler that is NOT idempotent does) and an ``effects`` row keyed by
the item, ``INSERT OR IGNORE`` (what a handler made idempotent with a key does). buttress's
handler takes the key from ``current_request().key``; huey's and persist-queue's from the item's
own payload, as an application would. The worker prints a line per run; the parent SIGKILLs it
after reading the k-th line, k varied per kill (so the kill lands wherever the worker then is:
between taking an item and its effect, between the effect and the acknowledgement, or in a
claim). A second worker of the same kind then drains the queue. One kill per fresh queue, so each
kill is counted on its own:

* lost: items without an effect after the drain (never ran to completion, and never will);
* re-run: items with more than one ``runs`` row (a non-idempotent handler's effect duplicated);
* duplicated keyed effects: ``effects`` rows beyond one per key (none can exist where the
  application carries a key; what differs is who supplies the key and whether the item comes
  back at all).

All three run at the same durability: every queue file and the effects file in WAL mode with
``synchronous = FULL`` (huey sets ``synchronous`` only to OFF or FULL, through its ``fsync``
flag; for a SIGKILL, as opposed to a power loss, NORMAL would keep the same commits). Every wait
is bounded: reads of the worker's output poll with a deadline, and a worker still running past
its timeout is killed and the kill reported as stuck.

The workers: buttress, ``RequestQueue.process()`` in a loop (batches of 16, lease 0.5 s so the
drain does not wait long for the killed worker's leases); huey, ``SqliteHuey`` run by its own
``huey.consumer.Consumer`` (one worker thread, short polling delay; the drain stops it with
SIGINT, its graceful stop, once its queue is empty); persist-queue, ``SQLiteAckQueue`` with
``get()``, the handler, ``ack()`` (a new queue object resumes unacknowledged items).

    PYTHONPATH=src python benchmarks/bench_queue_kill.py [--kills 20] [--items 200]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SYNCHRONOUS = "full"  # huey offers only OFF or FULL; every file here uses the same
RUN_TIMEOUT = 120.0  # seconds a worker may take before it is killed and the kill marked stuck


def effects_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
    conn.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, pid INTEGER)")
    conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
    return conn


def effect_writer(path: str, quiet: bool) -> Callable[[str], None]:
    conn = effects_db(path)
    lock = threading.Lock()  # huey runs the handler in its worker thread

    def effect(key: str) -> None:
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO runs VALUES (?, ?)", (key, os.getpid()))
            conn.execute("INSERT OR IGNORE INTO effects VALUES (?)", (key,))
            conn.execute("COMMIT")
        if not quiet:
            print("ran", flush=True)

    return effect


# --- the worker side (this file run as a script with "worker") ---------------------------------


def buttress_worker(role: str, qdir: str, effects: str, n: int, quiet: bool) -> None:
    from buttress.queue import RequestQueue, current_request
    from buttress.queue.sqlite import SQLiteQueueStore

    store = SQLiteQueueStore(Path(qdir) / "q.db", synchronous=SYNCHRONOUS)
    q = RequestQueue("kill", storage=store, visibility_timeout=0.5, max_depth=None)

    if role == "produce":

        @q.handler
        def effect(i: int) -> None:
            raise AssertionError("the producer runs nothing")

        for i in range(n):
            q.put("effect", [i], key=f"k{i}")
        return
    write = effect_writer(effects, quiet)

    @q.handler  # type: ignore[no-redef]
    def effect(i: int) -> None:
        write(current_request().key)

    idle = threading.Event()
    while True:
        if q.process() == 0:
            if q.stats().depth == 0:
                break
            idle.wait(0.02)  # the killed worker's leases have not expired yet
    q.close()
    store.close()


def huey_worker(role: str, qdir: str, effects: str, n: int, quiet: bool) -> None:
    from huey import SqliteHuey
    from huey.consumer import Consumer

    huey = SqliteHuey(
        filename=str(Path(qdir) / "huey.db"), fsync=SYNCHRONOUS == "full", results=False
    )
    write: Callable[[str], None] | None = None

    @huey.task()  # type: ignore[misc]
    def effect(item: dict[str, Any]) -> None:
        assert write is not None
        write(item["key"])

    if role == "produce":
        for i in range(n):
            effect({"key": f"k{i}", "n": i})
        return
    write = effect_writer(effects, quiet)
    if role == "drain":

        def stop_when_empty() -> None:
            # the consumer deletes a task's row as it takes it: an empty queue, twice in a row,
            # means the last task is taken; SIGINT is the consumer's graceful stop, which lets
            # it finish that task
            empty = 0
            while empty < 2:
                empty = empty + 1 if huey.pending_count() == 0 else 0
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=stop_when_empty, daemon=True).start()
    consumer = Consumer(
        huey,
        workers=1,
        periodic=False,
        initial_delay=0.01,
        backoff=1.0,
        max_delay=0.01,
        check_worker_health=False,
    )
    consumer.run()


def persist_worker(role: str, qdir: str, effects: str, n: int, quiet: bool) -> None:
    from persistqueue import SQLiteAckQueue
    from persistqueue.exceptions import Empty

    q = SQLiteAckQueue(str(Path(qdir) / "pq"), auto_commit=True, multithreading=False)
    for conn in (q._putter, q._getter):
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
    if role == "produce":
        for i in range(n):
            q.put({"key": f"k{i}", "n": i})
        return
    write = effect_writer(effects, quiet)
    while True:
        try:
            item = q.get(block=False)
        except Empty:
            break
        write(item["key"])
        q.ack(item)


WORKERS = {
    "buttress RequestQueue": buttress_worker,
    "huey SqliteHuey": huey_worker,
    "persist-queue SQLiteAckQueue": persist_worker,
}


# --- the parent side ------------------------------------------------------------------------------


def spawn(lib: str, role: str, qdir: Path, effects: Path, n: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    args = [sys.executable, __file__, "worker", lib, role, str(qdir), str(effects), str(n)]
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE if role == "consume" else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def wait(proc: subprocess.Popen[bytes], what: str) -> None:
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise TimeoutError(f"{what} still running after {RUN_TIMEOUT:.0f} s") from None


def kill_after(proc: subprocess.Popen[bytes], k: int) -> int:
    """SIGKILL the worker once it has reported k runs (or has exited, or the deadline passed);
    returns the runs it reported."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen, deadline = 0, time.monotonic() + RUN_TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while seen < k and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # it exited by itself (drained everything first)
            seen += chunk.count(b"\n")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    return seen


def one_kill(lib: str, n: int, k: int, root: Path) -> dict[str, int]:
    qdir, effects = Path(tempfile.mkdtemp(dir=root)), root / f"effects-{time.monotonic_ns()}.db"
    effects_db(str(effects)).close()
    wait(spawn(lib, "produce", qdir, effects, n), f"{lib} producer")
    worker = spawn(lib, "consume", qdir, effects, n)
    killed_after = kill_after(worker, k)
    wait(spawn(lib, "drain", qdir, effects, n), f"{lib} drain")
    conn = sqlite3.connect(effects)
    try:
        per_key = dict(conn.execute("SELECT key, COUNT(*) FROM runs GROUP BY key").fetchall())
        keyed = conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM effects").fetchone()
        done = {key for (key,) in conn.execute("SELECT key FROM effects")}
    finally:
        conn.close()
    keys = {f"k{i}" for i in range(n)}
    return {
        "killed_after": killed_after,
        "lost": len(keys - done),
        "rerun": sum(1 for c in per_key.values() if c > 1),
        "keyed_dup": keyed[0] - keyed[1],
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        lib, role, qdir, effects, n = sys.argv[2:7]
        WORKERS[lib](role, qdir, effects, int(n), quiet=role != "consume")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--verbose", action="store_true", help="print each kill")
    opts = parser.parse_args()
    if opts.kills < 1 or opts.items < 10:
        parser.error("--kills must be >= 1 and --items >= 10")
    n = opts.items
    # kill points spread over the queue, from 5 to about 3/4 of it, a different one each time
    points = [5 + (i * 37) % max(1, (3 * n) // 4) for i in range(opts.kills)]
    print(
        f"{opts.kills} kills per queue, one per fresh queue of {n} keyed items; "
        f"SQLite WAL, synchronous={SYNCHRONOUS.upper()} for every queue and the effects table"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lib in WORKERS:
            start = time.perf_counter()
            results, stuck = [], 0
            for k in points:
                try:
                    r = one_kill(lib, n, k, Path(tmp))
                except TimeoutError as exc:
                    print(f"  {lib}: kill after {k}: {exc}")
                    stuck += 1
                    continue
                results.append(r)
                if opts.verbose:
                    print(f"  {lib}: target {k}, killed after {r['killed_after']}: {r}")
            rows.append(
                (
                    lib,
                    len(results),
                    sum(1 for r in results if r["lost"]),
                    sum(r["lost"] for r in results),
                    sum(1 for r in results if r["rerun"]),
                    sum(r["rerun"] for r in results),
                    sum(r["keyed_dup"] for r in results),
                    stuck,
                    time.perf_counter() - start,
                )
            )
    print()
    print(
        "| queue | kills | kills with a lost item | items lost | kills with a re-run item "
        "| items re-run | duplicated effects with keys | stuck | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row[:-1]) + f" | {row[-1]:.1f} |")
    print(f"killed after reading k runs, k = {json.dumps(points)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
