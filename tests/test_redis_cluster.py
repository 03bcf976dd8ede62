"""Limits and breakers on a real 3-node Redis Cluster, started once for the session.

Each name's keys carry the hash tag ``{name}``, so a name lives in one slot, on one node. The
store routes every decision to that node, follows a slot that moves (``ASK`` during a migration,
``MOVED`` after it) and keeps the state that moved with it. Skipped when no cluster can be started,
unless ``BUTTRESS_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from buttress import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    StorageError,
    StorageUnavailable,
)
from buttress.backends import open_storage
from buttress.backends.redis_wire import key_slot
from buttress.machines.ratelimit import Params, RateLimitAlgorithm
from buttress.testing import FakeClock
from redis_server import RedisUnavailable, commands_sent

redis = pytest.importorskip("redis")

from redis_cluster import Cluster, start_cluster  # noqa: E402

T0 = 1_750_000_000.0
BUCKET = Params(RateLimitAlgorithm.TOKEN_BUCKET, 1.0, 10, 1.0, 10)  # 10 at once, then 1/s


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    try:
        started = start_cluster()
    except RedisUnavailable as exc:
        if os.environ.get("BUTTRESS_REQUIRE_REDIS") == "1":
            pytest.fail(f"BUTTRESS_REQUIRE_REDIS=1 but no Redis Cluster: {exc}")
        pytest.skip(f"no Redis Cluster: {exc}")
    try:
        yield started
    finally:
        started.stop()


def slot_of(name: str) -> int:
    return key_slot(f"buttress:{{{name}}}:")


def names_on(cluster: Cluster, ports: list[int]) -> list[str]:
    """A fresh name served by each of ``ports``, in order."""
    tag = uuid.uuid4().hex[:6]
    found: dict[int, str] = {}
    for i in itertools.count():
        name = f"{tag}-{i}"
        found.setdefault(cluster.owner(slot_of(name)), name)
        if all(port in found for port in ports):
            return [found[port] for port in ports]
    raise AssertionError("unreachable")


def test_slots_agree_with_the_server(cluster: Cluster) -> None:
    for key in ("buttress:{api}:", "buttress:{api}:k:tenant-1", "plain", "a{}{b}", "{x}y{z}"):
        assert cluster.ask(cluster.ports[0], "CLUSTER", "KEYSLOT", key) == key_slot(key)


_WORKER = """
import json
from buttress import RateLimiter, RateLimitConfig, RateLimitExceeded
from buttress.testing import FakeClock
with FakeClock(wall_start={start!r}):  # time stands still: exactly the burst is admitted
    limiter = RateLimiter(storage={url!r})
    counts = {{}}
    for name in {names!r}:
        limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=50))
        counts[name] = 0
    for _ in range(40):
        for name in {names!r}:
            try:
                limiter.check_limit(name)
                counts[name] += 1
            except RateLimitExceeded:
                pass
    print(json.dumps([counts, limiter.degraded]))
"""


def test_limits_on_every_node_are_exact_and_shared_between_processes(cluster: Cluster) -> None:
    names = names_on(cluster, cluster.ports)
    code = _WORKER.format(start=T0, url=cluster.url, names=names)
    workers = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    assert [degraded for _, degraded in results] == [False] * 3
    for name in names:  # 120 attempts on each, from three processes: exactly the burst of 50
        assert sum(counts[name] for counts, _ in results) == 50


def test_a_breaker_tripped_in_one_process_rejects_in_another(cluster: Cluster) -> None:
    (name,) = names_on(cluster, [cluster.ports[1]])
    code = textwrap.dedent(
        f"""
        from buttress import CircuitBreaker
        from buttress.testing import FakeClock
        with FakeClock(wall_start={T0!r}):
            cb = CircuitBreaker(name={name!r}, fail_max=2, timeout_duration=30,
                                storage={cluster.url!r})
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
    with FakeClock(wall_start=T0 + 10):
        cb = CircuitBreaker(name=name, fail_max=2, timeout_duration=30, storage=cluster.url)
        with pytest.raises(CircuitOpenError) as info:
            cb.call(lambda: "ok")
        assert info.value.retry_after == pytest.approx(20.0)
        assert not cb.degraded


def _decide(store: Any, mode: str, name: str) -> tuple[bool, float]:
    if mode == "sync":
        result: tuple[bool, float] = store.reserve(name, None, BUCKET, 1, 0.0, T0)
        return result
    return asyncio.run(store.areserve(name, None, BUCKET, 1, 0.0, T0))


def test_a_decision_follows_its_slot_when_it_moves(cluster: Cluster, mode: str) -> None:
    source, target = cluster.ports[0], cluster.ports[2]
    (name,) = names_on(cluster, [source])
    slot = slot_of(name)
    store = open_storage(cluster.url)
    try:
        assert [_decide(store, mode, name)[0] for _ in range(4)] == [True] * 4
        tripped = store.breaker(name, _settings(), _record_failure(), T0)
        assert tripped.state is CircuitState.OPEN
        assert cluster.begin_move(slot, target) == source  # the keys now sit on the target
        with commands_sent(target) as seen:
            assert _decide(store, mode, name)[0]  # the old owner answers ASK
        sent = [command for who, command in seen if who != "lua"]
        assert sent[:2] == ["ASKING", "EVALSHA"]  # (then SCRIPT LOAD and again, if new there)
        cluster.finish_move(slot, target)
        assert cluster.owner(slot) == target
        with commands_sent(target) as seen:
            assert _decide(store, mode, name)[0]  # MOVED, and on to the new owner
        assert [command for who, command in seen if who != "lua"][-1] == "EVALSHA"
        # the state moved with the slot: 6 of the burst of 10 spent, 4 left
        assert [_decide(store, mode, name)[0] for _ in range(5)] == [True] * 4 + [False]
        assert store.breaker(name, _settings(), _read(), T0 + 1).state is CircuitState.OPEN
    finally:
        store.close()
        cluster.move(slot, source)  # (back where it was, for the other tests)


def _settings() -> Any:
    from buttress.machines.breaker import BreakerSettings

    return BreakerSettings(fail_max=1, recovery=30.0)


def _record_failure() -> Any:
    from buttress.backends.base import BreakerStep

    return BreakerStep.record(0, probe=False, failed=True)


def _read() -> Any:
    from buttress.backends.base import READ

    return READ


def test_a_plain_url_naming_one_node_follows_moved(cluster: Cluster, mode: str) -> None:
    names = names_on(cluster, cluster.ports)
    plain = open_storage(f"redis://127.0.0.1:{cluster.ports[0]}/0")
    routed = open_storage(cluster.url)
    try:
        for name in names:
            assert [_decide(plain, mode, name)[0] for _ in range(3)] == [True] * 3
            assert routed.reserve(name, None, BUCKET, 7, 0.0, T0)[0]  # one state, both ways
            assert not _decide(plain, mode, name)[0]
    finally:
        plain.close()
        routed.close()


def test_redis_cluster_clients_as_storage(cluster: Cluster) -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    names = names_on(cluster, cluster.ports)
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[1])
    with FakeClock(wall_start=T0):
        limiter = RateLimiter(storage=client)
        for name in names:
            limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=2))
            limiter.check_limit(name)
            limiter.check_limit(name)
            with pytest.raises(RateLimitExceeded):
                limiter.check_limit(name)

        async def main() -> None:
            aclient = AsyncRedisCluster(host="127.0.0.1", port=cluster.ports[2])
            alimiter = RateLimiter(storage=aclient)
            for name in names:
                alimiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=2))
                with pytest.raises(RateLimitExceeded):
                    await alimiter.acheck_limit(name)  # the state the sync client left
            await aclient.aclose()

        asyncio.run(main())
    assert not limiter.degraded
    assert limiter.storage.startswith("redis+cluster://127.0.0.1:")
    client.close()


def test_a_plain_client_on_a_cluster_node_is_a_clear_error(cluster: Cluster) -> None:
    (name,) = names_on(cluster, [cluster.ports[1]])
    client = redis.Redis(port=cluster.ports[0])
    store = open_storage(client)
    with pytest.raises(StorageError, match=r"is a node of a Redis Cluster .*redis\+cluster://"):
        store.reserve(name, None, BUCKET, 1, 0.0, T0)
    client.close()


def test_an_unreachable_node_is_an_outage_of_its_slots(cluster: Cluster) -> None:
    paused, other = cluster.ports[1], cluster.ports[2]
    away, here = names_on(cluster, [paused, other])
    store = open_storage(cluster.url)
    process = next(s.process for s in cluster.servers if s.port == paused)
    assert store.reserve(away, None, BUCKET, 10, 0.0, T0)[0]  # the whole burst
    os.kill(process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StorageUnavailable, match=f"no answer from 127.0.0.1:{paused}"):
            store.reserve(away, None, BUCKET, 1, 0.0, T0)  # waits the reply timeout, once
        assert store.reserve(here, None, BUCKET, 1, 0.0, T0)[0]  # other nodes answer
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert store.reserve(away, None, BUCKET, 1, 0.0, T0) == (False, 1.0)  # back, state kept
    store.close()
    nobody = open_storage("redis+cluster://127.0.0.1:1")
    with pytest.raises(StorageUnavailable, match="nobody told the slot map"):
        nobody.reserve(here, None, BUCKET, 1, 0.0, T0)
    with pytest.raises(StorageUnavailable, match="nobody told the slot map"):
        asyncio.run(nobody.areserve(here, None, BUCKET, 1, 0.0, T0))
    nobody.close()
