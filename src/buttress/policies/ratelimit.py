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
from ..backends import open_storage
from ..clock import Clock, get_clock
from ..errors import RateLimitExceeded, UnknownRateLimit
from ..machines.ratelimit import EPSILON, Params, RateLimitAlgorithm, idle, reserve, spent
from ._storeguard import StoreGuard, check_fail_mode, store_faults, store_time

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
        "local",
        "lock",
        "name",
        "next_sweep",
        "outage",
        "params",
        "seed",
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
        self.local: _Limit | None = None  # this process's share, during a store outage
        self.outage = 0  # which outage ``local`` belongs to
        self.seed: float | None = None  # keys first seen start spent at this time (outages)

    def check_cost(self, cost: int) -> None:
        """Refuse a cost this limit could never admit at once, naming both."""
        integer("cost", cost, minimum=1)
        params = self.params
        capacity = params.burst if params.algorithm in (_TOKEN, _LEAKY) else params.limit
        if cost > capacity:
            what = "burst" if params.algorithm in (_TOKEN, _LEAKY) else "limit per window"
            raise ValueError(
                f"cost {cost} exceeds the {what} of rate limit {self.name!r} ({capacity}); "
                "such a request could never be admitted"
            )

    def decide(self, key: str | None, now: float, cost: int, max_wait: float) -> tuple[bool, float]:
        """(admitted, wait or retry_after); call with the lock held."""
        if self.blocked:
            until = self.blocked.get(key)
            if until is not None:
                if now < until:
                    return False, until - now
                del self.blocked[key]
        states = self.states
        state = states.get(key)
        if state is None and self.seed is not None:
            state = spent(self.seed, self.params)
        new_state, wait = reserve(state, now, cost, max_wait, self.params)
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
        storage: where the state lives: ``None`` (``BUTTRESS_STORAGE_URL``, else memory),
            ``"memory://"``, ``"sqlite:///state.db"``, ``"redis://host:6379/0"``, a redis client
            or a store (see :mod:`buttress.backends`). ``BUTTRESS_STORAGE_URL`` is read at first
            use.
        fail_mode: with a shared store, what to do while it is unreachable: ``"local"``
            (default: decide on local state with ``local_share`` of each limit), ``"open"``
            (admit) or ``"closed"`` (refuse).
        local_share: the fraction of each limit one process may use on local state during a
            store outage (e.g. ``0.25`` with four processes sharing the limit; default 1).
        retry_interval: seconds between attempts to reach the store during an outage.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        storage: object = None,
        fail_mode: str = "local",
        local_share: float = 1.0,
        retry_interval: float = 1.0,
    ) -> None:
        self._limits: dict[str, _Limit] = {}
        self._clock = clock
        self._storage = storage
        self._fail_mode = check_fail_mode(fail_mode)
        self._local_share = number(
            "local_share", local_share, minimum=0.0, maximum=1.0, exclusive_minimum=True
        )
        self._retry_interval = to_seconds("retry_interval", retry_interval, allow_zero=False)
        # None (memory) or the guard of the shared store; the process default (storage=None, from
        # BUTTRESS_STORAGE_URL) is resolved at first use, so the environment is read then.
        self._guard: StoreGuard | object | None = _UNRESOLVED
        self._guard_lock = threading.Lock()
        if storage is not None:
            self._store_guard()  # a bad URL or file is an error here, not at the first call

    def _store_guard(self) -> StoreGuard | None:
        guard = self._guard
        if guard is _UNRESOLVED:
            with self._guard_lock:
                if self._guard is _UNRESOLVED:
                    store = open_storage(self._storage)
                    self._guard = (
                        None
                        if store is None
                        else StoreGuard(
                            store, "rate limiter", self._fail_mode, self._retry_interval
                        )
                    )
                guard = self._guard
        return cast("StoreGuard | None", guard)

    @property
    def storage(self) -> str:
        """Where the state lives (``memory://`` or the store's URL)."""
        guard = self._store_guard()
        return "memory://" if guard is None else str(getattr(guard.store, "url", guard.store))

    @property
    def degraded(self) -> bool:
        """Whether the shared store is unreachable and decisions are being made without it."""
        guard = self._store_guard()
        return guard is not None and guard.degraded

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
        """How many keys of ``name`` hold state in this process's memory (not in a store)."""
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
        if self._guard is not None:
            guard = self._store_guard()
            if guard is not None:
                limit.check_cost(cost)
                self._stored_decision(guard, limit, key, cost, 0.0)
                return
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
            limit.check_cost(cost)
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
        """Async twin of :meth:`check_limit` (in memory it never suspends)."""
        if self._guard is not None:
            guard = self._store_guard()
            if guard is not None:
                limit = self._limit(name)
                limit.check_cost(cost)
                await self._astored_decision(guard, limit, key, cost, 0.0)
                return
        self.check_limit(name, key, cost)

    # -- shared stores ---------------------------------------------------------------------------

    def _local_decision(
        self,
        guard: StoreGuard,
        limit: _Limit,
        key: str | None,
        cost: int,
        max_wait: float,
        now: float,
    ) -> tuple[bool, float]:
        """A decision on this process's share of the limit (during a store outage).

        Each outage starts afresh with every key's share *spent* as of its start: what the store
        admitted just before is unknown, so the local share never adds a burst on top of it.
        """
        if self._fail_mode == "open":
            return True, 0.0
        if self._fail_mode == "closed":
            return False, self._retry_interval
        local = limit.local
        if local is None or limit.outage != guard.outages:
            local = self._local_share_of(limit, guard.outages, now)
        with local.lock:
            return local.decide(key, now, cost, max_wait)

    def _local_share_of(self, limit: _Limit, outage: int, now: float) -> _Limit:
        with limit.lock:
            if limit.local is not None and limit.outage == outage:
                return limit.local
            config = limit.config
            share = self._local_share
            params = config.params()
            scaled = RateLimitConfig(
                requests_per_second=config.requests_per_second * share,
                burst_size=max(1, math.floor(params.burst * share)),
                algorithm=config.algorithm,
                window_seconds=config.window_seconds,
                max_wait=config.max_wait,
            )
            local = _Limit(limit.name, scaled)
            local.seed = now
            limit.local, limit.outage = local, outage
            return local

    def _finish(
        self, limit: _Limit, key: str | None, now: float, admitted: bool, wait: float
    ) -> float:
        if not admitted:
            raise self._reject(limit, key, now, wait)
        return wait

    def _stored_decision(
        self, guard: StoreGuard, limit: _Limit, key: str | None, cost: int, max_wait: float
    ) -> float:
        clock = self._clock or get_clock()
        now = clock.now()
        answer = None
        if guard.should_try(now):
            try:
                answer = guard.store.reserve(
                    limit.name, key, limit.params, cost, max_wait, store_time(clock)
                )
            except store_faults() as error:
                guard.failed(error, now)
        return self._decided(guard, limit, key, cost, max_wait, now, answer)

    async def _astored_decision(
        self, guard: StoreGuard, limit: _Limit, key: str | None, cost: int, max_wait: float
    ) -> float:
        clock = self._clock or get_clock()
        now = clock.now()
        answer = None
        if guard.should_try(now):
            store = guard.store
            ask = (limit.name, key, limit.params, cost, max_wait, store_time(clock))
            try:
                areserve = getattr(store, "areserve", None)
                answer = await areserve(*ask) if areserve is not None else store.reserve(*ask)
            except store_faults() as error:
                guard.failed(error, now)
        return self._decided(guard, limit, key, cost, max_wait, now, answer)

    def _decided(
        self,
        guard: StoreGuard,
        limit: _Limit,
        key: str | None,
        cost: int,
        max_wait: float,
        now: float,
        answer: tuple[bool, float] | None,
    ) -> float:
        """The store's answer, or (``None``: it did not give one) the local decision."""
        if answer is None:
            admitted, wait = self._local_decision(guard, limit, key, cost, max_wait, now)
        else:
            guard.answered()
            admitted, wait = answer
        return self._finish(limit, key, now, admitted, wait)

    def _reserve(
        self, name: str, key: str | None, cost: int, max_wait: float | None
    ) -> tuple[Clock, float]:
        limit = self._limit(name)
        limit.check_cost(cost)
        if max_wait is None:
            max_wait = limit.config.max_wait
        longest = math.inf if max_wait is None else to_seconds("max_wait", max_wait)
        clock = self._clock or get_clock()
        guard = self._store_guard()
        if guard is not None:
            return clock, self._stored_decision(guard, limit, key, cost, longest)
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
        guard = self._store_guard()
        if guard is not None:
            limit = self._limit(name)
            limit.check_cost(cost)
            if max_wait is None:
                max_wait = limit.config.max_wait
            longest = math.inf if max_wait is None else to_seconds("max_wait", max_wait)
            clock = self._clock or get_clock()
            wait = await self._astored_decision(guard, limit, key, cost, longest)
            if wait > 0:
                await clock.asleep(wait)
            return wait
        clock, wait = self._reserve(name, key, cost, max_wait)
        if wait > 0:
            await clock.asleep(wait)
        return wait

    def block(self, name: str, key: str | None = None, *, seconds: float) -> None:
        """Refuse ``key`` of ``name`` for the next ``seconds`` (a server said "come back")."""
        limit = self._limit(name)
        duration = to_seconds("seconds", seconds)
        clock = self._clock or get_clock()
        now = clock.now()
        guard = self._store_guard()
        if guard is not None and guard.should_try(now):
            try:
                guard.store.block(name, key, duration, store_time(clock))
            except store_faults() as error:
                guard.failed(error, now)
            else:
                guard.answered()
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
        clock = self._clock or get_clock()
        now = clock.now()
        params = limit.params
        guard = self._store_guard()
        if guard is not None and guard.should_try(now):
            # A shared store has no "lower the remaining" step: spend what the server says is
            # gone instead (stricter when the key had already spent some, never looser).
            capacity = params.burst if params.algorithm in (_TOKEN, _LEAKY) else params.limit
            spent = min(capacity, capacity - remaining)
            if spent > 0:
                try:
                    guard.store.reserve(name, key, params, spent, math.inf, store_time(clock))
                except store_faults() as error:
                    guard.failed(error, now)
                else:
                    guard.answered()
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
        guard = self._store_guard()
        if guard is not None:
            now = (self._clock or get_clock()).now()
            try:
                guard.store.reset(name, key)
            except store_faults() as error:
                guard.failed(error, now)  # the stored state stays; the local one goes
            else:
                guard.answered()
        with limit.lock:
            limit.states.pop(key, None)
            limit.blocked.pop(key, None)


_LEAKY = RateLimitAlgorithm.LEAKY_BUCKET
_UNRESOLVED = object()
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
