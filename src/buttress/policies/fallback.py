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
  next strategy is tried.
* ``DEFAULT``: ``default_value``. ``NONE``: ``None``. ``RAISE``: re-raise the original error.

When no strategy produces a result, the ORIGINAL exception propagates unchanged. Only ``CACHED``
does work on the success path (building the key and storing the result).

:class:`FallbackStrategy` also carries the strategies of fallback protocols (``RETRY``,
``SWITCH_PROVIDER``, ...); those describe protocol steps and are refused here.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from enum import Enum
from typing import Any, TypeVar, cast

from .. import events as _events
from .._config import callable_name, integer, seconds
from ..clock import Clock, get_clock

__all__ = ["Fallback", "FallbackStrategy", "fallback"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


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


def _default_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
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
        chain = [strategy] if isinstance(strategy, FallbackStrategy | str) else list(strategy)
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
        self.name = name
        self._clock = clock
        self._key = key or _default_key
        self.cache: _Cache | None = None
        if FallbackStrategy.CACHED in self.strategies:
            self.cache = _Cache(
                integer("cache_size", cache_size, minimum=1),
                seconds("cache_ttl", cache_ttl, allow_zero=False, allow_inf=True),
            )

    def __repr__(self) -> str:
        return f"Fallback(strategy={[s.name for s in self.strategies]})"

    def _remember(self, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        assert self.cache is not None
        key = self._key(args, kwargs)
        if key is not None:
            self.cache.put(key, result, (self._clock or get_clock()).now())

    def _plan(
        self, name: str, error: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[FallbackStrategy, Any]:
        """Walk the chain up to FUNCTION or an answer; returns (strategy, value or _MISSING)."""
        clock = self._clock or get_clock()
        for strategy in self.strategies:
            if strategy is FallbackStrategy.CACHED:
                assert self.cache is not None
                key = self._key(args, kwargs)
                if key is not None:
                    value = self.cache.get(key, clock.now())
                    if value is not _MISSING:
                        return strategy, value
            elif strategy is FallbackStrategy.DEFAULT:
                return strategy, self.default_value
            elif strategy is FallbackStrategy.NONE:
                return strategy, None
            elif strategy is FallbackStrategy.RAISE:
                return strategy, _MISSING
            else:  # FUNCTION: the shells call it, sync or async
                return strategy, _MISSING
        return FallbackStrategy.RAISE, _MISSING

    def _used(self, name: str, strategy: FallbackStrategy, error: BaseException) -> None:
        _events.emit(
            _events.FallbackUsed(
                policy="fallback",
                name=name,
                at=(self._clock or get_clock()).now(),
                strategy=strategy.name,
                exception=error,
            )
        )

    def _after_function(self, strategy: FallbackStrategy) -> Fallback:
        """A view of the chain past ``strategy`` (used when the fallback function fails)."""
        rest = self.strategies[self.strategies.index(strategy) + 1 :]
        clone = object.__new__(Fallback)
        clone.__dict__.update(self.__dict__)
        clone.strategies = rest
        return clone

    def _recover_sync(
        self, name: str, error: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        policy = self
        while policy.strategies:
            strategy, value = policy._plan(name, error, args, kwargs)
            if strategy is FallbackStrategy.FUNCTION:
                assert self.fallback_function is not None
                try:
                    value = self.fallback_function(*args, **kwargs)
                except Exception as failed:
                    _events.emit(
                        _events.AttemptFailed(
                            policy="fallback",
                            name=name,
                            at=(self._clock or get_clock()).now(),
                            attempt=0,
                            exception=failed,
                        )
                    )
                    policy = policy._after_function(strategy)
                    continue
            if value is _MISSING:
                break
            self._used(name, strategy, error)
            return value
        raise error

    async def _recover_async(
        self, name: str, error: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        policy = self
        while policy.strategies:
            strategy, value = policy._plan(name, error, args, kwargs)
            if strategy is FallbackStrategy.FUNCTION:
                assert self.fallback_function is not None
                try:
                    value = self.fallback_function(*args, **kwargs)
                    if inspect.isawaitable(value):
                        value = await value
                except Exception as failed:
                    _events.emit(
                        _events.AttemptFailed(
                            policy="fallback",
                            name=name,
                            at=(self._clock or get_clock()).now(),
                            attempt=0,
                            exception=failed,
                        )
                    )
                    policy = policy._after_function(strategy)
                    continue
            if value is _MISSING:
                break
            self._used(name, strategy, error)
            return value
        raise error

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        if not callable(fn):
            raise TypeError(f"fallback decorates a callable, got {fn!r}")
        name = self.name or callable_name(fn)
        on = self.on
        caching = self.cache is not None
        remember = self._remember
        if inspect.iscoroutinefunction(fn):
            recover_async = self._recover_async

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    result = await fn(*args, **kwargs)
                except on as error:
                    return await recover_async(name, error, args, kwargs)
                if caching:
                    remember(args, kwargs, result)
                return result

            return cast(F, async_wrapper)
        recover = self._recover_sync
        if not caching:

            @functools.wraps(fn)
            def plain_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return fn(*args, **kwargs)
                except on as error:
                    return recover(name, error, args, kwargs)

            return cast(F, plain_wrapper)

        @functools.wraps(fn)
        def caching_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
            except on as error:
                return recover(name, error, args, kwargs)
            remember(args, kwargs, result)
            return result

        return cast(F, caching_wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` with this fallback."""
        return self(fn)(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await the async ``fn(*args, **kwargs)`` with this fallback."""
        return await self(fn)(*args, **kwargs)


def fallback(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Fallback decorator: ``@fallback(strategy=FallbackStrategy.DEFAULT, default_value=[])``.

    Takes the arguments of :class:`Fallback`; bare ``@fallback`` uses the cache.
    """
    policy = Fallback(**options)
    return policy if fn is None else policy(fn)
