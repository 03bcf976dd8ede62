"""The queue against SIGKILL and concurrency: real processes on one SQLite file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

WORKER = str(Path(__file__).with_name("queue_worker.py"))
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(
        [sys.executable, WORKER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "database is locked" not in err
    return out


def runs(effects: Path) -> tuple[list[tuple[str, int]], list[str]]:
    conn = sqlite3.connect(effects)
    try:
        ran = [(k, a) for k, a in conn.execute("SELECT key, attempt FROM runs")]
        done = [k for (k,) in conn.execute("SELECT key FROM effects")]
    finally:
        conn.close()
    return ran, done


def test_killed_with_1000_queued_all_delivered_once(tmp_path: Path) -> None:
    db, effects = tmp_path / "q.db", tmp_path / "effects.db"
    assert "queued" in finish(spawn("produce", str(db), "1000", "k"))
    worker = spawn("consume", str(db), str(effects), "--lease", "0.5")
    assert worker.stdout is not None
    for _ in range(300):  # killed mid-queue, after 300 runs
        assert worker.stdout.readline() == "ran\n"
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=60)
    ran, done = runs(effects)
    assert 300 <= len(ran) < 1000
    assert "drained" in finish(spawn("consume", str(db), str(effects), "--lease", "0.5"))
    ran, done = runs(effects)
    assert sorted(done) == sorted(f"k{i}" for i in range(1000))  # every effect exactly once
    again = [k for k, n in Counter(k for k, _ in ran).items() if n > 1]
    assert len(again) <= 16  # at most the batch the killed worker held ran twice


def test_worker_killed_with_50_in_flight(tmp_path: Path) -> None:
    db, effects = tmp_path / "q.db", tmp_path / "effects.db"
    finish(spawn("produce", str(db), "200", "k"))
    worker = spawn(
        "consume", str(db), str(effects), "--batch", "50", "--lease", "0.5", "--die-at", "60"
    )
    worker.communicate(timeout=120)
    assert worker.returncode == -signal.SIGKILL
    in_flight = {f"k{i}" for i in range(50, 100)}  # the second batch of 50
    first, _ = runs(effects)
    assert len(first) == 60
    finish(spawn("consume", str(db), str(effects), "--batch", "50", "--lease", "0.5"))
    ran, done = runs(effects)
    assert sorted(done) == sorted(f"k{i}" for i in range(200))
    later = ran[60:]
    retried = {k for k, a in later if a > 1}
    # only those 50 may run again: the tenth, whose effect committed but whose acknowledgement
    # never happened, runs again (its effect, keyed, does not repeat), as do the forty not
    # started, and those of the nine handled before it whose acknowledgement still waited for
    # the next claim or heartbeat (acknowledgements share a commit)
    assert {f"k{i}" for i in range(59, 100)} <= retried <= in_flight
    assert all(a == 2 for k, a in later if k in in_flight)  # with their attempt raised
    assert all(a == 1 for k, a in ran if k not in in_flight)
    assert Counter(k for k, _ in ran).most_common(1)[0][1] <= 2


def test_four_producers_four_consumers(tmp_path: Path) -> None:
    db, effects = tmp_path / "q.db", tmp_path / "effects.db"
    flag = tmp_path / "produced"
    finish(spawn("produce", str(db), "0", "warm"))  # creates the file before the crowd
    consumers = [
        spawn("consume", str(db), str(effects), "--until-flag", str(flag)) for _ in range(4)
    ]
    producers = [spawn("produce", str(db), "1000", f"p{p}-") for p in range(4)]
    for proc in producers:
        assert "queued" in finish(proc)
    flag.touch()
    for proc in consumers:
        assert "drained" in finish(proc)
    ran, done = runs(effects)
    assert len(done) == 4000
    assert set(done) == {f"p{p}-{i}" for p in range(4) for i in range(1000)}
    assert len(ran) == 4000  # leases held: nothing handled twice


def test_twenty_kills_lose_nothing_and_repeat_no_effect(tmp_path: Path) -> None:
    db, effects = tmp_path / "q.db", tmp_path / "effects.db"
    finish(spawn("produce", str(db), "600", "k"))
    # A worker that dies holding a batch raises the attempts of all of it: a batch held by five
    # of these kills would go to the dead letters as a poison batch would (max_attempts, 5 by
    # default). This test is about losing nothing, so it allows more deliveries.
    attempts = ("--max-attempts", "100")
    for kill in range(20):
        worker = spawn(
            "consume", str(db), str(effects), "--lease", "0.3", "--batch", "8", *attempts
        )
        assert worker.stdout is not None
        for _ in range(5 + kill % 7):  # killed at a different point each time
            if worker.stdout.readline() != "ran\n":
                break
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=60)
    assert "drained" in finish(spawn("consume", str(db), str(effects), "--lease", "0.3", *attempts))
    ran, done = runs(effects)
    assert sorted(done) == sorted(f"k{i}" for i in range(600))  # none lost, each effect once
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM buttress_queue_dead").fetchone()[0] == 0
    finally:
        conn.close()
    assert len(ran) >= 600


def test_redis_consumer_killed_mid_handler(redis_port: int, tmp_path: Path) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis(port=redis_port)
    client.flushdb()
    url, effects = f"redis://127.0.0.1:{redis_port}/0", tmp_path / "effects.db"
    finish(spawn("produce", url, "200", "k"))
    doomed = spawn("consume", url, str(effects), "--lease", "0.5", "--batch", "10", "--die-at", "5")
    # The other consumer starts only once the doomed one holds a claimed batch of 10, so the
    # doomed one reaches its 5th run whatever the scheduling (else the other may drain it all).
    assert doomed.stdout is not None
    assert doomed.stdout.readline() == "ran\n"
    other = spawn("consume", url, str(effects), "--lease", "0.5", "--batch", "10")
    doomed.communicate(timeout=120)
    assert doomed.returncode == -signal.SIGKILL
    assert "drained" in finish(other)
    ran, done = runs(effects)
    assert sorted(done) == sorted(f"k{i}" for i in range(200))
    twice = {k for k, n in Counter(k for k, _ in ran).items() if n > 1}
    assert len(twice) <= 10  # only the batch the killed consumer held ...
    assert {k for k, a in ran if a > 1} >= twice  # ... redelivered after its lease
    assert all(a <= 2 for _, a in ran)
    client.flushdb()
    client.close()


def test_redis_two_consumer_processes_handle_each_request_once(
    redis_port: int, tmp_path: Path
) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis(port=redis_port)
    client.flushdb()
    url, effects = f"redis://127.0.0.1:{redis_port}/0", tmp_path / "effects.db"
    flag = tmp_path / "produced"
    consumers = [
        spawn(
            "consume", url, str(effects), "--lease", "5", "--batch", "4", "--until-flag", str(flag)
        )
        for _ in range(2)
    ]
    assert "queued" in finish(spawn("produce", url, "300", "k"))
    flag.touch()
    for proc in consumers:
        assert "drained" in finish(proc)
    ran, done = runs(effects)
    assert sorted(done) == sorted(f"k{i}" for i in range(300))
    assert len(ran) == 300  # leases held: nothing handled twice
    assert all(a == 1 for _, a in ran)
    client.flushdb()
    client.close()
