"""Retry: call again after a failure, waiting longer each time.

Theory of operation
-------------------
A guarded call runs once. If it raises an exception the policy retries (``retry_on``, and not in
``fail_fast_on``), or returns a result ``retry_on_result`` rejects, the call enters the one
decision loop (:class:`_Attempts`), shared by the sync and async shells, which only wait and call.
After each attempt it decides whether another may run and after how long:

* no more attempts (``max_attempts`` counts all attempts, ``max_retries`` those after the first);
* the wait: the backoff schedule, jittered, but never less than a ``retry_after`` the failure
  carries (a :class:`buttress.RejectedError`, or any exception with a numeric ``retry_after``);
* ``time_limit`` (seconds across all attempts and waits) and the deadline of an enclosing timeout
  on the policy's time scale (:mod:`buttress._deadline`): the policy never sleeps past either, and
  gives up when the wait plus the shortest attempt seen so far would not fit.

When it gives up, the last exception propagates unchanged (the same object; no wrapper), or, for a
rejected result, the last result is returned. Zero waits do not call ``sleep`` at all.

Async is decided at decoration when the callable says so (``async def``, a partial of one, an
object with ``async def __call__``) and otherwise by what the call returns: a plain function that
returns an awaitable gets a coroutine back that awaits it, and every retry, under the policy.
``acall`` always awaits what the call returns. Generator functions are refused at decoration.

Cost: the success path is one ``try``/``except`` around the call and one attribute test of the
result; nothing is allocated, no clock is read (unless ``time_limit`` is set) and no context
variable is looked up until something fails. ``call`` is that same path with the function as an
argument: nothing is built per call.
"""

from __future__ import annotations

import functools
import logging
import os
import random as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, cast, overload

from .. import events as _events
from .._callables import (
    Args,
    F,
    Fn,
    Kwargs,
    P,
    RepeatedWarnings,
    T,
    guard_sync,
    guarded_kind,
    resolved,
)
from .._config import (
    callable_name,
    env_float,
    env_int,
    integer,
    optional_nonblank,
    optional_seconds,
    seconds,
)
from .._deadline import deadline_on
from ..clock import Clock, checked_clock, get_clock, is_real
from ..machines.backoff import (
    Backoff,
    ExponentialBackoff,
    FibonacciBackoff,
    FixedDelay,
    Jitter,
    LinearBackoff,
    combine_with_retry_after,
)

# The backoff schedules it takes are exported from buttress.machines.backoff (and the top level).
__all__ = ["Retry", "RetryStrategy", "retry"]


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
        return value.__instancecheck__
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


def _retry_test(retry_on: object, fail_fast_on: object) -> Callable[[BaseException], bool]:
    """One test of whether an exception is retried: not ``fail_fast_on``, and ``retry_on``."""
    retried = _exception_test("retry_on", retry_on)
    if not fail_fast_on:
        return retried
    refused = _exception_test("fail_fast_on", fail_fast_on)
    return lambda exc: not refused(exc) and retried(exc)


def _retry_after(exc: BaseException | None) -> float | None:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _delay(field: str, given: object, variable: str, default: float) -> tuple[float, str, bool]:
    """A backoff delay in seconds, where it came from (for an error that must say which), and
    whether anybody chose it (an argument or the environment) rather than the default."""
    if given is not None:
        return seconds(field, given), f"{field}={given!r}", True
    raw = os.environ.get(variable, "").strip()
    value = env_float(variable, default)
    if raw:
        return value, f"environment variable {variable}={raw!r}", True
    return value, f"the default {field} {value!r} ({variable} unset)", False


def _delays(base_delay: object, max_delay: object) -> tuple[float, float]:
    """The schedule's ``(base_delay, max_delay)`` from the arguments, else the environment.

    ``max_delay`` below ``base_delay`` is refused, naming where each came from, with one
    exception: when no cap was given at all (neither ``max_delay=`` nor ``RETRY_MAX_DELAY``), an
    explicit ``base_delay=`` above the default cap of 60 s is the cap too (``Retry(base_delay=120)``
    waits 120 s before every retry), as a cap nobody chose should not refuse a base somebody did.
    """
    base, base_from, _ = _delay("base_delay", base_delay, "RETRY_BASE_DELAY", 1.0)
    cap, cap_from, cap_chosen = _delay("max_delay", max_delay, "RETRY_MAX_DELAY", 60.0)
    if cap >= base:
        return base, cap
    if base_delay is not None and not cap_chosen:
        return base, base
    raise ValueError(
        f"max_delay must be >= base_delay (the longest wait cannot be shorter than the first), "
        f"but {cap_from} is below {base_from}"
    )


class Retry:
    """A retry policy; use as a decorator, or with :meth:`call` / :meth:`acall`.

    Args:
        max_attempts: all attempts including the first (default ``RETRY_MAX_ATTEMPTS`` or 4).
        max_retries: attempts after the first; give this or ``max_attempts``, not both.
        strategy: a :class:`RetryStrategy` or a :class:`Backoff` object (default exponential).
        base_delay: first wait in seconds (default ``RETRY_BASE_DELAY`` or 1.0).
        max_delay: cap on the backoff wait (default ``RETRY_MAX_DELAY`` or 60.0); below
            ``base_delay`` it is refused, wherever either came from. With no cap given at all,
            an explicit ``base_delay`` above 60 is the cap too.
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
        "_jitter",
        "_no_wait",
        "_on_retry",
        "_random",
        "_retry_on_result",
        "_retryable",
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
            base, cap = _delays(base_delay, max_delay)
            self._backoff = kind.backoff(base_delay=base, max_delay=cap)

        self._jitter = _jitter(jitter)
        # A schedule of the library's own with a zero base never waits (a retry_after still does).
        backoff = self._backoff
        self._no_wait = backoff.base_delay == 0 and type(backoff).delay is Backoff.delay
        self._retryable = _retry_test(retry_on, fail_fast_on)
        if retry_on_result is not None and not callable(retry_on_result):
            raise TypeError(f"retry_on_result must be a predicate, got {retry_on_result!r}")
        self._retry_on_result = retry_on_result
        self.time_limit = optional_seconds("time_limit", time_limit, allow_zero=False)
        if on_retry is not None and not callable(on_retry):
            raise TypeError(f"on_retry must be callable, got {on_retry!r}")
        self._on_retry = on_retry
        self.name = optional_nonblank("name", name)
        self._clock = checked_clock(clock)
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

    # -- the first attempt: the fast path -------------------------------------------------------

    def _started(self) -> float:
        """The clock's reading as a call starts (read only when a time limit needs it)."""
        return (self._clock or get_clock()).now()

    def _rejects(self, result: object) -> bool:
        return self._retry_on_result is not None and bool(self._retry_on_result(result))

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` under this policy.

        If ``fn`` returns an awaitable, the result is a coroutine that awaits it, and the retries,
        under this policy.
        """
        start = None if self.time_limit is None else self._started()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            return cast(T, self._recover(_Attempts(self, fn, args, kwargs, start), exc, None))
        if hasattr(result, "__await__"):  # what is_awaitable() tests, inlined
            return cast(T, self._settle(fn, args, kwargs, result, start))
        check = self._retry_on_result
        if check is not None and check(result):
            return cast(T, self._recover(_Attempts(self, fn, args, kwargs, start), None, result))
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await what ``fn(*args, **kwargs)`` returns, under this policy."""
        start = None if self.time_limit is None else self._started()
        try:
            pending = fn(*args, **kwargs)
        except Exception as exc:
            return cast(
                T, await self._arecover(_Attempts(self, fn, args, kwargs, start), exc, None)
            )
        return cast(T, await self._settle(fn, args, kwargs, pending, start))

    async def _settle(
        self,
        fn: Fn,
        args: Args,
        kwargs: Kwargs,
        pending: Any,
        start: float | None = None,
    ) -> Any:
        """Await the first attempt's ``pending`` outcome, then recover as an async call."""
        try:
            result = await pending if hasattr(pending, "__await__") else pending
        except Exception as exc:
            return await self._arecover(_Attempts(self, fn, args, kwargs, start), exc, None)
        if self._rejects(result):
            return await self._arecover(_Attempts(self, fn, args, kwargs, start), None, result)
        return result

    def _failed(self, fn: Fn, args: Args, kwargs: Kwargs, exc: Exception) -> Any:
        return self._recover(_Attempts(self, fn, args, kwargs, None), exc, None)

    # -- after a failure: one decision loop, two thin shells ------------------------------------

    def _recover(self, attempts: _Attempts, exc: BaseException | None, result: object) -> Any:
        fn, args, kwargs = attempts.fn, attempts.args, attempts.kwargs
        while attempts.again(exc, result):
            if attempts.delay > 0:
                attempts.clock.sleep(attempts.delay)
            attempts.begin()
            try:
                result, exc = fn(*args, **kwargs), None
            except Exception as error:
                result, exc = None, error
            else:
                if hasattr(result, "__await__"):  # from here on an async call, as in call()
                    return self._awaiting(attempts, result)
        return attempts.outcome(exc, result)

    async def _awaiting(self, attempts: _Attempts, pending: Any) -> Any:
        """Await a retried attempt's awaitable, then go on as an async call."""
        try:
            result, exc = await pending, None
        except Exception as error:
            result, exc = None, error
        return await self._arecover(attempts, exc, result)

    async def _arecover(
        self, attempts: _Attempts, exc: BaseException | None, result: object
    ) -> Any:
        fn, args, kwargs = attempts.fn, attempts.args, attempts.kwargs
        while attempts.again(exc, result):
            if attempts.delay > 0:
                await attempts.clock.asleep(attempts.delay)
            attempts.begin()
            try:
                result, exc = await resolved(fn(*args, **kwargs)), None
            except Exception as error:
                result, exc = None, error
        return attempts.outcome(exc, result)

    # -- decoration ----------------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``; see :meth:`call` for awaitables)."""
        if guarded_kind("retry", fn):
            return cast(F, self._decorate_async(fn))
        if self._retry_on_result is None and self.time_limit is None:
            return cast(F, guard_sync(fn, Exception, self._failed, self._settle))
        call = self.call

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return call(fn, *args, **kwargs)

        return cast(F, wrapper)

    def _decorate_async(self, fn: Fn) -> Fn:
        started, check, arecover = self._started, self._retry_on_result, self._arecover
        timed = self.time_limit is not None

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            start = started() if timed else None
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                return await arecover(_Attempts(self, fn, args, kwargs, start), exc, None)
            if check is not None and check(result):
                return await arecover(_Attempts(self, fn, args, kwargs, start), None, result)
            return result

        return async_wrapper


@dataclass(frozen=True, slots=True, kw_only=True)
class _GaveUpDetail(_events.GaveUp):
    """A give-up told per call at DEBUG; the WARNING goes through the name's :class:`Repeats`."""

    level: ClassVar[int] = logging.DEBUG


#: Give-ups: per operation, the first logged at WARNING, then one summary per interval.
_GIVEN_UP = RepeatedWarnings("retry", "calls to {name!r} failed after retrying")
_log = logging.getLogger("buttress.retry")


class _Attempts:
    """One failing call's way through its retries: every decision, none of the waiting.

    The shells call :meth:`again` after each attempt; when it says yes they wait :attr:`delay` on
    :attr:`clock`, call :meth:`begin`, and run the next attempt. :meth:`outcome` ends the call.
    Events are built only when something reads them (:func:`buttress.events.wanted`).
    """

    __slots__ = (
        "args",
        "attempt",
        "began",
        "clock",
        "deadline",
        "delay",
        "fn",
        "kwargs",
        "last",
        "policy",
        "real",
        "reason",
        "shortest",
        "start",
        "telling",
        "timed",
    )

    def __init__(
        self,
        policy: Retry,
        fn: Fn,
        args: Args,
        kwargs: Kwargs,
        start: float | None,
    ) -> None:
        self.policy = policy
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.start = start
        self.clock = policy._clock or get_clock()
        self.attempt = 0
        self.began: float | None = None  # when the attempt running now began, if timed
        self.shortest: float | None = None
        # What events.wanted("retry") answers, without its two calls on a path that fails fast.
        self.telling = bool(_events.HOOKS) or _log.isEnabledFor(logging.DEBUG)
        # The deadline in force cannot change while this call runs: look it up once.
        self.real = is_real(self.clock)
        self.deadline = deadline_on(self.clock, self.real)
        self.timed = policy.time_limit is not None or self.deadline is not None
        self.delay: float  # set by again() before the shells read it
        self.reason: str  # set, with last, on giving up
        self.last: BaseException | None

    @property
    def name(self) -> str:
        return self.policy.name or callable_name(self.fn)

    def begin(self) -> None:
        if self.timed:
            self.began = self.clock.now()

    def again(self, exc: BaseException | None, result: object) -> bool:
        """Whether to try again after the attempt that just ended (``exc`` or ``result``)."""
        self.attempt += 1
        policy = self.policy
        now = self.clock.now() if self.timed or self.telling else 0.0
        if self.began is not None:
            took = now - self.began
            self.shortest = took if self.shortest is None else min(self.shortest, took)
        if exc is None:
            if not policy._rejects(result):
                return False
        elif not policy._retryable(exc):
            return False
        if self.telling:
            self._tell(
                _events.AttemptFailed, now, attempt=self.attempt, exception=exc, result=result
            )
        if self.attempt >= policy.max_attempts:
            return self._give_up(now, "attempts", exc)
        after = getattr(exc, "retry_after", None)  # most failures carry none: skip the parsing
        if after is None and policy._no_wait:
            delay = 0.0  # no wait asked for: no schedule, jitter or random number to compute
        else:
            delay = combine_with_retry_after(
                policy._backoff.delay(self.attempt),
                None if after is None else _retry_after(exc),
                policy._jitter,
                policy._random(),
            )
        needed = now + delay + (self.shortest or 0.0)
        limit = policy.time_limit
        if self.start is not None and limit is not None and needed > self.start + limit:
            return self._give_up(now, "time_limit", exc)
        if self.deadline is not None and needed >= self.deadline:
            return self._give_up(now, "deadline", exc)
        if self.telling or policy._on_retry is not None:
            hook = cast(_events.Hook | None, policy._on_retry)
            self._tell(
                _events.RetryScheduled, now, hook, attempt=self.attempt, delay=delay, exception=exc
            )
        self.delay = delay
        return True

    def _tell(
        self,
        kind: Callable[..., _events.Event],
        now: float,
        hook: _events.Hook | None = None,
        **fields: Any,
    ) -> None:
        _events.emit(kind(policy="retry", name=self.name, at=now, **fields), hook)

    def _give_up(self, now: float, reason: str, exc: BaseException | None) -> bool:
        self.reason, self.last = reason, exc
        now = now or self.clock.now()
        site = self.policy.name or getattr(self.fn, "__code__", None) or self.name
        _GIVEN_UP.hit(site, lambda: self.name, self.clock, self.real, now, self._message)
        if self.telling:
            _events.emit(self._event(now))
        return False

    def _event(self, now: float) -> _events.Event:
        fields: dict[str, Any] = {"reason": self.reason, "exception": self.last}
        return _GaveUpDetail(
            policy="retry", name=self.name, at=now, attempts=self.attempt, **fields
        )

    def _message(self) -> str:
        return self._event(0.0).message()

    @staticmethod
    def outcome(exc: BaseException | None, result: object) -> Any:
        """The call's end: the last exception raised, or the last result returned."""
        if exc is not None:
            raise exc
        return result


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
