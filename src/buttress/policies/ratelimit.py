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
* A waiter that gives up before its slot (its task cancelled, a timeout around it) hands the slot
  back: the most recent reservation is undone, an earlier one goes to the next request that can
  wait for it (see the machine's "Giving a reservation back" for what is exact). Limits kept in a
  shared store have no such step: there, a waiter that gives up forfeits its slot.

Exactness: each decision runs under the name's lock, so concurrent callers never over-admit.
Memory: a key whose state has returned to "fresh" is forgotten by a sweep that runs when the
number of keys doubles, so millions of one-off keys do not accumulate.

Every cost is checked by one function (:meth:`_Limit.check_cost`) on every path; the hot path
skips it only for the ``int`` 1 itself, which every limit admits.

Refusals are a hot path under overload. A refusal builds the exception and nothing else unless it
is read (even its message is written when first read): the
:class:`buttress.events.CallRejected` event (logged at DEBUG, with the key and the
``retry_after``) is built only when :func:`buttress.events.wanted`, and the WARNING goes through
:class:`buttress.events.Repeats`: the first refusal of a limit after a quiet interval, then one
summary line per interval ("1,234 requests refused by rate limit 'erp' in the last 10 s").

Server hints: :meth:`RateLimiter.block` refuses a key until a time (a 429 with ``Retry-After``);
:meth:`RateLimiter.set_remaining` lowers what is left when a server says its quota is nearly
spent.

A limiter that opened its store from a URL (``storage="sqlite:///..."``, or
``BUTTRESS_STORAGE_URL``) owns it: :meth:`RateLimiter.close` / :meth:`RateLimiter.aclose`, or
``with`` / ``async with``, release it. A store or client passed in belongs to the caller and is
never closed.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from .. import events as _events
from .._callables import guarded_kind, resolved
from .._config import boolean, integer, nonblank, number, optional_seconds
from .._config import seconds as to_seconds
from ..backends import open_storage
from ..clock import Clock, checked_clock, get_clock
from ..errors import RateLimitExceeded, UnknownRateLimit
from ..machines.ratelimit import (
    EPSILON,
    FAR_AHEAD,
    Held,
    Params,
    RateLimitAlgorithm,
    State,
    cancel,
    idle,
    one_step,
    reserve_held,
    spent,
    take_hole,
    with_remaining,
)
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
# The hot path tests ``cost is _ONE``: the int 1 is one cached object in CPython, while True and
# 1.0 (equal to 1, and refused by ``check_cost``) are other objects and take the checked path.
_ONE: Final = 1


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
            ``requests_per_second * window_seconds`` rounded down to whole requests (2.5 admits
            2 per window: a window never admits more than the rate allows). A product below 1
            would admit no request at all and is refused; lengthen the window instead
            (0.1/s needs ``window_seconds >= 10``).
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
        _check_window(self, 1.0, "")

    def params(self) -> Params:
        """The numbers the algorithm works with."""
        rate = float(self.requests_per_second)
        burst = self.burst_size if self.burst_size is not None else max(1, math.floor(rate))
        limit = math.floor(rate * self.window_seconds + EPSILON)
        return Params(self.algorithm, 1.0 / rate, burst, self.window_seconds, limit)


def _check_window(config: RateLimitConfig, share: float, scaled: str) -> None:
    """Refuse a window limit that admits no whole request per window (with ``share`` of it)."""
    if config.algorithm not in (RateLimitAlgorithm.FIXED_WINDOW, RateLimitAlgorithm.SLIDING_WINDOW):
        return
    rate = float(config.requests_per_second) * share
    per_window = rate * config.window_seconds
    if per_window + EPSILON < 1:
        raise ValueError(
            f"requests_per_second * window_seconds{scaled} = {per_window:g} admits no whole "
            f"request per window; use window_seconds >= {1 / rate:g}"
        )


def _check_key(key: object) -> str | None:
    """``key`` when it is a rate-limit key: a ``str`` (each its own state; ``""`` too) or ``None``
    (the limit's shared state). Other values are refused rather than turned into strings: ``5``
    and ``"5"`` would be one key in a shared store and two in memory."""
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str or None (the limit's shared state), got {key!r}")
    return key


class _Limit:
    """One configured name, in this process: its parameters, its keys' states, its lock."""

    __slots__ = (
        "blocked",
        "config",
        "epoch",
        "first_line",
        "holes",
        "interval",
        "local",
        "lock",
        "name",
        "next_sweep",
        "outage",
        "params",
        "repeats",
        "seed",
        "states",
        "step",
        "tau",
        "token",
    )

    def __init__(self, name: str, config: RateLimitConfig) -> None:
        self.name = name
        self.config = config
        self.params = config.params()
        self.lock = threading.Lock()
        self.states: dict[str | None, State] = {}
        self.blocked: dict[str | None, float] = {}
        self.holes: dict[str | None, list[Held]] = {}  # slots given back by waiters (machine)
        self.epoch = 0  # moves when states are replaced: a reservation from before gives nothing
        self.next_sweep = 1024
        # The token bucket's single-unit decision is inlined in check_limit (the hottest path);
        # the other algorithms run the machine's in-place step.
        self.token = self.params.algorithm is _TOKEN
        self.step = one_step(self.params)
        self.interval = self.params.interval
        self.tau = self.params.tau
        self.local: _Limit | None = None  # this process's share, during a store outage
        self.outage = 0  # which outage ``local`` belongs to
        self.seed: float | None = None  # keys first seen start spent at this time (outages)
        # A refusal's first log line is built here, not per refusal.
        self.repeats = _events.Repeats(
            "ratelimit", name, f"requests refused by rate limit {name!r}"
        )
        self.first_line = (
            f"rate limit {name!r} is refusing requests ({config.requests_per_second:g}/s, "
            f"{self.params.algorithm.value})"
        ).__str__

    def check_cost(self, cost: object) -> int:
        """The cost of a request, checked alike on every path: an int from 1 to the capacity."""
        integer("cost", cost, minimum=1)
        capacity = self.params.capacity
        if cast(int, cost) > capacity:
            what = "burst" if self.params.algorithm.name.endswith("BUCKET") else "limit per window"
            raise ValueError(
                f"cost {cost} exceeds the {what} of rate limit {self.name!r} ({capacity}); "
                "such a request could never be admitted"
            )
        return cast(int, cost)

    def decide(
        self, key: str | None, now: float, cost: int, max_wait: float
    ) -> tuple[bool, float, Held | None]:
        """(admitted, wait or retry_after, what a waiter holds); call with the lock held."""
        if key is not None and key.__class__ is not str:
            _check_key(key)  # before any look-up: an unhashable key would fail there, unnamed
        if self.blocked:
            until = self.blocked.get(key)
            if until is not None:
                if now < until:
                    return False, until - now, None
                del self.blocked[key]
        if self.holes and max_wait > 0.0:
            holes = self.holes.get(key)
            if holes:
                held = take_hole(holes, now, cost, max_wait)
                if not holes:
                    del self.holes[key]
                if held is not None:
                    return True, max(0.0, held.start - now), held
        states = self.states
        state = states.get(key)
        if state is None and self.seed is not None:
            state = spent(self.seed, self.params)
        new_state, wait, held = reserve_held(state, now, cost, max_wait, self.params)
        if new_state is None:
            return False, wait, None
        states[key] = new_state
        if len(states) >= self.next_sweep:
            self.sweep(now)
        return True, wait, held

    def take(
        self, key: str | None, now: float, cost: int, max_wait: float, clock: Clock
    ) -> tuple[bool, float, _Ticket | _Nothing]:
        """:meth:`decide` under the lock, with a ticket to give the slot back by."""
        with self.lock:
            if cost is _ONE and not self.blocked:
                # Admitted at once, a waiting request is decided as a check is: by the step.
                try:
                    state = self.states.get(key)
                except TypeError:  # an unhashable key (checking every key would cost every call)
                    _check_key(key)  # never a str, so this raises, naming it
                    raise
                if state is not None and not self.step(state, now):
                    return True, 0.0, _NOTHING
            admitted, wait, held = self.decide(key, now, cost, max_wait)
            epoch = self.epoch
        if held is None:
            return admitted, wait, _NOTHING
        return admitted, wait, _Ticket(self, key, held, epoch, clock)

    def give_back(self, key: str | None, held: Held, epoch: int, now: float) -> None:
        with self.lock:
            state = self.states.get(key)
            if state is None or epoch != self.epoch:
                return  # reset or replaced meanwhile: there is nothing of it to give back
            holes = self.holes.get(key, [])
            cancel(state, holes, held, now, self.params)
            if holes:
                self.holes[key] = holes
            else:
                self.holes.pop(key, None)

    def block(self, key: str | None, until: float) -> None:
        with self.lock:
            if until > self.blocked.get(key, -math.inf):
                self.blocked[key] = until

    def lower(self, key: str | None, now: float, remaining: int) -> None:
        with self.lock:
            self.states[key] = with_remaining(self.states.get(key), now, remaining, self.params)
            self.holes.pop(key, None)
            self.epoch += 1

    def forget(self, key: str | None) -> None:
        with self.lock:
            self.states.pop(key, None)
            self.blocked.pop(key, None)
            self.holes.pop(key, None)
            self.epoch += 1

    def sweep(self, now: float) -> None:
        params = self.params
        for key in [k for k, s in self.states.items() if idle(s, now, params)]:
            del self.states[key]
            self.holes.pop(key, None)  # an idle state's holes are all in the past
        self.next_sweep = max(1024, 2 * len(self.states))

    def reject(self, key: str | None, now: float, retry_after: float) -> RateLimitExceeded:
        """Count and report one refusal; returns the error to raise."""
        self.repeats.hit(now, self.first_line)
        if _events.wanted("ratelimit"):
            _events.emit(
                _events.CallRejected(
                    policy="ratelimit",
                    name=self.name,
                    at=now,
                    reason="rate_limited",
                    retry_after=retry_after,
                    key=key,
                )
            )
        message = _Refusal((self.name, key, retry_after))
        return RateLimitExceeded(message, retry_after=retry_after, name=self.name)  # type: ignore[arg-type]


class _Refusal(tuple[str, str | None, float]):
    """A refusal's message, written when it is read: under overload refusals are raised far
    more often than printed, and writing the text would cost as much as raising the error."""

    __slots__ = ()

    def __str__(self) -> str:
        name, key, retry_after = self
        where = name if key is None else f"{name}[{key}]"
        return f"rate limit {where} exceeded; retry after {retry_after:.3f}s"

    def __repr__(self) -> str:
        return repr(str(self))


class _Ticket:
    """A waiter's reservation: leaving its ``with`` block by an exception gives the slot back."""

    __slots__ = ("clock", "epoch", "held", "key", "limit")

    def __init__(
        self, limit: _Limit, key: str | None, held: Held, epoch: int, clock: Clock
    ) -> None:
        self.limit, self.key, self.held, self.epoch, self.clock = limit, key, held, epoch, clock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        # Any exception out of the sleep (a cancelled task, a deadline, KeyboardInterrupt) means
        # the request will not run at its slot.
        if exc[0] is not None:
            self.limit.give_back(self.key, self.held, self.epoch, self.clock.now())


class _Nothing:
    """The ticket of a reservation that cannot be given back (a stored limit, no wait)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING: Final = _Nothing()


class _Shared:
    """A limiter's shared store, and how it decides while the store does not answer."""

    __slots__ = ("fail_mode", "guard", "local_share", "owned", "retry_interval", "store")

    def __init__(
        self, store: Any, *, owned: bool, fail_mode: str, retry_interval: float, local_share: float
    ) -> None:
        self.store = store
        self.owned = owned  # opened from a URL by this limiter, so closed by it
        self.guard = StoreGuard(store, "rate limiter", fail_mode, retry_interval)
        self.fail_mode = fail_mode
        self.retry_interval = retry_interval
        self.local_share = local_share

    def reserve_step(
        self, limit: _Limit, key: str | None, cost: int, max_wait: float, clock: Clock
    ) -> tuple[str, str | None, Params, int, float, float | None]:
        """The arguments of the store's ``reserve`` / ``areserve``."""
        return limit.name, key, limit.params, cost, max_wait, store_time(clock)

    def decided(
        self,
        limit: _Limit,
        key: str | None,
        cost: int,
        max_wait: float,
        clock: Clock,
        now: float,
        answer: tuple[bool, float] | None,
    ) -> tuple[float, _Ticket | _Nothing]:
        """The store's answer, or (``None``: it gave none) the decision without it."""
        ticket: _Ticket | _Nothing = _NOTHING
        if answer is not None:
            admitted, wait = answer
        elif self.fail_mode == "open":
            admitted, wait = True, 0.0
        elif self.fail_mode == "closed":
            admitted, wait = False, self.retry_interval
        else:
            local = self.local(limit, now)
            admitted, wait, ticket = local.take(key, now, cost, max_wait, clock)
        if not admitted:
            raise limit.reject(key, now, wait)
        return wait, ticket

    def local(self, limit: _Limit, now: float) -> _Limit:
        """This process's share of ``limit`` for the current outage.

        Each outage starts afresh with every key's share *spent* as of its start: what the store
        admitted just before is unknown, so the local share never adds a burst on top of it.
        """
        outage = self.guard.outages
        local = limit.local
        if local is not None and limit.outage == outage:
            return local
        with limit.lock:
            if limit.local is not None and limit.outage == outage:
                return limit.local
            config = limit.config
            share = self.local_share
            scaled = RateLimitConfig(
                requests_per_second=config.requests_per_second * share,
                burst_size=max(1, math.floor(limit.params.burst * share)),
                algorithm=config.algorithm,
                window_seconds=config.window_seconds,
                max_wait=config.max_wait,
            )
            local = _Limit(limit.name, scaled)
            local.seed = now
            limit.local, limit.outage = local, outage
            return local


class _Asking:
    """Around one step on the store: a fault of the store (not of the caller) starts or continues
    an outage and is swallowed, so the step has no answer; an answer ends an outage."""

    __slots__ = ("guard", "now")

    def __init__(self, guard: StoreGuard, now: float) -> None:
        self.guard, self.now = guard, now

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if exc_type is None:
            self.guard.answered()
            return False
        if exc is not None and isinstance(exc, store_faults()):
            self.guard.failed(exc, self.now)
            return True
        return False


def _ask(guard: StoreGuard, now: float, step: Callable[..., T], *args: Any) -> T | None:
    """``step(*args)`` on the store; ``None`` when not asked (an outage) or with no answer."""
    answer = None
    if guard.should_try(now):
        with _Asking(guard, now):
            answer = step(*args)
    return answer


async def _aask(
    guard: StoreGuard, now: float, step: Callable[..., Awaitable[T]], *args: Any
) -> T | None:
    """:func:`_ask` for the store's ``a``-named steps."""
    answer = None
    if guard.should_try(now):
        with _Asking(guard, now):
            answer = await step(*args)
    return answer


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

    A limiter that opened its store from a URL closes it in :meth:`close` / :meth:`aclose` (or at
    the end of a ``with`` / ``async with`` block); a store or client passed in is left open.
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
        self._clock = checked_clock(clock)
        self._storage = storage
        self._fail_mode = check_fail_mode(fail_mode)
        self._local_share = number(
            "local_share", local_share, minimum=0.0, maximum=1.0, exclusive_minimum=True
        )
        self._retry_interval = to_seconds("retry_interval", retry_interval, allow_zero=False)
        # None (memory), the shared store, or a marker: the process default (storage=None, from
        # BUTTRESS_STORAGE_URL) is resolved at first use, so the environment is read then.
        self._shared_store: _Shared | object | None = _UNRESOLVED
        self._shared_lock = threading.Lock()
        if storage is not None:
            self._shared()  # a bad URL or file is an error here, not at the first call

    def _shared(self) -> _Shared | None:
        shared = self._shared_store
        if shared is _UNRESOLVED or shared is _CLOSED:
            with self._shared_lock:
                if self._shared_store is _UNRESOLVED:
                    store = open_storage(self._storage)
                    self._shared_store = (
                        None
                        if store is None
                        else _Shared(
                            store,
                            # a URL (or the environment's) was opened here; an object was given
                            owned=self._storage is None or isinstance(self._storage, str),
                            fail_mode=self._fail_mode,
                            retry_interval=self._retry_interval,
                            local_share=self._local_share,
                        )
                    )
                elif self._shared_store is _CLOSED:
                    raise RuntimeError("this RateLimiter is closed")
                shared = self._shared_store
        return cast("_Shared | None", shared)

    @property
    def storage(self) -> str:
        """Where the state lives (``memory://`` or the store's URL)."""
        shared = self._shared()
        return "memory://" if shared is None else str(getattr(shared.store, "url", shared.store))

    @property
    def degraded(self) -> bool:
        """Whether the shared store is unreachable and decisions are being made without it."""
        shared = self._shared_store
        if shared is _CLOSED:
            return False
        shared = self._shared()
        return shared is not None and shared.guard.degraded

    def configure(self, name: str, config: RateLimitConfig) -> None:
        """Set (or replace) the limit called ``name``; replacing forgets its keys' state."""
        nonblank("name", name)
        if not isinstance(config, RateLimitConfig):
            raise TypeError(f"config must be a RateLimitConfig, got {config!r}")
        if self._local_share < 1:
            # During a store outage this process decides on that share of the limit alone.
            _check_window(config, self._local_share, f" * local_share ({self._local_share:g})")
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

    # -- deciding --------------------------------------------------------------------------------

    def check_limit(self, name: str, key: str | None = None, cost: int = 1) -> None:
        """Admit one request now, or raise :class:`RateLimitExceeded` with ``retry_after``.

        ``key`` is a ``str`` (each key has its own state) or ``None`` (the name's shared state);
        any other key is a ``TypeError``, as in every method that takes one.
        """
        limit = self._limits.get(name)
        if limit is None:
            limit = self._limit(name)
        if self._shared_store is not None:
            shared = self._shared()
            if shared is not None:
                self._stored(shared, limit, _check_key(key), limit.check_cost(cost), 0.0)
                return
        now = (self._clock or get_clock()).now()
        if cost is _ONE:
            with limit.lock:
                try:
                    state = limit.states.get(key)
                except TypeError:  # an unhashable key; any other is checked when first seen
                    _check_key(key)  # never a str, so this raises, naming it
                    raise
                if state is not None and not limit.blocked:
                    if limit.token:
                        # GCRA for one unit, in place: the machine's one_step, inlined.
                        tat = state[0] if state[0] > now else now
                        wait = tat + limit.interval - limit.tau - now
                        admitted = wait <= EPSILON
                        if admitted:
                            state[0] = tat + limit.interval
                    else:
                        wait = limit.step(state, now)
                        admitted = not wait
                else:
                    admitted, wait, _ = limit.decide(key, now, 1, 0.0)
        else:
            limit.check_cost(cost)
            with limit.lock:
                admitted, wait, _ = limit.decide(key, now, cost, 0.0)
        if not admitted:
            raise limit.reject(key, now, wait)
        if _events.HOOKS:
            _events.emit(
                _events.CallCompleted(
                    policy="ratelimit", name=name, at=now, outcome="admitted", duration=0.0
                )
            )

    async def acheck_limit(self, name: str, key: str | None = None, cost: int = 1) -> None:
        """Async twin of :meth:`check_limit`: a shared store is asked without blocking the loop
        (in memory it never suspends)."""
        if self._shared_store is not None:
            shared = self._shared()
            if shared is not None:
                limit = self._limit(name)
                await self._astored(shared, limit, _check_key(key), limit.check_cost(cost), 0.0)
                return
        self.check_limit(name, key, cost)

    def acquire(
        self, name: str, key: str | None = None, cost: int = 1, max_wait: float | None = None
    ) -> float:
        """Wait until the request may run; returns the seconds waited.

        The slot is reserved on arrival (first come, first served). Raises
        :class:`RateLimitExceeded` at once when the slot is further away than ``max_wait``
        (default: the config's ``max_wait``; None waits as long as needed). Interrupted while it
        waits (a deadline, ``KeyboardInterrupt``), it gives its slot back.
        """
        wait, ticket = self._reserve(name, key, cost, max_wait)
        if wait > 0:
            with ticket:
                (self._clock or get_clock()).sleep(wait)
        return wait

    async def aacquire(
        self, name: str, key: str | None = None, cost: int = 1, max_wait: float | None = None
    ) -> float:
        """Async twin of :meth:`acquire`; a cancelled waiter gives its slot back."""
        if self._shared_store is None:  # in memory, the decision never suspends
            wait, ticket = self._reserve(name, key, cost, max_wait)
        else:
            wait, ticket = await self._areserve(name, key, cost, max_wait)
        if wait > 0:
            with ticket:
                await (self._clock or get_clock()).asleep(wait)
        return wait

    def _waiting(self, name: str, cost: int, max_wait: float | None) -> tuple[_Limit, int, float]:
        """The limit, the checked cost and the longest wait of an ``acquire``."""
        limit = self._limit(name)
        if cost is not _ONE:
            cost = limit.check_cost(cost)
        if max_wait is None:
            max_wait = limit.config.max_wait
        return limit, cost, math.inf if max_wait is None else to_seconds("max_wait", max_wait)

    def _reserve(
        self, name: str, key: str | None, cost: int, max_wait: float | None
    ) -> tuple[float, _Ticket | _Nothing]:
        limit, cost, longest = self._waiting(name, cost, max_wait)
        shared = self._shared()
        if shared is not None:
            return self._stored(shared, limit, _check_key(key), cost, longest)
        return self._local(limit, key, cost, longest)

    async def _areserve(
        self, name: str, key: str | None, cost: int, max_wait: float | None
    ) -> tuple[float, _Ticket | _Nothing]:
        limit, cost, longest = self._waiting(name, cost, max_wait)
        shared = self._shared()
        if shared is not None:
            return await self._astored(shared, limit, _check_key(key), cost, longest)
        return self._local(limit, key, cost, longest)

    def _local(
        self, limit: _Limit, key: str | None, cost: int, max_wait: float
    ) -> tuple[float, _Ticket | _Nothing]:
        clock = self._clock or get_clock()
        now = clock.now()
        admitted, wait, ticket = limit.take(key, now, cost, max_wait, clock)
        if not admitted:
            raise limit.reject(key, now, wait)
        return wait, ticket

    def _stored(
        self, shared: _Shared, limit: _Limit, key: str | None, cost: int, max_wait: float
    ) -> tuple[float, _Ticket | _Nothing]:
        clock = self._clock or get_clock()
        now = clock.now()
        step = shared.reserve_step(limit, key, cost, max_wait, clock)
        answer = _ask(shared.guard, now, shared.store.reserve, *step)
        return shared.decided(limit, key, cost, max_wait, clock, now, answer)

    async def _astored(
        self, shared: _Shared, limit: _Limit, key: str | None, cost: int, max_wait: float
    ) -> tuple[float, _Ticket | _Nothing]:
        clock = self._clock or get_clock()
        now = clock.now()
        step = shared.reserve_step(limit, key, cost, max_wait, clock)
        answer = await _aask(shared.guard, now, shared.store.areserve, *step)
        return shared.decided(limit, key, cost, max_wait, clock, now, answer)

    # -- server hints and resets -----------------------------------------------------------------

    def _begin(self, name: str, key: object) -> tuple[_Limit, Clock, float, _Shared | None]:
        _check_key(key)
        limit = self._limit(name)
        clock = self._clock or get_clock()
        return limit, clock, clock.now(), self._shared()

    def block(self, name: str, key: str | None = None, *, seconds: float) -> None:
        """Refuse ``key`` of ``name`` for the next ``seconds`` (a server said "come back")."""
        duration = _ahead("seconds", seconds)
        limit, clock, now, shared = self._begin(name, key)
        if shared is not None:
            _ask(shared.guard, now, shared.store.block, name, key, duration, store_time(clock))
        limit.block(key, now + duration)

    async def ablock(self, name: str, key: str | None = None, *, seconds: float) -> None:
        """Async twin of :meth:`block`."""
        duration = _ahead("seconds", seconds)
        limit, clock, now, shared = self._begin(name, key)
        if shared is not None:
            await _aask(
                shared.guard, now, shared.store.ablock, name, key, duration, store_time(clock)
            )
        limit.block(key, now + duration)

    def set_remaining(
        self, name: str, key: str | None = None, *, remaining: int, reset_after: float
    ) -> None:
        """A server says only ``remaining`` requests are left for ``reset_after`` seconds.

        ``remaining == 0`` blocks the key until the reset. Otherwise the key may make at most
        ``remaining`` more requests at once; the local rate still applies after that, so the
        local limiter never admits more than the server allows nor more than its own limit.
        A shared store has no "lower the remaining" step: what the server says is gone is spent
        there instead (stricter when the key had already spent some, never looser).
        """
        seconds = _reset_after(remaining, reset_after)
        if not remaining:
            self.block(name, key, seconds=seconds)
            return
        limit, clock, now, shared = self._begin(name, key)
        gone = limit.params.capacity - remaining
        if shared is not None and gone > 0:
            _ask(
                shared.guard,
                now,
                shared.store.reserve,
                *shared.reserve_step(limit, key, gone, math.inf, clock),
            )
        limit.lower(key, now, remaining)

    async def aset_remaining(
        self, name: str, key: str | None = None, *, remaining: int, reset_after: float
    ) -> None:
        """Async twin of :meth:`set_remaining`."""
        seconds = _reset_after(remaining, reset_after)
        if not remaining:
            await self.ablock(name, key, seconds=seconds)
            return
        limit, clock, now, shared = self._begin(name, key)
        gone = limit.params.capacity - remaining
        if shared is not None and gone > 0:
            await _aask(
                shared.guard,
                now,
                shared.store.areserve,
                *shared.reserve_step(limit, key, gone, math.inf, clock),
            )
        limit.lower(key, now, remaining)

    def reset(self, name: str, key: str | None = None) -> None:
        """Forget the state (and any block) of ``key`` of ``name``."""
        limit, _, now, shared = self._begin(name, key)
        if shared is not None:
            _ask(shared.guard, now, shared.store.reset, name, key)  # if not, the stored state stays
        limit.forget(key)

    async def areset(self, name: str, key: str | None = None) -> None:
        """Async twin of :meth:`reset`."""
        limit, _, now, shared = self._begin(name, key)
        if shared is not None:
            await _aask(shared.guard, now, shared.store.areset, name, key)
        limit.forget(key)

    # -- closing ---------------------------------------------------------------------------------

    def _detach(self) -> _Shared | None:
        """Mark the limiter closed; the store it owns, if any, for the caller to close."""
        with self._shared_lock:
            shared, self._shared_store = self._shared_store, _CLOSED
        return shared if isinstance(shared, _Shared) and shared.owned else None

    def close(self) -> None:
        """Close the store this limiter opened from a URL; a store or client passed in stays
        open. The limiter refuses calls afterwards; closing twice is harmless."""
        shared = self._detach()
        if shared is not None:
            shared.store.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close` (closes the store's asyncio connections too)."""
        shared = self._detach()
        if shared is not None:
            await shared.store.aclose()

    def __enter__(self) -> RateLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RateLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _reset_after(remaining: object, reset_after: object) -> float:
    integer("remaining", remaining, minimum=0)
    return _ahead("reset_after", reset_after)


def _ahead(field: str, value: object) -> float:
    """Seconds a key is refused for, checked alike whatever the storage: no further ahead than
    a stored state may reach (ten years, :data:`~buttress.machines.ratelimit.FAR_AHEAD`)."""
    duration = to_seconds(field, value)
    if duration > FAR_AHEAD:
        raise ValueError(f"{field} must be at most {FAR_AHEAD:g} s (ten years), got {value!r}")
    return duration


_UNRESOLVED = object()
_CLOSED = object()
_GLOBAL = RateLimiter()


def get_rate_limiter() -> RateLimiter:
    """The process-wide :class:`RateLimiter`."""
    return _GLOBAL


class RateLimit:
    """A named limit as a policy: decorator, ``call`` and ``acall``.

    Args:
        name: the configured limit to apply.
        limiter: the limiter holding it (default: :func:`get_rate_limiter`, looked up per call).
        key: a fixed key (a ``str``, or ``None``: the limit's shared state), or
            ``(*args, **kwargs) -> key`` computing it from the call.
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
        self.name = nonblank("name", name)
        if limiter is not None and not isinstance(limiter, RateLimiter):
            raise TypeError(f"limiter must be a RateLimiter, got {limiter!r}")
        self.limiter = limiter
        self.key = key if callable(key) else _check_key(key)
        self.wait = boolean("wait", wait)
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
            await limiter.acheck_limit(self.name, key)

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        is_async = guarded_kind("rate_limit", fn)
        # The common use (a fixed key, no waiting) goes straight to check_limit: a refusal is a
        # hot path under overload, and every frame it unwinds costs.
        policy = self
        if is_async:
            aadmit = self._aadmit

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                limiter = policy.limiter or _GLOBAL
                if policy.wait or callable(policy.key):
                    await aadmit(args, kwargs)
                elif limiter._shared_store is None:  # in memory: no coroutine to await
                    limiter.check_limit(policy.name, policy.key)
                else:
                    await limiter.acheck_limit(policy.name, policy.key)
                return await fn(*args, **kwargs)

            return cast(F, async_wrapper)
        admit = self._admit

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if policy.wait or callable(policy.key):
                admit(args, kwargs)
            else:
                (policy.limiter or _GLOBAL).check_limit(policy.name, policy.key)
            return fn(*args, **kwargs)

        return cast(F, wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` once admitted."""
        self._admit(args, kwargs)
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await what ``fn(*args, **kwargs)`` returns (a plain value as it is), once admitted."""
        await self._aadmit(args, kwargs)
        return cast(T, await resolved(fn(*args, **kwargs)))


#: Decorator spelling of :class:`RateLimit`: ``@rate_limit("erp_api")`` (one signature, not two
#: that could drift apart).
rate_limit = RateLimit
