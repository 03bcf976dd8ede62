"""Target pools sharing state through a store: Redis (real server, real processes) and SQLite."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from buttress.backends.base import MemoryStore
from buttress.backends.redis import RedisStore
from buttress.backends.sqlite import SQLiteStore
from buttress.protocol.targets import TargetPool
from buttress.testing import FakeClock

_names = itertools.count()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[object, object]]:
    """Two store objects on one shared state, as two processes would have."""
    if request.param == "memory":
        shared = MemoryStore()
        yield shared, shared
        return
    if request.param == "sqlite":
        a, b = SQLiteStore(tmp_path / "state.db"), SQLiteStore(tmp_path / "state.db")
    else:
        port = request.getfixturevalue("redis_port")
        a, b = RedisStore(f"redis://127.0.0.1:{port}/0"), RedisStore(f"redis://127.0.0.1:{port}/0")
    try:
        yield a, b
    finally:
        a.close()  # type: ignore[attr-defined]
        b.close()  # type: ignore[attr-defined]


def two_pools(stores: tuple[object, object], clock: FakeClock, **options: object):  # type: ignore[no-untyped-def]
    name = unique("llm")
    targets = {"primary": "P", "secondary": "S"}
    a = TargetPool(name, targets, storage=stores[0], clock=clock, **options)  # type: ignore[arg-type]
    b = TargetPool(name, targets, storage=stores[1], clock=clock, **options)  # type: ignore[arg-type]
    return a, b


def test_a_target_cooled_by_one_pool_is_skipped_by_the_others_next_call(
    stores: tuple[object, object], clock: FakeClock
) -> None:
    a, b = two_pools(stores, clock, cooldown=30.0)
    assert b.choose().name == "primary"  # type: ignore[union-attr]
    a.failed(a.choose(), ConnectionError("refused"))  # type: ignore[arg-type]
    assert b.choose().name == "secondary"  # type: ignore[union-attr]
    state = b.states()["primary"]
    assert state["state"] == "cooling"
    assert state["last_error"] == "ConnectionError"
    assert state["expires_at"] == pytest.approx(clock.wall() + 30.0)


def test_one_probe_in_flight_across_pools_and_recovery_is_shared(
    stores: tuple[object, object], clock: FakeClock
) -> None:
    a, b = two_pools(stores, clock, cooldown=10.0, probes=2)
    a.failed(a.choose(), ConnectionError())  # type: ignore[arg-type]
    clock.advance(10.0)
    probe = a.choose()
    assert probe is not None
    assert probe.probe
    # the other pool sees the probe's lease: no second probe
    assert b.choose().name == "secondary"  # type: ignore[union-attr]
    a.succeeded(probe)
    second = b.choose()
    assert second is not None
    assert second.probe
    assert a.choose().name == "secondary"  # type: ignore[union-attr]
    b.succeeded(second)
    assert a.choose().name == "primary"  # type: ignore[union-attr]
    assert a.states()["primary"]["state"] == "healthy"


def test_an_outcome_is_reapplied_on_what_another_pool_wrote_meanwhile(
    stores: tuple[object, object], clock: FakeClock
) -> None:
    a, b = two_pools(stores, clock, cooldown=10.0, threshold=2)
    choice_b = b.choose()
    assert choice_b is not None
    a.failed(a.choose(), ConnectionError())  # type: ignore[arg-type]
    b.failed(choice_b, ConnectionError())  # written over a's failure: the second in a row
    assert a.choose().name == "secondary"  # type: ignore[union-attr]
    assert a.states()["primary"]["consecutive_failures"] == 2


def test_async_callers_share_the_same_state(
    stores: tuple[object, object], clock: FakeClock
) -> None:
    import asyncio

    a, b = two_pools(stores, clock, cooldown=5.0, probes=1)

    async def main() -> None:
        choice = await a.achoose()
        assert choice is not None
        await a.afailed(choice, ConnectionError())
        assert (await b.achoose()).name == "secondary"  # type: ignore[union-attr]
        clock.advance(5.0)
        probe = await b.achoose()
        assert probe is not None
        assert probe.probe
        await b.asucceeded(probe)
        assert (await a.achoose()).name == "primary"  # type: ignore[union-attr]

    asyncio.run(main())


def test_the_probe_clocks_are_shared(stores: tuple[object, object], clock: FakeClock) -> None:
    a, b = two_pools(stores, clock, cooldown=1.0, probes=2)
    a.failed(a.choose(), ConnectionError())  # type: ignore[arg-type]
    clock.advance(1.0)
    probe = b.choose()
    assert probe is not None
    assert probe.probe
    b.failed(probe, ConnectionError())  # down: the other pool probes at the pace
    clock.advance(1.5)
    probe = a.choose()
    assert probe is not None
    assert probe.probe
    a.succeeded(probe)
    probe = b.choose()
    assert probe is not None
    assert probe.probe
    b.failed(probe, ConnectionError())  # one answered, the next failed: flapping, for both
    state = a.states()["primary"]
    assert state["flapping"]
    assert state["expires_at"] == pytest.approx(clock.wall() + 2.0)
    clock.advance(1.5)
    assert a.choose().name == "secondary"  # type: ignore[union-attr]


#: A target state as the version before the probe pace wrote it (no ``pace``, no ``flapping``).
OLD_RECORD = (
    '{{"v":1,"healthy":false,"reason":"server_error","since":{since},"until":{until},'
    '"failures":6,"last_error":"HTTPError","level":64.0,"streak":0,"probe_at":null}}'
)


def test_a_record_written_by_the_previous_version_is_read_and_carried_on(
    stores: tuple[object, object], clock: FakeClock
) -> None:
    a, b = two_pools(stores, clock, cooldown=1.0)
    old = OLD_RECORD.format(since=clock.wall(), until=clock.wall() + 64.0)
    swapped, _ = stores[0].swap_target(a.name, "primary", None, old)  # type: ignore[attr-defined]
    assert swapped
    assert a.choose().name == "secondary"  # type: ignore[union-attr]
    assert a.states()["primary"]["expires_at"] == pytest.approx(clock.wall() + 64.0)
    clock.advance(64.0)
    probe = b.choose()
    assert probe is not None
    assert probe.probe
    b.failed(probe, ConnectionError())
    # written back with the new fields; the failed probe set the pace, not a doubled cooldown
    raw = stores[1].targets(a.name)["primary"]  # type: ignore[attr-defined]
    assert '"pace":1.5' in raw
    assert a.states()["primary"]["expires_at"] == pytest.approx(clock.wall() + 1.5)


def test_store_outage_decides_locally_and_says_so(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    from redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    p = TargetPool(unique("llm"), {"primary": 1, "secondary": 2}, storage=url, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="buttress.storage"):
            choice = p.choose()
            assert choice is not None
            assert choice.name == "primary"
            p.failed(choice, ConnectionError())
            assert p.choose().name == "secondary"  # type: ignore[union-attr]
        outages = [r for r in caplog.records if getattr(r, "event", "") == "storage_unavailable"]
        assert len(outages) == 1
    finally:
        p.close()


def test_a_store_without_target_steps_is_refused() -> None:
    class OldStore(MemoryStore):
        targets = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="does not keep target pools"):
        TargetPool("llm", {"a": 1}, storage=OldStore())


CHILD = textwrap.dedent(
    """
    import sys
    from buttress.protocol.targets import TargetPool

    url, name = sys.argv[1], sys.argv[2]
    pool = TargetPool(name, {"primary": "P", "secondary": "S"}, storage=url, cooldown=60.0)
    choice = pool.choose()
    assert choice is not None and choice.name == "primary", choice
    pool.failed(choice, ConnectionError("primary refused"))
    print(pool.states()["primary"]["state"])
    pool.close()
    """
)


def test_with_redis_a_target_cooled_by_one_process_is_skipped_by_the_next(
    redis_port: int,
) -> None:
    url, name = f"redis://127.0.0.1:{redis_port}/0", unique("llm")
    pool = TargetPool(name, {"primary": "P", "secondary": "S"}, storage=url, cooldown=60.0)
    try:
        assert pool.choose().name == "primary"  # type: ignore[union-attr]
        env = {**os.environ, "PYTHONPATH": SRC}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, url, name],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "cooling"
        choice = pool.choose()
        assert choice is not None
        assert choice.name == "secondary"
        state = pool.states()["primary"]
        assert state["reason"] == "connection"
        assert state["last_error"] == "ConnectionError"
    finally:
        pool.close()
