"""Breaker steps spelled as in the machine's vocabulary, for store tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from buttress.backends.base import BreakerOp, BreakerReply, BreakerStep
from buttress.machines.breaker import CircuitState


def step(
    op: str,
    *,
    probe: bool = False,
    ticket: int = 0,
    failed: bool = False,
    target: CircuitState | None = None,
    reason: str = "",
) -> BreakerStep:
    """The :class:`BreakerStep` for ``op`` (``"acquire"``, ``"record"``, ...)."""
    if op == "force" and isinstance(target, CircuitState):
        return BreakerStep.force(target, reason)
    return BreakerStep(
        BreakerOp(op), probe=probe, ticket=ticket, failed=failed, target=target, reason=reason
    )


def stepper(store: Any) -> Callable[..., BreakerReply]:
    """``step(name, settings, op, now, **fields)`` on ``store`` (the old positional spelling)."""

    def run(name: str, settings: Any, op: str, now: float | None = None, **fields: Any) -> Any:
        return store.breaker(name, settings, step(op, **fields), now)

    return run
