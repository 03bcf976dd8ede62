"""The Redis breaker store against a real redis-server (started by the ``redis_port`` fixture).

The store must answer every step exactly as :func:`buttress.backends.base.apply_breaker` does on
the memory store, in one Redis command per step, and keep the state in ``to_state``'s JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buttress.backends.base import (
    BreakerReply,
    MemoryStore,
    StorageError,
    StorageUnavailable,
    shared_settings,
)
from buttress.backends.redis import RedisStore
from buttress.machines.breaker import BreakerMachine, BreakerSettings, CircuitState
from redis_server import commands_sent
from steps import step as _step

redis = pytest.importorskip("redis")

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
T0 = 1_700_000_000.0
DAY_MS = 86_400_000


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


def same(got: BreakerReply, expected: BreakerReply) -> bool:
    return (
        got.allowed == expected.allowed
        and got.probe == expected.probe
        and got.ticket == expected.ticket
        and abs(got.retry_after - expected.retry_after) <= 1e-6
        and got.state is expected.state
        and got.failures == expected.failures
        and abs(got.opened_at - expected.opened_at) <= 1e-6
        and got.transition == expected.transition
    )


def stored(client: Any, store: RedisStore, name: str, s: BreakerSettings) -> Any:
    """The stored state as ``from_state`` reads it, normalised by ``to_state``."""
    raw = client.get(store.breaker_key(name))
    data = None if raw is None else json.loads(raw)
    return BreakerMachine.from_state(shared_settings(s), data).to_state()


# -- equivalence with the Python machine -------------------------------------------------------

# Dyadic durations keep boundaries exact at T0's magnitude: ``(t + 0.5) - t == 0.5``, so a
# step can land exactly when recovery is due or a probe's lease expires.
EXACT = [0.25, 0.5, 1.0, 2.0]
breaker_settings = st.builds(
    BreakerSettings,
    fail_max=st.integers(1, 3),
    recovery=st.sampled_from([0.0, *EXACT, 1 / 3]),
    half_open_max_calls=st.integers(1, 3),
    success_threshold=st.integers(1, 3),
    probe_timeout=st.sampled_from([None, None, 0.0, *EXACT, 5.0]),
)
actions = st.one_of(
    st.tuples(st.just("acquire")),
    st.tuples(st.just("acquire")),
    # The outcome of an admission we were given: recent ones mostly, older (stale) ones too.
    st.tuples(st.just("record"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("record"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("record"), st.integers(0, 1000), st.booleans()),
    st.tuples(st.just("stale"), st.booleans(), st.integers(0, 8), st.booleans()),  # any ticket
    st.tuples(st.just("release"), st.integers(0, 2)),
    st.tuples(st.just("force"), st.sampled_from(list(CircuitState))),
    st.tuples(st.just("read")),
)
steps = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.sampled_from(EXACT), st.floats(0.0, 0.5), st.floats(0.0, 4.0)),
        actions,
    ),
    min_size=8,
    max_size=40,
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(s=breaker_settings, script=steps)
def test_store_answers_exactly_as_the_machine(
    client: Any,
    store: RedisStore,
    s: BreakerSettings,
    script: list[tuple[float, tuple[Any, ...]]],
) -> None:
    memory = MemoryStore()
    name = uuid.uuid4().hex
    admissions: list[tuple[bool, int]] = []  # (probe, ticket) of every admission so far
    now = T0
    for advance, action in script:
        now += advance
        kind = action[0]
        kw: dict[str, Any] = {}
        op = kind
        if kind in ("record", "release"):
            back = action[1] % len(admissions) if admissions else 0
            probe, ticket = admissions[-1 - back] if admissions else (False, 0)
            kw = {"probe": probe, "ticket": ticket}
            if kind == "record":
                kw["failed"] = action[2]
        elif kind == "stale":
            op = "record"
            kw = {"probe": action[1], "ticket": action[2], "failed": action[3]}
        elif kind == "force":
            kw = {"target": action[1]}
        expected = memory.breaker(name, s, _step(op, **kw), now)
        got = store.breaker(name, s, _step(op, **kw), now)
        assert same(got, expected), (op, kw, now, got, expected)
        if got.allowed:
            admissions.append((got.probe, got.ticket))
        assert stored(client, store, name, s) == memory._breakers[name], (op, kw, now)


@pytest.mark.parametrize("probe_timeout", [0.0, 0.5, None])
def test_boundaries_are_the_machines(
    client: Any, store: RedisStore, probe_timeout: float | None
) -> None:
    """Recovery is due, and a lease expires, at the exact instant (``>=``), on both sides."""
    s = BreakerSettings(
        fail_max=1, recovery=0.5, half_open_max_calls=2, probe_timeout=probe_timeout
    )
    lease = 1.0 if probe_timeout is None else probe_timeout  # shared_settings: max(1, recovery)
    memory = MemoryStore()
    plan: list[tuple[float, str, dict[str, Any]]] = [
        (0.0, "record", {"failed": True}),
        (0.5, "acquire", {}),  # recovery due exactly now
        (0.5, "acquire", {}),  # a second probe at the same instant (unless the lease is 0)
        (0.5 + lease, "acquire", {}),  # the first probe's lease ends exactly now
        (0.5 + lease + 0.5, "acquire", {}),
    ]
    for t, op, kw in plan:
        expected = memory.breaker("api", s, _step(op, **kw), T0 + t)
        got = store.breaker("api", s, _step(op, **kw), T0 + t)
        assert same(got, expected), (t, op, got, expected)
        assert stored(client, store, "api", s) == memory._breakers["api"]


def test_python_and_lua_read_each_others_states(client: Any, store: RedisStore) -> None:
    s = BreakerSettings(fail_max=1, recovery=2.0, half_open_max_calls=3)
    machine = BreakerMachine(shared_settings(s))
    machine.force(OPEN, T0 + 0.1, "test")
    machine.acquire(T0 + 2.2)
    machine.acquire(T0 + 2.3)
    client.set(store.breaker_key("api"), json.dumps(machine.to_state()))  # Python's JSON
    reply = store.breaker("api", s, _step("acquire"), T0 + 2.4)
    assert (reply.allowed, reply.probe, reply.ticket, reply.state) == (True, True, 3, HALF_OPEN)
    assert reply.opened_at == T0 + 0.1
    machine.acquire(T0 + 2.4)
    again = BreakerMachine.from_state(s, json.loads(client.get(store.breaker_key("api"))))
    assert again.to_state() == machine.to_state()
    assert json.loads(client.get(store.breaker_key("api")))["probes"] == {
        "1": T0 + 2.2,
        "2": T0 + 2.3,
        "3": T0 + 2.4,
    }


def test_empty_probes_are_written_as_an_object(client: Any, store: RedisStore) -> None:
    s = BreakerSettings(fail_max=1, recovery=5.0)
    store.breaker("api", s, _step("record", ticket=0, failed=True), T0)
    raw = client.get(store.breaker_key("api")).decode()
    assert '"probes":{}' in raw
    assert json.loads(raw) == {
        "v": 1,
        "state": "open",
        "generation": 1,
        "failures": 0,
        "opened_at": T0,
        "probe_successes": 0,
        "probes": {},
        "tickets": 0,
    }


# -- probes under concurrency ------------------------------------------------------------------


@pytest.mark.parametrize("max_calls", [1, 3])
def test_exactly_n_probes_under_concurrency(
    redis_port: int, store: RedisStore, max_calls: int
) -> None:
    s = BreakerSettings(fail_max=2, recovery=10.0, half_open_max_calls=max_calls)
    for _ in range(2):
        store.breaker("api", s, _step("record", ticket=0, failed=True), T0)
    assert store.breaker("api", s, _step("read"), T0).state is OPEN
    due = T0 + 10.0
    barrier = threading.Barrier(8)
    lock = threading.Lock()
    replies: list[BreakerReply] = []

    def hammer() -> None:
        local = RedisStore(f"redis://127.0.0.1:{redis_port}/0")
        barrier.wait()
        mine = [local.breaker("api", s, _step("acquire"), due) for _ in range(40)]
        local.close()
        with lock:
            replies.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(replies) == 8 * 40
    admitted = [r for r in replies if r.allowed]
    assert len(admitted) == max_calls
    assert all(r.probe for r in admitted)
    assert sorted(r.ticket for r in admitted) == list(range(1, max_calls + 1))
    moved = [r.transition for r in replies if r.transition is not None]
    assert moved == [(OPEN, HALF_OPEN, "recovery timeout elapsed")]
    refused = [r for r in replies if not r.allowed]
    assert all(r.retry_after == pytest.approx(10.0) for r in refused)  # the probe lease


# -- a prober that never reports -----------------------------------------------------------------


def test_a_crashed_prober_is_written_off(store: RedisStore) -> None:
    s = BreakerSettings(fail_max=1, recovery=5.0)  # the lease defaults to the recovery time
    store.breaker("api", s, _step("record", ticket=0, failed=True), T0)
    crashed = store.breaker("api", s, _step("acquire"), T0 + 5.0)
    assert (crashed.allowed, crashed.probe, crashed.ticket) == (True, True, 1)
    # Until the lease expires, nobody else probes.
    waiting = store.breaker("api", s, _step("acquire"), T0 + 6.0)
    assert not waiting.allowed
    assert waiting.retry_after == pytest.approx(4.0)
    # At the expiry the probe is written off: the breaker opens again.
    expired = store.breaker("api", s, _step("acquire"), T0 + 10.0)
    assert not expired.allowed
    assert expired.retry_after == pytest.approx(5.0)
    assert expired.transition == (HALF_OPEN, OPEN, "half-open probe timed out")
    assert expired.state is OPEN
    assert expired.opened_at == T0 + 10.0
    # Recovery proceeds: a new probe, whose success closes the breaker.
    assert not store.breaker("api", s, _step("acquire"), T0 + 14.9).allowed
    probe = store.breaker("api", s, _step("acquire"), T0 + 15.0)
    assert (probe.allowed, probe.probe, probe.ticket) == (True, True, 2)
    # The crashed prober coming back late changes nothing.
    late = store.breaker("api", s, _step("record", probe=True, ticket=1, failed=True), T0 + 15.1)
    assert late.state is HALF_OPEN
    assert late.transition is None
    closed = store.breaker("api", s, _step("record", probe=True, ticket=2), T0 + 15.2)
    assert closed.transition == (HALF_OPEN, CLOSED, "half-open probes succeeded")
    assert store.breaker("api", s, _step("acquire"), T0 + 15.3).allowed


def test_a_released_probe_frees_its_slot(store: RedisStore) -> None:
    s = BreakerSettings(fail_max=1, recovery=1.0, probe_timeout=60.0)
    store.breaker("api", s, _step("force", target=OPEN), T0)
    first = store.breaker("api", s, _step("acquire"), T0 + 1.0)
    assert first.probe
    assert not store.breaker("api", s, _step("acquire"), T0 + 1.5).allowed
    store.breaker("api", s, _step("release", probe=True, ticket=first.ticket), T0 + 1.6)
    second = store.breaker("api", s, _step("acquire"), T0 + 1.7)
    assert (second.allowed, second.probe, second.ticket) == (True, True, 2)


# -- one command per step ----------------------------------------------------------------------


def calls(client: Any) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


SCRIPT_COMMANDS = {"GET", "SET", "PEXPIRE", "TIME"}


def test_one_redis_command_per_step(redis_port: int, store: RedisStore) -> None:
    s = BreakerSettings(fail_max=2, recovery=1.0, half_open_max_calls=2)
    store.breaker("api", s, _step("read"), T0)  # connects, loads the script
    n = 0
    now = T0
    with commands_sent(redis_port) as seen:
        for i in range(20):
            now += 0.4
            admission = store.breaker("api", s, _step("acquire"), now)
            if admission.allowed:
                failed = i % 3 != 0
                step = _step(
                    "record", probe=admission.probe, ticket=admission.ticket, failed=failed
                )
                store.breaker("api", s, step, now)
                n += 1
            store.breaker("api", s, _step("read"), now)
            n += 2
        store.breaker("api", s, _step("force", target=OPEN), now)
        store.breaker("api", s, _step("release", probe=True, ticket=99), now)
        store.breaker("api", s, _step("acquire"))  # server time
        n += 3
    assert [command for who, command in seen if who != "lua"] == ["EVALSHA"] * n
    assert {command for who, command in seen if who == "lua"} <= SCRIPT_COMMANDS


def test_steps_that_change_nothing_write_nothing(client: Any, store: RedisStore) -> None:
    s = BreakerSettings(fail_max=3, recovery=1.0)
    store.breaker("api", s, _step("record", ticket=0, failed=True), T0)
    before = calls(client)
    for _ in range(5):
        store.breaker("api", s, _step("acquire"), T0)  # closed admission
        store.breaker("api", s, _step("record", ticket=7, failed=True), T0)  # stale generation
        store.breaker("api", s, _step("read"), T0)
    after = calls(client)
    assert after.get("cmdstat_set", {}) == before.get("cmdstat_set", {})
    assert after["cmdstat_evalsha"] - before["cmdstat_evalsha"] == 15


# -- expiry -------------------------------------------------------------------------------------


def test_only_an_idle_closed_breaker_expires(client: Any, store: RedisStore) -> None:
    s = BreakerSettings(fail_max=2, recovery=30.0)
    key = store.breaker_key("api")
    store.breaker("api", s, _step("acquire"), T0)
    assert not client.exists(key)  # a fresh breaker needs no key
    store.breaker("api", s, _step("record", ticket=0, failed=True), T0)
    assert client.pttl(key) == -1  # counting failures: kept
    store.breaker("api", s, _step("record", ticket=0, failed=True), T0)
    assert store.breaker("api", s, _step("read"), T0).state is OPEN
    assert client.pttl(key) == -1  # open: kept
    probe = store.breaker("api", s, _step("acquire"), T0 + 30.0)
    assert client.pttl(key) == -1  # half-open: kept
    store.breaker("api", s, _step("record", probe=True, ticket=probe.ticket), T0 + 31.0)
    assert DAY_MS - 5_000 < client.pttl(key) <= DAY_MS  # closed, no failures: may expire
    client.pexpire(key, 1_000)
    admission = store.breaker("api", s, _step("acquire"), T0 + 32.0)  # refreshes the idle TTL
    assert client.pttl(key) > DAY_MS - 5_000
    store.breaker("api", s, _step("record", ticket=admission.ticket, failed=True), T0 + 33.0)
    assert client.pttl(key) == -1  # a failure again: kept


def test_idle_ttl_none_keeps_the_key(client: Any, url: str) -> None:
    store = RedisStore(url, idle_ttl=None)
    s = BreakerSettings(fail_max=1, recovery=1.0)
    store.breaker("api", s, _step("force", target=CLOSED), T0)
    assert client.pttl(store.breaker_key("api")) == -1
    short = RedisStore(url, idle_ttl=2.5)
    short.breaker("other", s, _step("force", target=CLOSED), T0)
    assert 2_000 < client.pttl(short.breaker_key("other")) <= 2_500


# -- time ---------------------------------------------------------------------------------------


def test_server_time_mode(store: RedisStore) -> None:
    s = BreakerSettings(fail_max=3, recovery=30.0)
    for _ in range(3):
        admission = store.breaker("api", s, _step("acquire"))
        assert admission.allowed
        reply = store.breaker("api", s, _step("record", ticket=admission.ticket, failed=True))
    assert reply.transition == (CLOSED, OPEN, "3 consecutive failures")
    refused = store.breaker("api", s, _step("acquire"))
    assert not refused.allowed
    assert 29.0 < refused.retry_after <= 30.0


def test_client_wall_clock_mode(client: Any, url: str) -> None:
    store = RedisStore(url, server_time=False)
    s = BreakerSettings(fail_max=1, recovery=30.0)
    store.breaker("api", s, _step("record", ticket=0, failed=True))
    refused = store.breaker("api", s, _step("acquire"))
    assert not refused.allowed
    assert 29.0 < refused.retry_after <= 30.0


# -- asyncio ------------------------------------------------------------------------------------


def test_async_store(redis_port: int, client: Any) -> None:
    import redis.asyncio

    s = BreakerSettings(fail_max=2, recovery=5.0, half_open_max_calls=2)

    async def main() -> list[BreakerReply]:
        conn = redis.asyncio.Redis(port=redis_port)
        try:
            astore = RedisStore(conn)
            out = [await astore.abreaker("api", s, _step("acquire"), T0)]
            for _ in range(2):
                out.append(await astore.abreaker("api", s, _step("record", failed=True), T0))
            out.append(await astore.abreaker("api", s, _step("acquire"), T0 + 1.0))
            probes = await asyncio.gather(
                *(astore.abreaker("api", s, _step("acquire"), T0 + 5.0) for _ in range(10))
            )
            out.extend(probes)
            out.append(await astore.abreaker("api", s, _step("acquire"), None))  # server time
            await conn.delete(astore.breaker_key("api"))
            out.append(await astore.abreaker("api", s, _step("read"), T0))
            return out
        finally:
            await conn.aclose()

    out = asyncio.run(main())
    assert out[0].allowed
    assert out[2].transition == (CLOSED, OPEN, "2 consecutive failures")
    assert not out[3].allowed
    assert out[3].retry_after == pytest.approx(4.0)
    probes = out[4:14]
    assert sorted(r.ticket for r in probes if r.allowed) == [1, 2]
    assert all(r.probe for r in probes if r.allowed)
    # The server's clock is far past the probes' leases: they are written off.
    assert out[14].transition == (HALF_OPEN, OPEN, "half-open probe timed out")
    assert not out[14].allowed
    assert out[15].state is CLOSED
    assert out[15].opened_at == 0.0


def test_async_store_matches_the_machine(redis_port: int) -> None:
    import redis.asyncio

    s = BreakerSettings(fail_max=1, recovery=1.0, success_threshold=2, half_open_max_calls=2)
    plan: list[tuple[float, str, dict[str, Any]]] = [
        (0.0, "record", {"failed": True}),
        (0.5, "acquire", {}),
        (1.0, "acquire", {}),
        (1.0, "acquire", {}),
        (1.1, "record", {"probe": True, "ticket": 1}),
        (1.2, "record", {"probe": True, "ticket": 2}),
        (1.3, "force", {"target": OPEN, "reason": "maintenance"}),
        (1.4, "force", {"target": CLOSED}),
    ]
    memory = MemoryStore()

    async def main() -> list[BreakerReply]:
        conn = redis.asyncio.Redis(port=redis_port)
        try:
            astore = RedisStore(conn, prefix="async-test")
            await conn.delete(astore.breaker_key("api"))
            return [await astore.abreaker("api", s, _step(op, **kw), T0 + t) for t, op, kw in plan]
        finally:
            await conn.aclose()

    got = asyncio.run(main())
    expected = [memory.breaker("api", s, _step(op, **kw), T0 + t) for t, op, kw in plan]
    assert all(same(g, e) for g, e in zip(got, expected, strict=True)), (got, expected)
    assert got[6].transition == (CLOSED, OPEN, "maintenance")
    assert got[7].transition == (OPEN, CLOSED, "forced closed")


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"v": 2, "state": "closed"}',
        '{"v": 1, "state": "ajar", "generation": 0, "failures": 0, "opened_at": 0,'
        ' "probe_successes": 0, "probes": {}, "tickets": 0}',
        '{"v": 1, "state": "open", "generation": -1, "failures": 0, "opened_at": 0,'
        ' "probe_successes": 0, "probes": {}, "tickets": 0}',
        '{"v": 1, "state": "open", "generation": 1, "failures": 0, "opened_at": "x",'
        ' "probe_successes": 0, "probes": {}, "tickets": 0}',
        '{"v": 1, "state": "open", "generation": 1, "failures": 0, "opened_at": 0,'
        ' "probe_successes": 0, "probes": {"x": 1}, "tickets": 0}',
    ],
)
def test_a_foreign_value_is_a_storage_error(client: Any, store: RedisStore, raw: str) -> None:
    s = BreakerSettings(fail_max=1, recovery=1.0)
    client.set(store.breaker_key("api"), raw)
    with pytest.raises(StorageError, match=r"Redis key 'buttress:\{api\}:breaker': the stored"):
        store.breaker("api", s, _step("acquire"), T0)
    assert client.get(store.breaker_key("api")).decode() == raw  # left untouched


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"op": "trip"}, ValueError, "'trip' is not a valid BreakerOp"),
        ({"op": "force"}, ValueError, "a FORCE step needs a target CircuitState, got None"),
        ({"op": "force", "target": "open"}, ValueError, "a FORCE step needs a target CircuitState"),
        ({"now": float("nan")}, ValueError, "now must be a finite number"),
        ({"op": "record", "ticket": -1}, ValueError, "ticket must be between 0 and 2"),
        ({"op": "record", "ticket": "1"}, TypeError, "ticket must be an int"),
        ({"name": ""}, ValueError, "breaker name must be a non-empty string"),
        (
            {"settings": BreakerSettings(fail_max=0, recovery=1.0)},
            ValueError,
            "fail_max must be an integer >= 1, got 0",
        ),
        (
            {"settings": BreakerSettings(fail_max=1, recovery=-1.0)},
            ValueError,
            "recovery must be a number of seconds >= 0, got -1.0",
        ),
        (
            {"settings": BreakerSettings(fail_max=1, recovery=1.0, failure_rate_threshold=0.5)},
            ValueError,
            "counts consecutive failures only",
        ),
        ({"settings": {"fail_max": 1}}, TypeError, "settings must be a"),
    ],
)
def test_bad_arguments_are_named(
    store: RedisStore, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    args: dict[str, Any] = {
        "name": "api",
        "settings": BreakerSettings(fail_max=1, recovery=1.0),
        "op": "acquire",
        "now": T0,
    }
    args.update(kwargs)
    fields = {f: args.pop(f) for f in ("probe", "ticket", "failed", "target") if f in args}

    def attempt() -> None:
        store.breaker(args["name"], args["settings"], _step(args["op"], **fields), args["now"])

    with pytest.raises(error, match=message):
        attempt()


def test_an_unreachable_redis_is_storage_unavailable() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from redis_server import free_port

    conn = redis.Redis(
        host="127.0.0.1",
        port=free_port(),
        socket_connect_timeout=0.2,
        socket_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    for store in (RedisStore(conn), RedisStore(f"redis://127.0.0.1:{free_port()}/0")):
        with pytest.raises(StorageUnavailable, match=r"redis://127\.0\.0\.1:\d+/0: .*refused"):
            store.breaker("api", BreakerSettings(fail_max=1, recovery=1.0), _step("read"), T0)
        store.close()
    conn.close()


# -- keys ---------------------------------------------------------------------------------------


def test_keys_share_the_rate_limits_hash_tag(client: Any, store: RedisStore) -> None:
    for name in ("api", "a}b", "{x}", "50%", "a b\n"):
        assert store.breaker_key(name) == store.limit_key(name, None) + "breaker"
    assert store.breaker_key("api") == "buttress:{api}:breaker"
    assert RedisStore(client, prefix="svc").breaker_key("api") == "svc:{api}:breaker"


def test_breakers_are_isolated_and_reset(store: RedisStore) -> None:
    s = BreakerSettings(fail_max=1, recovery=10.0)
    store.breaker("a", s, _step("record", failed=True), T0)
    assert store.breaker("a", s, _step("read"), T0).state is OPEN
    assert store.breaker("a}", s, _step("read"), T0).state is CLOSED
    assert store.breaker("b", s, _step("acquire"), T0).allowed
    store.breaker("a", s, _step("force", target=CLOSED), T0)
    assert store.breaker("a", s, _step("acquire"), T0).allowed


def test_a_client_decoding_responses_works_too(redis_port: int, client: Any) -> None:
    conn = redis.Redis(port=redis_port, decode_responses=True)
    try:
        store = RedisStore(conn)
        s = BreakerSettings(fail_max=1, recovery=2.0)
        tripped = store.breaker("api", s, _step("record", failed=True), T0)
        assert tripped.transition == (CLOSED, OPEN, "1 consecutive failures")
        refused = store.breaker("api", s, _step("acquire"), T0 + 0.5)
        assert (refused.allowed, refused.retry_after, refused.opened_at) == (False, 1.5, T0)
    finally:
        conn.close()
