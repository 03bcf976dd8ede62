"""``Policy.call`` / ``acall`` guard the call directly: no wrapper is built per call."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest

from buttress import Fallback, FallbackStrategy, Retry, Timeout
from buttress.testing import FakeClock


@pytest.fixture
def wrappers_made(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every ``functools.update_wrapper`` call (what ``functools.wraps`` does) while in use."""
    made: list[object] = []
    real = functools.update_wrapper

    def counting(wrapper: Any, wrapped: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(wrapped)
        return real(wrapper, wrapped, *args, **kwargs)

    monkeypatch.setattr(functools, "update_wrapper", counting)
    return made


def _double(x: int) -> int:
    return 2 * x


async def _adouble(x: int) -> int:
    return 2 * x


POLICIES: dict[str, Callable[[], Any]] = {
    "retry": lambda: Retry(max_attempts=3),
    "fallback": lambda: Fallback(strategy=FallbackStrategy.DEFAULT, default_value=0),
    "timeout": lambda: Timeout(timeout_seconds=5.0),
}


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_call_and_acall_build_no_wrapper(kind: str, wrappers_made: list[object]) -> None:
    policy = POLICIES[kind]()
    with FakeClock():
        for i in range(50):
            assert policy.call(_double, i) == 2 * i
            assert asyncio.run(policy.acall(_adouble, i)) == 2 * i
    assert wrappers_made == []
