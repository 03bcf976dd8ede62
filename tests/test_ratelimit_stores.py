"""The rate limiter over shared stores: async callers decide through the async steps, and a
limiter releases the store it opened (never one it was given)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from buttress import RateLimitConfig, RateLimiter, RateLimitExceeded, rate_limit
from buttress.backends.sqlite import SQLiteStore
from buttress.testing import FakeClock


def open_files(directory: Path) -> list[str]:
    """This process's open file descriptors on files in ``directory``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(str(directory)):
            found.append(target)
    return found


# --- async callers never take the sync path -----------------------------------------------------


@pytest.fixture
def aclient(redis_port: int) -> object:
    redis_asyncio = pytest.importorskip("redis.asyncio")
    return redis_asyncio.Redis(host="127.0.0.1", port=redis_port, socket_timeout=2.0)


def test_an_async_function_under_rate_limit_decides_on_a_redis_asyncio_client(
    aclient: object,
) -> None:
    # A redis.asyncio client cannot serve a sync decision (TypeError on every call before).
    limiter = RateLimiter(storage=aclient)
    name = f"async-{uuid.uuid4().hex}"
    limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=2))

    @rate_limit(name, limiter=limiter)
    async def call() -> str:
        return "ok"

    async def main() -> list[object]:
        try:
            return await asyncio.gather(*(call() for _ in range(3)), return_exceptions=True)
        finally:
            await aclient.aclose()  # type: ignore[attr-defined]

    outcomes = asyncio.run(main())  # the server sees the three in any order
    assert outcomes.count("ok") == 2
    assert [type(o) for o in outcomes if o != "ok"] == [RateLimitExceeded]


def test_the_async_twins_use_the_async_steps(aclient: object) -> None:
    limiter = RateLimiter(storage=aclient)
    name = f"twins-{uuid.uuid4().hex}"
    limiter.configure(name, RateLimitConfig(requests_per_second=1, burst_size=5))
    refusals: list[float | None] = []

    async def refused(key: str) -> None:
        try:
            await limiter.acheck_limit(name, key)
        except RateLimitExceeded as exc:
            refusals.append(exc.retry_after)
        else:
            refusals.append(None)

    async def main() -> None:
        await limiter.ablock(name, "a", seconds=30)
        await refused("a")
        await limiter.areset(name, "a")
        await refused("a")  # the block is gone
        await limiter.aset_remaining(name, "b", remaining=1, reset_after=60)
        await refused("b")
        await refused("b")  # only one was left
        await limiter.aset_remaining(name, "c", remaining=0, reset_after=20)
        await refused("c")
        await limiter.aclose()  # a client passed in is the caller's: it stays open
        assert await aclient.ping()  # type: ignore[attr-defined]
        await aclient.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
    assert refusals[0] == pytest.approx(30, abs=0.5)
    assert refusals[1:4] == [None, None, pytest.approx(1.0, abs=0.5)]
    assert refusals[4] == pytest.approx(20, abs=0.5)


# --- closing ------------------------------------------------------------------------------------


def test_closed_sqlite_limiters_leave_no_open_files(tmp_path: Path) -> None:
    for i in range(5):
        limiter = RateLimiter(storage=f"sqlite:///{tmp_path}/limits-{i}.db")
        limiter.configure("api", RateLimitConfig(requests_per_second=100))
        limiter.check_limit("api")
        limiter.acquire("api")
        assert open_files(tmp_path)
        limiter.close()
    assert open_files(tmp_path) == []


def test_limiters_closed_by_with_leave_no_open_files(tmp_path: Path) -> None:
    for i in range(5):
        with RateLimiter(storage=f"sqlite:///{tmp_path}/with-{i}.db") as limiter:
            limiter.configure("api", RateLimitConfig(requests_per_second=100))
            limiter.check_limit("api")
    assert open_files(tmp_path) == []


def test_limiters_closed_by_async_with_leave_no_open_files(tmp_path: Path) -> None:
    async def main() -> None:
        for i in range(5):
            async with RateLimiter(storage=f"sqlite:///{tmp_path}/async-{i}.db") as limiter:
                limiter.configure("api", RateLimitConfig(requests_per_second=100))
                await limiter.acheck_limit("api")
                await limiter.aacquire("api")

    asyncio.run(main())  # its worker threads end with the loop
    assert open_files(tmp_path) == []


def test_a_store_passed_in_is_left_open(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mine.db")
    with RateLimiter(storage=store) as limiter:
        limiter.configure("api", RateLimitConfig(requests_per_second=100))
        limiter.check_limit("api")
    assert open_files(tmp_path)  # still the caller's
    assert store.reserve("api", None, limiter.config("api").params(), 1, 0.0) == (True, 0.0)
    store.close()
    assert open_files(tmp_path) == []


@pytest.mark.parametrize("storage", ["memory://", "sqlite"])
def test_a_closed_limiter_refuses_calls_and_closes_once(
    storage: str, tmp_path: Path, clock: FakeClock
) -> None:
    url = storage if storage == "memory://" else f"sqlite:///{tmp_path}/closed.db"
    limiter = RateLimiter(storage=url)
    limiter.configure("api", RateLimitConfig(requests_per_second=10))
    limiter.close()
    limiter.close()
    with pytest.raises(RuntimeError, match="closed"):
        limiter.check_limit("api")
    with pytest.raises(RuntimeError, match="closed"):
        limiter.acquire("api")
    assert not limiter.degraded


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "sqlite"])
def test_a_block_past_ten_years_is_refused_alike_on_every_storage(
    shared: bool, tmp_path: Path
) -> None:
    # a stored state reaches ten years ahead at most; the memory limiter took any wait before,
    # so the same call worked or raised by where the state lived
    store = SQLiteStore(tmp_path / "state.db") if shared else None
    limiter = RateLimiter(storage=store, clock=FakeClock())
    limiter.configure("api", RateLimitConfig(requests_per_second=1, burst_size=1))
    too_far = 315_360_000.0 * 2
    with pytest.raises(ValueError, match=r"seconds must be at most 3\.1536e\+08 s"):
        limiter.block("api", "k", seconds=too_far)
    with pytest.raises(ValueError, match=r"reset_after must be at most"):
        limiter.set_remaining("api", "k", remaining=0, reset_after=too_far)
    with pytest.raises(ValueError, match=r"seconds must be at most"):
        asyncio.run(limiter.ablock("api", "k", seconds=too_far))
    limiter.check_limit("api", "k")  # nothing was blocked by the refused calls
    limiter.block("api", "k", seconds=315_360_000.0)  # ten years is the farthest
    with pytest.raises(RateLimitExceeded):
        limiter.check_limit("api", "k")
    if store is not None:
        store.close()
