"""Composition, the public namespace, and the logging contract of events."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import buttress
from buttress import (
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    FallbackStrategy,
    Pipeline,
    Retry,
    Timeout,
)
from buttress.events import (
    CallCompleted,
    Event,
    FallbackUsed,
    GaveUp,
    add_hook,
    emit,
    listening,
    remove_hook,
)
from buttress.testing import FakeClock


def test_all_is_sorted_complete_and_importable() -> None:
    assert buttress.__all__ == sorted(buttress.__all__)
    for name in buttress.__all__:
        assert hasattr(buttress, name), name
    public = {
        n
        for n, v in vars(buttress).items()
        if not n.startswith("_")
        and not isinstance(v, type(buttress))
        and n not in {"annotations", "Any"}
    }
    assert public - set(buttress.__all__) == set()


def test_decorator_names_are_not_shadowed_by_modules() -> None:
    assert callable(buttress.retry)
    assert not isinstance(buttress.retry, type(buttress))
    assert callable(buttress.timeout)
    assert callable(buttress.fallback)


def test_pipeline_reads_outermost_first(clock: FakeClock) -> None:
    calls = 0

    def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError

    breaker = CircuitBreaker(fail_max=2)
    pipeline = Pipeline(
        Fallback(strategy=FallbackStrategy.DEFAULT, default_value=-1),
        Retry(max_attempts=5, base_delay=0, fail_fast_on=CircuitOpenError),
        breaker,
    )
    assert pipeline.call(flaky, 1) == -1
    assert calls == 2  # the breaker opened after two failures; retry stops on the rejection
    assert pipeline.call(flaky, 1) == -1
    assert calls == 2


def test_pipeline_async_and_type_checks(clock: FakeClock) -> None:
    pipeline = Pipeline(Retry(max_retries=1, base_delay=0), Timeout(timeout_seconds=5))

    async def double(x: int) -> int:
        return 2 * x

    assert asyncio.run(pipeline.acall(double, 4)) == 8
    with pytest.raises(TypeError, match="coroutine function"):
        pipeline.call(double, 1)
    with pytest.raises(TypeError, match="at least one policy"):
        Pipeline()
    with pytest.raises(TypeError, match=r"policies\[0\]"):
        Pipeline(3)  # type: ignore[arg-type]


def test_every_event_logs_at_its_level(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("buttress").setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="buttress"):
            emit(
                GaveUp(
                    policy="retry",
                    name="n",
                    at=1.0,
                    attempts=3,
                    reason="attempts",
                    exception=KeyError("k"),
                )
            )
            emit(
                FallbackUsed(
                    policy="fallback", name="n", at=1.0, strategy="DEFAULT", exception=None
                )
            )
            emit(CallCompleted(policy="circuit", name="n", at=1.0, outcome="success", duration=0.1))
    finally:
        logging.getLogger("buttress").setLevel(logging.NOTSET)
    records = [(r.name, r.levelno, r.event) for r in caplog.records]  # type: ignore[attr-defined]
    assert records == [
        ("buttress.retry", logging.WARNING, "gave_up"),
        ("buttress.fallback", logging.INFO, "fallback_used"),
    ]
    gave_up = caplog.records[0]
    assert gave_up.exception == "KeyError: 'k'"  # type: ignore[attr-defined]
    assert gave_up.attempts == 3  # type: ignore[attr-defined]


def test_hooks_receive_events_and_a_failing_hook_is_contained(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    got: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    add_hook(got.append)
    add_hook(broken)
    try:
        assert listening()
        cb = CircuitBreaker(fail_max=1)
        assert cb.call(lambda: 1) == 1
        with pytest.raises(ConnectionError):
            cb.call(_fail)
    finally:
        remove_hook(got.append)
        remove_hook(broken)
    remove_hook(broken)  # removing twice is harmless
    kinds = [e.kind for e in got]
    assert kinds == ["call_completed", "state_changed", "call_completed"]
    assert any(
        "hook bug" in (r.exc_text or "") or r.levelno == logging.ERROR for r in caplog.records
    )
    assert not listening()
    with pytest.raises(TypeError, match="hook must be callable"):
        add_hook(5)  # type: ignore[arg-type]


def _fail(*args: Any) -> None:
    raise ConnectionError
