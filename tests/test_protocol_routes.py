"""Errors routed by class: a context-window error goes to a larger-context chain.

A target that answers "the prompt is too long" is not failing: the request is too big for it.
The call is not retried there and the target is not cooled (it still serves the next normal
call); the call goes on over the chain the route names, its own pool with its own cooldowns,
within the call's deadline. Without a route, the error propagates at once as a request error.
Targets are local callables on a fake clock, and once a local HTTP server answering as OpenAI
does (400, ``context_length_exceeded``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from buttress import (
    AllTargetsCooling,
    FallbackAction,
    FallbackProtocol,
    FallbackStrategy,
    ResilienceManager,
    ResourceType,
    events,
    use_manager,
    with_fallback,
)
from buttress.testing import FakeClock
from local_servers import serve

API = ResourceType.API_QUOTA
_teams = itertools.count()


class ContextWindowExceededError(Exception):
    """What an OpenAI-style client raises for a prompt over the model's window."""

    code = "context_length_exceeded"
    status_code = 400


class BadRequestError(Exception):
    status_code = 400


class ServerError(Exception):
    status_code = 503


class Targets:
    """Named local callables; each records its calls and answers from a script."""

    def __init__(self, clock: FakeClock, **answers: Any) -> None:
        self.clock = clock
        self.answers = answers
        self.calls: Counter[str] = Counter()

    def target(self, name: str) -> Any:
        def call(prompt: str) -> str:
            self.calls[name] += 1
            self.clock.advance(0.01)
            answer = self.answers.get(name, "ok")
            if isinstance(answer, BaseException):
                raise answer
            if callable(answer):
                return str(answer(prompt))
            return f"{name}:{prompt}"

        return call

    def atarget(self, name: str) -> Any:
        call = self.target(name)

        async def acall(prompt: str) -> str:
            return call(prompt)

        return acall


def _under(manager: ResilienceManager) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run a sync ``with_fallback`` function with ``manager`` current."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with use_manager(manager):
                return fn(*args, **kwargs)

        return call

    return decorate


@pytest.fixture
def steps() -> Iterator[list[events.ProtocolStep]]:
    seen: list[events.ProtocolStep] = []

    def hook(event: events.Event) -> None:
        if isinstance(event, events.ProtocolStep):
            seen.append(event)

    events.add_hook(hook)
    yield seen
    events.remove_hook(hook)


def _too_long(prompt: str) -> str:
    if len(prompt) > 10:
        raise ContextWindowExceededError("This model's maximum context length is 8192 tokens")
    return f"small:{prompt}"


def _team(
    clock: FakeClock,
    targets: Targets,
    *,
    routes: dict[Any, str] | None = None,
    chain: tuple[str, ...] = ("big",),
    is_async: bool = False,
    timeout: float | None = None,
) -> ResilienceManager:
    manager = ResilienceManager(f"routes-{next(_teams)}", clock=clock)
    make = targets.atarget if is_async else targets.target
    manager.register_targets(
        API, {n: make(n) for n in ("small", "spare")}, routes=routes, storage=None
    )
    if chain:
        manager.register_targets(API, {n: make(n) for n in chain}, chain="long", storage=None)
    if timeout is not None:
        manager.set_protocol(
            API,
            FallbackProtocol(
                API,
                [
                    FallbackAction(FallbackStrategy.RETRY, attempts=2),
                    FallbackAction(FallbackStrategy.SWITCH_PROVIDER),
                ],
                timeout=timeout,
            ),
        )
    return manager


def _states(manager: ResilienceManager) -> dict[str, str]:
    return {n: s["state"] for n, s in manager.provider_states()["api_quota"].items()}


def test_context_window_error_routes_to_the_chain_and_leaves_the_target_healthy(
    steps: list[events.ProtocolStep],
) -> None:
    clock = FakeClock()
    targets = Targets(clock, small=_too_long)
    manager = _team(clock, targets, routes={"context_window": "long"})

    @_under(manager)
    @with_fallback(API)
    def complete(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    assert complete("a very long prompt") == "big:a very long prompt"
    # not retried, not switched to the main pool's next target: routed at once
    assert targets.calls == {"small": 1, "big": 1}
    assert _states(manager) == {"small": "healthy", "spare": "healthy"}
    routed = [(s.strategy, s.target, s.outcome) for s in steps]
    assert ("ROUTE", "small", "routed") in routed
    assert ("ROUTE", "big", "succeeded") in routed
    assert not any(s.strategy == "RETRY" for s in steps)
    # the next normal call goes to the original target
    assert complete("short") == "small:short"
    assert targets.calls["small"] == 2


def test_async_and_streaming_route_alike(steps: list[events.ProtocolStep]) -> None:
    clock = FakeClock()
    targets = Targets(clock, small=_too_long)
    manager = _team(clock, targets, routes={"context_window": "long"}, is_async=True)

    @with_fallback(API)
    async def complete(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    seen: list[str | None] = []

    @with_fallback(API)
    async def stream(prompt: str) -> AsyncIterator[str]:
        import buttress

        target = buttress.current_target()
        seen.append(target)
        if target == "small" and len(prompt) > 10:
            raise ContextWindowExceededError("prompt is too long: 250000 tokens > 200000 maximum")
        for word in prompt.split():
            yield f"{target}:{word}"

    # a stream reads its target by name: a second team with names-only targets
    streams = ResilienceManager(f"routes-{next(_teams)}", clock=clock)
    streams.register_targets(
        API, ["small", "spare"], routes={"context_window": "long"}, storage=None
    )
    streams.register_targets(API, ["big"], chain="long", storage=None)

    async def main() -> tuple[str, list[str]]:
        with use_manager(manager):
            answer = await complete("a very long prompt")
        with use_manager(streams):
            chunks = [chunk async for chunk in stream("a very long prompt")]
        return answer, chunks

    answer, chunks = asyncio.run(main())
    assert answer == "big:a very long prompt"
    assert chunks == ["big:a", "big:very", "big:long", "big:prompt"]
    assert seen == ["small", "big"]
    assert _states(manager) == {"small": "healthy", "spare": "healthy"}
    assert _states(streams) == {"small": "healthy", "spare": "healthy"}
    assert [s.outcome for s in steps if s.strategy == "ROUTE"].count("routed") == 2


def test_without_a_route_the_error_propagates_at_once() -> None:
    clock = FakeClock()
    targets = Targets(clock, small=_too_long)
    manager = _team(clock, targets, chain=())

    @_under(manager)
    @with_fallback(API)
    def complete(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    with pytest.raises(ContextWindowExceededError):
        complete("a very long prompt")
    assert targets.calls == {"small": 1}
    assert _states(manager)["small"] == "healthy"


def test_a_route_to_an_unregistered_chain_propagates_the_error() -> None:
    clock = FakeClock()
    targets = Targets(clock, small=_too_long)
    manager = _team(clock, targets, routes={"context_window": "missing"})

    @_under(manager)
    @with_fallback(API)
    def complete(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    with pytest.raises(ContextWindowExceededError):
        complete("a very long prompt")
    assert targets.calls == {"small": 1}


def test_the_chain_walks_on_past_a_target_too_small_or_failing() -> None:
    clock = FakeClock()
    targets = Targets(clock, small=_too_long, big=ServerError("overloaded"), huge=_too_long)
    targets.answers["huge"] = ContextWindowExceededError("context_length_exceeded")
    manager = _team(clock, targets, routes={"context_window": "long"}, chain=("big", "huge", "max"))

    @_under(manager)
    @with_fallback(API)
    def complete(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    assert complete("a very long prompt") == "max:a very long prompt"
    assert targets.calls == {"small": 1, "big": 1, "huge": 1, "max": 1}
    chain = manager.provider_states()["api_quota:long"]
    assert chain["big"]["state"] == "cooling"  # the chain's own cooldowns
    assert chain["huge"]["state"] == "healthy"  # too small is not unhealthy


def test_a_request_error_on_the_chain_propagates() -> None:
    clock = FakeClock()
    targets = Targets(clock, small=_too_long, big=BadRequestError("bad"))
    manager = _team(clock, targets, routes={"context_window": "long"}, chain=("big", "max"))

    @_under(manager)
    @with_fallback(API)
    def complete(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    with pytest.raises(BadRequestError):
        complete("a very long prompt")
    assert targets.calls == {"small": 1, "big": 1}


def test_the_routed_chain_keeps_the_deadline() -> None:
    clock = FakeClock()
    targets = Targets(clock, small=_too_long, big=ServerError("overloaded"))
    manager = _team(clock, targets, routes={"context_window": "long"}, timeout=5.0)
    chain = manager.protocol_host.chain(API, "long")
    assert chain is not None
    choice = chain.choose()
    assert choice is not None
    chain.failed(choice, ServerError("down"), retry_after=60.0)  # cooling for a minute

    @_under(manager)
    @with_fallback(API)
    def complete(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    started = clock.now()
    with pytest.raises(AllTargetsCooling):
        complete("a very long prompt")
    assert clock.now() - started <= 5.0
    assert targets.calls == {"small": 1}


def test_routes_by_exception_type_and_predicate() -> None:
    class TooBig(Exception):
        pass

    clock = FakeClock()
    targets = Targets(clock, small=TooBig("nope"), spare=RuntimeError("413 payload"))
    manager = _team(clock, targets, routes={TooBig: "long"})

    @_under(manager)
    @with_fallback(API)
    def complete(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    assert complete("x") == "big:x"

    targets2 = Targets(clock, small=RuntimeError("payload too large"))
    manager2 = _team(clock, targets2, routes={lambda e: "too large" in str(e): "long"})

    @_under(manager2)
    @with_fallback(API)
    def complete2(prompt: str) -> str:
        raise AssertionError("a callable target runs instead")

    assert complete2("x") == "big:x"
    assert targets2.calls == {"small": 1, "big": 1}


def test_bad_routes_are_refused_clearly() -> None:
    manager = ResilienceManager(f"routes-{next(_teams)}", clock=FakeClock())
    with pytest.raises(ValueError, match="unknown error class 'context'"):
        manager.register_targets(API, ["a"], routes={"context": "long"}, storage=None)
    with pytest.raises(TypeError, match=r"routes\['context_window'\] must name a chain"):
        manager.register_targets(API, ["a"], routes={"context_window": 3}, storage=None)
    with pytest.raises(TypeError, match="a key must be"):
        manager.register_targets(API, ["a"], routes={3: "long"}, storage=None)
    with pytest.raises(ValueError, match="routes belong to the main pool"):
        manager.register_targets(
            API, ["a"], chain="long", routes={"context_window": "x"}, storage=None
        )
    with pytest.raises(TypeError, match="chain must be"):
        manager.register_targets(API, ["a"], chain="", storage=None)


class OpenAIError(Exception):
    """A minimal OpenAI-style client error: the status, the error body's code and message."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        error = body.get("error", {})
        super().__init__(f"Error code: {status} - {body}")
        self.status_code = status
        self.code = error.get("code")


def _chat(url: str, prompt: str) -> str:
    request = urllib.request.Request(f"{url}/v1/chat/completions?p={len(prompt)}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise OpenAIError(error.code, json.loads(error.read())) from None
    return str(body["choices"][0]["message"]["content"])


def test_a_local_openai_stand_in_answering_context_length_exceeded() -> None:
    def small(request: Any) -> tuple[Any, ...]:
        return (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens. However, "
                    "your messages resulted in 9000 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
        )

    def big(request: Any) -> tuple[Any, ...]:
        return (200, {"choices": [{"message": {"role": "assistant", "content": "from big"}}]})

    with serve({"/v1/chat/completions": small}) as s1, serve({"/v1/chat/completions": big}) as s2:
        manager = ResilienceManager(f"routes-{next(_teams)}", clock=FakeClock())
        manager.register_targets(
            API, {"gpt-8k": s1.url}, routes={"context_window": "long"}, storage=None
        )
        manager.register_targets(API, {"gpt-128k": s2.url}, chain="long", storage=None)

        @_under(manager)
        @with_fallback(API)
        def complete(prompt: str, target: str) -> str:
            return _chat(target, prompt)

        assert complete("a very long prompt") == "from big"
        assert len(s1.requests) == 1
        assert len(s2.requests) == 1
        assert manager.provider_states()["api_quota"]["gpt-8k"]["state"] == "healthy"
