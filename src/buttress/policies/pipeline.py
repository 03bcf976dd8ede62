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

The wrapped function is built once per guarded function and cached, so ``pipeline.call(fn, ...)``
costs the stacked wrappers and one dictionary look-up, not a rebuild per call.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

__all__ = ["Pipeline"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class Pipeline:
    """Policies composed outermost first, usable as a decorator or with ``call``/``acall``.

    Args:
        *policies: policy objects or decorators; the first one is the outermost.

    Raises:
        TypeError: a policy is not callable, or none is given.
    """

    __slots__ = ("_cache", "_lock", "policies")

    def __init__(self, *policies: Callable[[Any], Any]) -> None:
        if not policies:
            raise TypeError("Pipeline needs at least one policy")
        for index, policy in enumerate(policies):
            if not callable(policy):
                raise TypeError(f"policies[{index}] must be a policy or decorator, got {policy!r}")
        self.policies: tuple[Callable[[Any], Any], ...] = tuple(policies)
        self._cache: WeakKeyDictionary[Callable[..., Any], Callable[..., Any]] = WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` with every policy, outermost first."""
        if not callable(fn):
            raise TypeError(f"Pipeline decorates a callable, got {fn!r}")
        wrapped: Any = fn
        for policy in reversed(self.policies):
            wrapped = policy(wrapped)
        return wrapped  # type: ignore[no-any-return]

    def _wrapped(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._cache[fn]
        except (KeyError, TypeError):
            pass
        wrapped = self(fn)
        try:
            with self._lock:
                self._cache[fn] = wrapped
        except TypeError:  # not weak-referenceable: build per call
            pass
        return wrapped

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` through every policy."""
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"{fn!r} is a coroutine function: use 'await pipeline.acall(...)'")
        return self._wrapped(fn)(*args, **kwargs)  # type: ignore[no-any-return]

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await the async ``fn(*args, **kwargs)`` through every policy."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{fn!r} is not a coroutine function: use 'pipeline.call(...)'")
        return await self._wrapped(fn)(*args, **kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(repr(p) for p in self.policies)})"
