"""Time, injectable.

Every policy reads time through a :class:`Clock`: ``now()`` is monotonic seconds (for durations
and deadlines), ``wall()`` is Unix time (for state shared across processes), ``sleep`` and
``asleep`` wait.

A policy built without ``clock=`` uses the *current default clock* at the moment it needs time, so
installing a :class:`buttress.testing.FakeClock` as the default (``with FakeClock():``) drives every
such policy, including ones decorated at import time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "get_clock", "monotonic_time", "set_clock", "wall_time"]

#: The system's Unix time and monotonic time: the only raw time reads in buttress; stores stamp
#: shared state with ``wall_time`` when no test clock is installed.
wall_time = time.time
monotonic_time = time.monotonic


@runtime_checkable
class Clock(Protocol):
    """What buttress needs of time."""

    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time``, ``time.sleep``, ``asyncio.sleep``."""

    __slots__ = ()

    now = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds if seconds > 0 else 0)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
_current: Clock = SYSTEM_CLOCK


def get_clock() -> Clock:
    """The process-wide default clock."""
    return _current


def set_clock(clock: Clock | None) -> Clock:
    """Install ``clock`` as the default (``None`` restores the system clock).

    Returns:
        The clock that was the default before.
    """
    global _current
    if clock is not None and not isinstance(clock, Clock):
        raise TypeError(f"clock must provide now(), wall(), sleep() and asleep(); got {clock!r}")
    previous = _current
    _current = clock if clock is not None else SYSTEM_CLOCK
    return previous
