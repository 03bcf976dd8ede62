"""The queue on Redis Streams with real (short) leases against a real redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buttress.errors import StorageUnavailable
from buttress.queue import RequestQueue, current_request
from buttress.queue.store import Item

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
    # 0.5 s leases: long enough that a stalled machine does not end them before b's first poll
    a = RequestQueue("jobs", storage=client, visibility_timeout=0.5, batch=40)
    b = RequestQueue("jobs", storage=client, visibility_timeout=0.5, batch=5)
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
    drain(b)  # then XAUTOCLAIM pages through them, one at a time (their worker died)
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


def test_heartbeat_holds_a_handler_running_ten_leases(client: Any, redis_port: int) -> None:
    # a 0.3 s lease (renewed every 0.1 s), a handler that runs 3 s while another consumer keeps
    # polling the queue: without the heartbeat the poller would claim the entry after 0.3 s and
    # run it again
    url = f"redis://127.0.0.1:{redis_port}/0"
    a = RequestQueue("jobs", storage=url, visibility_timeout=0.3)
    b = RequestQueue("jobs", storage=url, visibility_timeout=0.3)
    started, finish = threading.Event(), threading.Event()
    runs: list[tuple[str, int]] = []

    @a.handler
    def work(x: int) -> None:
        runs.append((a.owner, current_request().attempt))
        started.set()
        assert finish.wait(30)

    @b.handler("work")
    def stolen(x: int) -> None:
        runs.append((b.owner, current_request().attempt))

    a.put("work", [1])
    worker = threading.Thread(target=a.process)
    worker.start()
    assert started.wait(30)
    polls, pause = 0, threading.Event()
    end = time.monotonic() + 3.0  # ten leases
    while time.monotonic() < end:
        b.process()
        polls += 1
        pause.wait(0.01)
    finish.set()
    worker.join(30)
    assert polls > 20
    assert runs == [(a.owner, 1)]  # never redelivered
    assert a.stats().depth == 0
    a.close()
    b.close()


def test_no_two_consumers_hold_an_entry_at_once(client: Any, redis_port: int) -> None:
    # four consumers racing for 200 entries with leases that hold: each handled exactly once
    url = f"redis://127.0.0.1:{redis_port}/0"
    queues = [RequestQueue("jobs", storage=url, visibility_timeout=5, batch=7) for _ in range(4)]
    handled: list[str] = []
    lock = threading.Lock()

    def work(x: int) -> None:
        with lock:
            handled.append(current_request().key)

    for q in queues:
        q.handler(work)
    keys = {queues[0].put("work", [i]).key for i in range(200)}
    threads = [threading.Thread(target=q.process) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(handled) == sorted(keys)
    for q in queues:
        q.close()


def test_a_retry_backs_off_by_the_queue_clock_and_replay_ends_it(client: Any) -> None:
    q = RequestQueue("jobs", storage=client, retry_delay=3600, visibility_timeout=0.2)
    down = True
    runs: list[int] = []

    @q.handler
    def work() -> None:
        runs.append(current_request().attempt)
        if down:
            raise ConnectionError("down")

    q.put("work")
    assert q.process() == 1
    stats = q.stats()
    assert (stats.delayed, stats.in_flight, stats.waiting) == (1, 0, 0)
    pause = threading.Event()
    for _ in range(20):  # two leases and more: a retry an hour away is not due
        assert q.process() == 0
        pause.wait(0.02)
    down = False
    assert q.replay() == 1
    assert runs == [1, 2]
    assert q.stats().depth == 0
    q.close()


def test_entries_deleted_while_pending_are_cleaned_up(client: Any) -> None:
    a = RequestQueue("jobs", storage=client, visibility_timeout=0.2)
    b = RequestQueue("jobs", storage=client, visibility_timeout=0.2)
    seen: list[int] = []
    for q in (a, b):
        q.handler("work")(seen.append)
    for i in range(3):
        a.put("work", [i])
    held = a._claim()  # a dies holding all three ...
    for item in held:
        a._heartbeat.release(item.id)
    stream = next(k for k in client.keys("buttress:queue:*") if k.endswith(b":stream"))
    client.xdel(stream, f"{held[1].id >> 20}-{held[1].id & 0xFFFFF}")
    drain(b)  # ... and one of them is deleted meanwhile
    assert seen == [0, 2]
    attempts = stream[: -len(b"stream")] + b"attempts"
    assert client.hlen(attempts) == 0
    assert client.xpending(stream, "workers")["pending"] == 0
    a.close()
    b.close()


def test_one_queue_lives_in_one_slot(client: Any) -> None:
    from buttress.backends.redis_wire import key_slot

    q = RequestQueue("a{b}c", storage=client)
    q.handler("work")(lambda: None)
    q.put("work")
    keys = [k.decode() for k in client.keys("buttress:queue:*")]
    assert len(keys) >= 2
    assert len({key_slot(k) for k in keys}) == 1
    assert q.store.queues() == ["a{b}c"]
    q.close()


def test_outlives_a_redis_outage(tmp_path: Path) -> None:
    from redis_server import start

    data = tmp_path / "data"
    data.mkdir()
    options = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(data))
    server = start(*options)
    port = server.port
    url = f"redis://127.0.0.1:{port}/0"
    producer = RequestQueue("jobs", storage=url, max_depth=None)
    worker = RequestQueue("jobs", storage=url, visibility_timeout=0.5, batch=4)
    handled: set[str] = set()
    first, down = threading.Event(), threading.Event()

    def work(x: int) -> None:
        if x == 3 and not down.is_set():  # in its handler when Redis goes: its ack fails
            first.set()
            assert down.wait(30)
            return
        handled.add(current_request().key)

    producer.handler("work")(work)
    worker.handler(work)
    for i in range(50):
        producer.put("work", [i], key=f"k{i}")
    stop = threading.Event()
    runner = threading.Thread(target=worker.run, args=(stop,), kwargs={"poll": 0.05})
    runner.start()
    try:
        assert first.wait(30)
        server.stop()  # an outage, mid-queue and mid-handler
        down.set()
        server = start(*options, port=port)  # back on the same port, with its data
        for i in range(50, 100):
            for _ in range(100):  # a connection from before the outage fails once; put again
                try:
                    producer.put("work", [i], key=f"k{i}")  # (a repeat adds nothing: keyed)
                    break
                except StorageUnavailable:
                    pass
        wanted, pause = {f"k{i}" for i in range(100)}, threading.Event()
        for _ in range(1500):
            if handled >= wanted and worker.stats().depth == 0:
                break
            pause.wait(0.02)
        assert handled == wanted  # nothing lost
        assert worker.stats().depth == 0
    finally:
        stop.set()
        runner.join(30)
        producer.close()
        worker.close()
        server.stop()


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    import os

    from redis_cluster import start_cluster
    from redis_server import RedisUnavailable

    try:
        started = start_cluster()
    except RedisUnavailable as exc:
        if os.environ.get("BUTTRESS_REQUIRE_REDIS") == "1":
            pytest.fail(f"BUTTRESS_REQUIRE_REDIS=1 but no Redis Cluster: {exc}")
        pytest.skip(f"no Redis Cluster: {exc}")
    try:
        yield started.url
    finally:
        started.stop()


def poisoned(storage: object, name: str) -> None:
    """Four requests handled and one dead letter on queue ``name``."""
    q = RequestQueue(name, storage=storage, visibility_timeout=0.2, max_attempts=1)
    seen: list[int] = []

    @q.handler
    def work(x: int) -> None:
        if x == 3:
            raise ValueError("poison")
        seen.append(x)

    for i in range(5):
        q.put("work", [i])
    drain(q)
    assert sorted(seen) == [0, 1, 2, 4], (name, storage, q.counts)
    assert [d.last_error for d in q.dead_letters()] == ["ValueError: poison"]
    assert q.purge_dead() == 1
    assert name in q.store.queues()
    q.close()


def test_queues_on_a_cluster(cluster_url: str) -> None:
    from buttress.backends.redis_wire import key_slot

    names = ["orders", "mail", "reports", "a{b}"]
    # the queues' slots are spread over the three masters
    assert len({key_slot(f"buttress:queue:{{{n}}}:stream") // 5462 for n in names}) >= 2
    for name in names:
        poisoned(cluster_url, f"{name}-wire")
    first = cluster_url.replace("redis+cluster://", "redis://").split(",")[0]
    client = redis.cluster.RedisCluster.from_url(first)
    for name in names:
        poisoned(client, f"{name}-client")
    client.close()


def test_a_batch_whose_worker_died_comes_back_one_entry_per_claim(client: Any) -> None:
    q = RequestQueue("jobs", storage=client, visibility_timeout=0.2, batch=4)
    q.handler("work")(lambda x: None)
    for i in range(4):
        q.put("work", [i])
    held = q._claim()  # its worker dies holding all four
    assert len(held) == 4
    for item in held:
        q._heartbeat.release(item.id)
    pause = threading.Event()
    claims: list[list[Item]] = []
    for _ in range(200):
        got = q._claim()
        if got:
            claims.append(got)
            for item in got:
                q._heartbeat.release(item.id)
            if sum(len(c) for c in claims) == 4:
                break
        else:
            pause.wait(0.02)  # until the leases run out (Redis measures them)
    assert [len(c) for c in claims] == [1, 1, 1, 1]  # alone: any of them may be what kills
    assert sorted(c[0].id for c in claims) == sorted(item.id for item in held)
    assert {c[0].attempts for c in claims} == {2}
    q.close()


def test_retries_not_yet_due_never_hold_back_new_entries(client: Any) -> None:
    q = RequestQueue("jobs", storage=client, visibility_timeout=0.1, retry_delay=3600)

    @q.handler
    def work(x: int) -> None:
        if x < 3:
            raise ConnectionError("down")

    for i in range(3):
        q.put("work", [i])
    assert q.process() == 3  # all three fail: due again in an hour, pending meanwhile
    stream = "buttress:queue:{jobs}:stream"
    pause = threading.Event()
    for _ in range(200):  # until XAUTOCLAIM would bring them (idle past the lease)
        pending = client.xpending_range(stream, "workers", "-", "+", 10)
        if len(pending) == 3 and min(p["time_since_delivered"] for p in pending) > 150:
            break
        pause.wait(0.02)
    new = q.put("work", [3])
    (item,) = q._claim()  # the first claim: the new entry, not an empty hand
    assert item.id == new.id
    q.close()


def test_a_worker_dying_every_time_ends_in_dead_letters(client: Any) -> None:
    q = RequestQueue("jobs", storage=client, visibility_timeout=0.2, max_attempts=2)
    q.handler("work")(lambda x: None)
    q.put("work", [1])
    pause = threading.Event()
    for attempt in (1, 2):  # claimed, then its worker dies: no heartbeat, no acknowledgement
        for _ in range(200):
            held = q._claim()
            if held:
                break
            pause.wait(0.02)  # until the last lease runs out (Redis measures it)
        assert [i.attempts for i in held] == [attempt]
        q._heartbeat.release(held[0].id)
    for _ in range(200):
        if q.stats().dead:
            break
        assert q._claim() == []
        pause.wait(0.02)
    (dead,) = q.dead_letters()
    assert dead.attempts == 2
    assert dead.last_error is not None
    assert "lease ran out" in dead.last_error
    assert q.stats().depth == 0
    q.close()


def test_each_step_is_one_script_from_package_files(client: Any, redis_port: int) -> None:
    from importlib.resources import files

    from buttress.queue import redis as store_module
    from redis_server import commands_sent

    lua = files("buttress.queue").joinpath("lua")
    prelude = lua.joinpath("prelude.lua").read_text()
    for script in (store_module.PUT, store_module.CLAIM, store_module.RENEW, store_module.ACK):
        assert script.text.startswith(prelude)
        assert script.text.endswith(lua.joinpath(script.name[len("queue_") :] + ".lua").read_text())
    q = RequestQueue("jobs", storage=f"redis://127.0.0.1:{redis_port}/0")
    q.handler("work")(lambda x: None)
    q.put("work", [-1])
    q.process()  # (the server learns the scripts; the queue's name is registered once)
    with commands_sent(redis_port) as seen:
        for i in range(3):
            q.put("work", [i])
        assert q.process() == 3
    mine = [command for sender, command in seen if sender != "lua"]
    # three puts, a claim of all three, three acknowledgements, a claim that finds nothing
    assert mine == ["EVALSHA"] * 8
    lua_side = [command for sender, command in seen if sender == "lua"]
    assert "XAUTOCLAIM" in lua_side
    assert "XREADGROUP" in lua_side
    q.close()


def test_entries_written_by_something_else_go_to_the_dead_letters_alone(client: Any) -> None:
    q = RequestQueue("orders", storage=client, batch=16)
    ran: list[str] = []
    q.handler("charge")(ran.append)
    q.put("charge", ["first"])
    stream = "buttress:queue:{orders}:stream"
    good = {"k": "k", "h": "charge", "a": '{"args":["x"],"kwargs":{}}', "r": "", "e": "1", "x": ""}
    written = {  # XADDed by hand, by another tool, or by a bad migration
        "no args": {key: value for key, value in good.items() if key != "a"} | {"k": "k1"},
        "no enqueue time": {key: value for key, value in good.items() if key != "e"} | {"k": "k2"},
        "bad expiry": {**good, "k": "k3", "x": "soon"},
        "bad JSON": {**good, "k": "k4", "a": "not json"},
        "no fields": {"z": "1"},
    }
    for fields in written.values():
        client.xadd(stream, fields)
    q.put("charge", ["last"])
    assert q.process() == 2 + len(written)
    assert ran == ["first", "last"]
    stats = q.stats()
    assert (stats.depth, stats.in_flight, stats.dead) == (0, 0, len(written))
    errors = sorted(item.last_error or "" for item in q.dead_letters())
    assert all(e.startswith("buttress.errors.StorageError: queue 'orders' item #") for e in errors)
    assert any("the stored entry has no field 'a'" in e for e in errors)
    assert any("the stored entry has no field 'e'" in e for e in errors)
    assert any("its field 'x' is not a number: 'soon'" in e for e in errors)
    assert any("its arguments are not JSON: 'not json'" in e for e in errors)
    assert any("the stored entry has no field 'k'" in e for e in errors)
    q.close()
