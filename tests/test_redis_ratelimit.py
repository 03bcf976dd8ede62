"""The Redis rate-limit store against a real redis-server (started by the ``redis_port`` fixture).

The store must decide exactly as :func:`buttress.machines.ratelimit.reserve` does, in one Redis
command per decision, over its own connections (a URL) or a redis-py client.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buttress.backends import StorageError
from buttress.backends.redis import RedisStore
from buttress.machines.ratelimit import Params, RateLimitAlgorithm, idle, reserve
from redis_server import commands_sent

redis = pytest.importorskip("redis")

TOKEN = RateLimitAlgorithm.TOKEN_BUCKET
LEAKY = RateLimitAlgorithm.LEAKY_BUCKET
FIXED = RateLimitAlgorithm.FIXED_WINDOW
SLIDING = RateLimitAlgorithm.SLIDING_WINDOW
T0 = 1_700_000_000.0


def params(algorithm: RateLimitAlgorithm, rate: float = 2.0, burst: int = 3) -> Params:
    return Params(algorithm, 1.0 / rate, burst, 1.0, max(1, int(rate)))


@pytest.fixture
def client(redis_port: int) -> Iterator[Any]:
    conn = redis.Redis(port=redis_port)
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture
def url(redis_port: int) -> str:
    return f"redis://127.0.0.1:{redis_port}/0"


@pytest.fixture
def store(client: Any, url: str) -> Iterator[RedisStore]:
    opened = RedisStore(url)
    yield opened
    opened.close()


# -- equivalence with the pure machine ---------------------------------------------------------

steps = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0.0, 0.05), st.floats(0.0, 2.5)),  # advance
        st.integers(1, 3),  # cost
        st.sampled_from([0.0, 0.0, 0.1, 0.5, 2.0, math.inf]),  # max_wait
        st.one_of(st.none(), st.none(), st.none(), st.floats(0.0, 1.5)),  # block seconds
    ),
    min_size=1,
    max_size=25,
)
param_sets = st.builds(
    lambda algorithm, interval, burst, window, limit: Params(
        algorithm, interval, burst, window, limit
    ),
    st.sampled_from(list(RateLimitAlgorithm)),
    st.sampled_from([0.01, 0.1, 0.25, 1 / 3, 0.5, 1.0, 0.7]),
    st.integers(1, 5),
    st.sampled_from([0.1, 0.5, 1.0, 1.5, 1 / 3]),
    st.integers(1, 5),
)


class Model:
    """The in-memory semantics: ``reserve`` plus the block check of ``RateLimiter``."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.state: list[float] | deque[float] | None = None
        self.blocked = -math.inf

    def block(self, now: float, seconds: float) -> None:
        self.blocked = max(self.blocked, now + seconds)

    def reserve(self, now: float, cost: int, max_wait: float) -> tuple[bool, float]:
        if now < self.blocked:
            return False, self.blocked - now
        new, wait = reserve(self.state, now, cost, max_wait, self.p)
        if new is None:
            return False, wait
        self.state = new
        return True, wait


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(p=param_sets, script=steps)
def test_store_decides_exactly_as_the_machine(
    store: RedisStore, p: Params, script: list[tuple[float, int, float, float | None]]
) -> None:
    model = Model(p)
    key = uuid.uuid4().hex
    now = T0
    for advance, cost, max_wait, block in script:
        now += advance
        if block is not None:
            model.block(now, block)
            store.block("eq", key, block, now=now)
        if p.algorithm is SLIDING and cost > p.limit:
            continue  # refused up front by the store (see the next test)
        expected = model.reserve(now, cost, max_wait)
        got = store.reserve("eq", key, p, cost, max_wait, now=now)
        assert got[0] == expected[0], (now, cost, max_wait, model.state, got, expected)
        assert got[1] == pytest.approx(expected[1], abs=1e-6), (now, model.state, got, expected)


def test_sliding_window_refuses_a_cost_above_its_limit(store: RedisStore) -> None:
    with pytest.raises(ValueError, match=r"cost 4 exceeds the sliding window's limit of 3"):
        store.reserve("api", None, Params(SLIDING, 0.1, 1, 1.0, 3), 4, 0.0, now=T0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cost", 0, "cost must be >= 1"),
        ("max_wait", -1.0, "max_wait must be >= 0"),
        ("max_wait", math.nan, "max_wait must be a number of seconds, got NaN"),
        ("now", math.inf, "now must be a finite number"),
    ],
)
def test_bad_arguments_are_named(store: RedisStore, field: str, value: float, message: str) -> None:
    args: dict[str, Any] = {"cost": 1, "max_wait": 0.0, "now": T0, field: value}
    with pytest.raises(ValueError, match=message):
        store.reserve("api", None, params(TOKEN), **args)


# -- one command per decision ------------------------------------------------------------------


def calls(client: Any) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


SCRIPT_COMMANDS = {
    *("LINDEX", "LRANGE", "LLEN", "LSET", "RPUSH", "LPUSH", "LTRIM", "DEL", "PEXPIRE"),
    *("PTTL", "TIME", "GET", "SET"),
}


@pytest.mark.parametrize("given", ["url", "client"])
def test_one_redis_command_per_decision(client: Any, redis_port: int, url: str, given: str) -> None:
    store = RedisStore(url if given == "url" else client)
    store.reserve("api", "warm", params(SLIDING), 1, 0.0, now=T0)  # connects, loads the script
    store.block("api", "warm", 1.0, now=T0)
    n = 0
    with commands_sent(redis_port) as seen:
        for i in range(40):
            for algorithm in RateLimitAlgorithm:
                store.reserve("api", f"k{i % 3}", params(algorithm), 1 + i % 2, i % 2 * 0.5, T0)
                n += 1
        store.reserve("api", None, params(TOKEN), 1, 0.0)  # server time
        store.block("api", "k1", 2.0, now=T0)
        n += 2
    store.close()
    # What the client sent: one EVALSHA per decision, nothing else, on one connection; what
    # else the server ran, the scripts issued.
    sent = [(who, command) for who, command in seen if who != "lua"]
    assert [command for _, command in sent] == ["EVALSHA"] * n
    assert len({who for who, _ in sent}) == 1
    assert {command for who, command in seen if who == "lua"} <= SCRIPT_COMMANDS


def test_reset_is_one_del(client: Any, store: RedisStore) -> None:
    store.reserve("api", "k", params(TOKEN), 1, 0.0, now=T0)
    before = calls(client)
    store.reset("api", "k")
    after = calls(client)
    assert after["cmdstat_del"] - before["cmdstat_del"] == 1
    assert {name for name in after if after[name] != before.get(name)} == {
        "cmdstat_del",
        "cmdstat_info",
    }
    assert not client.exists(store.limit_key("api", "k"))


# -- time ---------------------------------------------------------------------------------------


def test_server_time_mode(store: RedisStore) -> None:
    p = Params(TOKEN, 10.0, 1, 1.0, 1)
    assert store.reserve("api", None, p, 1, 0.0) == (True, 0.0)
    admitted, retry_after = store.reserve("api", None, p, 1, 0.0)
    assert not admitted
    assert 9.5 < retry_after <= 10.0


def test_client_wall_clock_mode(client: Any, url: str) -> None:
    store = RedisStore(url, server_time=False)
    p = Params(TOKEN, 10.0, 1, 1.0, 1)
    assert store.reserve("api", None, p, 1, 0.0)[0]
    admitted, retry_after = store.reserve("api", None, p, 1, 0.0)
    assert not admitted
    assert 9.5 < retry_after <= 10.0


# -- expiry -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(RateLimitAlgorithm))
@pytest.mark.parametrize("cost", [1, 3])
def test_ttl_is_the_time_until_the_state_is_idle(
    client: Any, store: RedisStore, algorithm: RateLimitAlgorithm, cost: int
) -> None:
    p = Params(algorithm, 0.75, 10, 2.5, 4)
    state: list[float] | deque[float] | None = None
    now = T0
    for _ in range(3):
        now += 0.1
        state, _ = reserve(state, now, cost, math.inf, p)
        assert state is not None
        assert store.reserve("api", "k", p, cost, math.inf, now=now)[0]
    ttl = client.pttl(store.limit_key("api", "k")) / 1000
    assert ttl > 0
    # The key never expires while the state still matters, and outlives its relevance by no
    # more than the rounding to whole milliseconds; PTTL counts down in real time meanwhile, so
    # the second bound allows for the time between the write and the PTTL (a busy machine).
    assert not idle(state, now + ttl - 0.05, p)
    assert idle(state, now + ttl + 0.25, p)


def test_block_keeps_the_key_until_it_ends(client: Any, store: RedisStore) -> None:
    store.reserve("api", "k", params(TOKEN), 1, 0.0, now=T0)
    store.block("api", "k", 30.0, now=T0)
    assert 29_000 < client.pttl(store.limit_key("api", "k")) <= 30_000
    store.block("api", "fresh", 0.25, now=T0)
    assert 0 < client.pttl(store.limit_key("api", "fresh")) <= 250


# -- keys, blocks, reset ------------------------------------------------------------------------


def test_keys_are_isolated(store: RedisStore) -> None:
    p = Params(TOKEN, 1.0, 1, 1.0, 1)
    assert store.reserve("api", "a", p, 1, 0.0, now=T0)[0]
    assert not store.reserve("api", "a", p, 1, 0.0, now=T0)[0]
    assert store.reserve("api", "b", p, 1, 0.0, now=T0)[0]
    assert store.reserve("api", None, p, 1, 0.0, now=T0)[0]
    assert store.reserve("other", "a", p, 1, 0.0, now=T0)[0]


@pytest.mark.parametrize(
    "tricky", ["", "k:", "buttress:{api}:", "}:", "{api}", "%7D", "a b\n", "tenant-42"]
)
def test_no_user_key_collides_with_the_shared_state(store: RedisStore, tricky: str) -> None:
    p = Params(TOKEN, 1.0, 1, 1.0, 1)
    assert store.reserve("api", None, p, 1, 0.0, now=T0)[0]
    assert store.reserve("api", tricky, p, 1, 0.0, now=T0)[0]
    assert store.limit_key("api", tricky) != store.limit_key("api", None)


def test_names_with_braces_cannot_collide(store: RedisStore) -> None:
    pairs = [("a}:k:x", None), ("a", "x}:"), ("a", None), ("a}", "k:x"), ("{a", "x"), ("%7Da", "")]
    names = {store.limit_key(name, key) for name, key in pairs}
    assert len(names) == len(pairs)
    assert store.limit_key("api", "t1").startswith("buttress:{api}:")
    assert store.limit_key("a}b", None) == "buttress:{a%7Db}:"


def test_block_refuses_with_the_remaining_time(store: RedisStore) -> None:
    p = params(TOKEN, rate=100.0, burst=100)
    store.block("api", "k", 5.0, now=T0)
    assert store.reserve("api", "k", p, 1, math.inf, now=T0 + 1.0) == (False, pytest.approx(4.0))
    assert store.reserve("api", "other", p, 1, 0.0, now=T0 + 1.0)[0]
    store.block("api", "k", 1.0, now=T0 + 2.0)  # an earlier end does not shorten the block
    assert store.reserve("api", "k", p, 1, 0.0, now=T0 + 4.0) == (False, pytest.approx(1.0))
    assert store.reserve("api", "k", p, 1, 0.0, now=T0 + 5.0) == (True, 0.0)


@pytest.mark.parametrize(
    ("algorithm", "stored", "named"),
    [
        (TOKEN, "T|inf||", "time inf"),
        (TOKEN, "T|nan||", "time nan"),
        (LEAKY, "L|1e300||", "time 1e300"),
        (FIXED, "F|1700000000|inf|", "count inf"),
        (TOKEN, "T|||1e300", "block end 1e300"),
        (TOKEN, "|||inf", "block end inf"),
        (SLIDING, "|||1e300", "block end 1e300"),
        (TOKEN, "garbage", "value garbage"),
    ],
)
def test_a_stored_string_state_no_limiter_writes_is_named(
    client: Any, store: RedisStore, algorithm: RateLimitAlgorithm, stored: str, named: str
) -> None:
    client.set(store.limit_key("api", "k"), stored)
    with pytest.raises(StorageError) as caught:
        store.reserve("api", "k", params(algorithm), 1, 0.0, now=T0)
    message = str(caught.value)
    assert repr(store.limit_key("api", "k")) in message
    assert f"the stored rate-limit state is malformed: {named}" in message
    assert client.get(store.limit_key("api", "k")) == stored.encode()  # left as it was


@pytest.mark.parametrize(
    ("log", "named"),
    [
        (["S", "1700000000", "inf"], "time inf"),
        (["S", "1e300"], "time 1e300"),
        (["S", "soon"], "time soon"),
        (["S|inf", "1700000000"], "block end in S|inf"),
    ],
)
def test_a_stored_sliding_log_no_limiter_writes_is_named(
    client: Any, store: RedisStore, log: list[str], named: str
) -> None:
    key = store.limit_key("api", "k")
    client.rpush(key, *log)
    with pytest.raises(StorageError) as caught:
        store.reserve("api", "k", params(SLIDING), 1, 0.0, now=T0)
    assert repr(key) in str(caught.value)
    assert f"the stored rate-limit state is malformed: {named}" in str(caught.value)
    assert [x.decode() for x in client.lrange(key, 0, -1)] == log


def test_a_stored_block_is_bounded(client: Any, store: RedisStore) -> None:
    with pytest.raises(ValueError, match=r"seconds of a stored block must be <= 3\.1536e"):
        store.block("api", "k", 1e12, now=T0)
    client.set(store.limit_key("api", "k"), "T|||1e300")
    with pytest.raises(StorageError, match="block end 1e300"):
        store.block("api", "k", 1.0, now=T0)
    store.block("api", "old", 1.0, now=T0 - 20 * 365 * 86400)  # long past: expired, not malformed
    assert store.reserve("api", "old", params(TOKEN), 1, 0.0, now=T0) == (True, 0.0)


def test_reset_forgets_state_and_block(store: RedisStore) -> None:
    p = Params(FIXED, 1.0, 1, 10.0, 1)
    assert store.reserve("api", "k", p, 1, 0.0, now=T0)[0]
    assert store.reserve("api", "k", p, 1, 0.0, now=T0) == (False, pytest.approx(10.0))
    store.reset("api", "k")
    assert store.reserve("api", "k", p, 1, 0.0, now=T0)[0]
    store.block("api", None, 60.0, now=T0)
    store.reset("api")
    assert store.reserve("api", None, p, 1, 0.0, now=T0)[0]


def test_reconfigured_algorithm_starts_fresh(store: RedisStore) -> None:
    assert store.reserve("api", "k", Params(FIXED, 1.0, 1, 10.0, 1), 1, 0.0, now=T0)[0]
    assert store.reserve("api", "k", Params(TOKEN, 1.0, 1, 10.0, 1), 1, 0.0, now=T0)[0]
    assert store.reserve("api", "k", Params(SLIDING, 1.0, 1, 10.0, 2), 2, 0.0, now=T0)[0]
    assert store.reserve("api", "k", Params(TOKEN, 1.0, 1, 10.0, 1), 1, 0.0, now=T0)[0]


@pytest.mark.parametrize("algorithm", list(RateLimitAlgorithm))
def test_a_block_on_a_fresh_key_holds_for_every_algorithm(
    store: RedisStore, algorithm: RateLimitAlgorithm
) -> None:
    p = params(algorithm, rate=100.0, burst=100)
    store.block("api", "fresh", 3.0, now=T0)
    assert store.reserve("api", "fresh", p, 1, 0.0, now=T0 + 1.0) == (False, pytest.approx(2.0))
    assert store.reserve("api", "fresh", p, 1, 0.0, now=T0 + 3.0)[0]
    store.block("api", "fresh", 3.0, now=T0 + 3.0)  # a block on a key with state, too
    assert store.reserve("api", "fresh", p, 1, 0.0, now=T0 + 4.0) == (False, pytest.approx(2.0))
    assert store.reserve("api", "fresh", p, 1, 0.0, now=T0 + 6.0)[0]


def test_sliding_window_with_a_large_limit_stays_bounded(client: Any, store: RedisStore) -> None:
    p = Params(SLIDING, 0.001, 1, 1.0, 300)
    admitted = sum(store.reserve("api", "k", p, 7, 0.0, now=T0)[0] for _ in range(60))
    assert admitted == 300 // 7
    assert client.llen(store.limit_key("api", "k")) == 1 + 300 // 7 * 7


# -- asyncio ------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["url", "asyncio client", "sync client"])
def test_async_steps(redis_port: int, client: Any, url: str, given: str) -> None:
    import redis.asyncio

    async def main() -> list[Any]:
        conn = redis.asyncio.Redis(port=redis_port)
        source = {"url": url, "asyncio client": conn, "sync client": client}[given]
        astore = RedisStore(source)
        try:
            p = Params(TOKEN, 1.0, 2, 1.0, 1)
            out: list[Any] = [await astore.areserve("api", "k", p, 1, 0.0, T0) for _ in range(3)]
            await astore.ablock("api", "b", 2.0, now=T0)
            out.append(await astore.areserve("api", "b", p, 1, 0.0, now=T0 + 0.5))
            await astore.areset("api", "k")
            out.append(await astore.areserve("api", "k", p, 1, 0.0, now=T0))
            out.append(await astore.areserve("api", None, Params(TOKEN, 10.0, 1, 1.0, 1), 1, 0.0))
            out.append(await astore.areserve("api", None, Params(TOKEN, 10.0, 1, 1.0, 1), 1, 0.0))
            return out
        finally:
            await astore.aclose()
            await conn.aclose()

    out = asyncio.run(main())
    assert out[:3] == [(True, 0.0), (True, 0.0), (False, pytest.approx(1.0))]
    assert out[3] == (False, pytest.approx(1.5))
    assert out[4] == (True, 0.0)
    assert out[5] == (True, 0.0)
    assert not out[6][0]
    assert 9.5 < out[6][1] <= 10.0


# -- concurrency --------------------------------------------------------------------------------


def test_concurrent_clients_never_over_admit(url: str, client: Any) -> None:
    p = Params(TOKEN, 1 / 50, 50, 1.0, 50)
    barrier = threading.Barrier(8)
    admitted: list[int] = []
    lock = threading.Lock()
    shared = RedisStore(url)  # four threads share one store; four more open their own

    def hammer(i: int) -> None:
        local = shared if i % 2 else RedisStore(url)
        barrier.wait()
        count = sum(local.reserve("api", "shared", p, 1, 0.0, now=T0)[0] for _ in range(25))
        if local is not shared:
            local.close()
        with lock:
            admitted.append(count)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    shared.close()
    assert len(admitted) == 8
    assert sum(admitted) == 50


# -- construction -------------------------------------------------------------------------------


def test_prefix_and_idle_ttl_are_validated(url: str) -> None:
    with pytest.raises(ValueError, match="prefix must not contain"):
        RedisStore(url, prefix="a{b}")
    with pytest.raises(ValueError, match="idle_ttl must be a positive number of seconds or None"):
        RedisStore(url, idle_ttl=0)
    store = RedisStore(url, prefix="app")
    assert store.limit_key("n", "k") == "app:{n}:k:k"
    store.close()
