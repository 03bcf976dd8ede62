"""The fallback protocol engine: each strategy, classification, targets, sync and async alike."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

import buttress
from buttress import (
    CircuitOpenError,
    DegradationTier,
    FallbackAction,
    FallbackProtocol,
    FallbackStrategy,
    RequestQueue,
    RequestQueued,
    ResilienceManager,
    ResourceStatus,
    ResourceType,
    StreamInterrupted,
    current_target,
    events,
    with_fallback,
)
from buttress.protocol.classify import Classifier, retry_after_of
from buttress.testing import FakeClock
from conftest import run

S = FallbackStrategy


class Flaky(Exception):
    """A failure carrying an HTTP status, as a client library's error does."""

    def __init__(self, status: int, retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.headers = {} if retry_after is None else {"Retry-After": retry_after}


class Team:
    """A team object: ``with_fallback`` methods find ``self.resilience``."""

    def __init__(self, manager: ResilienceManager, mode: str, answers: list[Any]) -> None:
        self.resilience = manager
        self.answers = answers
        self.calls: list[str | None] = []
        self.mode = mode

    def step(self, prompt: str) -> str:
        self.calls.append(current_target())
        answer = self.answers.pop(0) if self.answers else "ok"
        if isinstance(answer, BaseException):
            raise answer
        return f"{answer}:{prompt}"


def method(mode: str, resource: ResourceType = ResourceType.API_QUOTA) -> Any:
    """``Team.generate`` decorated with ``with_fallback``, as ``def`` or ``async def``."""
    if mode == "sync":

        @with_fallback(resource)
        def generate(self: Team, prompt: str) -> str:
            return self.step(prompt)

    else:

        @with_fallback(resource)
        async def generate(self: Team, prompt: str) -> str:
            await asyncio.sleep(0)
            return self.step(prompt)

    return generate


def team(mode: str, clock: FakeClock, answers: list[Any], **options: Any) -> Team:
    manager = ResilienceManager(f"team-{id(answers)}", clock=clock, **options)
    return Team(manager, mode, answers)


@pytest.fixture
def steps() -> Any:
    seen: list[events.ProtocolStep] = []

    def hook(event: events.Event) -> None:
        if isinstance(event, events.ProtocolStep):
            seen.append(event)

    events.add_hook(hook)
    yield seen
    events.remove_hook(hook)


def test_success_path_returns_the_answer(mode: str, clock: FakeClock, steps: list[Any]) -> None:
    t = team(mode, clock, ["hello"])
    assert run(method(mode)(t, "x")) == "hello:x"
    assert steps == []


def test_a_request_error_propagates_at_once(mode: str, clock: FakeClock) -> None:
    t = team(mode, clock, [ValueError("bad prompt"), "never"])
    with pytest.raises(ValueError, match="bad prompt"):
        run(method(mode)(t, "x"))
    assert len(t.calls) == 1
    t = team(mode, clock, [Flaky(400), "never"])
    with pytest.raises(Flaky):
        run(method(mode)(t, "x"))
    assert len(t.calls) == 1


def test_retry_honours_retry_after(mode: str, clock: FakeClock, steps: list[Any]) -> None:
    t = team(mode, clock, [Flaky(429, "7"), "fine"])
    assert run(method(mode)(t, "x")) == "fine:x"
    assert clock.total_slept >= 7.0
    assert [(s.strategy, s.outcome) for s in steps] == [("CALL", "failed"), ("RETRY", "succeeded")]


def test_switch_is_immediate_and_later_calls_skip_the_cooling_target(
    mode: str, clock: FakeClock, steps: list[Any]
) -> None:
    t = team(mode, clock, [Flaky(503), "second"])
    t.resilience.register_targets(ResourceType.API_QUOTA, ["openai", "anthropic", "local"])
    generate = method(mode)
    assert run(generate(t, "x")) == "second:x"
    assert t.calls == ["openai", "anthropic"]
    assert clock.total_slept == 0.0  # switched without sleeping a retry backoff
    assert [(s.strategy, s.target, s.outcome) for s in steps] == [
        ("CALL", "openai", "failed"),
        ("RETRY", "openai", "skipped"),
        ("SWITCH_PROVIDER", "anthropic", "succeeded"),
    ]
    assert run(generate(t, "y")) == "ok:y"
    assert t.calls[-1] == "anthropic"
    states = t.resilience.provider_states()["api_quota"]
    assert states["openai"]["state"] == "cooling"
    assert states["openai"]["last_error"] == "Flaky"


def test_a_switch_step_with_a_target_goes_there(mode: str, clock: FakeClock) -> None:
    config = {
        "fallback_strategies": {
            ResourceType.API_QUOTA: [
                FallbackAction(S.SWITCH_PROVIDER, target="anthropic"),
                FallbackAction(S.USE_CACHE, priority=1),
            ]
        }
    }
    t = team(mode, clock, [ConnectionError("down"), "ok"], config=config)
    t.resilience.register_targets(ResourceType.API_QUOTA, ["openai", "local", "anthropic"])
    assert run(method(mode)(t, "x")) == "ok:x"
    assert t.calls == ["openai", "anthropic"]


def test_callable_targets_are_called_with_the_arguments(mode: str, clock: FakeClock) -> None:
    t = team(mode, clock, [ConnectionError("down")])
    seen: list[str] = []

    def backup(prompt: str) -> str:
        seen.append(prompt)
        return f"backup:{prompt}"

    t.resilience.register_targets(ResourceType.API_QUOTA, {"main": "client", "backup": backup})
    assert run(method(mode)(t, "x")) == "backup:x"
    assert seen == ["x"]


def test_an_exhausted_quota_is_switched_away_from_on_the_first_call(
    mode: str, clock: FakeClock, steps: list[Any]
) -> None:
    t = team(mode, clock, ["answer"])
    manager = t.resilience
    manager.register_api_quota_monitor("openai", lambda: 99.5)
    asyncio.run(manager.resources.check_now())
    assert manager.get_resource_status(ResourceType.API_QUOTA, "openai") is ResourceStatus.CRITICAL
    manager.register_targets(ResourceType.API_QUOTA, ["openai", "anthropic"])
    assert run(method(mode)(t, "x")) == "answer:x"
    assert t.calls == ["anthropic"]
    assert steps == []  # no retry, no failed call: the known-bad target was never tried


def test_a_known_bad_resource_is_not_retried(mode: str, clock: FakeClock, steps: list[Any]) -> None:
    t = team(mode, clock, [Flaky(429, "1"), "late"])
    manager = t.resilience
    manager.register_api_quota_monitor("openai", lambda: 100.0)
    asyncio.run(manager.resources.check_now())
    manager.set_protocol(ResourceType.API_QUOTA, [FallbackAction(S.RETRY, attempts=3)])
    with pytest.raises(Flaky):
        run(method(mode)(t, "x"))
    assert len(t.calls) == 1
    assert [(s.strategy, s.outcome) for s in steps] == [("CALL", "failed"), ("RETRY", "skipped")]


def test_use_cache_serves_the_last_good_answer_with_its_age(mode: str, clock: FakeClock) -> None:
    t = team(mode, clock, ["fresh", ConnectionError("down")])
    t.resilience.set_protocol(ResourceType.MEMORY, [FallbackAction(S.USE_CACHE)])
    generate = method(mode, ResourceType.MEMORY)
    assert run(generate(t, "x")) == "fresh:x"
    clock.advance(42.0)

    async def twice() -> tuple[Any, Any]:
        value = await generate(t, "x")
        return value, buttress.cached_age()

    if mode == "sync":
        value, age = generate(t, "x"), buttress.cached_age()
    else:
        value, age = asyncio.run(twice())
    assert (value, age) == ("fresh:x", 42.0)
    t.answers[:] = [ConnectionError("down")]
    with pytest.raises(ConnectionError):  # nothing cached for other arguments
        run(generate(t, "other"))


def test_use_cache_keeps_answers_for_arguments_that_cannot_be_hashed(
    mode: str, clock: FakeClock
) -> None:
    # a request as a dict: kept under its JSON form, found again by an equal dict
    t = team(mode, clock, ["fresh", ConnectionError("down"), ConnectionError("down")])
    t.resilience.set_protocol(ResourceType.MEMORY, [FallbackAction(S.USE_CACHE)])
    generate = method(mode, ResourceType.MEMORY)
    assert run(generate(t, {"q": [1, 2]})) == "fresh:{'q': [1, 2]}"
    assert run(generate(t, {"q": [1, 2]})) == "fresh:{'q': [1, 2]}"  # served from the cache
    with pytest.raises(ConnectionError):  # another request: nothing cached for it
        run(generate(t, {"q": [3]}))


def test_degrade_runs_the_registered_variant_and_raises_the_tier(
    mode: str, clock: FakeClock
) -> None:
    t = team(mode, clock, [ConnectionError("down")])
    t.resilience.set_protocol(ResourceType.API_QUOTA, [FallbackAction(S.DEGRADE_SERVICE)])
    generate = method(mode)
    flags: list[bool] = []

    if mode == "sync":

        @generate.degraded
        def cheap(self: Team, prompt: str) -> str:
            flags.append(buttress.degraded())
            return f"cheap:{prompt}"

    else:

        @generate.degraded
        async def cheap(self: Team, prompt: str) -> str:
            flags.append(buttress.degraded())
            return f"cheap:{prompt}"

    assert run(generate(t, "x")) == "cheap:x"
    assert flags == [True]
    assert t.resilience.degradation.get_current_tier() is DegradationTier.TIER_2_CORE
    assert buttress.degraded() is False


def test_degrade_without_a_variant_tells_the_running_code(mode: str, clock: FakeClock) -> None:
    t = team(mode, clock, [ConnectionError("down")])
    t.resilience.set_protocol(ResourceType.CPU, [FallbackAction(S.DEGRADE_SERVICE, tier=3)])
    seen: list[bool] = []
    original = t.step

    def step(prompt: str) -> str:
        seen.append(buttress.degraded())
        return original(prompt)

    t.step = step  # type: ignore[method-assign]
    assert run(method(mode, ResourceType.CPU)(t, "x")) == "ok:x"
    assert seen == [False, True]
    assert t.resilience.degradation.get_current_tier() is DegradationTier.TIER_3_READ_ONLY


def test_queue_request_queues_and_replays(mode: str, clock: FakeClock) -> None:
    queue = RequestQueue("calls", storage="memory://", clock=clock)
    t = team(mode, clock, [Flaky(503)], queue=queue)
    t.resilience.set_protocol(ResourceType.API_QUOTA, [FallbackAction(S.QUEUE_REQUEST)])
    with pytest.raises(RequestQueued) as caught:
        run(method(mode)(t, "later"))
    assert caught.value.ticket > 0
    assert caught.value.key
    assert isinstance(caught.value.__cause__, Flaky)
    assert queue.stats().waiting == 1
    t.answers[:] = ["replayed"]
    assert queue.replay() == 1
    assert t.calls[-1] is None
    assert len(t.calls) == 2


def test_scale_down_lowers_the_adaptive_limit(mode: str, clock: FakeClock) -> None:
    t = team(mode, clock, [ConnectionError("down")])
    t.resilience.set_protocol(ResourceType.CPU, [FallbackAction(S.SCALE_DOWN, factor=0.25)])
    assert run(method(mode, ResourceType.CPU)(t, "x")) == "ok:x"
    limiter = t.resilience.protocol_host.limiter(ResourceType.CPU)
    assert limiter.scale == 0.25
    t.resilience.protocol_host.restore(ResourceType.CPU)
    assert limiter.scale == 1.0


def test_circuit_break_makes_later_calls_fail_fast(mode: str, clock: FakeClock) -> None:
    t = team(mode, clock, [ConnectionError("down")])
    name = f"breaker-{id(t)}"
    t.resilience.set_protocol(ResourceType.DATABASE, [FallbackAction(S.CIRCUIT_BREAK, target=name)])
    generate = method(mode, ResourceType.DATABASE)
    with pytest.raises(ConnectionError):
        run(generate(t, "x"))
    with pytest.raises(CircuitOpenError):
        run(generate(t, "y"))
    assert len(t.calls) == 1


def test_all_targets_cooling_past_the_deadline_fails_at_once(mode: str, clock: FakeClock) -> None:
    t = team(mode, clock, [ConnectionError("a"), ConnectionError("b")])
    t.resilience.register_targets(ResourceType.MCP_SERVER, ["primary", "secondary"], cooldown=60)
    generate = method(mode, ResourceType.MCP_SERVER)
    t.resilience.set_protocol(ResourceType.MCP_SERVER, [FallbackAction(S.SWITCH_PROVIDER)])
    with buttress.deadline(5.0, clock=clock), pytest.raises(buttress.ButtressError) as caught:
        run(generate(t, "x"))
    assert "primary" in str(caught.value)
    assert "secondary" in str(caught.value)
    assert clock.total_slept == 0.0


def test_waits_for_a_cooling_target_when_the_deadline_allows(mode: str, clock: FakeClock) -> None:
    t = team(mode, clock, [ConnectionError("a"), "back"])
    t.resilience.register_targets(ResourceType.MCP_SERVER, ["primary"], cooldown=2, probes=1)
    t.resilience.set_protocol(ResourceType.MCP_SERVER, [FallbackAction(S.SWITCH_PROVIDER)])
    with buttress.deadline(10.0, clock=clock):
        assert run(method(mode, ResourceType.MCP_SERVER)(t, "x")) == "back:x"
    assert clock.total_slept == pytest.approx(2.0)


def test_streams_switch_before_the_first_chunk_and_never_after(clock: FakeClock) -> None:
    manager = ResilienceManager("streams", clock=clock)
    manager.register_targets(ResourceType.API_QUOTA, ["openai", "anthropic"])
    manager.set_protocol(ResourceType.API_QUOTA, [FallbackAction(S.SWITCH_PROVIDER)])
    plan: dict[str, list[Any]] = {
        "openai": [ConnectionError("refused")],
        "anthropic": ["a", "b", "c"],
    }

    class Streamer:
        resilience = manager

        @with_fallback(ResourceType.API_QUOTA)
        async def stream(self, prompt: str) -> AsyncIterator[str]:
            for item in plan[current_target() or ""]:
                if isinstance(item, BaseException):
                    raise item
                yield item

    async def collect() -> list[str]:
        return [chunk async for chunk in Streamer().stream("x")]

    assert asyncio.run(collect()) == ["a", "b", "c"]
    plan["anthropic"] = ["a", "b", ConnectionError("reset")]
    plan["openai"] = ["never"]
    with pytest.raises(StreamInterrupted) as caught:
        asyncio.run(collect())
    assert caught.value.partial == ["a", "b"]
    assert caught.value.target == "anthropic"
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_steps_are_in_the_health_report_and_logged(
    clock: FakeClock, steps: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="buttress.protocol")
    t = team("sync", clock, [Flaky(500), "ok", Flaky(500), "ok"])
    generate = method("sync")
    generate(t, "x")
    generate(t, "y")
    report = t.resilience.health_report()["protocols"]
    assert report["counts"]["api_quota"]["RETRY"] == {"succeeded": 2}
    assert report["counts"]["api_quota"]["CALL"] == {"failed": 2}
    assert report["last_steps"][-1]["strategy"] == "RETRY"
    assert len(steps) == 4  # hooks see every step
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    warnings = [m for level, m in levels if level == logging.WARNING]
    assert len(warnings) == 1  # the outage's first failure; the next is summarised later
    assert "CALL" in warnings[0]
    assert sum(1 for level, m in levels if level == logging.INFO and "RETRY" in m) == 2


def test_actions_are_validated_and_ordered() -> None:
    with pytest.raises(ValueError, match="attemps"):
        FallbackAction(S.RETRY, attemps=2)
    with pytest.raises(ValueError, match="value strategy"):
        FallbackAction(S.DEFAULT)
    with pytest.raises(ValueError, match="factor"):
        FallbackAction(S.SCALE_DOWN, factor=2)
    with pytest.raises(ValueError, match="unknown fallback strategy"):
        FallbackAction("teleport")
    protocol = FallbackProtocol(
        "api_quota",
        [
            FallbackAction(S.USE_CACHE, priority=1),
            FallbackAction(S.SWITCH_PROVIDER, target="anthropic"),
            FallbackAction(S.RETRY),
        ],
    )
    assert protocol.strategies == (S.SWITCH_PROVIDER, S.RETRY, S.USE_CACHE)
    with pytest.raises(TypeError, match="step 0"):
        FallbackProtocol(ResourceType.CPU, ["retry"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"fallback_strategies\[api_quota\]"):
        ResilienceManager("x", {"fallback_strategies": {"api_quota": ["retry"]}})


def test_default_protocols_are_the_documented_ones() -> None:
    manager = ResilienceManager("defaults")

    def chain(rtype: ResourceType) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for action in manager.protocol(rtype):
            attempts = action.params.get("attempts")
            out.append((action.strategy.name, attempts))
        return out

    assert chain(ResourceType.API_QUOTA) == [
        ("RETRY", 2),
        ("SWITCH_PROVIDER", None),
        ("DEGRADE_SERVICE", None),
        ("QUEUE_REQUEST", None),
    ]
    assert chain(ResourceType.MEMORY) == chain(ResourceType.CPU)
    assert chain(ResourceType.MEMORY) == [
        ("CACHED", None),
        ("DEGRADE_SERVICE", None),
        ("SCALE_DOWN", None),
    ]
    assert chain(ResourceType.DATABASE) == [
        ("RETRY", 3),
        ("SWITCH_PROVIDER", None),
        ("CACHED", None),
        ("CIRCUIT_BREAK", None),
    ]
    assert [s for s, _ in chain(ResourceType.MCP_SERVER)] == [
        "RETRY",
        "SWITCH_PROVIDER",
        "CIRCUIT_BREAK",
    ]
    for rtype in ResourceType:
        assert len(manager.protocol(rtype)) >= 2


@pytest.mark.parametrize(
    ("error", "resource"),
    [
        (ConnectionError("refused"), True),
        (TimeoutError(), True),
        (buttress.RateLimitExceeded("slow down", retry_after=3), True),
        (Flaky(429), True),
        (Flaky(503), True),
        (Flaky(404), False),
        (Flaky(401), False),
        (ValueError("bad"), False),
        (TypeError("bad"), False),
        (type("RateLimitError", (Exception,), {})(), True),
        (type("IntegrityError", (Exception,), {})(), False),
        (type("OperationalError", (Exception,), {})(), True),
    ],
)
def test_classification(error: BaseException, resource: bool) -> None:
    assert Classifier()(error) is resource


def test_classification_is_configurable_and_reads_retry_after() -> None:
    custom = Classifier(resource_errors=[KeyError], request_statuses=[503])
    assert custom(KeyError("gone")) is True
    assert custom(Flaky(503)) is False
    assert retry_after_of(Flaky(429, "12")) == 12.0
    assert retry_after_of(buttress.RateLimitExceeded("x", retry_after=4)) == 4.0
    assert retry_after_of(ValueError()) is None


def test_a_refused_credential_cools_its_target_and_is_never_retried(
    mode: str, clock: FakeClock, steps: list[Any]
) -> None:
    t = team(mode, clock, [Flaky(401), "other"])
    t.resilience.register_targets(ResourceType.API_QUOTA, ["openai", "anthropic"])
    assert run(method(mode)(t, "x")) == "other:x"
    assert t.calls == ["openai", "anthropic"]
    assert t.resilience.provider_states()["api_quota"]["openai"]["state"] == "cooling"
    assert "RETRY" not in [s.strategy for s in steps if s.outcome != "skipped"]
    t = team(mode, clock, [Flaky(401), "never"])  # without targets: the request's error
    with pytest.raises(Flaky):
        run(method(mode)(t, "x"))
    assert len(t.calls) == 1


def test_writes_never_go_to_a_replica(mode: str, clock: FakeClock) -> None:
    queue = RequestQueue("writes", storage="memory://", clock=clock)
    manager = ResilienceManager(f"db-{mode}", clock=clock, queue=queue)
    manager.register_targets(ResourceType.DATABASE, ["primary", "replica1", "replica2"])
    manager.set_protocol(
        ResourceType.DATABASE,
        [FallbackAction(S.RETRY, attempts=3), FallbackAction(S.SWITCH_PROVIDER)],
    )
    seen: list[str | None] = []

    def body(self: Any, sql: str) -> str:
        seen.append(current_target())
        if current_target() == "primary":
            raise ConnectionError("primary stopped")
        return f"{current_target()}:{sql}"

    if mode == "sync":
        read = with_fallback(ResourceType.DATABASE)(body)
        write = with_fallback(ResourceType.DATABASE, write=True)(body)
    else:

        async def abody(self: Any, sql: str) -> str:
            return body(self, sql)

        read = with_fallback(ResourceType.DATABASE)(abody)
        write = with_fallback(ResourceType.DATABASE, write=True)(abody)

    class Repo:
        resilience = manager

    with buttress.deadline(5.0, clock=clock):
        assert run(read(Repo(), "select")) == "replica1:select"
        with pytest.raises(buttress.ButtressError, match="primary"):
            run(write(Repo(), "insert"))
    # The read switched; the write waited for the cooling primary, not a replica, and failed.
    assert seen == ["primary", "replica1"]
    manager.set_protocol(
        ResourceType.DATABASE, [FallbackAction(S.SWITCH_PROVIDER), FallbackAction(S.QUEUE_REQUEST)]
    )
    with buttress.deadline(5.0, clock=clock), pytest.raises(RequestQueued):
        run(write(Repo(), "insert"))
    assert queue.stats().waiting == 1


def test_an_open_breaker_refuses_a_stream_and_a_stream_failure_cools_its_target(
    clock: FakeClock,
) -> None:
    manager = ResilienceManager(f"stream-breaker-{id(clock)}", clock=clock)
    manager.register_targets(ResourceType.API_QUOTA, ["a", "b"])
    manager.set_protocol(
        ResourceType.API_QUOTA,
        [FallbackAction(S.SWITCH_PROVIDER), FallbackAction(S.CIRCUIT_BREAK)],
    )
    opened: list[str] = []

    class Streamer:
        resilience = manager

        @with_fallback(ResourceType.API_QUOTA)
        async def stream(self) -> AsyncIterator[str]:
            opened.append(current_target() or "")
            yield "first"
            raise ConnectionError("reset")

    async def collect() -> list[str]:
        return [chunk async for chunk in Streamer().stream()]

    with pytest.raises(StreamInterrupted) as caught:
        asyncio.run(collect())
    assert (caught.value.partial, caught.value.target) == (["first"], "a")
    assert manager.provider_states()["api_quota"]["a"]["state"] == "cooling"
    manager.protocol_host.breaker(ResourceType.API_QUOTA).open()
    try:
        with pytest.raises(CircuitOpenError):
            asyncio.run(collect())
        assert opened == ["a"]
    finally:
        manager.protocol_host.breaker(ResourceType.API_QUOTA).dispose()


def test_an_unhashable_callable_is_sent_to_a_target() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __eq__(self, other: object) -> bool:
            return False

        def __call__(self, target: str | None = None) -> str:
            return f"sent to {target}"

    manager = ResilienceManager("unhashable")
    manager.register_targets(ResourceType.MCP_SERVER, ["a", "b"])
    assert manager.call_with_resilience(Unhashable(), ResourceType.MCP_SERVER) == "sent to a"
