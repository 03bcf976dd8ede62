"""Time, injectable.

Every policy reads time through a :class:`Clock`: ``now()`` is monotonic seconds (for durations
and deadlines), ``wall()`` is Unix time (for state shared across processes), ``sleep`` and
``asleep`` wait.

A policy built without ``clock=`` uses the *current default clock* at the moment it needs time, so
installing a :class:`buttress.testing.FakeClock` as the default (``with FakeClock():``) drives every
such policy, including ones decorated at import time.

Whether a clock is real is a property of the clock, :attr:`Clock.real`, never a question of which
object it is. A real clock promises that ``now()`` is this process's ``time.monotonic()`` and that
its waits take that much real time; every real clock therefore shares one time scale, and a policy
may enforce it with real means (a worker thread, ``asyncio.timeout``) and compare its readings with
those of any other real clock. A clock that does not say it is real (``real`` missing or false) is
virtual: its time moves only when something sleeps on it or a test moves it, and its readings are
comparable only with its own. Clocks written before ``real`` existed are accepted (by
:func:`set_clock` and every ``clock=``) and are virtual; :func:`is_real` is the test that allows for
them (``isinstance(clock, Clock)``, which now looks for ``real`` too, does not).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast, runtime_checkable

__all__ = [
    "Clock",
    "SystemClock",
    "get_clock",
    "is_real",
    "monotonic_time",
    "set_clock",
    "wall_time",
]

#: The system's Unix time and monotonic time: the only raw time reads in buttress; stores stamp
#: shared state with ``wall_time`` when no test clock is installed.
wall_time = time.time
monotonic_time = time.monotonic


@runtime_checkable
class Clock(Protocol):
    """What buttress needs of time."""

    #: True only for a clock whose ``now()`` is ``time.monotonic()`` and whose waits are real.
    real: bool

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
    """The real clock: ``time.monotonic``, ``time.time``, ``time.sleep``, ``asyncio.sleep``.

    Every instance reads the same time; the module keeps one as the default.
    """

    __slots__ = ()

    real = True
    now = staticmethod(monotonic_time)
    wall = staticmethod(wall_time)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds if seconds > 0 else 0)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
_current: Clock = SYSTEM_CLOCK
_METHODS = ("now", "wall", "sleep", "asleep")


def is_real(clock: object) -> bool:
    """Whether ``clock`` says it is real time (a clock without ``real`` is virtual)."""
    return getattr(clock, "real", False) is True


def get_clock() -> Clock:
    """The process-wide default clock."""
    return _current


def checked_clock(clock: object, field: str = "clock") -> Clock | None:
    """``clock`` as given, once it is known to be usable as a :class:`Clock` (``None`` passes).

    Every ``clock=`` argument goes through here when it is given, so a wrong object is refused
    where it is passed in, not at the first call that reads the time. A clock without ``real`` is
    accepted and treated as virtual (see the module notes).

    Raises:
        TypeError: ``clock`` lacks one of ``now``, ``wall``, ``sleep``, ``asleep``, naming
            ``field`` and what is missing.
    """
    if clock is None:
        return None
    missing = [name for name in _METHODS if not callable(getattr(clock, name, None))]
    if missing:
        raise TypeError(
            f"{field} must provide now(), wall(), sleep() and asleep(); "
            f"{clock!r} lacks {', '.join(missing)}"
        )
    return cast(Clock, clock)


def set_clock(clock: Clock | None) -> Clock:
    """Install ``clock`` as the default (``None`` restores the system clock).

    A clock without a ``real`` attribute is accepted and treated as virtual (see the module notes).

    Returns:
        The clock that was the default before.

    Raises:
        TypeError: ``clock`` lacks one of ``now``, ``wall``, ``sleep``, ``asleep``.
    """
    global _current
    checked_clock(clock)
    previous = _current
    _current = clock if clock is not None else SYSTEM_CLOCK
    return previous
