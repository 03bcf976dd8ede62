"""Teams sharing state through a store: resource verdicts and target pools across processes.

Team A runs in a child process (its own manager, monitors and publisher); team B runs here and
calls local stand-in providers over HTTP, which count what each one receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buttress import ResilienceManager, ResourceType, current_target, with_fallback
from buttress.backends.base import MemoryStore
from buttress.backends.redis import RedisStore
from buttress.backends.sqlite import SQLiteStore
from buttress.config import build_manager
from buttress.health.shared import SPACE
from buttress.testing import FakeClock
from local_servers import Server, serve

SRC = str(Path(__file__).resolve().parents[1] / "src")
QUOTA = ResourceType.API_QUOTA
REDIS_DB = 9  # these tests flush it: the shared pool and space names are fixed by design

TEAM_A = textwrap.dedent(
    """
    import sys, time
    from buttress import ResilienceManager, ResourceType, current_target

    usage = {"openai": 10.0}
    manager = ResilienceManager("team-a", storage=sys.argv[1], check_interval=0.2)
    manager.register_api_quota_monitor("openai", lambda: usage["openai"])
    manager.register_targets(ResourceType.API_QUOTA, ["openai", "anthropic"], cooldown=60.0)
    manager.start_in_thread()

    def reply(text):
        print(text, flush=True)

    def published(status):
        store = manager.shared.store
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            verdict = store.verdicts("resources").get("api_quota:openai")
            if verdict is not None and '"status": "%s"' % status in verdict[0]:
                return True
            time.sleep(0.01)
        return False

    def broken():
        if current_target() == "openai":
            raise ConnectionError("openai is down")
        return current_target()

    reply("ready" if published("healthy") else "never published")
    for line in sys.stdin:
        command = line.strip()
        if command == "critical":
            usage["openai"] = 100.0
            reply("ok" if published("critical") else "never published")
        elif command == "fail":
            reply(manager.call_with_resilience(broken, ResourceType.API_QUOTA))
        elif command == "stop":
            manager.stop()
            reply("stopped")
        else:
            break
    manager.stop()
    manager.close()
    """
)


class Child:
    """Team A in its own process, driven line by line."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", TEAM_A, url],
            env={**os.environ, "PYTHONPATH": SRC},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.answer() == "ready"

    def answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line:
            self.process.wait(timeout=10)
            assert self.process.stderr is not None
            pytest.fail(f"team A ended: {self.process.stderr.read()[-2000:]}")
        return line

    def send(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.process.poll() is None:
            with_stdin = self.process.stdin
            if with_stdin is not None:
                with_stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _flush(port: int) -> None:
    import redis

    client = redis.Redis(port=port, db=REDIS_DB)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(params=["redis", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL two processes share (a fresh state for each test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    port = request.getfixturevalue("redis_port")
    _flush(port)
    return f"redis://127.0.0.1:{port}/{REDIS_DB}"


@pytest.fixture
def providers() -> Iterator[dict[str, Server]]:
    """Local stand-ins for two providers, each counting the requests it gets."""

    def ok(request: Any) -> tuple[int, dict[str, str]]:
        return 200, {"answer": "ok"}

    with serve({"/v1/chat": ok}) as openai, serve({"/v1/chat": ok}) as anthropic:
        yield {"openai": openai, "anthropic": anthropic}


class TeamB:
    """A team whose calls go to whichever provider the protocol chose."""

    def __init__(self, manager: ResilienceManager, providers: dict[str, Server]) -> None:
        self.resilience = manager
        self.providers = providers

    @with_fallback(QUOTA)
    def generate(self) -> str:
        target = current_target()
        assert target is not None
        with urllib.request.urlopen(self.providers[target].url + "/v1/chat", timeout=5) as r:
            assert json.loads(r.read()) == {"answer": "ok"}
        return target


@pytest.fixture
def team_b(url: str, providers: dict[str, Server]) -> Iterator[TeamB]:
    manager = ResilienceManager("team-b", storage=url)
    manager.register_targets(QUOTA, ["openai", "anthropic"])
    try:
        yield TeamB(manager, providers)
    finally:
        manager.stop()
        manager.close()


@pytest.fixture
def team_a(url: str) -> Iterator[Child]:
    child = Child(url)
    try:
        yield child
    finally:
        child.close()


def counts(providers: dict[str, Server]) -> dict[str, int]:
    return {name: len(server.requests) for name, server in providers.items()}


# -- across processes ------------------------------------------------------------------------------


def test_a_quota_exhausted_in_one_team_is_switched_away_from_by_the_next_teams_next_call(
    team_a: Child, team_b: TeamB
) -> None:
    assert team_b.generate() == "openai"
    assert team_a.send("critical") == "ok"
    assert team_b.generate() == "anthropic"  # at once: no call to openai, no retry
    assert team_b.generate() == "anthropic"
    assert counts(team_b.providers) == {"openai": 1, "anthropic": 2}
    assert team_b.resilience.protocol_host.report()["counts"] == {}  # not one step taken
    shared = team_b.resilience.health_report()["shared"]
    assert shared["api_quota:openai"]["status"] == "critical"
    assert shared["api_quota:openai"]["team"] == "team-a"
    assert shared["api_quota:openai"]["shared"] is True


def test_a_target_cooled_by_one_process_is_skipped_by_the_others_next_call(
    team_a: Child, team_b: TeamB
) -> None:
    assert team_b.generate() == "openai"
    assert team_a.send("fail") == "anthropic"  # team A's call cooled openai in the shared pool
    assert team_b.generate() == "anthropic"
    assert counts(team_b.providers) == {"openai": 1, "anthropic": 1}
    state = team_b.resilience.provider_states()["api_quota"]["openai"]
    assert state["state"] == "cooling"
    assert state["reason"] == "connection"


def test_a_verdict_expires_once_its_publisher_stops(team_a: Child, team_b: TeamB) -> None:
    assert team_a.send("critical") == "ok"
    assert team_b.generate() == "anthropic"
    assert team_a.send("stop") == "stopped"
    shared = team_b.resilience.shared
    assert shared is not None
    deadline = time.monotonic() + 10.0  # the verdict is valid 3 check intervals (0.6 s)
    while shared.known_bad(QUOTA, ["openai"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert shared.known_bad(QUOTA, ["openai"]) == frozenset()
    assert team_b.generate() == "openai"
    assert "api_quota:openai" not in team_b.resilience.health_report()["shared"]


# -- a store outage --------------------------------------------------------------------------------


def test_a_store_outage_never_fails_a_call_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from redis_server import RedisUnavailable, start

    try:
        server = start()
    except RedisUnavailable as exc:
        pytest.skip(f"no Redis server: {exc}")
    url = f"redis://127.0.0.1:{server.port}/0"
    a = ResilienceManager("team-a", storage=url, check_interval=5)  # valid 15 s
    usage = {"openai": 100.0}
    a.register_api_quota_monitor("openai", lambda: usage["openai"])
    b = ResilienceManager("team-b", storage=url)
    b.register_targets(QUOTA, ["openai", "anthropic"])
    try:
        asyncio.run(a.resources.check_now())
        assert a.shared is not None
        assert a.shared.publish() == 1
        assert b.call_with_resilience(current_target, QUOTA) == "anthropic"
        server.stop()
        caplog.set_level(logging.WARNING, logger="buttress.storage")
        answers = [b.call_with_resilience(current_target, QUOTA) for _ in range(5)]
        answers.append(asyncio.run(b.with_resilience(_atarget, QUOTA)))
        # decided on the last verdict read (still valid) and the pool's local state
        assert answers == ["anthropic"] * 6
        warnings = [
            r for r in caplog.records if "shared resource verdicts of team 'team-b'" in r.message
        ]
        assert len(warnings) == 1
        assert "unavailable" in warnings[0].message
        assert b.health_report()["team"] == "team-b"  # the report does not fail either
        assert a.shared.publish() == 0  # publishing gives up quietly too
    finally:
        a.stop()
        a.close()
        b.stop()
        b.close()
        server.stop()


async def _atarget() -> str | None:
    return current_target()


# -- how local and shared readings combine (one process, a fake clock) -----------------------------


@pytest.fixture
def pair(clock: FakeClock) -> Iterator[tuple[ResilienceManager, ResilienceManager, dict[str, Any]]]:
    store = MemoryStore()
    figures: dict[str, Any] = {"a": 10.0, "b": 10.0}
    a = ResilienceManager("team-a", storage=store, check_interval=10, clock=clock)
    a.register_api_quota_monitor("openai", lambda: figures["a"])
    b = ResilienceManager("team-b", storage=store, check_interval=10, clock=clock)
    b.register_targets(QUOTA, ["openai", "anthropic"])
    figures["store"] = store
    try:
        yield a, b, figures
    finally:
        for manager in (a, b):
            manager.stop()
            manager.close()


def check(manager: ResilienceManager) -> None:
    asyncio.run(manager.resources.check_now())
    assert manager.shared is not None
    manager.shared.publish()


def test_a_teams_own_fresh_reading_wins_and_a_stale_one_yields_to_the_shared_verdict(
    pair: tuple[ResilienceManager, ResilienceManager, dict[str, Any]], clock: FakeClock
) -> None:
    a, b, figures = pair
    b.register_api_quota_monitor("openai", lambda: figures["b"])  # B's own key, its own view
    check(b)
    figures["a"] = 100.0
    check(a)
    assert b.call_with_resilience(current_target, QUOTA) == "openai"  # B's fresh reading wins
    clock.advance(31.0)  # B's reading is older than 3 of its intervals; A reads again
    check(a)
    assert b.call_with_resilience(current_target, QUOTA) == "anthropic"
    clock.advance(31.0)  # A stopped publishing too: B's stale reading is all that is left
    assert b.call_with_resilience(current_target, QUOTA) == "openai"


def test_the_fresher_reading_of_two_teams_wins(
    pair: tuple[ResilienceManager, ResilienceManager, dict[str, Any]], clock: FakeClock
) -> None:
    a, b, figures = pair
    c = ResilienceManager("team-c", storage=figures["store"], check_interval=10, clock=clock)
    c.register_api_quota_monitor("openai", lambda: 10.0)
    try:
        figures["a"] = 100.0
        check(a)
        clock.advance(1.0)
        check(c)  # a later healthy reading replaces the critical one
        assert b.call_with_resilience(current_target, QUOTA) == "openai"
        assert b.health_report()["shared"]["api_quota:openai"]["team"] == "team-c"
        assert a.shared is not None
        a.shared.publish()  # republishing A's older reading does not overwrite C's
        assert b.call_with_resilience(current_target, QUOTA) == "openai"
        clock.advance(1.0)
        check(a)
        assert b.call_with_resilience(current_target, QUOTA) == "anthropic"
    finally:
        c.close()


def test_only_resources_the_team_uses_are_consulted(
    pair: tuple[ResilienceManager, ResilienceManager, dict[str, Any]],
) -> None:
    a, b, _ = pair
    a.register_monitor(ResourceType.DATABASE, "orders", _failing_database)
    check(a)  # a failed first check: UNAVAILABLE at once
    assert a.health_report()["unhealthy_resources"] == ["database:orders"]
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("a blip")
        return "ok"

    # B has no database "orders" of its own: its retry is not skipped for A's verdict
    b.set_protocol(ResourceType.DATABASE, _retry_once())
    assert b.call_with_resilience(flaky, ResourceType.DATABASE) == "ok"
    assert calls["n"] == 2
    assert "database:orders" in b.health_report()["shared"]


def _failing_database() -> None:
    raise ConnectionError("refused")


def _retry_once() -> list[Any]:
    from buttress import FallbackAction, FallbackStrategy

    return [FallbackAction(FallbackStrategy.RETRY, attempts=1, base_delay=0.0)]


def test_the_async_path_consults_the_shared_verdicts(
    pair: tuple[ResilienceManager, ResilienceManager, dict[str, Any]],
) -> None:
    a, b, figures = pair
    figures["a"] = 100.0
    check(a)
    assert asyncio.run(b.with_resilience(_atarget, QUOTA)) == "anthropic"


class ThreadNotingStore(MemoryStore):
    """The memory store, noting the thread of every read and write of target states and
    verdicts."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def targets(self, pool: str) -> dict[str, str]:
        self.threads.append(threading.get_ident())
        return super().targets(pool)

    def swap_target(self, *args: Any, **kwargs: Any) -> tuple[bool, str | None]:
        self.threads.append(threading.get_ident())
        return super().swap_target(*args, **kwargs)

    def verdicts(self, *args: Any, **kwargs: Any) -> dict[str, tuple[str, float]]:
        self.threads.append(threading.get_ident())
        return super().verdicts(*args, **kwargs)


def test_the_async_path_never_waits_on_the_store_in_the_event_loop(clock: FakeClock) -> None:
    store = ThreadNotingStore()
    a = ResilienceManager("team-a", storage=store, check_interval=10, clock=clock)
    a.register_api_quota_monitor("openai", lambda: 100.0)
    b = ResilienceManager("team-b", storage=store, check_interval=10, clock=clock)
    b.register_targets(QUOTA, ["openai", "anthropic", "mistral"])
    calls: list[str | None] = []

    async def fails_once() -> str | None:
        calls.append(current_target())
        if len(calls) == 1:
            raise ConnectionError("a blip")
        await asyncio.sleep(0)
        return current_target()

    async def scenario() -> tuple[int, list[int], list[int], Any, Any]:
        loop = threading.get_ident()
        store.threads.clear()
        pooled = await b.with_resilience(_atarget, QUOTA)  # the fast path through the pool
        fast = list(store.threads)
        store.threads.clear()
        walked = await b.with_resilience(fails_once, QUOTA)  # a failing call's walk
        walk = list(store.threads)
        store.threads.clear()
        assert "api_quota:openai" in (await b.get_health_report())["shared"]
        return loop, fast, walk + store.threads, pooled, walked

    try:
        check(a)  # team A says openai's quota is exhausted
        loop, fast, walk, pooled, walked = asyncio.run(scenario())
        assert pooled == "anthropic"  # openai skipped on A's verdict
        assert calls == ["anthropic", "mistral"]  # the blip cooled anthropic
        assert walked == "mistral"
        assert fast  # the store was consulted on both paths and by the report...
        assert walk
        assert loop not in fast + walk  # ...never from the event loop's thread
    finally:
        for manager in (a, b):
            manager.stop()
            manager.close()


def test_the_sync_path_switches_past_a_target_known_bad(clock: FakeClock) -> None:
    store = MemoryStore()
    a = ResilienceManager("team-a", storage=store, check_interval=10, clock=clock)
    a.register_api_quota_monitor("openai", lambda: 100.0)
    b = ResilienceManager("team-b", storage=store, check_interval=10, clock=clock)
    b.register_targets(QUOTA, ["openai", "anthropic", "mistral"])
    calls: list[str | None] = []

    def fails_once() -> str | None:
        calls.append(current_target())
        if len(calls) == 1:
            raise ConnectionError("a blip")
        return current_target()

    try:
        check(a)
        # anthropic fails: the switch passes over openai (its quota is known exhausted)
        assert b.call_with_resilience(fails_once, QUOTA) == "mistral"
        assert calls == ["anthropic", "mistral"]
    finally:
        for manager in (a, b):
            manager.stop()
            manager.close()


def test_a_cancelled_async_call_leaves_its_walk_to_close_when_the_worker_step_ends(
    clock: FakeClock,
) -> None:
    gate, entered = threading.Event(), threading.Event()

    class GatedStore(ThreadNotingStore):
        hold = False

        def verdicts(self, *args: Any, **kwargs: Any) -> dict[str, tuple[str, float]]:
            if self.hold:
                entered.set()
                gate.wait(10)
            return super().verdicts(*args, **kwargs)

    store = GatedStore()
    b = ResilienceManager("team-b", storage=store, check_interval=10, clock=clock)
    b.register_api_quota_monitor("openai", lambda: 10.0)
    b.register_targets(QUOTA, ["openai", "anthropic"])
    errors: list[dict[str, Any]] = []

    async def fails() -> None:
        store.hold = True  # the walk's first step waits in the store
        raise ConnectionError("down")

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        task = asyncio.create_task(b.with_resilience(fails, QUOTA))
        assert await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        # cancelled, not "generator already executing": the walk is still in its worker step
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gate.set()

    try:
        asyncio.run(scenario())  # its shutdown waits for the worker; the walk closes then
        assert errors == []
    finally:
        gate.set()
        b.stop()
        b.close()


# -- without storage, and configuration ------------------------------------------------------------


def test_without_storage_nothing_is_shared(clock: FakeClock) -> None:
    manager = ResilienceManager("solo", check_interval=10, clock=clock)
    manager.register_api_quota_monitor("openai", lambda: 100.0)
    manager.register_targets(QUOTA, ["openai", "anthropic"])
    asyncio.run(manager.resources.check_now())
    assert manager.shared is None
    assert "shared" not in manager.health_report()
    assert type(manager.protocol_host._bad) is dict  # the engine reads a plain dict
    assert not any(t.name.startswith("buttress-share-") for t in threading.enumerate())
    assert manager.call_with_resilience(current_target, QUOTA) == "anthropic"
    assert manager.protocol_host.pool(QUOTA).name == "solo.api_quota"  # type: ignore[union-attr]


def test_storage_comes_from_the_team_configuration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    built = build_manager({"team": "t", "storage": url})
    given = ResilienceManager("u", {"storage": url})
    try:
        for manager in (built, given):
            assert manager.shared is not None
            assert isinstance(manager.shared.store, SQLiteStore)
            pool = manager.register_targets(QUOTA, ["openai"])
            assert pool.name == "api_quota"  # shared by resource type across teams
            apart = manager.register_targets(ResourceType.DATABASE, ["primary"], name="t.db")
            assert apart.name == "t.db"
    finally:
        built.close()
        given.close()
    with pytest.raises(TypeError, match="storage"):
        ResilienceManager("v", storage=42)
    local = ResilienceManager("w", storage="memory://")
    assert local.shared is None


# -- the store steps -------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        made: Any = SQLiteStore(tmp_path / "state.db")
    else:
        port = request.getfixturevalue("redis_port")
        _flush(port)
        made = RedisStore(f"redis://127.0.0.1:{port}/{REDIS_DB}")
    try:
        yield made
    finally:
        made.close()


def test_verdicts_expire_and_a_newer_reading_is_never_overwritten(store: Any) -> None:
    key = "api_quota:openai"
    store.publish_verdicts(SPACE, {key: ("critical", 100.0, 5.0)}, now=1000.0)
    assert store.verdicts(SPACE, now=1001.0) == {key: ("critical", 4.0)}
    store.publish_verdicts(SPACE, {key: ("healthy", 99.0, 5.0)}, now=1002.0)  # an older reading
    assert store.verdicts(SPACE, now=1002.0) == {key: ("critical", 3.0)}
    store.publish_verdicts(SPACE, {key: ("healthy", 101.0, 5.0)}, now=1002.0)
    assert store.verdicts(SPACE, now=1003.0) == {key: ("healthy", 4.0)}
    assert store.verdicts(SPACE, now=1007.0) == {}
    store.publish_verdicts(SPACE, {key: ("critical", 50.0, 5.0)}, now=1008.0)  # over an expired
    assert store.verdicts(SPACE, now=1008.0) == {key: ("critical", 5.0)}
    assert store.verdicts("another space", now=1008.0) == {}
    assert asyncio.run(store.averdicts(SPACE, now=1009.0)) == {key: ("critical", 4.0)}


def _wait(predicate: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 10.0
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_a_status_change_is_published_by_the_publisher_thread() -> None:
    store = MemoryStore()
    manager = ResilienceManager("team-a", storage=store, check_interval=30)
    usage = {"openai": 100.0}
    manager.register_api_quota_monitor("openai", lambda: usage["openai"])
    try:
        asyncio.run(manager.resources.check_now())  # no start(): the change starts the thread
        assert manager.shared is not None
        assert _wait(lambda: "api_quota:openai" in store.verdicts(SPACE))
        record = json.loads(store.verdicts(SPACE)["api_quota:openai"][0])
        assert record["status"] == "critical"
        assert record["team"] == "team-a"
        assert "usage 100.0%" in record["message"]
    finally:
        manager.stop()
        manager.close()
    assert manager.shared is not None
    assert not manager.shared.publishing


def test_refresh_reuses_a_read_of_the_store(
    pair: tuple[ResilienceManager, ResilienceManager, dict[str, Any]], clock: FakeClock
) -> None:
    a, b, figures = pair
    assert b.shared is not None
    b.shared.refresh = 5.0
    assert b.call_with_resilience(current_target, QUOTA) == "openai"  # read: nothing known
    figures["a"] = 100.0
    check(a)
    assert b.call_with_resilience(current_target, QUOTA) == "openai"  # the read is reused
    clock.advance(5.0)
    assert b.call_with_resilience(current_target, QUOTA) == "anthropic"


def test_bad_settings_are_named() -> None:
    from buttress.health.manager import ResourceManager
    from buttress.health.shared import SharedVerdicts

    resources = ResourceManager("t")
    with pytest.raises(TypeError, match="does not keep resource verdicts"):
        SharedVerdicts(object(), "t", resources)
    with pytest.raises(ValueError, match="refresh"):
        SharedVerdicts(MemoryStore(), "t", resources, refresh=-1)
    with pytest.raises(ValueError, match="stale_after"):
        SharedVerdicts(MemoryStore(), "t", resources, stale_after=0)
    with pytest.raises(ValueError, match="space"):
        SharedVerdicts(MemoryStore(), "t", resources, space="")
