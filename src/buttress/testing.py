"""Helpers for testing code that uses buttress, without real waiting.

:class:`FakeClock` is a clock whose time moves only when something sleeps on it or when the test
advances it. Installed as the default clock (``with FakeClock() as clock:``), it drives every policy
that was built without an explicit ``clock=``, including functions decorated at import time::

    from buttress.testing import FakeClock

    def test_gives_up_after_backoff():
        with FakeClock() as clock:
            with pytest.raises(ConnectionError):
                fetch_factor("steel")          # decorated with @retry(max_retries=3, base_delay=1)
        assert len(clock.sleeps) == 3          # the backoff happened, in virtual time

Sleeping on a fake clock past the deadline of an enclosing timeout on the same fake clock stops at
the deadline and raises :class:`buttress.OperationTimeout`, so time-outs are deterministic too. A
fake clock is virtual (``real = False``): deadlines on other clocks do not stop it, and policies on
other clocks do not read its deadlines (see :mod:`buttress._deadline`).
"""

from __future__ import annotations

import asyncio
import threading

from ._deadline import deadline_on
from .clock import Clock, set_clock
from .errors import OperationTimeout

__all__ = ["FakeClock"]


class FakeClock:
    """A virtual clock: ``sleep`` advances time at once and is recorded in :attr:`sleeps`.

    Args:
        start: the initial monotonic reading.
        wall_start: the initial wall-clock reading (Unix seconds).
    """

    real = False

    def __init__(self, start: float = 0.0, *, wall_start: float = 1_750_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        self._previous: list[Clock] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` without recording a sleep; returns the new reading."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds
            return self._now

    def _sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        deadline = deadline_on(self, False)
        with self._lock:
            self.sleeps.append(seconds)
            target = self._now + seconds
            if deadline is not None and target > deadline:
                self._now = max(self._now, deadline)
                raise OperationTimeout("deadline reached while sleeping on the fake clock")
            self._now = target

    def sleep(self, seconds: float) -> None:
        self._sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        self._sleep(seconds)
        await asyncio.sleep(0)

    @property
    def total_slept(self) -> float:
        """The sum of every recorded sleep."""
        return sum(self.sleeps)

    def __enter__(self) -> FakeClock:
        self._previous.append(set_clock(self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        set_clock(self._previous.pop())

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleeps={len(self.sleeps)})"
