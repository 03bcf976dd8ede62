"""Fallback protocols in the manager: finding it, replay and restore on recovery, metrics."""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import buttress
from buttress import (
    FallbackAction,
    FallbackStrategy,
    RequestQueue,
    RequestQueued,
    ResilienceManager,
    ResourceType,
    use_manager,
    with_fallback,
)
from buttress.instrumentation.prometheus import enable_prometheus
from buttress.testing import FakeClock

S = FallbackStrategy


def test_plain_functions_use_the_current_then_the_default_manager(clock: FakeClock) -> None:
    current = ResilienceManager("current", clock=clock)
    default = ResilienceManager("default-team", clock=clock)
    attempts: list[str] = []

    @with_fallback(ResourceType.NETWORK)
    def fetch(url: str) -> str:
        attempts.append(url)
        if len(attempts) % 2:  # each call's first attempt fails
            raise ConnectionError("down")
        return url

    current.set_protocol(ResourceType.NETWORK, [FallbackAction(S.RETRY, attempts=1)])
    default.set_protocol(ResourceType.NETWORK, [FallbackAction(S.RETRY, attempts=1)])
    with use_manager(current):
        assert fetch("a") == "a"
    buttress.set_default_manager(default)
    try:
        assert fetch("b") == "b"
    finally:
        buttress.set_default_manager(None)
    assert current.health_report()["protocols"]["counts"]["network"]["RETRY"] == {"succeeded": 1}
    assert default.health_report()["protocols"]["counts"]["network"]["RETRY"] == {"succeeded": 1}
    with pytest.raises(TypeError, match="ResilienceManager"):
        buttress.set_default_manager("nope")


def test_queued_calls_replay_when_the_resource_turns_healthy(clock: FakeClock) -> None:
    queue = RequestQueue("replay", storage="memory://", clock=clock)
    manager = ResilienceManager("queueing", clock=clock, queue=queue)
    manager.set_protocol(ResourceType.API_QUOTA, [FallbackAction(S.QUEUE_REQUEST)])
    usage = [99.0]
    manager.register_api_quota_monitor("openai", lambda: usage[0], success_threshold=1)
    done = threading.Event()
    handled: list[str] = []

    class Team:
        resilience = manager

        @with_fallback(ResourceType.API_QUOTA)
        def send(self, text: str) -> str:
            if usage[0] > 90:
                raise ConnectionError("quota exhausted")
            handled.append(text)
            done.set()
            return text

    with pytest.raises(RequestQueued) as caught:
        Team().send("hello")
    assert pickle.loads(pickle.dumps(caught.value)).ticket == caught.value.ticket
    asyncio.run(manager.resources.check_now())  # critical: nothing replays
    assert handled == []
    usage[0] = 10.0
    asyncio.run(manager.resources.check_now())  # healthy: the queue replays in a thread
    assert done.wait(10.0)
    assert handled == ["hello"]


def test_protocol_steps_are_counted_in_prometheus(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    metrics = enable_prometheus(registry)
    try:
        manager = ResilienceManager("metrics", clock=clock)
        manager.set_protocol(ResourceType.DOCKER, [FallbackAction(S.RETRY, attempts=1)])
        answers: list[Any] = [ConnectionError("daemon"), "up"]

        @with_fallback(ResourceType.DOCKER)
        def ping() -> Any:
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        with use_manager(manager):
            assert ping() == "up"
        text = generate_latest(registry).decode()
        assert 'buttress_protocol_steps_total{name="' in text
        assert 'outcome="succeeded",resource="docker",strategy="RETRY",target=""} 1.0' in text
    finally:
        metrics.disable()


def test_with_resilience_times_out_per_configuration(clock: FakeClock) -> None:
    manager = ResilienceManager("slow-team", {"timeouts": {"network": 2.0}}, clock=clock)
    manager.set_protocol(ResourceType.NETWORK, [FallbackAction(S.USE_CACHE)])

    async def slow() -> str:
        await clock.asleep(10.0)
        return "late"

    try:
        with pytest.raises(buttress.OperationTimeout):
            asyncio.run(manager.with_resilience(slow, ResourceType.NETWORK))
        assert clock.now() == pytest.approx(2.0)
    finally:
        buttress.circuit_breakers()["slow-team.network"].dispose()
    with pytest.raises(ValueError, match=r"timeouts\[network\]"):
        ResilienceManager("bad", {"timeouts": {"network": -1}})


def test_a_protocol_for_another_type_is_refused() -> None:
    manager = ResilienceManager("types")
    protocol = buttress.FallbackProtocol(ResourceType.CPU, [FallbackAction(S.USE_CACHE)])
    with pytest.raises(ValueError, match="cpu protocol given for memory"):
        manager.set_protocol(ResourceType.MEMORY, protocol)
    with pytest.raises(TypeError, match="list of FallbackAction"):
        manager.set_protocol(ResourceType.MEMORY, "cache")  # type: ignore[arg-type]


def test_under_load_no_call_starts_on_the_primary_once_it_cooled() -> None:
    """200 concurrent tasks: once the primary's first failure has cooled it, every call that
    starts afterwards goes to the secondary, and none surfaces an error."""
    manager = ResilienceManager("load")
    manager.register_targets(ResourceType.API_QUOTA, ["primary", "secondary"], cooldown=60.0)
    started_after_cooling: list[str | None] = []
    cooled = asyncio.Event()

    class Client:
        resilience = manager

        @with_fallback(ResourceType.API_QUOTA)
        async def complete(self, n: int) -> str:
            target = buttress.current_target()
            if cooled.is_set():
                started_after_cooling.append(target)
            await asyncio.sleep(0)
            if target == "primary":
                cooled.set()  # the pool hears of this failure before anything else runs
                raise ConnectionError("primary down")
            return f"{target}:{n}"

    async def main() -> list[str]:
        client = Client()
        first = [asyncio.create_task(client.complete(n)) for n in range(100)]
        await cooled.wait()
        later = [asyncio.create_task(client.complete(n)) for n in range(100, 200)]
        return await asyncio.gather(*first, *later)

    answers = asyncio.run(main())
    assert len(answers) == 200
    assert all(a.startswith("secondary:") for a in answers)
    assert started_after_cooling
    assert "primary" not in started_after_cooling


def test_with_resilience_counts_a_failed_call_once_and_then_fails_fast(clock: FakeClock) -> None:
    manager = ResilienceManager("counting", clock=clock)
    manager.set_protocol(ResourceType.NETWORK, [])
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError("down")

    try:
        for _ in range(5):
            with pytest.raises(ConnectionError):
                manager.call_with_resilience(down, ResourceType.NETWORK)
        breaker = buttress.circuit_breakers()["counting.network"]
        assert breaker.state is buttress.CircuitState.OPEN  # five failures: the default threshold
        with pytest.raises(buttress.CircuitOpenError):
            manager.call_with_resilience(down, ResourceType.NETWORK)
        assert len(calls) == 5
    finally:
        buttress.circuit_breakers()["counting.network"].dispose()
