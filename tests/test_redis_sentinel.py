"""Policies on a Sentinel-managed Redis ride a failover on local state and come back to it.

A master, a replica and one sentinel (quorum 1, a master is down after 1 s without an answer) run
on loopback ports for this test only. Waits on the servers are bounded loops; the policies' own
time is a fake clock. Skipped when no servers can be started, unless ``BUTTRESS_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buttress import (
    CircuitBreaker,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
)
from buttress.testing import FakeClock
from redis_server import RedisServer, RedisUnavailable, free_port, start

redis = pytest.importorskip("redis")

T0 = 1_750_000_000.0
SERVICE = "buttress-test"
WAIT_SECONDS = 30.0


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        with contextlib.suppress(redis.RedisError):
            if check():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_SECONDS:g} s: {what}")
        time.sleep(0.05)


class Deployment:
    def __init__(self, master: RedisServer, replica: RedisServer, sentinel_dir: Path) -> None:
        self.master, self.replica = master, replica
        self.sentinel_port = free_port()
        config = sentinel_dir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {sentinel_dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
        )
        binary = shutil.which("redis-server") or "redis-server"
        self.sentinel = subprocess.Popen(
            [binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ask = redis.Redis(port=self.sentinel_port, socket_timeout=1)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}"

    def master_port(self) -> int:
        _, port = self.ask.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def ready(self) -> None:
        replica = redis.Redis(port=self.replica.port)

        def in_sync() -> bool:
            return bool(replica.info("replication").get("master_link_status") == "up")

        _until("the replica is in sync", in_sync)
        replica.close()
        _until("the sentinel watches the master", lambda: self.master_port() == self.master.port)
        _until(
            "the sentinel knows the replica",
            lambda: len(self.ask.execute_command("SENTINEL", "REPLICAS", SERVICE)) == 1,
        )

    def stop(self) -> None:
        self.ask.close()
        self.sentinel.terminate()
        self.sentinel.wait(timeout=10)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    servers: list[RedisServer] = []
    try:
        servers.append(start())
        servers.append(start("--replicaof", "127.0.0.1", str(servers[0].port)))
        found = Deployment(servers[0], servers[1], tmp_path)
    except RedisUnavailable as exc:
        for server in servers:
            server.stop()
        if os.environ.get("BUTTRESS_REQUIRE_REDIS") == "1":
            pytest.fail(f"BUTTRESS_REQUIRE_REDIS=1 but no Redis servers: {exc}")
        pytest.skip(f"no Redis servers: {exc}")
    try:
        found.ready()
        yield found
    finally:
        found.stop()
        for server in servers:
            server.stop()


def _admitted(limiter: RateLimiter, name: str, tries: int) -> int:
    admitted = 0
    for _ in range(tries):
        with contextlib.suppress(RateLimitExceeded):
            limiter.check_limit(name)
            admitted += 1
    return admitted


def test_policies_ride_a_failover_and_return_to_the_new_master(deployment: Deployment) -> None:
    from redis.sentinel import Sentinel

    name = f"failover-{uuid.uuid4().hex[:6]}"
    managed = Sentinel([("127.0.0.1", deployment.sentinel_port)], socket_timeout=0.5)
    client = managed.master_for(SERVICE, socket_timeout=0.5, socket_connect_timeout=0.25)
    with FakeClock(wall_start=T0) as clock:
        limiters = [RateLimiter(storage=deployment.url), RateLimiter(storage=client)]
        for limiter in limiters:  # a burst of 6, then (practically) nothing: exact counts
            limiter.configure(name, RateLimitConfig(requests_per_second=0.001, burst_size=6))
        breaker = CircuitBreaker(name=name, fail_max=1, timeout_duration=60, storage=deployment.url)
        assert [_admitted(limiter, name, 2) for limiter in limiters] == [2, 2]  # one shared limit
        assert breaker.call(lambda: "ok") == "ok"
        assert not any(p.degraded for p in [*limiters, breaker])
        master = redis.Redis(port=deployment.master.port)
        assert master.wait(1, 5000) == 1  # the replica has every write so far
        master.close()

        deployment.master.stop()
        for limiter in limiters:
            _admitted(limiter, name, 3)  # decided on local state (a spent share: refusals)
            assert limiter.degraded
        assert breaker.call(lambda: "still ok") == "still ok"
        assert breaker.degraded

        _until(
            "the replica is promoted", lambda: deployment.master_port() == deployment.replica.port
        )
        promoted = redis.Redis(port=deployment.replica.port)

        def promoted_master() -> bool:
            return bool(promoted.info("replication")["role"] == "master")

        _until("the new master takes writes", promoted_master)

        def healthy() -> bool:  # (redis-py's Sentinel client refuses a master still flagged)
            return bool(managed.discover_master(SERVICE)[1] == deployment.replica.port)

        _until("the sentinel reports a healthy master", healthy)
        admitted = 0
        for _ in range(3):  # a retry interval at a time, until every policy is back (bounded)
            clock.advance(1.0)
            admitted += sum(_admitted(limiter, name, 1) for limiter in limiters)
            assert breaker.call(lambda: "back") == "back"
            if not any(p.degraded for p in [*limiters, breaker]):
                break
        assert not any(p.degraded for p in [*limiters, breaker])
        # back on shared state, kept across the failover: 4 of the burst of 6 were spent before
        admitted += sum(_admitted(limiter, name, 3) for limiter in limiters)
        assert admitted == 2
        assert promoted.exists(f"buttress:{{{name}}}:")
        promoted.close()
    client.close()
