"""Several processes sharing limits and breakers through a real redis-server, and Redis faults.

Worker processes are started with ``spawn`` (a fresh interpreter each, like separate pods). The
fault tests run their own redis-server so they can stop, restart and pause it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from steps import step as _step

redis = pytest.importorskip("redis")

from buttress import (  # noqa: E402
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    StorageUnavailable,
    deadline,
)
from buttress.testing import FakeClock  # noqa: E402
from redis_server import RedisUnavailable, free_port  # noqa: E402

CTX = multiprocessing.get_context("spawn")
T0 = 1_750_000_000.0


def _url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


# --- a shared rate limit ------------------------------------------------------------------------


def _hammer_limit(url: str, name: str, barrier: Any, seconds: float, out: Any) -> None:
    limiter = RateLimiter(storage=url)
    limiter.configure(name, RateLimitConfig(requests_per_second=50, burst_size=50))
    limiter.configure("warm-up", RateLimitConfig(requests_per_second=1))
    limiter.check_limit("warm-up", key=str(os.getpid()))  # connect and load the script first
    barrier.wait()
    end = time.time() + seconds
    spans: list[tuple[float, float]] = []
    errors = 0
    while (before := time.time()) < end:
        try:
            limiter.check_limit(name)
        except RateLimitExceeded:
            time.sleep(0.001)
            continue
        except Exception:
            errors += 1
            continue
        spans.append((before, time.time()))
    out.put((spans, errors))


def _certainly_inside(spans: list[tuple[float, float]], window: float) -> int:
    best = 0
    for start_, _ in spans:
        best = max(best, sum(1 for s, e in spans if s >= start_ and e < start_ + window))
    return best


def test_four_processes_share_one_limit(redis_port: int) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    barrier = CTX.Barrier(4)
    out = CTX.Queue()
    workers = [
        CTX.Process(target=_hammer_limit, args=(_url(redis_port), name, barrier, 1.0, out))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    spans = [span for part, _ in results for span in part]
    assert sum(errors for _, errors in results) == 0
    # burst 50 + 50/s: about 100 decided in the first second (within 2%), and never more than
    # 100 certainly inside any 1-s window
    first = min(before for before, _ in spans)
    in_first_second = sum(1 for before, _ in spans if before < first + 1.0)
    assert 98 <= in_first_second <= 101  # (the 101st slot falls exactly on the second)
    assert _certainly_inside(spans, 1.0) <= 100


# --- a shared breaker ---------------------------------------------------------------------------


def _breaker_worker(url: str, name: str, role: str, tripped: Any, out: Any) -> None:
    from buttress.testing import FakeClock

    with FakeClock(wall_start=T0):
        cb = CircuitBreaker(name=name, fail_max=3, timeout_duration=30, storage=url)
        if role == "tripper":
            for _ in range(3):
                with contextlib.suppress(ZeroDivisionError):
                    cb.call(lambda: 1 / 0)
            tripped.set()
            out.put(("tripper", cb.state.value))
            return
        tripped.wait(timeout=30)
        try:
            cb.call(lambda: "ran")
            out.put((role, "ran"))
        except CircuitOpenError as exc:
            out.put((role, f"rejected {exc.retry_after:.0f}"))


def test_a_breaker_tripped_in_one_process_rejects_in_all(redis_port: int) -> None:
    name = f"erp-{uuid.uuid4().hex[:8]}"
    tripped = CTX.Event()
    out = CTX.Queue()
    roles = ["tripper", "a", "b", "c"]
    workers = [
        CTX.Process(target=_breaker_worker, args=(_url(redis_port), name, r, tripped, out))
        for r in roles
    ]
    for w in workers:
        w.start()
    answers = dict(out.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=30)
    rejected = "rejected 30"
    assert answers == {"tripper": "open", "a": rejected, "b": rejected, "c": rejected}


def _probe_worker(url: str, name: str, barrier: Any, out: Any) -> None:
    import threading

    from buttress.testing import FakeClock

    ran: list[int] = []
    rejected: list[int] = []

    with FakeClock(wall_start=T0 + 60):  # frozen after the recovery time: every call may probe
        cb = CircuitBreaker(name=name, fail_max=1, timeout_duration=30, storage=url)
        barrier.wait()

        def attempt() -> None:
            try:
                cb.call(lambda: ran.append(1) or time.sleep(0.3))
            except CircuitOpenError:
                rejected.append(1)

        threads = [threading.Thread(target=attempt) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    out.put((len(ran), len(rejected)))


def test_exactly_one_half_open_probe_across_processes(redis_port: int) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    from buttress.backends.redis import RedisStore
    from buttress.machines.breaker import BreakerSettings

    client = redis.Redis(port=redis_port)
    RedisStore(client).breaker(
        name,
        BreakerSettings(fail_max=1, recovery=30.0),
        _step("force", target=CircuitState.OPEN),
        T0,
    )
    client.close()
    barrier = CTX.Barrier(4)
    out = CTX.Queue()
    workers = [
        CTX.Process(target=_probe_worker, args=(_url(redis_port), name, barrier, out))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert sum(ran for ran, _ in results) == 1  # 16 callers in 4 processes, one probe
    assert sum(rejected for _, rejected in results) == 15


# --- Redis faults -------------------------------------------------------------------------------


class _Server:
    """A redis-server this test may stop, restart (same port) and pause."""

    def __init__(self, *extra: str) -> None:
        self.extra = list(extra)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable("no redis-server binary on PATH")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="buttress-redis-fault-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir.name, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            for _ in range(250):  # up to ~5 s
                try:
                    client.ping()
                    return
                except redis.AuthenticationError:
                    return  # it answers (and wants a password)
                except redis.ConnectionError:
                    time.sleep(0.02)
            raise RedisUnavailable(f"redis-server on port {self.port} did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def fault_server(redis_port: int) -> Iterator[_Server]:  # redis_port: skip/fail like the others
    server = _Server()
    server.start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()
    server.dir.cleanup()


def test_redis_stopped_mid_run_is_an_outage_not_an_error(
    fault_server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    url = _url(fault_server.port)
    limiter = RateLimiter(storage=url, local_share=0.25, retry_interval=0.2)
    limiter.configure("api", RateLimitConfig(requests_per_second=40, burst_size=40))
    during = 0
    errors: list[BaseException] = []

    def load(seconds: float) -> int:
        admitted = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                limiter.check_limit("api")
                admitted += 1
            except RateLimitExceeded:
                time.sleep(0.002)
            except Exception as exc:  # nothing but the limiter's own refusal may escape
                errors.append(exc)
        return admitted

    with caplog.at_level("INFO", logger="buttress.storage"):
        load(0.3)
        assert not limiter.degraded
        fault_server.stop()
        during = load(1.0)
        assert limiter.degraded
        fault_server.start()
        client = redis.Redis(port=fault_server.port)
        load(0.5)
        assert not limiter.degraded
        assert client.keys("buttress:*")  # the state is back in Redis
        client.close()
    assert errors == []
    # a quarter of the limit, 10/s, starting spent: ~10 over the second of the outage
    assert 5 <= during <= 12
    levels = [r.levelname for r in caplog.records if r.name == "buttress.storage"]
    assert levels == ["WARNING", "INFO"]  # one line per outage, not per call


def test_a_paused_redis_does_not_hold_callers_past_their_deadline(fault_server: _Server) -> None:
    url = _url(fault_server.port)
    limiter = RateLimiter(storage=url)
    limiter.configure("api", RateLimitConfig(requests_per_second=100, burst_size=100))
    cb = CircuitBreaker(name=f"paused-{uuid.uuid4().hex[:6]}", storage=url)
    limiter.check_limit("api")
    assert fault_server.process is not None
    os.kill(fault_server.process.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with deadline(0.1):  # shorter than the store's 0.5 s socket timeout
            # decided on local state, which starts cautious (spent): a refusal is a fine answer
            with contextlib.suppress(RateLimitExceeded):
                limiter.check_limit("api")
            assert cb.call(lambda: "ok") == "ok"
        held = time.monotonic() - began
        assert held < 0.5  # decided locally: never waited on the paused server
        assert not limiter.degraded  # and a short deadline is not mistaken for an outage
        began = time.monotonic()
        for _ in range(2):  # no deadline: waits at most the socket timeout, once
            with contextlib.suppress(RateLimitExceeded):
                limiter.check_limit("api")
        assert limiter.degraded
        assert time.monotonic() - began < 1.5
    finally:
        os.kill(fault_server.process.pid, signal.SIGCONT)


def test_one_caller_tries_a_paused_redis_again_per_retry_interval(fault_server: _Server) -> None:
    clock = FakeClock(wall_start=T0)
    limiter = RateLimiter(storage=_url(fault_server.port), retry_interval=1.0, clock=clock)
    limiter.configure("api", RateLimitConfig(requests_per_second=1000, burst_size=1000))
    limiter.check_limit("api")
    assert fault_server.process is not None
    os.kill(fault_server.process.pid, signal.SIGSTOP)
    try:
        with contextlib.suppress(RateLimitExceeded):
            limiter.check_limit("api")  # waits the socket timeout: the outage begins
        assert limiter.degraded
        clock.advance(1.5)  # a retry is due
        callers = 8
        ready = threading.Barrier(callers)
        waited: list[float] = []

        def call() -> None:
            ready.wait(5)
            began = time.monotonic()
            with contextlib.suppress(RateLimitExceeded):
                limiter.check_limit("api")
            waited.append(time.monotonic() - began)

        threads = [threading.Thread(target=call) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(waited) == callers
        # one caller waits on the paused server; the rest decide locally at once
        assert sum(1 for w in waited if w >= 0.4) == 1
        assert sorted(waited)[-2] < 0.2
    finally:
        os.kill(fault_server.process.pid, signal.SIGCONT)
    limiter.close()


# --- async callers: one pipelined connection per event loop -------------------------------------


def test_async_decisions_are_exact_on_one_connection(redis_port: int) -> None:
    from buttress.testing import FakeClock

    url = _url(redis_port)
    client = redis.Redis(port=redis_port)
    name = f"async-{uuid.uuid4().hex[:6]}"

    async def main() -> list[bool]:
        limiter = RateLimiter(storage=url)
        limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=50))

        async def one() -> bool:
            try:
                await limiter.acheck_limit(name)
            except RateLimitExceeded:
                return False
            return True

        before = client.info("clients")["connected_clients"]
        results = await asyncio.gather(*(one() for _ in range(200)))
        assert client.info("clients")["connected_clients"] - before == 1
        return results

    with FakeClock(wall_start=T0):  # time stands still: exactly the burst is admitted
        results = asyncio.run(main())
    client.close()
    assert sum(results) == 50


def test_cancelled_callers_do_not_put_the_connection_out_of_step(redis_port: int) -> None:
    from buttress.testing import FakeClock

    url = _url(redis_port)
    name = f"cancel-{uuid.uuid4().hex[:6]}"

    async def main() -> tuple[int, list[float]]:
        limiter = RateLimiter(storage=url)
        limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=10))
        await limiter.acheck_limit(name, key="warm")  # connected
        tasks = [asyncio.ensure_future(limiter.acheck_limit(name, key=f"k{i}")) for i in range(40)]
        await asyncio.sleep(0)  # every command written, no reply read yet
        for task in tasks[::2]:
            task.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in done)
        assert all(r is None for r in done[1::2])  # the others got their own answers
        waits = []
        for _ in range(12):  # later calls still read the replies meant for them
            try:
                await limiter.acheck_limit(name, key="after")
            except RateLimitExceeded as exc:
                waits.append(exc.retry_after)
        return cancelled, waits

    with FakeClock(wall_start=T0):
        cancelled, waits = asyncio.run(main())
    assert cancelled == 20
    assert waits == [pytest.approx(1.0), pytest.approx(1.0)]  # 10 admitted, then 1/s


def test_a_flushed_script_is_loaded_again(redis_port: int) -> None:
    url = _url(redis_port)
    name = f"flush-{uuid.uuid4().hex[:6]}"
    client = redis.Redis(port=redis_port)

    async def main() -> None:
        limiter = RateLimiter(storage=url)
        limiter.configure(name, RateLimitConfig(requests_per_second=100))
        await limiter.acheck_limit(name)
        client.script_flush()
        await limiter.acheck_limit(name)
        assert not limiter.degraded

    asyncio.run(main())
    limiter = RateLimiter(storage=url)
    limiter.configure(name, RateLimitConfig(requests_per_second=100))
    client.script_flush()
    limiter.check_limit(name)  # the sync path too
    assert not limiter.degraded
    client.close()


def test_password_and_database_from_the_url() -> None:
    server = _Server("--requirepass", "s3cret")
    server.start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"  # (a slow limit: its keys stay)

        async def main() -> None:
            limiter = RateLimiter(storage=url)
            limiter.configure("api", RateLimitConfig(requests_per_second=0.01, burst_size=5))
            await limiter.acheck_limit("api", key="async")
            assert not limiter.degraded

        asyncio.run(main())
        limiter = RateLimiter(storage=url)
        limiter.configure("api", RateLimitConfig(requests_per_second=0.01, burst_size=5))
        limiter.check_limit("api", key="sync")
        assert not limiter.degraded
        client = redis.Redis(port=server.port, password="s3cret", db=3)
        assert sorted(k.decode() for k in client.keys("*")) == [
            "buttress:{api}:k:async",
            "buttress:{api}:k:sync",
        ]
        client.close()
        wrong = RateLimiter(storage=f"redis://:hunter2@127.0.0.1:{server.port}/3")
        wrong.configure("api", RateLimitConfig(requests_per_second=0.01, burst_size=5))
        with contextlib.suppress(RateLimitExceeded):
            wrong.check_limit("api")  # refused by the server: an outage, the password unsaid
        assert wrong.degraded
        assert wrong.storage == f"redis://:***@127.0.0.1:{server.port}/3"
    finally:
        server.stop()
        server.dir.cleanup()


def test_async_callers_survive_a_paused_redis(fault_server: _Server) -> None:
    from buttress.testing import FakeClock

    url = _url(fault_server.port)
    assert fault_server.process is not None
    pid = fault_server.process.pid

    async def main(clock: FakeClock) -> None:
        limiter = RateLimiter(storage=url, retry_interval=0.2)
        limiter.configure("api", RateLimitConfig(requests_per_second=100, burst_size=100))
        cb = CircuitBreaker(name=f"apaused-{uuid.uuid4().hex[:6]}", storage=url)
        await limiter.acheck_limit("api")
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                with contextlib.suppress(RateLimitExceeded):
                    await limiter.acheck_limit("api")

            async def ok() -> str:
                return "ok"

            assert await cb.acall(ok) == "ok"  # the breaker decides locally too
            assert limiter.degraded
            assert cb.degraded
        finally:
            os.kill(pid, signal.SIGCONT)
        clock.advance(0.2)  # the retry interval: the store is tried again, and answers
        await limiter.acheck_limit("api", key="back")
        assert not limiter.degraded

    with FakeClock(wall_start=T0) as clock:
        asyncio.run(main(clock))


# --- clients the application already has ---------------------------------------------------------


def test_a_redis_client_can_be_the_storage(redis_port: int) -> None:
    from buttress.testing import FakeClock

    client = redis.Redis(port=redis_port)
    name = f"client-{uuid.uuid4().hex[:6]}"
    with FakeClock(wall_start=T0):
        limiter = RateLimiter(storage=client)
        limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=2))
        limiter.check_limit(name)
        limiter.check_limit(name)
        with pytest.raises(RateLimitExceeded):
            limiter.check_limit(name)
        cb = CircuitBreaker(name=name, fail_max=1, storage=client)
        with pytest.raises(ZeroDivisionError):
            cb.call(lambda: 1 / 0)
        assert cb.state is CircuitState.OPEN
    assert limiter.storage == f"redis://localhost:{redis_port}/0"
    assert client.exists(f"buttress:{{{name}}}:breaker")
    client.close()


def test_an_asyncio_client_serves_async_callers_and_refuses_sync_ones(redis_port: int) -> None:
    import redis.asyncio

    name = f"aclient-{uuid.uuid4().hex[:6]}"

    async def main() -> None:
        client = redis.asyncio.Redis(port=redis_port)
        limiter = RateLimiter(storage=client)
        limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=1))
        await limiter.acheck_limit(name)
        with pytest.raises(RateLimitExceeded):
            await limiter.acheck_limit(name)
        with pytest.raises(TypeError, match=r"wraps a redis\.asyncio client"):
            limiter.check_limit(name)
        await client.aclose()

    asyncio.run(main())


# --- a prober killed with SIGKILL ----------------------------------------------------------------

_PROBER = """
import sys, time
from buttress import CircuitBreaker
from buttress.testing import FakeClock
with FakeClock(wall_start={start!r}):
    cb = CircuitBreaker(name={name!r}, fail_max=1, timeout_duration=30, storage={url!r})
    def hang():
        print("probing", flush=True)
        time.sleep(60)
    cb.call(hang)
"""


def test_a_prober_killed_mid_probe_does_not_wedge_the_breaker(redis_port: int) -> None:
    import sys

    from buttress.backends.redis import RedisStore
    from buttress.machines.breaker import BreakerSettings
    from buttress.testing import FakeClock

    url = _url(redis_port)
    name = f"killed-{uuid.uuid4().hex[:6]}"
    client = redis.Redis(port=redis_port)
    RedisStore(client).breaker(
        name,
        BreakerSettings(fail_max=1, recovery=30.0),
        _step("force", target=CircuitState.OPEN),
        T0,
    )
    code = _PROBER.format(start=T0 + 30, name=name, url=url)
    prober = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert prober.stdout is not None
        assert prober.stdout.readline().strip() == "probing"  # it holds the one probe lease
    finally:
        prober.kill()  # SIGKILL: it never reports
        prober.wait(timeout=10)
    with FakeClock(wall_start=T0 + 30) as clock:
        cb = CircuitBreaker(name=name, fail_max=1, timeout_duration=30, storage=url)
        with pytest.raises(CircuitOpenError):
            cb.call(lambda: "second prober")  # the lease is still held
        clock.advance(30)  # the lease (the recovery time) runs out: the dead probe failed
        with pytest.raises(CircuitOpenError):
            cb.call(lambda: "too early")
        clock.advance(30)  # and after another recovery time, a new probe runs
        assert cb.call(lambda: "recovered") == "recovered"
        assert cb.state is CircuitState.CLOSED
    client.close()


# --- closing -------------------------------------------------------------------------------------


def _connections(port: int, mine: Any) -> set[int]:
    """The ids of the clients connected to the server on ``port``, but ``mine``."""
    return {int(c["id"]) for c in mine.client_list()} - {mine.client_id()}


def _settle(port: int, mine: Any, expected: set[int]) -> set[int]:
    """The connections once the server has seen closed ones go (bounded)."""
    deadline = time.monotonic() + 5
    while (now := _connections(port, mine)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return now


def test_stores_of_one_url_share_connections_until_the_last_close(fault_server: _Server) -> None:
    from buttress.backends import open_storage
    from buttress.machines.ratelimit import Params, RateLimitAlgorithm

    port = fault_server.port
    mine = redis.Redis(port=port)
    url, p = _url(port), Params(RateLimitAlgorithm.TOKEN_BUCKET, 0.001, 1000, 1.0, 1000)
    first, second = open_storage(url), open_storage(url)
    first.reserve("api", "a", p, 1, 0.0)
    second.reserve("api", "b", p, 1, 0.0)
    assert len(_connections(port, mine)) == 1  # one connection for the thread, both stores

    used, finish = threading.Event(), threading.Event()

    def pool_worker() -> None:  # a thread that lives on
        second.reserve("api", "c", p, 1, 0.0)
        used.set()
        finish.wait(30)

    worker = threading.Thread(target=pool_worker)
    worker.start()
    try:
        assert used.wait(30)
        before = _connections(port, mine)
        assert len(before) == 2
        first.close()
        first.close()  # counted once
        second.reserve("api", "d", p, 1, 0.0)
        assert _connections(port, mine) == before  # nothing closed or reopened for the other
        second.close()
        assert _settle(port, mine, set()) == set()  # the last close closed every thread's
    finally:
        finish.set()
        worker.join(timeout=30)

    async def main() -> None:
        store = open_storage(url)
        await store.areserve("api", "e", p, 1, 0.0)
        assert len(_connections(port, mine)) == 1  # this event loop's
        await store.aclose()

    asyncio.run(main())
    assert _settle(port, mine, set()) == set()
    given = redis.Redis(port=port)
    store = open_storage(given)
    store.reserve("api", "f", p, 1, 0.0)
    store.close()
    assert given.ping()  # a client passed in is never closed
    given.close()
    mine.close()


# --- unix sockets, and clients given as storage --------------------------------------------------


def test_async_callers_connecting_to_a_paused_redis_wait_one_timeout(
    fault_server: _Server,
) -> None:
    # database 1: a new connection's first exchange (SELECT) waits on the paused server too
    limiter = RateLimiter(storage=f"redis://127.0.0.1:{fault_server.port}/1")
    limiter.configure("api", RateLimitConfig(requests_per_second=1000, burst_size=1000))
    assert fault_server.process is not None
    os.kill(fault_server.process.pid, signal.SIGSTOP)  # before this loop has any connection

    async def one() -> float:
        began = time.monotonic()
        with contextlib.suppress(RateLimitExceeded):
            await limiter.acheck_limit("api")
        return time.monotonic() - began

    async def main() -> list[float]:
        return await asyncio.gather(*(one() for _ in range(10)))

    try:
        waited = asyncio.run(main())
    finally:
        os.kill(fault_server.process.pid, signal.SIGCONT)
    assert limiter.degraded
    # the callers share one connection attempt: none waits out the others' timeouts too
    assert max(waited) < 1.0
    limiter.close()


def test_a_unix_socket_serves_sync_and_async_callers(redis_port: int, tmp_path: Any) -> None:
    from redis_server import start

    server = start("--unixsocket", str(tmp_path / "redis.sock"), "--unixsocketperm", "700")
    try:
        url = f"unix://{tmp_path}/redis.sock?db=2"
        name = f"unix-{uuid.uuid4().hex[:6]}"

        async def main() -> None:
            limiter = RateLimiter(storage=url)
            limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=1))
            await limiter.acheck_limit(name)
            with pytest.raises(RateLimitExceeded):
                await limiter.acheck_limit(name)
            assert not limiter.degraded

        with FakeClock(wall_start=T0):
            asyncio.run(main())
            limiter = RateLimiter(storage=url)
            limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=1))
            with pytest.raises(RateLimitExceeded):
                limiter.check_limit(name)  # the sync path shares the state
        client = redis.Redis(unix_socket_path=str(tmp_path / "redis.sock"), db=2)
        assert client.exists(f"buttress:{{{name}}}:")
        client.close()
    finally:
        server.stop()


def test_an_absent_unix_socket_is_an_outage_for_async_callers_too(tmp_path: Any) -> None:
    url = f"unix://{tmp_path}/nobody.sock"

    async def main() -> None:
        limiter = RateLimiter(storage=url, fail_mode="open")
        limiter.configure("api", RateLimitConfig(requests_per_second=1))
        for _ in range(3):
            await limiter.acheck_limit("api")  # admitted: fail open while the store is away
        assert limiter.degraded

    asyncio.run(main())


def test_async_callers_of_a_sync_client_do_not_block_the_loop(fault_server: _Server) -> None:
    from buttress.backends import open_storage
    from buttress.machines.ratelimit import Params, RateLimitAlgorithm

    assert fault_server.process is not None
    client = redis.Redis(port=fault_server.port, socket_timeout=0.5)
    store = open_storage(client)
    p = Params(RateLimitAlgorithm.TOKEN_BUCKET, 0.001, 1000, 1.0, 1000)
    store.reserve("api", None, p, 1, 0.0)
    order: list[str] = []

    async def main() -> None:
        async def meanwhile() -> None:
            order.append("the loop ran another task")

        asking = asyncio.ensure_future(store.areserve("api", None, p, 1, 0.0))
        await asyncio.sleep(0)  # the step is under way (in a worker thread)
        await meanwhile()
        with pytest.raises(StorageUnavailable):
            await asking
        order.append("the step ended")

    os.kill(fault_server.process.pid, signal.SIGSTOP)  # the step waits its socket timeout
    try:
        asyncio.run(main())
    finally:
        os.kill(fault_server.process.pid, signal.SIGCONT)
    assert order == ["the loop ran another task", "the step ended"]
    client.close()


@pytest.mark.parametrize("step", ["reserve", "block", "reset", "breaker"])
def test_no_redis_exception_reaches_a_caller(step: str) -> None:
    from buttress.backends import open_storage
    from buttress.backends.base import READ
    from buttress.machines.breaker import BreakerSettings
    from buttress.machines.ratelimit import Params, RateLimitAlgorithm

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)  # nobody listens
    p = Params(RateLimitAlgorithm.TOKEN_BUCKET, 1.0, 1, 1.0, 1)
    args = {
        "reserve": ("api", None, p, 1, 0.0),
        "block": ("api", None, 1.0),
        "reset": ("api", None),
        "breaker": ("api", BreakerSettings(fail_max=1, recovery=1.0), READ),
    }[step]
    for source in (client, _url(free_port())):
        store = open_storage(source)
        with pytest.raises(StorageUnavailable):
            getattr(store, step)(*args)
        with pytest.raises(StorageUnavailable):
            asyncio.run(getattr(store, f"a{step}")(*args))
        store.close()
    client.close()
