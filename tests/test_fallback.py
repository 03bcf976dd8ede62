"""Fallback: each strategy, chains, the cache, the enum shared with fallback protocols."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from buttress import Fallback, FallbackStrategy, fallback
from buttress.testing import FakeClock
from conftest import make, run


class Switch:
    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def __call__(self, key: Any = "k") -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("down")
        return f"fresh:{key}"


def test_enum_carries_both_documents_members() -> None:
    assert FallbackStrategy.USE_CACHE is FallbackStrategy.CACHED
    names = set(FallbackStrategy.__members__)
    assert {"CACHED", "DEFAULT", "FUNCTION", "NONE", "RAISE", "USE_CACHE"} <= names
    assert {"RETRY", "SWITCH_PROVIDER", "DEGRADE_SERVICE", "QUEUE_REQUEST"} <= names
    assert {"SCALE_DOWN", "CIRCUIT_BREAK"} <= names


@pytest.mark.parametrize("strategy", [None, 5, b"cached", {"cached": 1}])
def test_a_strategy_that_is_neither_a_member_nor_a_sequence_is_named(strategy: object) -> None:
    with pytest.raises(TypeError, match="strategy must be a FallbackStrategy or a sequence") as e:
        Fallback(strategy=strategy)  # type: ignore[arg-type]
    assert repr(strategy) in str(e.value)


def test_protocol_members_are_refused() -> None:
    with pytest.raises(ValueError, match="SWITCH_PROVIDER is a fallback protocol step"):
        Fallback(strategy=FallbackStrategy.SWITCH_PROVIDER)
    with pytest.raises(ValueError, match="unknown fallback strategy 'magic'"):
        Fallback(strategy="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs fallback_function"):
        Fallback(strategy=FallbackStrategy.FUNCTION)
    with pytest.raises(ValueError, match="cache_size must be >= 1"):
        Fallback(cache_size=0)


def test_cached_serves_last_good_result_per_arguments(mode: str, clock: FakeClock) -> None:
    body = Switch()
    fn = fallback(strategy=FallbackStrategy.CACHED)(make(mode, body))
    assert run(fn("a")) == "fresh:a"
    body.down = True
    assert run(fn("a")) == "fresh:a"
    with pytest.raises(ConnectionError):
        run(fn("b"))  # nothing cached for b: the original error


def test_cache_ttl_expires(mode: str, clock: FakeClock) -> None:
    body = Switch()
    fn = fallback(strategy=FallbackStrategy.CACHED, cache_ttl=10)(make(mode, body))
    run(fn("a"))
    body.down = True
    clock.advance(9)
    assert run(fn("a")) == "fresh:a"
    clock.advance(2)
    with pytest.raises(ConnectionError):
        run(fn("a"))


def test_cache_is_bounded_lru(clock: FakeClock) -> None:
    body = Switch()
    policy = Fallback(strategy=FallbackStrategy.CACHED, cache_size=2)
    fn = policy(body)
    fn("a"), fn("b"), fn("a"), fn("c")  # b is least recently used
    assert policy.cache is not None
    assert len(policy.cache) == 2
    body.down = True
    assert fn("a") == "fresh:a"
    assert fn("c") == "fresh:c"
    with pytest.raises(ConnectionError):
        fn("b")


def test_unhashable_arguments_are_not_cached(clock: FakeClock) -> None:
    body = Switch()
    fn = fallback(strategy=FallbackStrategy.CACHED)(body)
    assert fn(["a"]) == "fresh:['a']"
    body.down = True
    with pytest.raises(ConnectionError):
        fn(["a"])
    keyed = fallback(strategy=FallbackStrategy.CACHED, key=lambda a, k: str(a))(Switch())
    keyed(["x"])


def test_default_none_raise(mode: str) -> None:
    body = Switch()
    body.down = True
    assert (
        run(fallback(strategy=FallbackStrategy.DEFAULT, default_value=[])(make(mode, body))()) == []
    )
    assert run(fallback(strategy=FallbackStrategy.NONE)(make(mode, body))()) is None
    with pytest.raises(ConnectionError):
        run(fallback(strategy=FallbackStrategy.RAISE)(make(mode, body))())


def test_function_gets_the_same_arguments(mode: str) -> None:
    body = Switch()
    body.down = True
    fn = fallback(strategy=FallbackStrategy.FUNCTION, fallback_function=lambda k: f"backup:{k}")(
        make(mode, body)
    )
    assert run(fn("z")) == "backup:z"


def test_async_fallback_function_is_awaited() -> None:
    async def backup(key: str) -> str:
        return f"abackup:{key}"

    @fallback(strategy=FallbackStrategy.FUNCTION, fallback_function=backup)
    async def primary(key: str) -> str:
        raise ConnectionError("down")

    assert asyncio.run(primary("k")) == "abackup:k"


def test_chain_order(mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    body = Switch()

    def broken_backup(key: str) -> str:
        raise RuntimeError("backup down too")

    fn = fallback(
        strategy=[FallbackStrategy.CACHED, FallbackStrategy.FUNCTION, FallbackStrategy.DEFAULT],
        fallback_function=broken_backup,
        default_value="default",
    )(make(mode, body))
    run(fn("a"))
    body.down = True
    with caplog.at_level(logging.INFO, logger="buttress"):
        assert run(fn("a")) == "fresh:a"  # cache first
        assert run(fn("b")) == "default"  # cache miss, function fails, default
    used = [r.strategy for r in caplog.records if getattr(r, "event", "") == "fallback_used"]  # type: ignore[attr-defined]
    assert used == ["CACHED", "DEFAULT"]


def test_chain_that_produces_nothing_raises_the_original(mode: str) -> None:
    original = ConnectionError("original")

    def body() -> None:
        raise original

    fn = fallback(strategy=[FallbackStrategy.CACHED, FallbackStrategy.RAISE])(make(mode, body))
    with pytest.raises(ConnectionError) as info:
        run(fn())
    assert info.value is original


def test_a_failing_fallback_function_is_chained_to_the_original(mode: str) -> None:
    original = ConnectionError("original")
    backup_error = RuntimeError("backup")

    def body() -> None:
        raise original

    def backup() -> None:
        raise backup_error

    fn = fallback(
        strategy=[FallbackStrategy.CACHED, FallbackStrategy.FUNCTION], fallback_function=backup
    )(make(mode, body))
    with pytest.raises(RuntimeError) as info:
        run(fn())
    assert info.value is backup_error
    assert info.value.__cause__ is original


def test_a_fallback_function_keeps_its_own_cause(mode: str) -> None:
    def body() -> None:
        raise ConnectionError("original")

    def backup() -> None:
        try:
            raise KeyError("replica")
        except KeyError as exc:
            raise RuntimeError("backup") from exc

    fn = fallback(strategy=FallbackStrategy.FUNCTION, fallback_function=backup)(make(mode, body))
    with pytest.raises(RuntimeError) as info:
        run(fn())
    assert isinstance(info.value.__cause__, KeyError)


def test_raise_after_a_failing_function_raises_the_original(mode: str) -> None:
    original = ConnectionError("original")

    def body() -> None:
        raise original

    def backup() -> None:
        raise RuntimeError("backup")

    fn = fallback(
        strategy=[FallbackStrategy.FUNCTION, FallbackStrategy.RAISE], fallback_function=backup
    )(make(mode, body))
    with pytest.raises(ConnectionError) as info:
        run(fn())
    assert info.value is original


def test_on_limits_which_errors_trigger(mode: str) -> None:
    body = Switch()
    body.down = True
    fn = fallback(strategy=FallbackStrategy.NONE, on=KeyError)(make(mode, body))
    with pytest.raises(ConnectionError):
        run(fn())


def test_cancellation_never_triggers_a_fallback() -> None:
    @fallback(strategy=FallbackStrategy.NONE)
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())


def test_methods_cache_per_instance(clock: FakeClock) -> None:
    class Api:
        def __init__(self, tag: str) -> None:
            self.tag = tag
            self.down = False

        @fallback(strategy=FallbackStrategy.CACHED)
        def get(self) -> str:
            if self.down:
                raise ConnectionError
            return self.tag

    a, b = Api("a"), Api("b")
    assert (a.get(), b.get()) == ("a", "b")
    a.down = b.down = True
    assert (a.get(), b.get()) == ("a", "b")


@pytest.mark.parametrize(("name", "error"), [(5, TypeError), ("", ValueError), (" ", ValueError)])
def test_a_name_must_be_a_non_empty_string(name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"name must be a non-empty string.*got {name!r}"):
        Fallback(strategy=FallbackStrategy.NONE, name=name)  # type: ignore[arg-type]
