"""Timeout: bound how long a call may take, and pass the budget down as a deadline.

Theory of operation
-------------------
On entry a timeout turns its budget into an absolute deadline on its clock (``now + seconds``),
keeps the earlier of that and any enclosing deadline on the same time scale, and stores it, with
the clock, in a context variable for the duration of the call (:mod:`buttress._deadline`). Code
below reads it with :func:`buttress.remaining`; a retry below on the same scale never sleeps past
it. Deadlines on another scale (a real-time timeout inside one on a fake clock, or the reverse) do
not bind each other; each binds the policies on its own clock.

What happens at the deadline depends on what can honestly be done, and on whether the clock is
real (:attr:`buttress.Clock.real`; any :class:`buttress.SystemClock` is):

* async (an ``async def``, or a callable that returns an awaitable), real clock: the task is
  cancelled at the deadline, the work really stops, and the caller gets
  :class:`buttress.OperationTimeout`. A call that swallows the cancellation and returns anyway
  still gets ``OperationTimeout``; its late value is dropped. The cancellation follows
  ``asyncio.timeout``'s rules (a timer handle cancels the task; ``Task.uncancel`` tells our
  cancellation from anyone else's, which propagates untouched), without its context-manager
  objects: that is what keeps the guarded success path below a hand-written
  ``async with asyncio.timeout(...)``.
* ``def``, real clock: Python cannot kill a thread. The call runs in a worker thread (with
  a copy of the caller's context, so the deadline is visible there); at the deadline the caller
  gets ``OperationTimeout`` and the work is *abandoned*: it runs on to completion in its worker,
  and its result or exception is discarded (logged at DEBUG). A caller interrupted while it waits
  (``KeyboardInterrupt``) abandons the work the same way. :func:`abandoned_calls` counts the
  abandoned calls still running. Past ``max_abandoned`` of them, new calls are refused at once
  with ``OperationTimeout`` rather than piling up more threads on a dependency that hangs. Code
  that can stop early should check :func:`buttress.remaining` between steps.
* a virtual clock (a :class:`buttress.testing.FakeClock`, or any clock not marked real):
  enforcement is virtual and deterministic. The call runs inline; sleeping on the fake clock past
  the deadline stops there and raises ``OperationTimeout``, and a call that returns after its
  deadline raises it too.

Whether a call is async is decided at decoration when the callable says so (``async def``, a
partial of one, an object with ``async def __call__``), and otherwise by what the call returns: an
awaitable returned by a plain function is awaited within the same deadline. ``acall`` always
awaits what the call returns. Generator functions are refused at decoration.

Workers are idle threads kept for reuse (starting a thread costs ~100 µs); a call never waits for
a free worker, so a timeout nested inside another's worker cannot deadlock.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar, cast

from .. import events as _events
from .._callables import (
    Args,
    F,
    Fn,
    Kwargs,
    P,
    RepeatedWarnings,
    T,
    guarded_kind,
    is_awaitable,
    resolved,
)
from .._config import callable_name, integer, optional_nonblank, seconds
from .._deadline import DEADLINE, Deadline, within
from ..clock import Clock, checked_clock, get_clock
from ..errors import OperationTimeout

__all__ = ["DEFAULT_TIMEOUTS", "OperationType", "Timeout", "abandoned_calls", "deadline", "timeout"]

_log = logging.getLogger("buttress.timeout")


class OperationType(Enum):
    """Kinds of operation with a recommended time budget (:attr:`default_timeout`)."""

    @property
    def default_timeout(self) -> float:
        """The recommended budget in seconds (from :data:`DEFAULT_TIMEOUTS`)."""
        return DEFAULT_TIMEOUTS[self]

    FACTOR_LOOKUP = "factor_lookup"
    LLM_INFERENCE = "llm_inference"
    ERP_API_CALL = "erp_api_call"
    DATABASE_QUERY = "database_query"
    REPORT_GENERATION = "report_generation"
    EXTERNAL_API = "external_api"


#: The recommended budget of each :class:`OperationType`, read-only (pass ``timeout_seconds=`` to
#: use another budget).
DEFAULT_TIMEOUTS: Mapping[OperationType, float] = MappingProxyType(
    {
        OperationType.FACTOR_LOOKUP: 5.0,
        OperationType.LLM_INFERENCE: 30.0,
        OperationType.ERP_API_CALL: 10.0,
        OperationType.DATABASE_QUERY: 10.0,
        OperationType.REPORT_GENERATION: 60.0,
        OperationType.EXTERNAL_API: 10.0,
    }
)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class _TimedOutDetail(_events.TimedOut):
    """A time-out told per call at DEBUG; the WARNING goes through the name's :class:`Repeats`."""

    level: ClassVar[int] = logging.DEBUG


#: Time-outs: per operation, the first logged at WARNING, then one summary per interval.
_TIMED_OUT = RepeatedWarnings("timeout", "calls to {name!r} timed out")

_CALL: Any = object()  # "no awaitable yet: call the function"


class _Alarm:
    """Cancels a task at its deadline, and remembers that it did."""

    __slots__ = ("rang", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.rang = False

    def __call__(self) -> None:
        self.rang = True
        self.task.cancel()


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
        if operation_type is not None:
            if timeout_seconds is not None:
                raise ValueError(
                    "give timeout_seconds or operation_type, not both; got "
                    f"timeout_seconds={timeout_seconds!r} and operation_type={operation_type!r}"
                )
            if not isinstance(operation_type, OperationType):
                raise ValueError(f"operation_type must be an OperationType, got {operation_type!r}")
            self.seconds = operation_type.default_timeout
        elif timeout_seconds is not None:
            self.seconds = seconds("timeout_seconds", timeout_seconds, allow_zero=False)
        else:
            raise ValueError("timeout needs timeout_seconds= or operation_type=")
        self.name = optional_nonblank("name", name)
        self._clock = checked_clock(clock)
        self.max_abandoned = integer("max_abandoned", max_abandoned, minimum=0)

    def __repr__(self) -> str:
        return f"Timeout(timeout_seconds={self.seconds!r})"

    # -- the decisions, shared by every shell -----------------------------------------------------

    def _enter(self, fn: object) -> tuple[Deadline, float]:
        """This call's deadline and budget; raises at once when an enclosing deadline has passed."""
        clock = self._clock or get_clock()
        now = clock.now()
        entry = within(clock, now + self.seconds)
        budget = entry[0] - now
        if budget <= 0:
            raise self._expired(fn, entry, 0.0)
        return entry, budget

    def _expired(self, fn: object, entry: Deadline, budget: float) -> OperationTimeout:
        name = self.name or callable_name(fn)
        now = entry[1].now()
        event = _TimedOutDetail(policy="timeout", name=name, at=now, timeout=budget)
        site = self.name or getattr(fn, "__code__", None) or name
        _TIMED_OUT.hit(site, lambda: name, entry[1], entry[2], now, event.message)
        if _events.wanted("timeout"):
            _events.emit(event)
        return OperationTimeout(
            f"{name} did not finish within {budget:.3f}s", timeout=budget, name=name
        )

    def _overran(self, fn: object, entry: Deadline, budget: float, reached: bool) -> None:
        """Virtual clock: raise ours if the call ran past (``reached``: or up to) the deadline."""
        now = entry[1].now()
        if now > entry[0] or (reached and now == entry[0]):
            raise self._expired(fn, entry, budget) from None

    # -- shells ------------------------------------------------------------------------------------

    def _run(self, fn: Fn, args: Args, kwargs: Kwargs) -> Any:
        entry, budget = self._enter(fn)
        if not entry[2]:
            token = DEADLINE.set(entry)
            try:
                try:
                    result = fn(*args, **kwargs)
                except OperationTimeout:
                    self._overran(fn, entry, budget, True)
                    raise
                self._overran(fn, entry, budget, False)
            finally:
                DEADLINE.reset(token)
        else:
            # The worker's context has the deadline; nothing stands between submitting and
            # waiting, so an interruption while the work runs always finds it abandoned below.
            future = self._submit(fn, args, kwargs, entry, budget)
            try:
                result = future.result(timeout=budget)
            except FutureTimeout:
                if not future.cancel():  # it started: it runs on, abandoned
                    _WORKERS.abandon(future, self.name or callable_name(fn))
                raise self._expired(fn, entry, budget) from None
            except BaseException:
                # The caller was interrupted while waiting (KeyboardInterrupt): where a task would
                # be cancelled, the work runs on, abandoned and counted as a timed-out call is.
                if not future.done() and not future.cancel():
                    _WORKERS.abandon(future, self.name or callable_name(fn))
                raise
        if is_awaitable(result):  # a plain function's awaitable: awaited within the deadline
            return self._awaited(fn, (), {}, entry, budget, result)
        return result

    def _submit(
        self, fn: Fn, args: Args, kwargs: Kwargs, entry: Deadline, budget: float
    ) -> Future[Any]:
        if _WORKERS.abandoned >= self.max_abandoned:
            name = self.name or callable_name(fn)
            raise OperationTimeout(
                f"{name} refused: {_WORKERS.abandoned} timed-out calls are still running "
                f"(max_abandoned={self.max_abandoned})",
                timeout=budget,
                name=name,
            )
        context = contextvars.copy_context()
        context.run(DEADLINE.set, entry)
        return _WORKERS.submit(functools.partial(context.run, fn, *args, **kwargs))

    async def _awaited(
        self,
        fn: Fn,
        args: Args,
        kwargs: Kwargs,
        entry: Deadline,
        budget: float,
        pending: Any,
    ) -> Any:
        """Await ``pending`` (or, given ``_CALL``, what ``fn`` returns) within ``entry``."""
        if not entry[2]:  # a virtual clock: await inline, then judge by the clock
            token = DEADLINE.set(entry)
            try:
                call = fn(*args, **kwargs) if pending is _CALL else pending
                return await self._judged(fn, entry, budget, call)
            finally:
                DEADLINE.reset(token)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("an async timeout must run inside an asyncio task")
        alarm = _Alarm(task)
        cancelling = task.cancelling()
        # From a sync wrapper's awaitable, time has passed since the budget was fixed.
        left = budget if pending is _CALL else entry[0] - entry[1].now()
        handle = loop.call_at(loop.time() + left, alarm)
        token = DEADLINE.set(entry)
        try:
            result = fn(*args, **kwargs) if pending is _CALL else pending
            if hasattr(result, "__await__"):  # what is_awaitable() tests, inlined
                result = await result
        except BaseException as exc:
            # As asyncio.timeout: ours only if no other cancellation was asked for meanwhile.
            ours = alarm.rang and task.uncancel() <= cancelling
            if ours and isinstance(exc, asyncio.CancelledError):
                raise self._expired(fn, entry, budget) from None
            raise
        finally:
            handle.cancel()
            DEADLINE.reset(token)
        if alarm.rang:  # the call swallowed its cancellation: its late value is dropped
            task.uncancel()
            raise self._expired(fn, entry, budget)
        return result

    async def _judged(self, fn: object, entry: Deadline, budget: float, pending: Any) -> Any:
        try:
            result = await resolved(pending)
        except OperationTimeout:
            self._overran(fn, entry, budget, True)
            raise
        self._overran(fn, entry, budget, False)
        return result

    # -- decoration --------------------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        if guarded_kind("timeout", fn):
            enter, awaited = self._enter, self._awaited

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                entry, budget = enter(fn)
                return await awaited(fn, args, kwargs, entry, budget, _CALL)

            return cast(F, async_wrapper)
        run = self._run

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run(fn, args, kwargs)

        return cast(F, wrapper)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` within the budget (see the module notes on awaitables)."""
        return cast(T, self._run(fn, args, kwargs))

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await what ``fn(*args, **kwargs)`` returns, within the budget."""
        entry, budget = self._enter(fn)
        return cast(T, await self._awaited(fn, args, kwargs, entry, budget, _CALL))


#: The decorator's spelling, ``@timeout(timeout_seconds=30.0)`` or ``@timeout(operation_type=...)``:
#: the policy class itself, so the two cannot drift apart. See :class:`Timeout`.
timeout = Timeout


class deadline:
    """Set a deadline for a block without enforcing it: code inside plans within it.

    ``with deadline(5): ...`` (or ``async with``) makes :func:`buttress.remaining` and retries
    inside see a budget of 5 seconds (or less, if an enclosing deadline on the same clock is
    earlier). Nothing is interrupted; use :func:`timeout` to enforce.
    """

    __slots__ = ("_clock", "_seconds", "_tokens")

    def __init__(self, seconds_: float, *, clock: Clock | None = None) -> None:
        self._seconds = seconds("seconds", seconds_)
        self._clock = checked_clock(clock)
        self._tokens: list[contextvars.Token[Deadline | None]] = []

    def __enter__(self) -> float:
        clock = self._clock or get_clock()
        entry = within(clock, clock.now() + self._seconds)
        self._tokens.append(DEADLINE.set(entry))
        return entry[0]

    def __exit__(self, *exc_info: object) -> None:
        DEADLINE.reset(self._tokens.pop())

    async def __aenter__(self) -> float:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        DEADLINE.reset(self._tokens.pop())
