"""A producer or consumer process for the queue's kill tests (run as a script).

    queue_worker.py produce QUEUE_DB COUNT PREFIX
    queue_worker.py consume QUEUE_DB EFFECTS_DB [--batch N] [--lease S] [--die-at N]
        [--until-flag PATH] [--max-attempts N]

The handler writes, in one transaction of the effects database, a row to ``runs`` (every run,
with its attempt) and, keyed by the idempotency key, a row to ``effects`` (once per key): the
effect the application makes idempotent with the key. It prints ``ran`` after each run.
``--die-at N`` makes the process SIGKILL itself right after its Nth run's effect committed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import threading

from buttress.queue import RequestQueue, current_request


def effects_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, attempt INTEGER, pid INTEGER)")
    conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, n INTEGER)")
    return conn


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["produce", "consume"])
    parser.add_argument("queue_db")
    parser.add_argument("arg")
    parser.add_argument("prefix", nargs="?", default="")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--die-at", type=int, default=0)
    parser.add_argument("--until-flag", default="")
    parser.add_argument("--max-attempts", type=int, default=5)
    opts = parser.parse_args()
    storage = opts.queue_db if "://" in opts.queue_db else f"sqlite:///{opts.queue_db}"
    q = RequestQueue(
        "kill",
        storage=storage,
        batch=opts.batch,
        visibility_timeout=opts.lease,
        max_depth=None,
        max_attempts=opts.max_attempts,
    )
    runs = 0

    @q.handler
    def effect(n: int) -> None:
        nonlocal runs
        request = current_request()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO runs VALUES (?, ?, ?)", (request.key, request.attempt, os.getpid())
        )
        conn.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (request.key, n))
        conn.execute("COMMIT")
        runs += 1
        print("ran", flush=True)
        if runs == opts.die_at:
            os.kill(os.getpid(), signal.SIGKILL)

    if opts.role == "produce":
        for i in range(int(opts.arg)):
            q.put("effect", [i], key=f"{opts.prefix}{i}")
        print("queued", flush=True)
        return 0
    conn = effects_db(opts.arg)
    idle = threading.Event()
    while True:
        if q.process() == 0:
            stats = q.stats()
            finished = not opts.until_flag or os.path.exists(opts.until_flag)
            if finished and stats.depth == 0:
                break
            idle.wait(0.02)  # nothing due: poll again shortly
    print("drained", flush=True)
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
