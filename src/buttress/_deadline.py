"""Deadlines that propagate through the call stack.

A timeout turns its relative budget into an absolute deadline on the clock's monotonic scale and
stores it in a context variable; nested timeouts keep the earliest. Anything below (a retry deciding
whether to sleep, user code passing a budget on as a header) reads it with :func:`remaining`.
Context variables follow ``asyncio`` tasks and are copied into timeout worker threads.
"""

from __future__ import annotations

from contextvars import ContextVar

from .clock import get_clock

__all__ = ["current_deadline", "remaining"]

#: Absolute deadline on the default clock's ``now()`` scale, or ``None``.
DEADLINE: ContextVar[float | None] = ContextVar("buttress_deadline", default=None)


def current_deadline() -> float | None:
    """The absolute deadline (default clock's ``now()`` scale) in force here, or ``None``."""
    return DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the innermost enclosing deadline (never negative), or ``None``.

    ``None`` means no timeout encloses the caller.
    """
    deadline = DEADLINE.get()
    if deadline is None:
        return None
    left = deadline - get_clock().now()
    return left if left > 0.0 else 0.0
