"""Stored circuit breakers: what asks the store and what does not, async callers, disposal."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from buttress import CircuitBreaker, CircuitOpenError, CircuitState, events
from buttress.backends.base import BreakerOp, BreakerReply, BreakerStep, MemoryStore
from buttress.backends.sqlite import SQLiteStore
from buttress.machines.breaker import BreakerSettings
from buttress.testing import FakeClock

_names = itertools.count()


def unique(prefix: str = "stored") -> str:
    return f"test-{prefix}-{next(_names)}"


class CountingStore(MemoryStore):
    """A memory store that records every step it is asked, sync or async, and every close."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, BreakerOp]] = []
        self.closed: list[str] = []

    def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        self.asked.append(("sync", step.op))
        return MemoryStore.breaker(self, name, settings, step, now)

    async def abreaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        self.asked.append(("async", step.op))
        return MemoryStore.breaker(self, name, settings, step, now)

    def close(self) -> None:
        self.closed.append("close")

    async def aclose(self) -> None:
        self.closed.append("aclose")


def fail() -> None:
    raise ConnectionError("down")


async def afail() -> None:
    raise ConnectionError("down")


async def aok() -> str:
    return "ok"


# --- repr and metrics show the state last seen, without asking ------------------------------------


def test_repr_and_metrics_never_ask_the_store(clock: FakeClock) -> None:
    store = CountingStore()
    name = unique()
    cb = CircuitBreaker(name=name, fail_max=2, timeout_duration=30, storage=store)
    with pytest.raises(ConnectionError):
        cb.call(fail)
    asked = len(store.asked)
    assert repr(cb) == f"CircuitBreaker(name={name!r}, state='closed')"
    assert len(store.asked) == asked
    assert cb.failure_rate == 0.5  # the failures the store last reported
    assert dict(events.readings("circuit_failure_rate"))[name] == 0.5
    assert len(store.asked) == asked
    # another process trips the breaker: this one shows what it saw until it next asks
    MemoryStore.breaker(store, name, cb.config.settings(), BreakerStep.force(CircuitState.OPEN))
    assert repr(cb) == f"CircuitBreaker(name={name!r}, state='closed')"
    assert cb.state is CircuitState.OPEN  # the property asks
    assert store.asked[-1] == ("sync", BreakerOp.READ)
    assert repr(cb) == f"CircuitBreaker(name={name!r}, state='open')"


def test_repr_sends_no_redis_command(redis_port: int) -> None:
    from redis_server import commands_sent

    name = unique("redis")
    cb = CircuitBreaker(name=name, fail_max=1, storage=f"redis://127.0.0.1:{redis_port}/0")
    with pytest.raises(ConnectionError):
        cb.call(fail)
    with commands_sent(redis_port) as seen:
        shown, rate, readings = repr(cb), cb.failure_rate, events.readings("circuit_failure_rate")
    assert seen == []
    assert shown == f"CircuitBreaker(name={name!r}, state='open')"
    assert rate == 1.0  # open: held failing (not the count the trip restarted)
    assert (name, 1.0) in readings
    with commands_sent(redis_port) as seen:
        assert cb.state is CircuitState.OPEN  # the property asks: one round trip
    assert [command for sender, command in seen if sender != "lua"] == ["EVALSHA"]
    cb.dispose()


# --- async callers use the async store only -------------------------------------------------------


def test_async_callers_never_use_the_sync_store_even_when_cancelled(clock: FakeClock) -> None:
    store = CountingStore()
    cb = CircuitBreaker(name=unique("async"), fail_max=1, timeout_duration=10, storage=store)

    async def main() -> None:
        with pytest.raises(ConnectionError):
            await cb.acall(afail)
        with pytest.raises(CircuitOpenError):
            await cb.acall(aok)
        clock.advance(10)
        started = asyncio.Event()

        async def hang() -> None:
            started.set()
            await asyncio.Event().wait()

        probe = asyncio.ensure_future(cb.acall(hang))
        await started.wait()
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        assert await cb.acall(aok) == "ok"  # the cancelled probe gave its slot back
        async with cb:
            pass

    asyncio.run(main())
    assert {kind for kind, _ in store.asked} == {"async"}
    assert BreakerOp.RELEASE in {op for _, op in store.asked}


# --- disposal -------------------------------------------------------------------------------------


def _handles(directory: Path) -> int:
    """File descriptors of this process open on files in ``directory``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory))
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_disposing_breakers_releases_the_files_they_opened(tmp_path: Path) -> None:
    breakers = [
        CircuitBreaker(name=unique("file"), fail_max=3, storage=f"sqlite:///{tmp_path}/b{i}.db")
        for i in range(5)
    ]
    for cb in breakers:
        with pytest.raises(ConnectionError):
            cb.call(fail)
    assert _handles(tmp_path) >= 5
    for cb in breakers:
        cb.dispose()
    assert _handles(tmp_path) == 0
    with pytest.raises(RuntimeError, match="was disposed"):
        breakers[0].call(fail)
    again = CircuitBreaker(name=breakers[0].name, fail_max=3, storage=breakers[0].storage)
    assert again.failure_count == 1  # a new breaker of the name reads the stored state


def test_adispose_closes_an_opened_store_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []

    async def aclose(self: SQLiteStore) -> None:
        closed.append(self.url)

    monkeypatch.setattr(SQLiteStore, "aclose", aclose)
    url = f"sqlite:///{tmp_path}/a.db"
    cb = CircuitBreaker(name=unique("adispose"), storage=url)

    async def main() -> None:
        assert await cb.acall(aok) == "ok"
        await cb.adispose()

    asyncio.run(main())
    assert closed == [f"sqlite:///{tmp_path}/a.db"]


def test_a_store_passed_in_is_left_to_its_owner(clock: FakeClock) -> None:
    store = CountingStore()
    cb = CircuitBreaker(name=unique("owned"), storage=store)
    cb.call(lambda: None)
    cb.dispose()

    async def main() -> None:
        other = CircuitBreaker(name=unique("aowned"), storage=store)
        await other.acall(aok)
        await other.adispose()

    asyncio.run(main())
    assert store.closed == []


def test_an_outage_during_disposal_is_not_an_error(clock: FakeClock) -> None:
    class Down(CountingStore):
        def breaker(self, *args: Any, **kwargs: Any) -> BreakerReply:
            from buttress.backends.base import StorageUnavailable

            raise StorageUnavailable("down")

    cb = CircuitBreaker(name=unique("down"), fail_max=1, storage=Down())
    with pytest.raises(ConnectionError):
        cb.call(fail)  # decided and counted locally
    assert cb.degraded
    assert repr(cb) == f"CircuitBreaker(name={cb.name!r}, state='open')"  # the local state
    cb.dispose()
