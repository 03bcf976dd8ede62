"""Adaptive concurrency: a bulkhead whose limit follows what the dependency can take.

Theory of operation
-------------------
:class:`AdaptiveConcurrency` is a :class:`buttress.Bulkhead` (same admission, first-come-first-
served waiting up to ``max_wait``, same :class:`buttress.BulkheadFull` refusal, threads and tasks
alike) whose limit is set by a limit algorithm from :mod:`buttress.machines.limit` instead of by
hand. Every call it admits is timed on the policy clock and reported to the algorithm with the
number of calls in flight when it started; the algorithm answers, once per window, with a new
limit:

* ``"gradient2"`` (default): latency-driven. The limit grows while the round trip stays near the
  dependency's uncontended latency and is cut to about the dependency's capacity as soon as calls
  queue inside it (see the machine's notes for how it avoids the published algorithms' faults:
  unbounded growth under modest overload, growth while the application is the limit, shedding
  load to re-measure).
* ``"aimd"``: one more per clean window, times ``backoff`` on a drop: a dropped call, a round trip
  over ``timeout`` if set, or a window's latency over ``tolerance`` times the uncontended baseline
  (``tolerance=None`` for loss only).

A *drop* is a call that raised one of ``drops`` (default: ``TimeoutError``, which includes
:class:`buttress.OperationTimeout`) or a refusal of the dependency (:class:`buttress.RejectedError`
from a policy inside). Any other exception is not a measurement: the call is not sampled.

Lowering the limit never interrupts a running call; waiters are admitted when it grows.
:meth:`scale_down` lets an outer protocol impose a share of whatever the algorithm finds (the
algorithm keeps learning underneath); :meth:`restore` lifts it.

Every change is a :class:`buttress.events.LimitChanged` event (cuts at INFO, growth at DEBUG on the
``buttress.adaptive`` logger) and the current limit is published as the ``"adaptive_limit"``
reading, which Prometheus exports as ``buttress_adaptive_limit{name=...}``; the reason of the last
change as the ``"adaptive_limit_reason"`` reading, ``buttress_adaptive_limit_reason{name=...,
reason=...} 1``.

The algorithm runs under the bulkhead's lock; it is arithmetic on a handful of numbers per call.
A call that returns costs a :class:`buttress.Bulkhead` call plus two clock reads and the sample,
handed over under the lock the release takes anyway: nothing else is built or looked up per call.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from types import TracebackType
from typing import Any, TypeVar, cast

from .. import clock as _clock
from .. import events as _events
from .._callables import guarded_kind, refused_awaitable, resolved
from .._config import integer, number
from ..clock import Clock, checked_clock
from ..errors import RejectedError
from ..machines.limit import AIMD, Gradient2, LimitAlgorithm
from .bulkhead import Bulkhead

__all__ = ["AdaptiveConcurrency", "adaptive_concurrency"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_ALGORITHMS: dict[str, type[LimitAlgorithm]] = {"gradient2": Gradient2, "aimd": AIMD}


class AdaptiveConcurrency(Bulkhead):
    """A concurrency limit found by measuring the dependency; use like :class:`Bulkhead`.

    Args:
        algorithm: ``"gradient2"`` (default), ``"aimd"``, or a
            :class:`buttress.machines.limit.LimitAlgorithm` instance (then the limits and
            ``settings`` come from it and must not be given here).
        initial_limit: the limit before anything is measured (default 20).
        min_limit: never below this (default 1).
        max_limit: never above this (default 1000).
        max_wait: seconds a call may wait for a slot (default 0: refuse at once).
        drops: exception types that count as a drop (default ``(TimeoutError,)``; a
            :class:`buttress.RejectedError` always counts).
        name: name in events, logs, errors and metrics.
        clock: the clock that times calls (default: the process default at the time of use).
        **settings: passed to the algorithm (``window``, ``min_samples``, ``tolerance``,
            ``backoff``, ``timeout``, ...).

    Raises:
        ValueError, TypeError: a bad setting, naming it.
    """

    _policy = "adaptive"
    _label = "adaptive concurrency limit"

    def __init__(
        self,
        algorithm: str | LimitAlgorithm = "gradient2",
        *,
        initial_limit: int | None = None,
        min_limit: int | None = None,
        max_limit: int | None = None,
        max_wait: float = 0.0,
        drops: tuple[type[BaseException], ...] = (TimeoutError,),
        name: str | None = None,
        clock: Clock | None = None,
        **settings: Any,
    ) -> None:
        self._machine = _machine(algorithm, initial_limit, min_limit, max_limit, settings)
        self._sample = self._machine.sample
        if not isinstance(drops, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in drops
        ):
            raise TypeError(f"drops must be a tuple of exception types, got {drops!r}")
        self._drops = (*drops, RejectedError)
        self._clock = checked_clock(clock)
        self._scale = 1.0
        self._started: contextvars.ContextVar[tuple[float, int] | None] = contextvars.ContextVar(
            "buttress_adaptive_start", default=None
        )
        super().__init__(self._machine.limit, max_wait, name=name)
        _LIVE.add(self)

    @property
    def limit(self) -> int:
        """The limit now in force (the algorithm's, times any :meth:`scale_down`)."""
        return self._limit

    @property
    def reason(self) -> str:
        """Why the limit last changed."""
        return self._reason

    @property
    def algorithm(self) -> LimitAlgorithm:
        return self._machine

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency(name={self._name!r}, algorithm={self._machine.name!r}, "
            f"limit={self._limit}, active={self._active}, waiting={len(self._waiters)})"
        )

    # -- limit changes ---------------------------------------------------------------------

    _reason = "initial"

    def _now(self) -> float:
        return (self._clock or _clock._current).now()

    def _effective(self) -> int:
        machine = self._machine
        return max(machine.min_limit, int(machine.limit * self._scale))

    def _apply(self, reason: str) -> tuple[int, int, str] | None:
        """Bring the bulkhead's limit to the algorithm's (lock held); the change, if any."""
        old, new = self._limit, self._effective()
        self._reason = reason
        if new == old:
            return None
        self._limit = new
        self._describe()
        return old, new, reason

    def _announce(self, change: tuple[int, int, str] | None, now: float) -> None:
        if change is None:
            return
        old, new, reason = change
        # Cuts are logged at INFO, growth (every window) at DEBUG: ask at the level it will have.
        if _events.wanted(self._policy, logging.DEBUG if new > old else logging.INFO):
            _events.emit(
                _events.LimitChanged(
                    policy=self._policy, name=self._name, at=now, old=old, new=new, reason=reason
                )
            )

    def set_limit(self, max_concurrent: int) -> None:
        """Put the algorithm's limit at ``max_concurrent``; it adapts on from there.

        ``max_concurrent`` is an integer from ``min_limit`` to ``max_limit``, as for
        :meth:`Bulkhead.set_limit`. One outside those bounds is refused, not clamped: the bounds
        are the envelope the limiter was built to stay in, so asking for 5000 of a limiter capped
        at 1000 is a mistake (the wrong limiter, or a wrong number) that a quiet 1000 would hide.

        Raises:
            TypeError: ``max_concurrent`` is not an integer.
            ValueError: it is outside ``min_limit`` .. ``max_limit``.
        """
        limit = integer("max_concurrent", max_concurrent, minimum=1)
        machine = self._machine
        if not machine.min_limit <= limit <= machine.max_limit:
            raise ValueError(
                f"max_concurrent must be from min_limit {machine.min_limit} to max_limit "
                f"{machine.max_limit} of adaptive concurrency limit {self._name!r}, got {limit!r}"
            )
        self._adjust(lambda now: machine.set(now, limit), "set")

    def scale_down(self, factor: float) -> None:
        """Hold the limit at ``factor`` (0 < factor <= 1) of what the algorithm finds, until
        :meth:`restore`; successive calls multiply. Never below ``min_limit``."""
        factor = number("factor", factor, minimum=0.0, maximum=1.0, exclusive_minimum=True)

        def scale(now: float) -> None:
            self._scale *= factor

        self._adjust(scale, "scaled_down")

    def restore(self) -> None:
        """Lift any :meth:`scale_down`: the algorithm's limit is in force again."""

        def unscale(now: float) -> None:
            self._scale = 1.0

        self._adjust(unscale, "restored")

    @property
    def scale(self) -> float:
        """The share imposed by :meth:`scale_down` (1.0 when none)."""
        return self._scale

    def _adjust(self, step: Callable[[float], object], reason: str) -> None:
        now = self._now()
        with self._lock:
            step(now)
            change = self._apply(reason)
            woken = self._hand_over()
        for waiter in woken:
            waiter.wake()
        self._announce(change, now)

    # -- measuring -------------------------------------------------------------------------
    # The success path is the hot one: it reads the clock twice and takes the lock once (to give
    # the slot back and hand the sample to the algorithm, which must see samples in order).

    def _begin(self) -> tuple[float, int]:
        """Right after admission: when it started and how many were in flight (itself too)."""
        return (self._clock or _clock._current).now(), self._active

    def _done(self, start: float, inflight: int, dropped: bool = False) -> None:
        """A call that returned (or was dropped): give the slot back and report it."""
        now = (self._clock or _clock._current).now()
        with self._lock:
            self._active -= 1
            moved = self._sample(now, now - start, inflight, dropped)
            change = None if moved is None else self._apply(moved.reason)
            woken = self._hand_over() if self._waiters else None
        if woken:
            for waiter in woken:
                waiter.wake()
        if change is not None:
            self._announce(change, now)

    def _end(self, start: float, inflight: int, error: BaseException) -> None:
        """A call that raised: a drop is reported, anything else is not a measurement."""
        if isinstance(error, self._drops):
            self._done(start, inflight, True)
        else:
            super().release()

    def release(self) -> None:
        """Give a slot back without a measurement (for a slot taken with :meth:`acquire`)."""
        super().release()

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        acquire, done, end = self.acquire, self._done, self._end
        given = self._clock
        if guarded_kind(self._label, fn):
            aacquire = self.aacquire

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                await aacquire()
                start, inflight = (given or _clock._current).now(), self._active
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    end(start, inflight, exc)
                    raise
                done(start, inflight)
                return result

            return cast(F, async_wrapper)

        label, release = self._label, super().release

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            acquire()
            start, inflight = (given or _clock._current).now(), self._active
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                end(start, inflight, exc)
                raise
            if hasattr(result, "__await__"):  # its work would run outside the limit, unmeasured
                release()
                raise refused_awaitable(label, fn, result)
            done(start, inflight)
            return result

        return cast(F, wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` inside the limit, measured.

        Raises:
            TypeError: ``fn`` returned an awaitable (use :meth:`acall`).
        """
        self.acquire()
        start, inflight = self._begin()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._end(start, inflight, exc)
            raise
        if hasattr(result, "__await__"):  # its work would run outside the limit, unmeasured
            super().release()
            raise refused_awaitable(self._label, fn, result)
        self._done(start, inflight)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await what ``fn(*args, **kwargs)`` returns (a plain value as it is), inside the limit,
        measured."""
        await self.aacquire()
        start, inflight = self._begin()
        try:
            result: T = await resolved(fn(*args, **kwargs))
        except BaseException as exc:
            self._end(start, inflight, exc)
            raise
        self._done(start, inflight)
        return result

    # ``with`` / ``async with``: the start is kept per thread and per task (a context variable),
    # so one limiter may be entered by many at once.

    def __enter__(self) -> AdaptiveConcurrency:
        self.acquire()
        self._started.set(self._begin())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> AdaptiveConcurrency:
        await self.aacquire()
        self._started.set(self._begin())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def _exit(self, exc: BaseException | None) -> None:
        started = self._started.get()
        self._started.set(None)
        if started is None:
            super().release()
        elif exc is None:
            self._done(*started)
        else:
            self._end(*started, exc)


# Live limiters, for the ``adaptive_limit`` reading; held weakly, so a limiter that is dropped
# leaves the metrics with it.
_LIVE: weakref.WeakSet[AdaptiveConcurrency] = weakref.WeakSet()


def _limit_readings() -> Iterable[tuple[Hashable, float]]:
    return [(limiter.name, float(limiter.limit)) for limiter in list(_LIVE)]


_events.add_reading("adaptive_limit", _limit_readings)


def _reason_readings() -> Iterable[tuple[Hashable, float]]:
    return [((limiter.name, limiter.reason), 1.0) for limiter in list(_LIVE)]


_events.add_reading("adaptive_limit_reason", _reason_readings)


def _machine(
    algorithm: str | LimitAlgorithm,
    initial_limit: int | None,
    min_limit: int | None,
    max_limit: int | None,
    settings: dict[str, Any],
) -> LimitAlgorithm:
    if isinstance(algorithm, LimitAlgorithm):
        given = [
            field
            for field, value in (
                ("initial_limit", initial_limit),
                ("min_limit", min_limit),
                ("max_limit", max_limit),
            )
            if value is not None
        ] + sorted(settings)
        if given:
            raise TypeError(
                f"{', '.join(given)} cannot be given with an algorithm instance "
                f"(set them on the {type(algorithm).__name__})"
            )
        return algorithm
    if not isinstance(algorithm, str) or algorithm not in _ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {', '.join(map(repr, _ALGORITHMS))} or a LimitAlgorithm, "
            f"got {algorithm!r}"
        )
    kind = _ALGORITHMS[algorithm]
    low = 1 if min_limit is None else min_limit
    high = 1000 if max_limit is None else max_limit
    initial = initial_limit
    if initial is None:
        # The default initial limit is pulled into the bounds rather than refused.
        initial = min(max(20, low), high) if isinstance(low, int) and isinstance(high, int) else 20
    limits = {"initial_limit": initial, "min_limit": low, "max_limit": high}
    try:
        return kind(**limits, **settings)
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unknown:
            raise TypeError(f"{algorithm} does not take {unknown.group(1)!r}") from None
        raise


def adaptive_concurrency(
    algorithm: str | LimitAlgorithm = "gradient2", **options: Any
) -> AdaptiveConcurrency:
    """Decorator: ``@adaptive_concurrency("aimd", max_limit=50)``; see
    :class:`AdaptiveConcurrency`."""
    return AdaptiveConcurrency(algorithm, **options)
