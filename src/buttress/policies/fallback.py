"""Fallback: answer from somewhere else when the call fails.

Theory of operation
-------------------
The guarded call runs; if it raises one of ``on`` (default ``Exception``; never a
``BaseException`` such as cancellation), the strategies are tried in order until one produces a
result:

* ``CACHED`` (alias ``USE_CACHE``): the last good result for the same arguments, if younger than
  ``cache_ttl``. The cache is a bounded LRU (``cache_size``); arguments that cannot be hashed are
  not cached (give ``key=`` to build a key yourself). A miss passes to the next strategy.
* ``FUNCTION``: ``fallback_function(*args, **kwargs)``; if it raises, that error is logged and the
  next strategy is tried. An async fallback function serves async calls only: guarding a plain
  ``def`` with one is a ``TypeError`` at decoration.
* ``DEFAULT``: ``default_value``. ``NONE``: ``None``. ``RAISE``: re-raise the original error.

When no strategy produces a result, the ORIGINAL exception propagates unchanged, unless the
fallback function was tried and failed: then its exception propagates, chained to the original
(``__cause__``, as a hand-written ``except`` block that calls a backup would), so neither is lost.
A ``RAISE`` step always re-raises the original. Only ``CACHED`` does work on the success path
(building the key and storing the result).

The walk down the strategies is one decision object (:class:`_Walk`) shared by the sync and async
shells, which only call the fallback function (awaiting its answer on the async path). Async is
decided at decoration when the callable says so (``async def``, a partial of one, an object with
``async def __call__``) and otherwise by what the call returns: an awaitable returned by a plain
function is awaited with the fallback in force. Generator functions are refused at decoration.

:class:`FallbackStrategy` also carries the strategies of fallback protocols (``RETRY``,
``SWITCH_PROVIDER``, ...); those describe protocol steps and are refused here.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any, cast, overload

from .. import events as _events
from .._callables import (
    Args,
    F,
    Fn,
    Kwargs,
    P,
    T,
    guard_sync,
    guarded_kind,
    is_async,
    is_awaitable,
    resolved,
)
from .._config import callable_name, integer, optional_nonblank, seconds
from ..clock import Clock, checked_clock, get_clock

__all__ = ["Fallback", "FallbackStrategy", "fallback"]


class FallbackStrategy(Enum):
    """Every fallback strategy buttress knows.

    Value strategies, usable with :func:`fallback`: ``CACHED`` (alias ``USE_CACHE``), ``DEFAULT``,
    ``FUNCTION``, ``NONE``, ``RAISE``. Protocol strategies, for fallback protocols: ``RETRY``,
    ``SWITCH_PROVIDER``, ``DEGRADE_SERVICE``, ``QUEUE_REQUEST``, ``SCALE_DOWN``, ``CIRCUIT_BREAK``.
    """

    CACHED = "cached"
    USE_CACHE = "cached"  # alias: the same member as CACHED
    DEFAULT = "default"
    FUNCTION = "function"
    NONE = "none"
    RAISE = "raise"
    RETRY = "retry"
    SWITCH_PROVIDER = "switch_provider"
    DEGRADE_SERVICE = "degrade_service"
    QUEUE_REQUEST = "queue_request"
    SCALE_DOWN = "scale_down"
    CIRCUIT_BREAK = "circuit_break"

    @property
    def is_value_strategy(self) -> bool:
        """Whether :func:`fallback` can use it directly."""
        return self in _VALUE_STRATEGIES


_VALUE_STRATEGIES = frozenset(
    {
        FallbackStrategy.CACHED,
        FallbackStrategy.DEFAULT,
        FallbackStrategy.FUNCTION,
        FallbackStrategy.NONE,
        FallbackStrategy.RAISE,
    }
)
_MISSING = object()


class _Cache:
    """A bounded LRU of (expiry, value), thread-safe."""

    __slots__ = ("_data", "_lock", "size", "ttl")

    def __init__(self, size: int, ttl: float) -> None:
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size
        self.ttl = ttl

    def put(self, key: Hashable, value: Any, now: float) -> None:
        with self._lock:
            self._data[key] = (now + self.ttl, value)
            self._data.move_to_end(key)
            if len(self._data) > self.size:
                self._data.popitem(last=False)

    def get(self, key: Hashable, now: float) -> Any:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return _MISSING
            if entry[0] <= now:
                del self._data[key]
                return _MISSING
            self._data.move_to_end(key)
            return entry[1]

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def _default_key(args: Args, kwargs: Kwargs) -> Hashable | None:
    key = (args, tuple(sorted(kwargs.items()))) if kwargs else args
    try:
        hash(key)
    except TypeError:
        return None
    return key


class Fallback:
    """A fallback policy; use as a decorator, or with :meth:`call` / :meth:`acall`.

    Args:
        strategy: a value :class:`FallbackStrategy`, or a sequence of them tried in order.
        default_value: what ``DEFAULT`` returns.
        fallback_function: what ``FUNCTION`` calls with the original arguments (sync, or async on
            the async path).
        on: exception type(s) that trigger the fallback (default ``Exception``).
        cache_ttl: seconds a cached result stays usable (default 3600).
        cache_size: most argument sets cached (default 1024, least recently used evicted).
        key: ``(args, kwargs) -> hashable | None`` building the cache key (None: do not cache).
        name: name in events and logs (default: the guarded function's qualified name).
        clock: the clock to use (default: the process default at the time of use).

    Raises:
        ValueError: an unknown or protocol strategy, ``FUNCTION`` without a function, bad sizes.
    """

    def __init__(
        self,
        *,
        strategy: FallbackStrategy | Sequence[FallbackStrategy] = FallbackStrategy.CACHED,
        default_value: Any = None,
        fallback_function: Callable[..., Any] | None = None,
        on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        cache_ttl: float = 3600.0,
        cache_size: int = 1024,
        key: Callable[[tuple[Any, ...], dict[str, Any]], Hashable | None] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(strategy, FallbackStrategy | str):
            chain: list[object] = [strategy]
        elif isinstance(strategy, Iterable) and not isinstance(strategy, bytes | Mapping):
            chain = list(strategy)
        else:
            raise TypeError(
                "strategy must be a FallbackStrategy or a sequence of them tried in order, "
                f"got {strategy!r}"
            )
        if not chain:
            raise ValueError("strategy must name at least one FallbackStrategy")
        resolved: list[FallbackStrategy] = []
        for item in chain:
            try:
                member = FallbackStrategy(item) if isinstance(item, str) else item
            except ValueError:
                raise ValueError(f"unknown fallback strategy {item!r}") from None
            if not isinstance(member, FallbackStrategy):
                raise ValueError(f"strategy must be FallbackStrategy members, got {item!r}")
            if not member.is_value_strategy:
                raise ValueError(
                    f"FallbackStrategy.{member.name} is a fallback protocol step; use it in a "
                    "FallbackAction of a fallback protocol. @fallback takes CACHED, DEFAULT, "
                    "FUNCTION, NONE or RAISE"
                )
            resolved.append(member)
        self.strategies: tuple[FallbackStrategy, ...] = tuple(resolved)
        if FallbackStrategy.FUNCTION in self.strategies and not callable(fallback_function):
            raise ValueError(
                "FallbackStrategy.FUNCTION needs fallback_function=, a callable; "
                f"got {fallback_function!r}"
            )
        if not (isinstance(on, type) and issubclass(on, BaseException)) and not (
            isinstance(on, tuple)
            and all(isinstance(t, type) and issubclass(t, BaseException) for t in on)
        ):
            raise TypeError(f"on must be an exception type or a tuple of them, got {on!r}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be callable, got {key!r}")
        self.default_value = default_value
        self.fallback_function = fallback_function
        self.on = on
        self.name = optional_nonblank("name", name)
        self._clock = checked_clock(clock)
        self._key = key or _default_key
        self.cache: _Cache | None = None
        if FallbackStrategy.CACHED in self.strategies:
            self.cache = _Cache(
                integer("cache_size", cache_size, minimum=1),
                seconds("cache_ttl", cache_ttl, allow_zero=False, allow_inf=True),
            )

    def __repr__(self) -> str:
        return f"Fallback(strategy={[s.name for s in self.strategies]})"

    def _remember(self, args: Args, kwargs: Kwargs, result: Any) -> None:
        assert self.cache is not None
        key = self._key(args, kwargs)
        if key is not None:
            self.cache.put(key, result, (self._clock or get_clock()).now())

    # -- the first attempt: the fast path -------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` with this fallback.

        If ``fn`` returns an awaitable, the result is a coroutine that awaits it with this
        fallback.
        """
        try:
            result = fn(*args, **kwargs)
        except self.on as error:
            return cast(T, self._recover(fn, args, kwargs, error))
        if hasattr(result, "__await__"):  # what is_awaitable() tests, inlined
            return cast(T, self._settle(fn, args, kwargs, result))
        if self.cache is not None:
            self._remember(args, kwargs, result)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await what ``fn(*args, **kwargs)`` returns, with this fallback."""
        try:
            pending = fn(*args, **kwargs)
        except self.on as error:
            return cast(T, await self._arecover(fn, args, kwargs, error))
        return cast(T, await self._settle(fn, args, kwargs, pending))

    async def _settle(self, fn: Fn, args: Args, kwargs: Kwargs, pending: Any) -> Any:
        """Await the call's ``pending`` outcome, then fall back as an async call."""
        try:
            result = await pending if hasattr(pending, "__await__") else pending
        except self.on as error:
            return await self._arecover(fn, args, kwargs, error)
        if self.cache is not None:
            self._remember(args, kwargs, result)
        return result

    # -- after a failure: one walk down the chain, two thin shells ------------------------------

    def _recover(self, fn: object, args: Any, kwargs: Any, error: BaseException) -> Any:
        walk = _Walk(self, fn, error, args, kwargs)
        while (function := walk.next_function()) is not None:
            try:
                value = function(*args, **kwargs)
            except Exception as failed:
                walk.failed(failed)
            else:
                walk.answer(value, in_sync_call=True)
        return walk.result()

    async def _arecover(self, fn: object, args: Any, kwargs: Any, error: BaseException) -> Any:
        walk = _Walk(self, fn, error, args, kwargs)
        while (function := walk.next_function()) is not None:
            try:
                walk.answer(await resolved(function(*args, **kwargs)))
            except Exception as failed:
                walk.failed(failed)
        return walk.result()

    # -- decoration ----------------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``; see :meth:`call` for awaitables).

        Raises:
            TypeError: ``fn`` is a generator function, or a plain ``def`` while the fallback
                function is async (its answer would be a coroutine the caller never awaits).
        """
        on, remember = self.on, self._remember
        caching = self.cache is not None
        if guarded_kind("fallback", fn):
            arecover = self._arecover

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    result = await fn(*args, **kwargs)
                except on as error:
                    return await arecover(fn, args, kwargs, error)
                if caching:
                    remember(args, kwargs, result)
                return result

            return cast(F, async_wrapper)
        function = self.fallback_function
        if FallbackStrategy.FUNCTION in self.strategies and is_async(function):
            raise TypeError(
                f"fallback_function {callable_name(function)} is async but "
                f"{callable_name(fn)} is a plain def: its answer would be a coroutine nobody "
                "awaits. Give a plain fallback function, or guard an async def"
            )
        keep = remember if caching else None
        return cast(F, guard_sync(fn, on, self._recover, self._settle, keep))


class _Walk:
    """One failed call's way down the strategies: every decision, none of the calling.

    The shells ask :meth:`next_function`; when it names the fallback function they call it and
    report :meth:`answer` or :meth:`failed`. :meth:`result` returns the answer or raises.
    """

    __slots__ = ("args", "error", "failure", "fn", "kwargs", "policy", "position", "value")

    def __init__(
        self,
        policy: Fallback,
        fn: object,
        error: BaseException,
        args: Args,
        kwargs: Kwargs,
    ) -> None:
        self.policy = policy
        self.fn = fn
        self.error = error
        self.args = args
        self.kwargs = kwargs
        self.position = 0
        self.value: Any = _MISSING
        self.failure: BaseException | None = None  # the fallback function's latest error

    def next_function(self) -> Callable[..., Any] | None:
        """Walk on to a ``FUNCTION`` step (returns the function to call) or to the end (None)."""
        policy = self.policy
        strategies = policy.strategies
        while self.value is _MISSING and self.position < len(strategies):
            strategy = strategies[self.position]
            self.position += 1
            if strategy is FallbackStrategy.FUNCTION:
                return policy.fallback_function
            if strategy is FallbackStrategy.CACHED:
                assert policy.cache is not None
                key = policy._key(self.args, self.kwargs)
                if key is not None:
                    now = (policy._clock or get_clock()).now()
                    self._found(strategy, policy.cache.get(key, now))
            elif strategy is FallbackStrategy.DEFAULT:
                self._found(strategy, policy.default_value)
            elif strategy is FallbackStrategy.NONE:
                self._found(strategy, None)
            else:  # RAISE: the original error, whatever came before
                self.failure = None
                break
        return None

    def answer(self, value: Any, *, in_sync_call: bool = False) -> None:
        if in_sync_call and is_awaitable(value):
            close = getattr(value, "close", None)
            if close is not None:
                close()  # never to be awaited: closed rather than left to warn
            raise TypeError(
                f"fallback_function {callable_name(self.policy.fallback_function)} returned an "
                f"awaitable to the plain call {callable_name(self.fn)}; give a plain fallback "
                "function, or guard an async def"
            )
        self._found(FallbackStrategy.FUNCTION, value)

    def failed(self, failure: Exception) -> None:
        self.failure = failure
        if _events.wanted("fallback"):
            self._tell(_events.AttemptFailed, attempt=0, exception=failure)

    def result(self) -> Any:
        if self.value is not _MISSING:
            return self.value
        if self.failure is None:
            raise self.error
        if self.failure.__cause__ is None:
            raise self.failure from self.error
        raise self.failure

    def _found(self, strategy: FallbackStrategy, value: Any) -> None:
        if value is _MISSING:
            return
        self.value = value
        if _events.wanted("fallback", logging.INFO):
            self._tell(_events.FallbackUsed, strategy=strategy.name, exception=self.error)

    def _tell(self, kind: Callable[..., _events.Event], **fields: Any) -> None:
        now = (self.policy._clock or get_clock()).now()
        _events.emit(kind(policy="fallback", name=self._name(), at=now, **fields))

    def _name(self) -> str:
        return self.policy.name or callable_name(self.fn)


@overload
def fallback(fn: F, /) -> F: ...
@overload
def fallback(
    fn: None = None,
    /,
    *,
    strategy: FallbackStrategy | Sequence[FallbackStrategy] = ...,
    default_value: Any = ...,
    fallback_function: Callable[..., Any] | None = ...,
    on: type[BaseException] | tuple[type[BaseException], ...] = ...,
    cache_ttl: float = ...,
    cache_size: int = ...,
    key: Callable[[tuple[Any, ...], dict[str, Any]], Hashable | None] | None = ...,
    name: str | None = ...,
    clock: Clock | None = ...,
) -> Fallback: ...
def fallback(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Fallback decorator: ``@fallback(strategy=FallbackStrategy.DEFAULT, default_value=[])``.

    Takes the arguments of :class:`Fallback`; bare ``@fallback`` uses the cache.
    """
    policy = Fallback(**options)
    return policy if fn is None else policy(fn)
