"""One contract for every store: memory, SQLite and Redis give the same answers.

Times are passed explicitly (``now``), so the stores are driven like the pure machines. Every
store is also an :class:`AsyncStore`: the async steps give the same answers.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buttress.backends import AsyncStore, MemoryStore, Store, open_storage
from buttress.backends.base import ACQUIRE, BreakerStep, StorageUnavailable
from buttress.machines.breaker import BreakerSettings, CircuitState
from buttress.machines.ratelimit import Params, RateLimitAlgorithm
from buttress.policies._storeguard import store_faults
from steps import stepper

T0 = 1_750_000_000.0
_n = itertools.count()


@pytest.fixture(params=["memory", "sqlite", "redis", "redis client"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        sqlite = open_storage(f"sqlite:///{tmp_path}/state.db")
        yield sqlite
        sqlite.close()
    else:
        redis = pytest.importorskip("redis")
        port = request.getfixturevalue("redis_port")
        client = redis.Redis(port=port)
        client.flushdb()
        url = f"redis://127.0.0.1:{port}/0"
        opened = open_storage(url if request.param == "redis" else client)
        yield opened
        opened.close()
        client.close()


def name() -> str:
    return f"contract-{next(_n)}"


def bucket(rate: float = 2.0, burst: int = 3) -> Params:
    return Params(RateLimitAlgorithm.TOKEN_BUCKET, 1.0 / rate, burst, 1.0, max(1, int(rate)))


# --- rate limits ----------------------------------------------------------------------------------


def test_token_bucket_burst_then_refusal_with_retry_after(store: Any) -> None:
    n, p = name(), bucket(rate=2.0, burst=3)
    assert [store.reserve(n, None, p, 1, 0.0, T0)[0] for _ in range(4)] == [True] * 3 + [False]
    admitted, retry_after = store.reserve(n, None, p, 1, 0.0, T0)
    assert not admitted
    assert retry_after == pytest.approx(0.5)
    assert store.reserve(n, None, p, 1, 0.0, T0 + 0.5) == (True, pytest.approx(0.0))


def test_waiting_reservations_queue_in_order(store: Any) -> None:
    n, p = name(), bucket(rate=10.0, burst=1)
    waits = [store.reserve(n, None, p, 1, math.inf, T0)[1] for _ in range(4)]
    assert waits == [pytest.approx(w) for w in (0.0, 0.1, 0.2, 0.3)]
    assert store.reserve(n, None, p, 1, 0.05, T0) == (False, pytest.approx(0.4))


@pytest.mark.parametrize("algorithm", list(RateLimitAlgorithm))
def test_every_algorithm_admits_its_limit_and_no_more(
    store: Any, algorithm: RateLimitAlgorithm
) -> None:
    n = name()
    p = Params(algorithm, 1.0 / 5, 5, 1.0, 5)
    admitted = sum(store.reserve(n, None, p, 1, 0.0, T0 + i * 0.01)[0] for i in range(20))
    expected = 1 if algorithm is RateLimitAlgorithm.LEAKY_BUCKET else 5
    assert admitted == expected


def test_keys_are_separate_and_none_is_not_the_string_null(store: Any) -> None:
    n, p = name(), bucket(rate=1.0, burst=1)
    for key in (None, "null", "", "tenant:1", "{x}"):
        assert store.reserve(n, key, p, 1, 0.0, T0)[0], key
        assert not store.reserve(n, key, p, 1, 0.0, T0)[0], key


def test_block_then_reset(store: Any) -> None:
    n, p = name(), bucket()
    store.block(n, "k", 30.0, T0)
    assert store.reserve(n, "k", p, 1, 0.0, T0 + 10) == (False, pytest.approx(20.0))
    assert store.reserve(n, "other", p, 1, 0.0, T0 + 10)[0]
    store.block(n, "k", 5.0, T0 + 10)  # a shorter block does not shorten the longer one
    assert store.reserve(n, "k", p, 1, 0.0, T0 + 16) == (False, pytest.approx(14.0))
    assert store.reserve(n, "k", p, 1, 0.0, T0 + 30)[0]
    store.block(n, "k", 100.0, T0 + 30)
    store.reset(n, "k")
    assert store.reserve(n, "k", p, 1, 0.0, T0 + 31)[0]


# --- circuit breakers -----------------------------------------------------------------------------

SETTINGS = BreakerSettings(fail_max=3, recovery=10.0, half_open_max_calls=2, success_threshold=2)


def test_breaker_trips_rejects_probes_and_closes(store: Any) -> None:
    n = name()
    step = stepper(store)
    first = step(n, SETTINGS, "acquire", T0)
    assert first.allowed
    assert not first.probe
    assert first.state is CircuitState.CLOSED
    for i in range(3):
        reply = step(n, SETTINGS, "record", T0 + i, ticket=first.ticket, failed=True)
    assert reply.state is CircuitState.OPEN
    assert reply.transition == (CircuitState.CLOSED, CircuitState.OPEN, "3 consecutive failures")
    refused = step(n, SETTINGS, "acquire", T0 + 5)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(7.0)
    probes = [step(n, SETTINGS, "acquire", T0 + 12 + i * 0.001) for i in range(4)]
    assert [r.allowed for r in probes] == [True, True, False, False]
    assert probes[0].transition == (
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        "recovery timeout elapsed",
    )
    step(n, SETTINGS, "record", T0 + 13, probe=True, ticket=probes[0].ticket)
    done = step(n, SETTINGS, "record", T0 + 13, probe=True, ticket=probes[1].ticket)
    assert done.state is CircuitState.CLOSED
    # a stale ticket from before the trip counts for nothing
    stale = step(n, SETTINGS, "record", T0 + 14, ticket=first.ticket, failed=True)
    assert stale.failures == 0


def test_a_failed_probe_reopens_and_a_success_resets_failures(store: Any) -> None:
    n = name()
    step = stepper(store)
    gen = step(n, SETTINGS, "acquire", T0).ticket
    step(n, SETTINGS, "record", T0, ticket=gen, failed=True)
    step(n, SETTINGS, "record", T0, ticket=gen, failed=True)
    assert step(n, SETTINGS, "read", T0).failures == 2
    assert step(n, SETTINGS, "record", T0, ticket=gen).failures == 0
    step(n, SETTINGS, "force", T0, target=CircuitState.OPEN)
    probe = step(n, SETTINGS, "acquire", T0 + 10)
    assert probe.probe
    reopened = step(n, SETTINGS, "record", T0 + 11, probe=True, ticket=probe.ticket, failed=True)
    assert reopened.state is CircuitState.OPEN
    assert reopened.opened_at == pytest.approx(T0 + 11)


def test_an_abandoned_probe_lease_expires(store: Any) -> None:
    n = name()
    step = stepper(store)
    settings = BreakerSettings(fail_max=1, recovery=5.0)  # no probe_timeout: the lease is 5 s
    gen = step(n, settings, "acquire", T0).ticket
    step(n, settings, "record", T0, ticket=gen, failed=True)
    assert step(n, settings, "acquire", T0 + 5).probe  # ... and this prober dies
    assert not step(n, settings, "acquire", T0 + 6).allowed  # the lease still holds
    written_off = step(n, settings, "acquire", T0 + 10)
    assert not written_off.allowed
    assert written_off.state is CircuitState.OPEN
    assert step(n, settings, "acquire", T0 + 15).probe  # recovery goes on: nothing wedged


def test_release_frees_a_probe_slot_and_force_closes(store: Any) -> None:
    n = name()
    step = stepper(store)
    settings = BreakerSettings(fail_max=1, recovery=1.0, half_open_max_calls=1)
    step(n, settings, "force", T0, target=CircuitState.OPEN)
    probe = step(n, settings, "acquire", T0 + 1)
    assert not step(n, settings, "acquire", T0 + 1).allowed
    step(n, settings, "release", T0 + 1, probe=True, ticket=probe.ticket)
    assert step(n, settings, "acquire", T0 + 1).allowed
    closed = step(n, settings, "force", T0 + 2, target=CircuitState.CLOSED)
    assert closed.state is CircuitState.CLOSED
    with pytest.raises(ValueError, match="is not a valid BreakerOp"):
        step(n, settings, "explode", T0)


# --- both protocols, one object -------------------------------------------------------------------


def test_every_store_is_sync_and_async(store: Any) -> None:
    assert isinstance(store, Store)
    assert isinstance(store, AsyncStore)
    n, p = name(), bucket(rate=2.0, burst=2)
    settings = BreakerSettings(fail_max=1, recovery=10.0)

    async def main() -> list[Any]:
        out: list[Any] = [await store.areserve(n, "k", p, 1, 0.0, T0) for _ in range(3)]
        await store.ablock(n, "b", 5.0, T0)
        out.append(await store.areserve(n, "b", p, 1, 0.0, T0 + 1))
        await store.areset(n, "b")
        out.append(await store.areserve(n, "b", p, 1, 0.0, T0 + 1))
        tripped = BreakerStep.record(0, probe=False, failed=True)
        out.append((await store.abreaker(n, settings, tripped, T0)).state)
        out.append((await store.abreaker(n, settings, ACQUIRE, T0 + 4)).retry_after)
        return out

    out = asyncio.run(main())
    assert out[:3] == [(True, 0.0), (True, 0.0), (False, pytest.approx(0.5))]
    assert out[3] == (False, pytest.approx(4.0))
    assert out[4] == (True, 0.0)
    assert out[5] is CircuitState.OPEN
    assert out[6] == pytest.approx(6.0)
    assert store.reserve(n, "k", p, 1, 0.0, T0)[0] is False  # the sync twin sees the same state


def test_a_store_outage_is_the_one_fault_a_policy_catches() -> None:
    assert store_faults() == (StorageUnavailable,)


def test_a_store_object_must_be_both_sync_and_async() -> None:
    class SyncOnly:
        url, timeout = "x://", None

        def reserve(self, *args: Any) -> tuple[bool, float]:
            return True, 0.0

        def block(self, *args: Any) -> None: ...
        def reset(self, *args: Any) -> None: ...
        def breaker(self, *args: Any) -> Any: ...
        def close(self) -> None: ...

    with pytest.raises(TypeError, match="lacks areserve, ablock, areset, abreaker, aclose"):
        open_storage(SyncOnly())
    memory = MemoryStore()
    assert open_storage(memory) is memory  # a store passed in is used as it is
