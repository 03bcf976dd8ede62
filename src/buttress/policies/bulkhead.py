"""Bulkhead: a limit on how many calls run at once.

Theory of operation
-------------------
At most ``max_concurrent`` calls are inside at once, counted across threads and asyncio tasks
alike (one bulkhead may guard both). A call over the limit waits up to ``max_wait`` seconds, first
come first served; a slot freed by a finishing call is handed directly to the oldest waiter, so a
newcomer can never overtake someone already waiting. A waiter that gives up (its task cancelled,
a ``KeyboardInterrupt`` in its thread) leaves the queue, and a slot handed to it meanwhile goes to
the next. Past ``max_wait`` the call is refused with
:class:`buttress.BulkheadFull` (``retry_after`` is ``None``: how long a slot takes to free up is
not known).

The limit can change at run time (:meth:`Bulkhead.set_limit`): raising it admits waiters at once;
lowering it never interrupts running calls, new ones wait until the count falls under it.

Waiting uses the real clock (``threading`` and ``asyncio`` primitives); with ``max_wait=0`` (the
default) nothing waits.

A full bulkhead is a hot path during an overload, when CPU is scarcest, so a refusal costs one
exception and little else: the :class:`buttress.events.CallRejected` event is built only when a hook
listens or ``buttress.bulkhead`` logs at DEBUG (:func:`buttress.events.wanted`), and the WARNING
line goes through :class:`buttress.events.Repeats`: the first refusal after a quiet interval is
logged, then one summary per interval ("1,234 calls rejected by bulkhead 'db' in the last 10 s"),
timed by the process default clock. Nothing is logged or emitted under the lock, so a hook may use
the bulkhead it hears from.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, cast

from .. import events as _events
from .._callables import guarded_kind, refused_awaitable, resolved
from .._config import integer, nonblank, seconds
from ..clock import get_clock
from ..errors import BulkheadFull

__all__ = ["Bulkhead", "bulkhead"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class _Waiter:
    __slots__ = ("admitted", "event", "future", "loop")

    def __init__(
        self, *, event: threading.Event | None = None, future: asyncio.Future[None] | None = None
    ) -> None:
        self.admitted = False
        self.event = event
        self.future = future
        self.loop = None if future is None else future.get_loop()

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            future = self.future

            def resolve() -> None:
                if not future.done():
                    future.set_result(None)

            self.loop.call_soon_threadsafe(resolve)


class Bulkhead:
    """A concurrency limit; use as a decorator, ``with``/``async with``, or ``call``/``acall``.

    Args:
        max_concurrent: calls allowed inside at once (>= 1).
        max_wait: seconds a call may wait for a slot (default 0: refuse at once).
        name: name in events, logs and errors (default: ``bulkhead-`` and a unique suffix);
            a non-empty string.

    Raises:
        ValueError: a bad setting, naming it.
    """

    #: Logger suffix and ``policy`` of its events; the label names it in messages.
    _policy = "bulkhead"
    _label = "bulkhead"

    def __init__(
        self, max_concurrent: int = 10, max_wait: float = 0.0, *, name: str | None = None
    ) -> None:
        self._limit = integer("max_concurrent", max_concurrent, minimum=1)
        self.max_wait = seconds("max_wait", max_wait)
        self._name = f"bulkhead-{id(self):x}" if name is None else nonblank("name", name)
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[_Waiter] = deque()
        self._repeats = _events.Repeats(
            self._policy, self._name, f"calls rejected by {self._label} {self._name!r}"
        )
        self._refusal = ""
        self._first_line: Callable[[], str] = str
        self._describe()

    @property
    def name(self) -> str:
        """The name in events, logs and errors."""
        return self._name

    @property
    def max_concurrent(self) -> int:
        return self._limit

    @property
    def active(self) -> int:
        """Calls inside now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    def __repr__(self) -> str:
        return (
            f"Bulkhead(name={self._name!r}, max_concurrent={self._limit}, active={self._active}, "
            f"waiting={len(self._waiters)})"
        )

    def set_limit(self, max_concurrent: int) -> None:
        """Change the limit now; waiters are admitted if it grew."""
        limit = integer("max_concurrent", max_concurrent, minimum=1)
        with self._lock:
            self._limit = limit
            self._describe()
            woken = self._hand_over()
        for waiter in woken:
            waiter.wake()

    def _describe(self) -> None:
        # A refusal's messages are built when the limit changes, not on every refusal; the
        # first line is handed to Repeats as the bound __str__ of a ready string.
        running = f"{self._limit} call{'s' if self._limit != 1 else ''} running"
        self._refusal = f"{self._label} {self._name!r} is full ({running})"
        self._first_line = f"{self._refusal}: call rejected".__str__

    def _hand_over(self) -> list[_Waiter]:
        """Give free slots to the oldest waiters (lock held)."""
        woken = []
        while self._waiters and self._active < self._limit:
            waiter = self._waiters.popleft()
            waiter.admitted = True
            self._active += 1
            woken.append(waiter)
        return woken

    def _reject(self) -> BulkheadFull:
        """Count and report one refusal; returns the error to raise (lock not held)."""
        now = get_clock().now()
        refusal = self._refusal
        if self.max_wait > 0:
            refusal = f"{refusal} after waiting {self.max_wait:g}s"
        self._repeats.hit(now, self._first_line)
        if _events.wanted(self._policy):
            _events.emit(
                _events.CallRejected(
                    policy=self._policy, name=self._name, at=now, reason="bulkhead_full"
                )
            )
        return BulkheadFull(refusal, name=self._name)

    def _abandon(self, waiter: _Waiter) -> bool:
        """A waiter gives up; True if it got a slot meanwhile (and so must use it)."""
        with self._lock:
            if waiter.admitted:
                return True
            self._waiters.remove(waiter)
            return False

    def acquire(self) -> None:
        """Take a slot, waiting up to ``max_wait``; raises :class:`BulkheadFull`."""
        with self._lock:
            if self._active < self._limit and not self._waiters:
                self._active += 1
                return
            if self.max_wait > 0:
                # Ready to be woken before it is queued: a release may hand it a slot as soon
                # as the lock is let go.
                event = threading.Event()
                waiter = _Waiter(event=event)
                self._waiters.append(waiter)
            else:
                waiter = None
        if waiter is None:
            raise self._reject()
        try:
            if event.wait(self.max_wait) or self._abandon(waiter):
                return
        except BaseException:  # interrupted while waiting: leave the queue, as a cancelled task
            if self._abandon(waiter):
                self.release()
            raise
        raise self._reject()

    async def aacquire(self) -> None:
        """Async twin of :meth:`acquire`: waits without blocking the event loop."""
        with self._lock:
            if self._active < self._limit and not self._waiters:
                self._active += 1
                return
            if self.max_wait > 0:
                future = asyncio.get_running_loop().create_future()
                waiter = _Waiter(future=future)
                self._waiters.append(waiter)
            else:
                waiter = None
        if waiter is None:
            raise self._reject()
        try:
            await asyncio.wait_for(asyncio.shield(future), self.max_wait)
            return
        except TimeoutError:
            if self._abandon(waiter):
                return
            raise self._reject() from None
        except BaseException:
            if self._abandon(waiter):
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self._active -= 1
            woken = self._hand_over()
        for waiter in woken:
            waiter.wake()

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        acquire, release = self.acquire, self.release
        if guarded_kind(self._label, fn):
            aacquire = self.aacquire

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                await aacquire()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    release()

            return cast(F, async_wrapper)

        label = self._label

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            acquire()
            try:
                result = fn(*args, **kwargs)
            finally:
                release()
            if hasattr(result, "__await__"):  # its work would run after the slot is released
                raise refused_awaitable(label, fn, result)
            return result

        return cast(F, wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` inside the bulkhead.

        Raises:
            TypeError: ``fn`` returned an awaitable (use :meth:`acall`).
        """
        self.acquire()
        try:
            result = fn(*args, **kwargs)
        finally:
            self.release()
        if hasattr(result, "__await__"):  # its work would run after the slot is released
            raise refused_awaitable(self._label, fn, result)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await what ``fn(*args, **kwargs)`` returns inside the bulkhead (a plain value as
        it is)."""
        await self.aacquire()
        try:
            return cast(T, await resolved(fn(*args, **kwargs)))
        finally:
            self.release()

    def __enter__(self) -> Bulkhead:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Bulkhead:
        await self.aacquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def bulkhead(
    max_concurrent: int = 10, max_wait: float = 0.0, *, name: str | None = None
) -> Bulkhead:
    """Decorator: ``@bulkhead(max_concurrent=5)``; see :class:`Bulkhead`."""
    return Bulkhead(max_concurrent, max_wait, name=name)
