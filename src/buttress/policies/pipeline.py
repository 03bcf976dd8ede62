"""Composing policies into one.

Theory of operation: a policy is anything that decorates a function (``policy(fn) -> wrapped``) for
both ``def`` and ``async def``. A :class:`Pipeline` lists policies outermost first, exactly as they
would be stacked as decorators, and decorates a function by applying them from the innermost out::

    Pipeline(retry_policy, breaker, fallback_policy)(fn)
    # is the same as
    @retry_policy
    @breaker
    @fallback_policy
    def fn(...): ...

A callable that is async without being an ``async def`` (a partial of one, an object with
``async def __call__``), and anything given to :meth:`Pipeline.acall`, is first made an
``async def`` that awaits what the call returns, so every policy in the stack takes its async path
and guards the awaiting, not just the creation of a coroutine.

The wrapped function is built once per guarded function and kept in a small bounded table (the
most recent :data:`CACHE_SIZE` functions, held strongly), so ``pipeline.call(fn, ...)`` costs the
stacked wrappers and one dictionary look-up, not a rebuild per call. The table is bounded rather
than weak because the wrapped function refers to ``fn``: a weak table whose values hold their keys
never lets them go, and a fresh lambda per call would grow it without end.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .._callables import F, P, T, guarded_kind, is_async, resolved

__all__ = ["Pipeline"]


#: How many guarded functions a pipeline keeps wrapped for ``call``/``acall`` (each way).
CACHE_SIZE = 256


def _awaiting(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as an ``async def`` that awaits what it returns."""

    @functools.wraps(fn)
    async def awaiting(*args: Any, **kwargs: Any) -> Any:
        return await resolved(fn(*args, **kwargs))

    return awaiting


class Pipeline:
    """Policies composed outermost first, usable as a decorator or with ``call``/``acall``.

    Args:
        *policies: policy objects or decorators; the first one is the outermost.

    Raises:
        TypeError: a policy is not callable, or none is given.
    """

    __slots__ = ("_acache", "_cache", "_lock", "policies")

    def __init__(self, *policies: Callable[[Any], Any]) -> None:
        if not policies:
            raise TypeError("Pipeline needs at least one policy")
        for index, policy in enumerate(policies):
            if not callable(policy):
                raise TypeError(f"policies[{index}] must be a policy or decorator, got {policy!r}")
        self.policies: tuple[Callable[[Any], Any], ...] = tuple(policies)
        self._cache: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._acache: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` with every policy, outermost first."""
        if guarded_kind("Pipeline", fn) and not inspect.iscoroutinefunction(fn):
            return self._compose(_awaiting(fn))  # type: ignore[return-value]
        return self._compose(fn)  # type: ignore[return-value]

    def _compose(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = fn
        for policy in reversed(self.policies):
            wrapped = policy(wrapped)
        return wrapped

    def _wrapped(
        self,
        cache: dict[Callable[..., Any], Callable[..., Any]],
        fn: Callable[..., Any],
        build: Callable[[Callable[..., Any]], Callable[..., Any]],
    ) -> Callable[..., Any]:
        wrapped = build(fn)
        try:
            with self._lock:
                if len(cache) >= CACHE_SIZE:
                    del cache[next(iter(cache))]  # the oldest
                cache[fn] = wrapped
        except TypeError:  # not hashable: built per call
            pass
        return wrapped

    def _sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if is_async(fn):
            raise TypeError(f"{fn!r} is a coroutine function: use 'await pipeline.acall(...)'")
        return self(fn)

    def _async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        guarded_kind("Pipeline", fn)
        return self._compose(fn if inspect.iscoroutinefunction(fn) else _awaiting(fn))

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call the sync ``fn(*args, **kwargs)`` through every policy."""
        try:
            wrapped = self._cache[fn]
        except (KeyError, TypeError):
            wrapped = self._wrapped(self._cache, fn, self._sync)
        return wrapped(*args, **kwargs)  # type: ignore[no-any-return]

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await what ``fn(*args, **kwargs)`` returns, through every policy."""
        try:
            wrapped = self._acache[fn]
        except (KeyError, TypeError):
            wrapped = self._wrapped(self._acache, fn, self._async)
        return await wrapped(*args, **kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(repr(p) for p in self.policies)})"
