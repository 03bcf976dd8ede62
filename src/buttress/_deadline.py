"""Deadlines that propagate through the call stack, each on its own clock.

A timeout turns its relative budget into an absolute deadline and stores it in a context variable
for the duration of the call, *together with the clock it was read from*: a time is meaningful
only on the scale it was read on. Anything below (a retry deciding whether to sleep, user code
passing a budget on as a header) reads it from here. Context variables follow ``asyncio`` tasks and
are copied into timeout worker threads.

Time scales. Two clocks share a scale when they are the same object, or when both are real (every
real clock reads ``time.monotonic()``, see :mod:`buttress.clock`). A new deadline keeps the earlier
of its own time and the nearest enclosing deadline on its scale, so nested timeouts on one scale
keep the earliest. A deadline on another scale cannot be compared and is neither merged nor
converted: it stays in force for the policies on *its* clock and is invisible to the others. So a
retry on the system clock inside a timeout on a :class:`~buttress.testing.FakeClock` is not bound
by the fake deadline (whose time only moves when something sleeps on the fake clock), and a fake
clock sleeping past a deadline stops only at deadlines on itself.

The context variable holds the innermost deadline; each links to the one it was set inside
(``outer``), so nesting across scales loses nothing. :func:`remaining` measures the innermost
deadline on its own clock.

A deadline is a plain tuple ``(at, clock, real, outer)`` rather than a named one: it is built on
every guarded call, and on the async timeout's success path a named tuple's constructor alone cost
a tenth of the budget that path has over a hand-written ``asyncio.timeout``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TypeAlias

from .clock import Clock, is_real

__all__ = ["Deadline", "current_deadline", "remaining"]

#: ``(at, clock, real, outer)``: the time ``at`` on ``clock.now()``'s scale, whether the clock is
#: real, and the deadline this one was set inside (or ``None``).
Deadline: TypeAlias = "tuple[float, Clock, bool, Deadline | None]"

#: The innermost deadline in force, or ``None``.
DEADLINE: ContextVar[Deadline | None] = ContextVar("buttress_deadline", default=None)


def current_deadline() -> Deadline | None:
    """The innermost deadline in force here, or ``None``."""
    return DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the innermost enclosing deadline (never negative), or ``None``.

    ``None`` means no timeout encloses the caller. The seconds are those of the deadline's clock.
    """
    deadline = DEADLINE.get()
    if deadline is None:
        return None
    left = deadline[0] - deadline[1].now()
    return left if left > 0.0 else 0.0


def deadline_on(clock: Clock, real: bool) -> float | None:
    """The time of the nearest deadline on ``clock``'s scale (``real``: whether it is real)."""
    deadline = DEADLINE.get()
    while deadline is not None:
        at, on, on_real, outer = deadline
        if on is clock or (real and on_real):
            return at
        deadline = outer
    return None


def within(clock: Clock, at: float) -> Deadline:
    """A deadline at ``at`` on ``clock``, or earlier if one enclosing it on its scale is earlier."""
    outer = DEADLINE.get()
    if outer is None:
        return (at, clock, is_real(clock), None)
    if outer[1] is clock and outer[0] <= at:
        return outer  # the common nesting: nothing new to record
    real = is_real(clock)
    earlier = deadline_on(clock, real)
    return (earlier if earlier is not None and earlier < at else at, clock, real, outer)
