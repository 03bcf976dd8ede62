"""Timeout: bound how long a call may take, and pass the budget down as a deadline.

Theory of operation
-------------------
On entry a timeout turns its budget into an absolute deadline on the clock (``now + seconds``),
keeps the earlier of that and any deadline already in force, and stores it in a context variable
for the duration of the call. Code below reads it with :func:`buttress.remaining`; a retry below
never sleeps past it.

What happens at the deadline depends on what can honestly be done:

* ``async def``: the task is cancelled (``asyncio.timeout_at``), the work really stops, and the
  caller gets :class:`buttress.OperationTimeout`.
* ``def`` with the real clock: Python cannot kill a thread. The call runs in a worker thread (with
  a copy of the caller's context, so the deadline is visible there); at the deadline the caller
  gets ``OperationTimeout`` and the work is *abandoned*: it runs on to completion in its worker,
  and its result or exception is discarded (logged at DEBUG). :func:`abandoned_calls` counts the
  abandoned calls still running. Past ``max_abandoned`` of them, new calls are refused at once
  with ``OperationTimeout`` rather than piling up more threads on a dependency that hangs. Code
  that can stop early should check :func:`buttress.remaining` between steps.
* any clock other than the system clock (a :class:`buttress.testing.FakeClock`): enforcement is
  virtual and deterministic. The call runs inline; sleeping on the fake clock past the deadline
  stops there and raises ``OperationTimeout``, and a call that returns after its deadline raises
  it too.

Workers are idle threads kept for reuse (starting a thread costs ~100 µs); a call never waits for
a free worker, so a timeout nested inside another's worker cannot deadlock.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from enum import Enum
from types import TracebackType
from typing import Any, TypeVar, cast

from .. import events as _events
from .._config import callable_name, integer, seconds
from .._deadline import DEADLINE
from ..clock import SYSTEM_CLOCK, Clock, get_clock
from ..errors import OperationTimeout

__all__ = [
    "DEFAULT_TIMEOUTS",
    "OperationType",
    "Timeout",
    "abandoned_calls",
    "deadline",
    "timeout",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
_log = logging.getLogger("buttress.timeout")


class OperationType(Enum):
    """Kinds of operation with a recommended time budget (:attr:`default_timeout`)."""

    FACTOR_LOOKUP = "factor_lookup"
    LLM_INFERENCE = "llm_inference"
    ERP_API_CALL = "erp_api_call"
    DATABASE_QUERY = "database_query"
    REPORT_GENERATION = "report_generation"
    EXTERNAL_API = "external_api"

    @property
    def default_timeout(self) -> float:
        """The recommended budget in seconds."""
        return DEFAULT_TIMEOUTS[self]


DEFAULT_TIMEOUTS: dict[OperationType, float] = {
    OperationType.FACTOR_LOOKUP: 5.0,
    OperationType.LLM_INFERENCE: 30.0,
    OperationType.ERP_API_CALL: 10.0,
    OperationType.DATABASE_QUERY: 10.0,
    OperationType.REPORT_GENERATION: 60.0,
    OperationType.EXTERNAL_API: 10.0,
}


# -- worker threads for sync calls ------------------------------------------------------------


class _Workers:
    """Reusable daemon threads; a call never waits for one to be free."""

    idle_seconds = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self.abandoned = 0

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
        worker.give(job, future)
        return future

    def rest(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        """Remove an idle worker that timed out waiting; False if it was just handed a job."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False

    def abandon(self, future: Future[Any], name: str) -> None:
        with self._lock:
            self.abandoned += 1

        def finished(done: Future[Any]) -> None:
            with self._lock:
                self.abandoned -= 1
            error = done.exception()
            _log.debug(
                "abandoned call %r finished after its timeout (%s); its outcome is discarded",
                name,
                "raised " + repr(error) if error else "returned",
                extra={"event": "abandoned_finished", "policy": "timeout", "policy_name": name},
            )

        future.add_done_callback(finished)


class _Worker:
    __slots__ = ("_jobs", "_pool")

    def __init__(self, pool: _Workers) -> None:
        import queue

        self._pool = pool
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="buttress-timeout-worker", daemon=True).start()

    def give(self, job: Callable[[], Any], future: Future[Any]) -> None:
        self._jobs.put((job, future))

    def _run(self) -> None:
        import queue

        while True:
            try:
                job, future = self._jobs.get(timeout=self._pool.idle_seconds)
            except queue.Empty:
                if self._pool.retire(self):
                    return
                continue
            if future.set_running_or_notify_cancel():
                try:
                    result = job()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del job, future
            self._pool.rest(self)


_WORKERS = _Workers()


def abandoned_calls() -> int:
    """Sync calls that timed out and are still running in their worker threads."""
    return _WORKERS.abandoned


# -- the policy -------------------------------------------------------------------------------


class Timeout:
    """A time budget for each call; use as a decorator, or with :meth:`call` / :meth:`acall`.

    Args:
        timeout_seconds: the budget in seconds (or a ``timedelta``).
        operation_type: use the recommended budget of this :class:`OperationType` instead.
        name: name in events and logs (default: the guarded function's qualified name).
        clock: the clock to use (default: the process default at the time of use).
        max_abandoned: how many timed-out sync calls may still be running before new sync calls
            are refused (process-wide count, see :func:`abandoned_calls`).

    Raises:
        ValueError: neither or both of ``timeout_seconds`` and ``operation_type``, or a bad value.
    """

    __slots__ = ("_clock", "max_abandoned", "name", "seconds")

    def __init__(
        self,
        *,
        timeout_seconds: float | None = None,
        operation_type: OperationType | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        max_abandoned: int = 64,
    ) -> None:
        if timeout_seconds is not None and operation_type is not None:
            raise ValueError(
                "give timeout_seconds or operation_type, not both; got "
                f"timeout_seconds={timeout_seconds!r} and operation_type={operation_type!r}"
            )
        if operation_type is not None:
            if not isinstance(operation_type, OperationType):
                raise ValueError(f"operation_type must be an OperationType, got {operation_type!r}")
            self.seconds = operation_type.default_timeout
        elif timeout_seconds is not None:
            self.seconds = seconds("timeout_seconds", timeout_seconds, allow_zero=False)
        else:
            raise ValueError("timeout needs timeout_seconds= or operation_type=")
        self.name = name
        self._clock = clock
        self.max_abandoned = integer("max_abandoned", max_abandoned, minimum=0)

    def __repr__(self) -> str:
        return f"Timeout(timeout_seconds={self.seconds!r})"

    def _deadline(self, clock: Clock) -> tuple[float, float]:
        now = clock.now()
        mine = now + self.seconds
        outer = DEADLINE.get()
        return now, (mine if outer is None or mine < outer else outer)

    def _expired(self, name: str, clock: Clock, budget: float) -> OperationTimeout:
        _events.emit(_events.TimedOut(policy="timeout", name=name, at=clock.now(), timeout=budget))
        return OperationTimeout(
            f"{name} did not finish within {budget:.3f}s", timeout=budget, name=name
        )

    def _run_sync(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        clock = self._clock or get_clock()
        now, deadline_at = self._deadline(clock)
        budget = deadline_at - now
        if budget <= 0:
            raise self._expired(name, clock, max(budget, 0.0))
        token = DEADLINE.set(deadline_at)
        try:
            if clock is not SYSTEM_CLOCK:
                try:
                    result = fn(*args, **kwargs)
                except OperationTimeout:
                    if clock.now() >= deadline_at:
                        raise self._expired(name, clock, budget) from None
                    raise
                if clock.now() > deadline_at:
                    raise self._expired(name, clock, budget)
                return result
            if _WORKERS.abandoned >= self.max_abandoned:
                raise OperationTimeout(
                    f"{name} refused: {_WORKERS.abandoned} timed-out calls are still running "
                    f"(max_abandoned={self.max_abandoned})",
                    timeout=budget,
                    name=name,
                )
            context = contextvars.copy_context()
            future = _WORKERS.submit(functools.partial(context.run, fn, *args, **kwargs))
        finally:
            DEADLINE.reset(token)
        try:
            return future.result(timeout=budget)
        except FutureTimeout:
            if future.cancel():  # never started: nothing to abandon
                raise self._expired(name, clock, budget) from None
            _WORKERS.abandon(future, name)
            raise self._expired(name, clock, budget) from None

    async def _run_async(
        self,
        name: str,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        clock = self._clock or get_clock()
        now, deadline_at = self._deadline(clock)
        budget = deadline_at - now
        if budget <= 0:
            raise self._expired(name, clock, max(budget, 0.0))
        token = DEADLINE.set(deadline_at)
        try:
            if clock is not SYSTEM_CLOCK:
                try:
                    result = await fn(*args, **kwargs)
                except OperationTimeout:
                    if clock.now() >= deadline_at:
                        raise self._expired(name, clock, budget) from None
                    raise
                if clock.now() > deadline_at:
                    raise self._expired(name, clock, budget)
                return result
            scope = asyncio.timeout(budget)
            try:
                async with scope:
                    return await fn(*args, **kwargs)
            except TimeoutError:
                if scope.expired():
                    raise self._expired(name, clock, budget) from None
                raise
        finally:
            DEADLINE.reset(token)

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        if not callable(fn):
            raise TypeError(f"timeout decorates a callable, got {fn!r}")
        name = self.name or callable_name(fn)
        if inspect.iscoroutinefunction(fn):
            run_async = self._run_async

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await run_async(name, fn, args, kwargs)

            return cast(F, async_wrapper)
        run_sync = self._run_sync

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run_sync(name, fn, args, kwargs)

        return cast(F, wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` within the budget."""
        return self(fn)(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await the async ``fn(*args, **kwargs)`` within the budget."""
        return await self(fn)(*args, **kwargs)


def timeout(
    *,
    timeout_seconds: float | None = None,
    operation_type: OperationType | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    max_abandoned: int = 64,
) -> Timeout:
    """Timeout decorator: ``@timeout(timeout_seconds=30.0)`` or ``@timeout(operation_type=...)``.

    See :class:`Timeout` for the arguments and for what happens to the work at the deadline.
    """
    return Timeout(
        timeout_seconds=timeout_seconds,
        operation_type=operation_type,
        name=name,
        clock=clock,
        max_abandoned=max_abandoned,
    )


class deadline:
    """Set a deadline for a block without enforcing it: code inside plans within it.

    ``with deadline(5): ...`` (or ``async with``) makes :func:`buttress.remaining` and retries
    inside see a budget of 5 seconds (or less, if an enclosing deadline is earlier). Nothing is
    interrupted; use :func:`timeout` to enforce.
    """

    __slots__ = ("_clock", "_seconds", "_tokens")

    def __init__(self, seconds_: float, *, clock: Clock | None = None) -> None:
        self._seconds = seconds("seconds", seconds_)
        self._clock = clock
        self._tokens: list[contextvars.Token[float | None]] = []

    def __enter__(self) -> float:
        now = (self._clock or get_clock()).now()
        mine = now + self._seconds
        outer = DEADLINE.get()
        at = mine if outer is None or mine < outer else outer
        self._tokens.append(DEADLINE.set(at))
        return at

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        DEADLINE.reset(self._tokens.pop())

    async def __aenter__(self) -> float:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
