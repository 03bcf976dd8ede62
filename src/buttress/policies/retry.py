"""Retry: call again after a failure, waiting longer each time.

Theory of operation
-------------------
A guarded call runs once. If it raises an exception the policy retries (``retry_on``, and not in
``fail_fast_on``), or returns a result ``retry_on_result`` rejects, the policy decides, in one place
(:meth:`Retry._next_delay`) shared by the sync and async shells, whether another attempt may run
and after how long:

* no more attempts (``max_attempts`` counts all attempts, ``max_retries`` those after the first);
* the wait: the backoff schedule, jittered, but never less than a ``retry_after`` the failure
  carries (a :class:`buttress.RejectedError`, or any exception with a numeric ``retry_after``);
* ``time_limit`` (seconds across all attempts and waits) and the deadline of an enclosing timeout:
  the policy never sleeps past either, and gives up when the wait plus the shortest attempt seen so
  far would not fit.

When it gives up, the last exception propagates unchanged (the same object; no wrapper), or, for a
rejected result, the last result is returned. Zero waits do not call ``sleep`` at all.

Cost: the success path is one ``try``/``except`` around the call; nothing is allocated, no clock is
read (unless ``time_limit`` is set) and no context variable is looked up until something fails.
"""

from __future__ import annotations

import functools
import inspect
import random as _random
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, TypeVar, cast, overload

from .. import events as _events
from .._config import callable_name, env_float, env_int, integer, optional_seconds
from .._deadline import DEADLINE
from ..clock import Clock, get_clock
from ..machines.backoff import (
    Backoff,
    ExponentialBackoff,
    FibonacciBackoff,
    FixedDelay,
    Jitter,
    LinearBackoff,
    combine_with_retry_after,
)

__all__ = [
    "Backoff",
    "ExponentialBackoff",
    "FibonacciBackoff",
    "FixedDelay",
    "LinearBackoff",
    "Retry",
    "RetryStrategy",
    "retry",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


class RetryStrategy(Enum):
    """Named backoff schedules; each maps to a :class:`Backoff` class."""

    EXPONENTIAL = "exponential"
    LINEAR = "linear"
    CONSTANT = "constant"
    FIBONACCI = "fibonacci"

    def backoff(self, *, base_delay: float, max_delay: float) -> Backoff:
        """The schedule object for this strategy."""
        cls = _STRATEGY_CLASSES[self]
        return cls(base_delay=base_delay, max_delay=max_delay)


_STRATEGY_CLASSES: dict[RetryStrategy, type[Backoff]] = {
    RetryStrategy.EXPONENTIAL: ExponentialBackoff,
    RetryStrategy.LINEAR: LinearBackoff,
    RetryStrategy.CONSTANT: FixedDelay,
    RetryStrategy.FIBONACCI: FibonacciBackoff,
}

_JITTER_NAMES = {"full": Jitter.FULL, "equal": Jitter.EQUAL, "none": Jitter.NONE}


def _jitter(value: object) -> Jitter:
    if isinstance(value, Jitter):
        return value
    if value is True:
        return Jitter.FULL
    if value is False or value is None:
        return Jitter.NONE
    if isinstance(value, str) and value.lower() in _JITTER_NAMES:
        return _JITTER_NAMES[value.lower()]
    raise ValueError(f"jitter must be True, False, 'full', 'equal' or 'none', got {value!r}")


def _exception_test(field: str, value: object) -> Callable[[BaseException], bool]:
    if isinstance(value, type) and issubclass(value, BaseException):
        exc_type = value
        return lambda exc: isinstance(exc, exc_type)
    if isinstance(value, tuple):
        for item in value:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise TypeError(f"{field} must hold exception types, got {item!r}")
        types = value
        return lambda exc: isinstance(exc, types)
    if callable(value):
        predicate = cast(Callable[[BaseException], object], value)
        return lambda exc: bool(predicate(exc))
    raise TypeError(
        f"{field} must be an exception type, a tuple of them, or a predicate, got {value!r}"
    )


def _retry_after(exc: BaseException | None) -> float | None:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


class Retry:
    """A retry policy; use as a decorator, or with :meth:`call` / :meth:`acall`.

    Args:
        max_attempts: all attempts including the first (default ``RETRY_MAX_ATTEMPTS`` or 4).
        max_retries: attempts after the first; give this or ``max_attempts``, not both.
        strategy: a :class:`RetryStrategy` or a :class:`Backoff` object (default exponential).
        base_delay: first wait in seconds (default ``RETRY_BASE_DELAY`` or 1.0).
        max_delay: cap on the backoff wait (default ``RETRY_MAX_DELAY`` or 60.0).
        jitter: ``True``/``"full"`` (default), ``"equal"``, or ``False``/``"none"``.
        retry_on: exception type(s) or predicate that are retried (default ``Exception``).
        fail_fast_on: exception type(s) never retried (checked first).
        retry_on_result: predicate on the return value; truthy means "try again".
        time_limit: seconds across all attempts and waits.
        on_retry: called with each :class:`buttress.events.RetryScheduled` event.
        name: name in events and logs (default: the guarded function's qualified name).
        clock: the clock to use (default: the process default at the time of use).
        random: a ``() -> float`` in [0, 1) for jitter (default ``random.random``).

    Raises:
        ValueError: an invalid setting, naming it.
    """

    __slots__ = (
        "_backoff",
        "_clock",
        "_fail_fast",
        "_jitter",
        "_on_retry",
        "_random",
        "_retry_on",
        "_retry_on_result",
        "max_attempts",
        "name",
        "time_limit",
    )

    def __init__(
        self,
        *,
        max_attempts: int | None = None,
        max_retries: int | None = None,
        strategy: RetryStrategy | Backoff | str | None = None,
        base_delay: float | None = None,
        max_delay: float | None = None,
        jitter: bool | str | Jitter = True,
        retry_on: ExceptionTypes | Callable[[BaseException], object] = Exception,
        fail_fast_on: ExceptionTypes = (),
        retry_on_result: Callable[[Any], object] | None = None,
        time_limit: float | None = None,
        on_retry: Callable[[_events.RetryScheduled], None] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        if max_attempts is not None and max_retries is not None:
            raise ValueError(
                "give max_attempts (all attempts) or max_retries (after the first), not both; "
                f"got max_attempts={max_attempts!r} and max_retries={max_retries!r}"
            )
        if max_retries is not None:
            self.max_attempts = integer("max_retries", max_retries, minimum=0) + 1
        elif max_attempts is not None:
            self.max_attempts = integer("max_attempts", max_attempts, minimum=1)
        else:
            self.max_attempts = env_int("RETRY_MAX_ATTEMPTS", 4, minimum=1)

        if isinstance(strategy, Backoff):
            if base_delay is not None or max_delay is not None:
                raise ValueError(
                    "base_delay and max_delay belong to the backoff object when strategy is one; "
                    f"got strategy={strategy!r} with base_delay={base_delay!r}, "
                    f"max_delay={max_delay!r}"
                )
            self._backoff = strategy
        else:
            if strategy is None:
                kind = RetryStrategy.EXPONENTIAL
            elif isinstance(strategy, RetryStrategy):
                kind = strategy
            elif isinstance(strategy, str) and strategy.lower() in {s.value for s in RetryStrategy}:
                kind = RetryStrategy(strategy.lower())
            else:
                raise ValueError(
                    "strategy must be a RetryStrategy (EXPONENTIAL, LINEAR, CONSTANT, FIBONACCI) "
                    f"or a Backoff object, got {strategy!r}"
                )
            base = env_float("RETRY_BASE_DELAY", 1.0) if base_delay is None else base_delay
            cap = env_float("RETRY_MAX_DELAY", 60.0) if max_delay is None else max_delay
            if max_delay is None and isinstance(base, int | float) and cap < base:
                cap = base  # an explicit base above the default cap raises the cap with it
            self._backoff = kind.backoff(base_delay=base, max_delay=cap)

        self._jitter = _jitter(jitter)
        self._fail_fast = _exception_test("fail_fast_on", fail_fast_on) if fail_fast_on else None
        self._retry_on = _exception_test("retry_on", retry_on)
        if retry_on_result is not None and not callable(retry_on_result):
            raise TypeError(f"retry_on_result must be a predicate, got {retry_on_result!r}")
        self._retry_on_result = retry_on_result
        self.time_limit = optional_seconds("time_limit", time_limit, allow_zero=False)
        if on_retry is not None and not callable(on_retry):
            raise TypeError(f"on_retry must be callable, got {on_retry!r}")
        self._on_retry = on_retry
        self.name = name
        self._clock = clock
        self._random = random or _random.random

    @property
    def backoff(self) -> Backoff:
        """The backoff schedule in use."""
        return self._backoff

    def __repr__(self) -> str:
        return (
            f"Retry(max_attempts={self.max_attempts}, backoff={self._backoff!r}, "
            f"jitter={self._jitter.value!r})"
        )

    # -- the one decision ---------------------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        if self._fail_fast is not None and self._fail_fast(exc):
            return False
        return self._retry_on(exc)

    def _next_delay(
        self,
        name: str,
        clock: Clock,
        attempt: int,
        exc: BaseException | None,
        result: object,
        start: float | None,
        shortest: float | None,
    ) -> float | None:
        """The wait before attempt ``attempt + 1``, or ``None`` when there is none."""
        if exc is not None and not self._retryable(exc):
            return None
        now = clock.now()
        _events.emit(
            _events.AttemptFailed(
                policy="retry", name=name, at=now, attempt=attempt, exception=exc, result=result
            )
        )
        if attempt >= self.max_attempts:
            return self._give_up(name, now, attempt, "attempts", exc)
        delay = combine_with_retry_after(
            self._backoff.delay(attempt), _retry_after(exc), self._jitter, self._random()
        )
        needed = delay + (shortest or 0.0)
        if (
            start is not None
            and self.time_limit is not None
            and now + needed > start + self.time_limit
        ):
            return self._give_up(name, now, attempt, "time_limit", exc)
        deadline = DEADLINE.get()
        if deadline is not None and now + needed >= deadline:
            return self._give_up(name, now, attempt, "deadline", exc)
        event = _events.RetryScheduled(
            policy="retry", name=name, at=now, attempt=attempt, delay=delay, exception=exc
        )
        _events.emit(event, cast(_events.Hook | None, self._on_retry))
        return delay

    @staticmethod
    def _give_up(
        name: str, now: float, attempt: int, reason: str, exc: BaseException | None
    ) -> None:
        _events.emit(
            _events.GaveUp(
                policy="retry", name=name, at=now, attempts=attempt, reason=reason, exception=exc
            )
        )
        return None

    def _timing(self, clock: Clock) -> bool:
        return self.time_limit is not None or DEADLINE.get() is not None

    # -- shells --------------------------------------------------------------------------------

    def _retry_sync(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: BaseException | None,
        result: object,
        start: float | None,
    ) -> Any:
        clock = self._clock or get_clock()
        attempt, shortest = 1, None
        while True:
            delay = self._next_delay(name, clock, attempt, exc, result, start, shortest)
            if delay is None:
                if exc is not None:
                    raise exc
                return result
            if delay > 0:
                clock.sleep(delay)
            attempt += 1
            timed = self._timing(clock)
            began = clock.now() if timed else 0.0
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                exc, result = error, None
            else:
                if self._retry_on_result is None or not self._retry_on_result(result):
                    return result
                exc = None
            if timed:
                took = clock.now() - began
                shortest = took if shortest is None else min(shortest, took)

    async def _retry_async(
        self,
        name: str,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: BaseException | None,
        result: object,
        start: float | None,
    ) -> Any:
        clock = self._clock or get_clock()
        attempt, shortest = 1, None
        while True:
            delay = self._next_delay(name, clock, attempt, exc, result, start, shortest)
            if delay is None:
                if exc is not None:
                    raise exc
                return result
            if delay > 0:
                await clock.asleep(delay)
            attempt += 1
            timed = self._timing(clock)
            began = clock.now() if timed else 0.0
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                exc, result = error, None
            else:
                if self._retry_on_result is None or not self._retry_on_result(result):
                    return result
                exc = None
            if timed:
                took = clock.now() - began
                shortest = took if shortest is None else min(shortest, took)

    # -- decoration ----------------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        if not callable(fn):
            raise TypeError(f"retry decorates a callable, got {fn!r}")
        name = self.name or callable_name(fn)
        check = self._retry_on_result
        timed = self.time_limit is not None
        if inspect.iscoroutinefunction(fn):
            slow_async = self._retry_async

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start = (self._clock or get_clock()).now() if timed else None
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    return await slow_async(name, fn, args, kwargs, exc, None, start)
                if check is not None and check(result):
                    return await slow_async(name, fn, args, kwargs, None, result, start)
                return result

            return cast(F, async_wrapper)

        slow = self._retry_sync
        if check is None and not timed:

            @functools.wraps(fn)
            def fast_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    return slow(name, fn, args, kwargs, exc, None, None)

            return cast(F, fast_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = (self._clock or get_clock()).now() if timed else None
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                return slow(name, fn, args, kwargs, exc, None, start)
            if check is not None and check(result):
                return slow(name, fn, args, kwargs, None, result, start)
            return result

        return cast(F, wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` under this policy."""
        return self(fn)(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await the async ``fn(*args, **kwargs)`` under this policy."""
        return await self(fn)(*args, **kwargs)


@overload
def retry(fn: F, /) -> F: ...
@overload
def retry(
    fn: None = None,
    /,
    *,
    max_attempts: int | None = ...,
    max_retries: int | None = ...,
    strategy: RetryStrategy | Backoff | str | None = ...,
    base_delay: float | None = ...,
    max_delay: float | None = ...,
    jitter: bool | str | Jitter = ...,
    retry_on: ExceptionTypes | Callable[[BaseException], object] = ...,
    fail_fast_on: ExceptionTypes = ...,
    retry_on_result: Callable[[Any], object] | None = ...,
    time_limit: float | None = ...,
    on_retry: Callable[[_events.RetryScheduled], None] | None = ...,
    name: str | None = ...,
    clock: Clock | None = ...,
    random: Callable[[], float] | None = ...,
) -> Retry: ...
def retry(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Retry decorator: ``@retry`` or ``@retry(max_retries=3, base_delay=1.0, ...)``.

    Takes the arguments of :class:`Retry`. Works on ``def`` and ``async def`` alike.
    """
    policy = Retry(**options)
    return policy if fn is None else policy(fn)
