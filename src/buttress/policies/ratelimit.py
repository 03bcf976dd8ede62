"""Rate limiting: how many requests per second a name (and a key under it) may make.

Theory of operation
-------------------
A :class:`RateLimiter` holds named limits (``configure(name, RateLimitConfig(...))``). Each name
keeps one small state per key (``key=None`` is the name's shared bucket; ``key="tenant-42"``
gives that tenant its own). The arithmetic is in :mod:`buttress.machines.ratelimit`: every
algorithm is a *reservation* that says when a request may run.

* ``check_limit`` admits now or raises :class:`buttress.RateLimitExceeded` with ``retry_after``.
* ``acquire`` / ``aacquire`` wait for the request's slot (up to ``max_wait``, then raise). A slot
  is reserved at arrival, so waiters are served first come, first served, in threads and tasks
  alike, without polling.

Exactness: each decision runs under the name's lock, so concurrent callers never over-admit.
Memory: a key whose state has returned to "fresh" is forgotten by a sweep that runs when the
number of keys doubles, so millions of one-off keys do not accumulate.

Server hints: :meth:`RateLimiter.block` refuses a key until a time (a 429 with ``Retry-After``);
:meth:`RateLimiter.set_remaining` lowers what is left when a server says its quota is nearly
spent.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .. import events as _events
from .._config import integer, number, optional_seconds
from .._config import seconds as to_seconds
from ..clock import Clock, get_clock
from ..errors import RateLimitExceeded
from ..machines.ratelimit import EPSILON, Params, RateLimitAlgorithm, idle, reserve

__all__ = [
    "RateLimit",
    "RateLimitAlgorithm",
    "RateLimitConfig",
    "RateLimiter",
    "UnknownRateLimit",
    "get_rate_limiter",
    "rate_limit",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
_TOKEN = RateLimitAlgorithm.TOKEN_BUCKET


class UnknownRateLimit(KeyError):
    """``check_limit`` was asked about a name that was never configured."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown rate limit"


@dataclass(frozen=True, kw_only=True)
class RateLimitConfig:
    """One named limit.

    Attributes:
        requests_per_second: the sustained rate (> 0).
        burst_size: TOKEN_BUCKET: requests that may run at once on top of the rate (default: one
            second's worth, at least 1). LEAKY_BUCKET: how many may queue in ``acquire``. The
            window algorithms ignore it.
        algorithm: a :class:`RateLimitAlgorithm` (default TOKEN_BUCKET).
        window_seconds: FIXED_WINDOW / SLIDING_WINDOW length; the limit per window is
            ``requests_per_second * window_seconds`` (at least 1).
        max_wait: default longest wait for ``acquire`` (seconds; None: wait as long as needed).
    """

    requests_per_second: float
    burst_size: int | None = None
    algorithm: RateLimitAlgorithm = _TOKEN
    window_seconds: float = 1.0
    max_wait: float | None = None

    def __post_init__(self) -> None:
        number("requests_per_second", self.requests_per_second, minimum=0.0, exclusive_minimum=True)
        if self.burst_size is not None:
            integer("burst_size", self.burst_size, minimum=1)
        if not isinstance(self.algorithm, RateLimitAlgorithm):
            try:
                object.__setattr__(self, "algorithm", RateLimitAlgorithm(self.algorithm))
            except ValueError:
                raise ValueError(
                    f"algorithm must be a RateLimitAlgorithm, got {self.algorithm!r}"
                ) from None
        object.__setattr__(
            self,
            "window_seconds",
            to_seconds("window_seconds", self.window_seconds, allow_zero=False),
        )
        object.__setattr__(self, "max_wait", optional_seconds("max_wait", self.max_wait))

    def params(self) -> Params:
        """The numbers the algorithm works with."""
        rate = float(self.requests_per_second)
        burst = self.burst_size if self.burst_size is not None else max(1, math.floor(rate))
        limit = max(1, math.floor(rate * self.window_seconds + EPSILON))
        return Params(self.algorithm, 1.0 / rate, burst, self.window_seconds, limit)


class _Limit:
    """One configured name: its parameters, its keys' states, its lock."""

    __slots__ = (
        "blocked",
        "config",
        "interval",
        "lock",
        "name",
        "next_sweep",
        "params",
        "states",
        "tau",
        "token",
    )

    def __init__(self, name: str, config: RateLimitConfig) -> None:
        self.name = name
        self.config = config
        self.params = config.params()
        self.lock = threading.Lock()
        self.states: dict[str | None, list[float] | deque[float]] = {}
        self.blocked: dict[str | None, float] = {}
        self.next_sweep = 1024
        # The token bucket's single-unit decision is inlined in check_limit (the hot path).
        self.token = self.params.algorithm is _TOKEN
        self.interval = self.params.interval
        self.tau = self.params.tau

    def decide(self, key: str | None, now: float, cost: int, max_wait: float) -> tuple[bool, float]:
        """(admitted, wait or retry_after); call with the lock held."""
        if self.blocked:
            until = self.blocked.get(key)
            if until is not None:
                if now < until:
                    return False, until - now
                del self.blocked[key]
        states = self.states
        new_state, wait = reserve(states.get(key), now, cost, max_wait, self.params)
        if new_state is None:
            return False, wait
        states[key] = new_state
        if len(states) >= self.next_sweep:
            self.sweep(now)
        return True, wait

    def sweep(self, now: float) -> None:
        params = self.params
        for key in [k for k, s in self.states.items() if idle(s, now, params)]:
            del self.states[key]
        self.next_sweep = max(1024, 2 * len(self.states))


class RateLimiter:
    """Named rate limits with per-key state.

    Args:
        clock: the clock to use (default: the process default at the time of use).
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._limits: dict[str, _Limit] = {}
        self._clock = clock

    def configure(self, name: str, config: RateLimitConfig) -> None:
        """Set (or replace) the limit called ``name``; replacing forgets its keys' state."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not isinstance(config, RateLimitConfig):
            raise TypeError(f"config must be a RateLimitConfig, got {config!r}")
        self._limits[name] = _Limit(name, config)

    def config(self, name: str) -> RateLimitConfig:
        """The configuration of ``name``."""
        return self._limit(name).config

    @property
    def names(self) -> list[str]:
        """The configured names."""
        return sorted(self._limits)

    def keys(self, name: str) -> int:
        """How many keys of ``name`` hold state now."""
        return len(self._limit(name).states)

    def _limit(self, name: str) -> _Limit:
        limit = self._limits.get(name)
        if limit is None:
            known = ", ".join(sorted(self._limits)) or "none"
            raise UnknownRateLimit(
                f"rate limit {name!r} is not configured (configured: {known}); "
                f"call configure({name!r}, RateLimitConfig(...)) first"
            )
        return limit

    def _reject(self, limit: _Limit, key: str | None, now: float, retry_after: float) -> Exception:
        _events.emit(
            _events.CallRejected(
                policy="ratelimit",
                name=limit.name,
                at=now,
                reason="rate_limited",
                retry_after=retry_after,
                key=key,
            )
        )
        where = limit.name if key is None else f"{limit.name}[{key}]"
        return RateLimitExceeded(
            f"rate limit {where} exceeded; retry after {retry_after:.3f}s",
            retry_after=retry_after,
            name=limit.name,
        )

    def check_limit(self, name: str, key: str | None = None, cost: int = 1) -> None:
        """Admit one request now, or raise :class:`RateLimitExceeded` with ``retry_after``."""
        limit = self._limits.get(name)
        if limit is None:
            limit = self._limit(name)
        now = (self._clock or get_clock()).now()
        if cost == 1 and limit.token:
            # GCRA for one unit, in place: the same arithmetic as machines.ratelimit.reserve.
            with limit.lock:
                state = limit.states.get(key)
                if state is not None and not limit.blocked:
                    tat = state[0] if state[0] > now else now
                    wait = tat + limit.interval - limit.tau - now
                    admitted = wait <= EPSILON
                    if admitted:
                        state[0] = tat + limit.interval
                else:
                    admitted, wait = limit.decide(key, now, 1, 0.0)
        else:
            integer("cost", cost, minimum=1)
            with limit.lock:
                admitted, wait = limit.decide(key, now, cost, 0.0)
        if not admitted:
            raise self._reject(limit, key, now, wait)
        if _events.HOOKS:
            _events.emit(
                _events.CallCompleted(
                    policy="ratelimit", name=name, at=now, outcome="admitted", duration=0.0
                )
            )

    async def acheck_limit(self, name: str, key: str | None = None, cost: int = 1) -> None:
        """Async twin of :meth:`check_limit` (it never waits, so it never suspends)."""
        self.check_limit(name, key, cost)

    def _reserve(
        self, name: str, key: str | None, cost: int, max_wait: float | None
    ) -> tuple[Clock, float]:
        limit = self._limit(name)
        integer("cost", cost, minimum=1)
        if max_wait is None:
            max_wait = limit.config.max_wait
        longest = math.inf if max_wait is None else to_seconds("max_wait", max_wait)
        clock = self._clock or get_clock()
        now = clock.now()
        with limit.lock:
            admitted, wait = limit.decide(key, now, cost, longest)
        if not admitted:
            raise self._reject(limit, key, now, wait)
        return clock, wait

    def acquire(
        self, name: str, key: str | None = None, cost: int = 1, max_wait: float | None = None
    ) -> float:
        """Wait until the request may run; returns the seconds waited.

        The slot is reserved on arrival (first come, first served). Raises
        :class:`RateLimitExceeded` at once when the slot is further away than ``max_wait``
        (default: the config's ``max_wait``; None waits as long as needed).
        """
        clock, wait = self._reserve(name, key, cost, max_wait)
        if wait > 0:
            clock.sleep(wait)
        return wait

    async def aacquire(
        self, name: str, key: str | None = None, cost: int = 1, max_wait: float | None = None
    ) -> float:
        """Async twin of :meth:`acquire`."""
        clock, wait = self._reserve(name, key, cost, max_wait)
        if wait > 0:
            await clock.asleep(wait)
        return wait

    def block(self, name: str, key: str | None = None, *, seconds: float) -> None:
        """Refuse ``key`` of ``name`` for the next ``seconds`` (a server said "come back")."""
        limit = self._limit(name)
        duration = to_seconds("seconds", seconds)
        now = (self._clock or get_clock()).now()
        with limit.lock:
            until = now + duration
            if until > limit.blocked.get(key, -math.inf):
                limit.blocked[key] = until

    def set_remaining(
        self, name: str, key: str | None = None, *, remaining: int, reset_after: float
    ) -> None:
        """A server says only ``remaining`` requests are left for ``reset_after`` seconds.

        ``remaining == 0`` blocks the key until the reset. Otherwise the key may make at most
        ``remaining`` more requests at once; the local rate still applies after that, so the
        local limiter never admits more than the server allows nor more than its own limit.
        """
        integer("remaining", remaining, minimum=0)
        reset = to_seconds("reset_after", reset_after)
        if remaining == 0:
            self.block(name, key, seconds=reset)
            return
        limit = self._limit(name)
        now = (self._clock or get_clock()).now()
        params = limit.params
        with limit.lock:
            state = limit.states.get(key)
            if params.algorithm in (RateLimitAlgorithm.TOKEN_BUCKET, _LEAKY):
                floor = now + params.tau - remaining * params.interval
                if state is None or state[0] < floor:
                    limit.states[key] = [floor]
            elif params.algorithm is RateLimitAlgorithm.FIXED_WINDOW:
                used = float(max(0, params.limit - remaining))
                if state is None or state[0] + params.window <= now:
                    limit.states[key] = [now, used]
                elif state[1] < used:
                    state[1] = used
            else:
                used = max(0, params.limit - remaining)
                log = [t for t in (state or []) if t > now - params.window]
                if len(log) < used:
                    log = [now] * (used - len(log)) + log
                    log.sort()
                limit.states[key] = log[-params.limit :]

    def reset(self, name: str, key: str | None = None) -> None:
        """Forget the state (and any block) of ``key`` of ``name``."""
        limit = self._limit(name)
        with limit.lock:
            limit.states.pop(key, None)
            limit.blocked.pop(key, None)


_LEAKY = RateLimitAlgorithm.LEAKY_BUCKET
_GLOBAL = RateLimiter()


def get_rate_limiter() -> RateLimiter:
    """The process-wide :class:`RateLimiter`."""
    return _GLOBAL


class RateLimit:
    """A named limit as a policy: decorator, ``call`` and ``acall``.

    Args:
        name: the configured limit to apply.
        limiter: the limiter holding it (default: :func:`get_rate_limiter`, looked up per call).
        key: a fixed key, or ``(*args, **kwargs) -> key`` computing it from the call.
        wait: ``True`` to wait for a slot (``acquire``) instead of refusing (``check_limit``).
        max_wait: with ``wait``, the longest wait (default: the config's ``max_wait``).
    """

    def __init__(
        self,
        name: str,
        *,
        limiter: RateLimiter | None = None,
        key: str | Callable[..., str | None] | None = None,
        wait: bool = False,
        max_wait: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.limiter = limiter
        self.key = key
        self.wait = wait
        self.max_wait = optional_seconds("max_wait", max_wait)

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        key = self.key
        return key(*args, **kwargs) if callable(key) else key

    def _admit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        limiter = self.limiter or _GLOBAL
        key = self._key(args, kwargs)
        if self.wait:
            limiter.acquire(self.name, key, max_wait=self.max_wait)
        else:
            limiter.check_limit(self.name, key)

    async def _aadmit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        limiter = self.limiter or _GLOBAL
        key = self._key(args, kwargs)
        if self.wait:
            await limiter.aacquire(self.name, key, max_wait=self.max_wait)
        else:
            limiter.check_limit(self.name, key)

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        if not callable(fn):
            raise TypeError(f"rate_limit decorates a callable, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            aadmit = self._aadmit

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                await aadmit(args, kwargs)
                return await fn(*args, **kwargs)

            return cast(F, async_wrapper)
        admit = self._admit

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            admit(args, kwargs)
            return fn(*args, **kwargs)

        return cast(F, wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` once admitted."""
        self._admit(args, kwargs)
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await the async ``fn(*args, **kwargs)`` once admitted."""
        await self._aadmit(args, kwargs)
        return await fn(*args, **kwargs)


def rate_limit(
    name: str,
    *,
    limiter: RateLimiter | None = None,
    key: str | Callable[..., str | None] | None = None,
    wait: bool = False,
    max_wait: float | None = None,
) -> RateLimit:
    """Decorator: ``@rate_limit("erp_api")``; see :class:`RateLimit`."""
    return RateLimit(name, limiter=limiter, key=key, wait=wait, max_wait=max_wait)
