"""The protocol engine: one failing call's way down its fallback protocol.

Theory of operation
-------------------
A :class:`ProtocolHost` holds one team's protocol state: the protocol per resource type (given,
or the default of :mod:`buttress.protocol.defaults`), the target pools, which monitored resources
are known CRITICAL or UNAVAILABLE, the breakers and adaptive limits the protocols opened or scaled
down, the answers cached for USE_CACHE, the durable queue for QUEUE_REQUEST, and a record of the
steps taken (for the health report).

**The success path.** :meth:`ProtocolHost.call` / :meth:`ProtocolHost.acall` look up a cached
*plan* for the resource type (rebuilt only when a protocol, pool, breaker or limit changes). When
nothing is in force but the protocol (no targets, no open breaker, no scaled limit, no timeout),
the call runs in one ``try``; a result is cached if the protocol has a USE_CACHE step; nothing
else is read or built. Only a failure builds a :class:`_Run`.

**The walk.** A :class:`_Run` decides everything in one generator (:meth:`_Run.walk`) that
*yields commands* (a float: sleep that long on the clock; a :class:`_Command`: run this call
against this target) and receives each command's outcome. Three thin drivers run it: sync, async
and async streaming. So a ``def`` and an ``async def`` go through the very same decisions. The
walk:

1. runs the call (with a target chosen from the pool, skipping targets whose monitor says
   CRITICAL or UNAVAILABLE, when targets are registered);
2. classifies a failure (:mod:`buttress.protocol.classify`): a request error propagates at once;
3. otherwise takes the protocol's steps in order until one gives an answer; when none does, the
   last error propagates (the pool's "all targets cooling" error when that is what stopped it).

**Deadlines.** The walk reads the deadline in force on its clock (an enclosing
:class:`~buttress.Timeout`, the protocol's own ``timeout``, or ``with_resilience``'s) once, and
never sleeps past it: a backoff or a wait for a cooling target that would not leave time for the
shortest attempt seen so far ends the step instead. Once the deadline has passed, only the steps
that answer at once (USE_CACHE, QUEUE_REQUEST, CIRCUIT_BREAK) still run. The attempts themselves are
bounded by the enclosing timeout, which cancels (async) or abandons (sync) them.

**Routes.** A failure on a target that matches one of the resource's routes (``routes=`` of
``register_targets``: ``"context_window"``, an exception type or a predicate, to a chain's name)
is the request's fit for that target, not the target's health: the target is reported with
``cool=False``, never retried, and :meth:`_Run.failed` raises :class:`_Reroute`, which
:meth:`_Run.walk` catches to go on over the named chain (its own :class:`TargetPool`): each of
its targets once, in order, within the same deadline, a routed or resource failure passing to
the next. A route to a chain not registered leaves the error to the protocol as before.

**Known bad resources.** A resource whose monitor says CRITICAL or UNAVAILABLE does not get
retried (an exhausted quota does not recover in a backoff), and a target with the same name as
such a monitor is skipped when the first target is chosen (the call switches at once) and passed
over by a switch while another target is left.

**Writes.** A call marked ``write=True`` goes to the pool's first registered target (the
primary, :attr:`TargetPool.primary`, whatever order the pool prefers for reads) only:
SWITCH_PROVIDER is skipped for it, so a write is never sent to a replica; while the primary
cools down (or its monitor says it is down) the write does not wait out the cooldown: a RETRY
step waits for the primary no longer than its backoff, then a QUEUE_REQUEST step queues it, or
it fails with the primary's error or :class:`~buttress.AllTargetsCooling`. It is never
answered from a cache (that would report a write that did not happen), and its CIRCUIT_BREAK
step is skipped: the primary's cooldown already fails later writes fast, and the resource's
breaker would refuse the reads the replicas still serve.

**Replays.** A queued call's handler runs the call under the protocol again (a write on the
primary, with its target as the first run had it). A replay that fails is not queued anew: the
queue retries it with its own backoff and dead letters. A method's replays run on the instance
whose call registered the handler (the queue knows handlers by name).

**Streams.** An async generator function is streamed: the walk's "call" is getting the first
chunk, so a failure before it walks the protocol as any other call (switching is transparent);
a failure after it raises :class:`~buttress.StreamInterrupted` with the chunks received and the
target, never a splice of two targets' output.

Every step emits a :class:`~buttress.events.ProtocolStep` (logged at INFO; a failure is logged
at WARNING the first time, then summarised once per interval per operation and strategy, its
detail at DEBUG), counted by the Prometheus hook and recorded in the ``protocols`` report.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import random as _random
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Generator, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import events as _events
from .._callables import RepeatedWarnings
from .._config import callable_name
from .._deadline import deadline_on
from ..clock import Clock, checked_clock, get_clock, is_real
from ..degradation import DegradationManager, ServiceCategory
from ..errors import AllTargetsCooling, CircuitOpenError, RequestQueued, StreamInterrupted
from ..health.types import ResourceType
from ..machines.backoff import Jitter, combine_with_retry_after
from ..policies.adaptive import AdaptiveConcurrency
from ..policies.circuit import (
    CircuitBreaker,
    CircuitState,
    circuit_breakers,
    get_circuit_breaker,
)
from ..policies.fallback import _MISSING as _UNCACHED
from ..policies.fallback import FallbackStrategy, _Cache
from ..policies.timeout import Timeout
from ..queue import _CURRENT as _replaying
from ..queue import RequestQueue
from .action import FallbackAction, FallbackProtocol, label
from .classify import retry_after_of
from .defaults import default_protocol
from .targets import TargetChoice, TargetPool, _current_target, is_context_window_error

__all__ = ["ProtocolHost", "cached_age", "compile_routes", "degraded"]

_log = logging.getLogger("buttress.protocol")

_MISSING: Any = object()
_degraded: contextvars.ContextVar[bool] = contextvars.ContextVar("buttress_degraded", default=False)
_cache_age: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "buttress_cache_age", default=None
)
#: Strategies that answer at once (no call, no wait): still taken after the deadline.
_INSTANT = frozenset(
    {FallbackStrategy.USE_CACHE, FallbackStrategy.QUEUE_REQUEST, FallbackStrategy.CIRCUIT_BREAK}
)
#: Longest wait for a cooling target outside a SWITCH_PROVIDER step (which has ``max_wait``).
_FIRST_WAIT = 30.0
_JITTER = {True: Jitter.FULL, False: Jitter.NONE, "full": Jitter.FULL, "equal": Jitter.EQUAL}


def degraded() -> bool:
    """Whether the running call is a DEGRADE_SERVICE step's run (serve a cheaper answer)."""
    return _degraded.get()


def cached_age() -> float | None:
    """Age in seconds of the answer the last protocol call here served from its cache (``None``
    when the last such call was answered fresh)."""
    return _cache_age.get()


@dataclass(frozen=True, slots=True, kw_only=True)
class _FailedStep(_events.ProtocolStep):
    """A failed step, told per call at DEBUG; the WARNING goes through :data:`_FAILED`."""

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.DEBUG


#: Failed steps: per operation and strategy, the first logged at WARNING, then summaries.
_FAILED = RepeatedWarnings("protocol", "failed protocol steps of {name!r}")


_Routes = tuple[tuple[Callable[[BaseException], bool], str], ...]

#: The error classes a route may name by a string.
_ERROR_CLASSES: dict[str, Callable[[BaseException], bool]] = {
    "context_window": is_context_window_error,
}


def compile_routes(routes: Mapping[Any, str] | None) -> _Routes:
    """``routes`` as (predicate, chain name) pairs, checked: a key is an error class's name
    (``"context_window"``), an exception type, or a predicate of the error; a value is a name."""
    if routes is None:
        return ()
    if not isinstance(routes, Mapping):
        raise TypeError(f"routes must be a mapping of error class to chain name, got {routes!r}")
    out: list[tuple[Callable[[BaseException], bool], str]] = []
    for key, name in routes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"routes[{key!r}] must name a chain (a non-empty str), got {name!r}")
        if isinstance(key, str):
            matches = _ERROR_CLASSES.get(key)
            if matches is None:
                raise ValueError(
                    f"routes: unknown error class {key!r}; use one of "
                    f"{sorted(_ERROR_CLASSES)}, an exception type or a predicate"
                )
        elif isinstance(key, type) and issubclass(key, BaseException):
            exc_type = key

            def matches(error: BaseException, exc_type: type[BaseException] = exc_type) -> bool:
                return isinstance(error, exc_type)

        elif callable(key):
            matches = key
        else:
            raise TypeError(
                f"routes: a key must be an error class's name, an exception type or a "
                f"predicate, got {key!r}"
            )
        out.append((matches, name))
    return tuple(out)


class _Reroute(Exception):
    """Raised inside a walk when a failure is routed to another chain (caught by the walk)."""

    def __init__(self, error: BaseException, chain: str, pool: TargetPool) -> None:
        super().__init__(chain)
        self.error, self.chain, self.pool = error, chain, pool


class _Command:
    """Run ``fn(*args, **kwargs)`` (through ``limiter`` when given) with ``target`` current."""

    __slots__ = ("args", "degraded", "fn", "kwargs", "limiter", "target")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        target: str | None = None,
        limiter: AdaptiveConcurrency | None = None,
        degraded: bool = False,
    ) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.target, self.limiter, self.degraded = target, limiter, degraded


class _Plan:
    """What is in force for one resource type, rebuilt when any of it changes."""

    __slots__ = (
        "breaker",
        "cache",
        "inline",
        "limiter",
        "pool",
        "pooled",
        "protocol",
        "recovering",
        "simple",
    )

    def __init__(
        self,
        protocol: FallbackProtocol,
        pool: TargetPool | None,
        breaker: CircuitBreaker | None,
        limiter: AdaptiveConcurrency | None,
        cache: _Cache | None,
        recovering: bool,
    ) -> None:
        self.protocol, self.pool, self.breaker, self.limiter = protocol, pool, breaker, limiter
        self.cache, self.recovering = cache, recovering
        self.simple = (
            pool is None and breaker is None and limiter is None and protocol.timeout is None
        )
        #: Simple, and a success at most fills the cache: the decorator runs it inline.
        self.inline = self.simple and not recovering
        #: Targets but nothing else in force: the first attempt runs inline on a chosen target.
        self.pooled = (
            pool is not None and breaker is None and limiter is None and protocol.timeout is None
        )


def _call_key(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """The cache key of a call as it comes: the function, its instance, the arguments (which may
    not be hashable: see :func:`_cache_key`)."""
    owner = getattr(fn, "__self__", None)
    return (
        getattr(fn, "__func__", fn),
        None if owner is None else id(owner),
        args,
        tuple(sorted(kwargs.items())) if kwargs else (),
    )


def _json_key(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """The cache key of a call whose arguments are not hashable: their JSON form, so a request
    dict or a list of messages is a key too. What JSON cannot hold (the ``self`` of a method,
    a client) stands aside in the key as itself, so it must be hashable; ``None`` otherwise."""
    owner = getattr(fn, "__self__", None)
    aside: list[Any] = []

    def set_aside(value: Any) -> str:
        aside.append(value)
        return f"\0{len(aside) - 1}"  # a place in the text; the value itself is in the key

    try:
        text = json.dumps([args, kwargs], sort_keys=True, default=set_aside)
        key = (getattr(fn, "__func__", fn), None if owner is None else id(owner), text, *aside)
        hash(key)
    except (TypeError, ValueError, RecursionError):
        return None
    return key


def _cache_key(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Hashable:
    """The cache key of a call: the function, its instance, and the arguments (hashed as they
    are, else by their JSON form); ``None`` when neither."""
    key = _call_key(fn, args, kwargs)
    try:
        hash(key)
    except TypeError:
        return _json_key(fn, args, kwargs)
    return key


class ProtocolHost:
    """One team's fallback protocol state and the calls run through it (module documentation).

    Args:
        team: the team's name (names breakers, limits, events).
        degradation: the team's degradation manager (DEGRADE_SERVICE raises its tier).
        queue: the durable queue for QUEUE_REQUEST (None: that step is skipped).
        clock: the clock for waits and the cache (default: the process default at use).
    """

    def __init__(
        self,
        team: str,
        *,
        degradation: DegradationManager | None = None,
        queue: RequestQueue | None = None,
        clock: Clock | None = None,
    ) -> None:
        if queue is not None and not isinstance(queue, RequestQueue):
            raise TypeError(f"queue must be a RequestQueue, got {queue!r}")
        self.team = team
        self.degradation = degradation
        self.queue = queue
        self._clock = checked_clock(clock)
        self._lock = threading.Lock()
        self._protocols: dict[ResourceType, FallbackProtocol] = {}
        self._pools: dict[ResourceType, TargetPool] = {}
        self._chains: dict[tuple[ResourceType, str], TargetPool] = {}
        self._routes: dict[ResourceType, _Routes] = {}
        self._breakers: dict[ResourceType, CircuitBreaker] = {}
        self._limiters: dict[ResourceType, AdaptiveConcurrency] = {}
        self._caches: dict[ResourceType, _Cache] = {}
        self._degraded: set[ResourceType] = set()
        self._bad: dict[ResourceType, frozenset[str]] = {}
        self._plans: dict[ResourceType, _Plan] = {}
        self._timeouts: dict[tuple[ResourceType, float], Timeout] = {}
        self._steps: deque[dict[str, Any]] = deque(maxlen=50)
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._random = _random.random
        # Whether a call's steps may wait on a store (shared verdicts, a shared pool): async
        # callers then take those steps in a worker thread, never on the event loop.
        self._offload = False

    def __repr__(self) -> str:
        return f"ProtocolHost({self.team!r}, protocols={sorted(p.value for p in self._protocols)})"

    @property
    def clock(self) -> Clock:
        return self._clock or get_clock()

    @property
    def stored(self) -> bool:
        """Whether a call's steps may wait on a store (shared verdicts, a shared pool)."""
        return self._offload

    # -- configuration ---------------------------------------------------------------------------

    def set_protocol(
        self,
        resource: ResourceType,
        protocol: FallbackProtocol | list[FallbackAction] | tuple[FallbackAction, ...],
    ) -> FallbackProtocol:
        if not isinstance(protocol, FallbackProtocol):
            protocol = FallbackProtocol(resource, protocol)
        elif protocol.resource is not resource:
            raise ValueError(
                f"a {protocol.resource.value} protocol given for {resource.value}; build it for "
                f"ResourceType.{resource.name}"
            )
        with self._lock:
            self._protocols[resource] = protocol
            self._caches.pop(resource, None)
            self._changed(resource)
        return protocol

    def protocol(self, resource: ResourceType) -> FallbackProtocol:
        """The protocol in force for ``resource`` (the team's, else the default)."""
        protocol = self._protocols.get(resource)
        return default_protocol(resource) if protocol is None else protocol

    def register_targets(
        self,
        resource: ResourceType,
        pool: TargetPool,
        *,
        chain: str | None = None,
        routes: Mapping[Any, str] | None = None,
    ) -> TargetPool:
        """Put ``pool`` in force for ``resource``'s calls, or, with ``chain``, keep it as the
        named chain a route sends calls to. ``routes`` (the main pool's) maps an error class
        (``"context_window"``, an exception type or a predicate) to a chain's name."""
        compiled = compile_routes(routes)
        if chain is not None and compiled:
            raise ValueError(f"routes belong to the main pool; chain {chain!r} cannot have them")
        if pool.shared:
            self._offload = True
        with self._lock:
            if chain is not None:
                old = self._chains.get((resource, chain))
                self._chains[(resource, chain)] = pool
            else:
                old = self._pools.get(resource)
                self._pools[resource] = pool
                if compiled:
                    self._routes[resource] = compiled
                else:
                    self._routes.pop(resource, None)
                self._changed(resource)
        if old is not None and old is not pool:
            old.close()
        return pool

    def chain(self, resource: ResourceType, name: str) -> TargetPool | None:
        """The routed chain ``name`` of ``resource``, if registered."""
        return self._chains.get((resource, name))

    def route_of(self, resource: ResourceType, error: BaseException) -> str | None:
        """The chain an error of ``resource`` is routed to (first matching route), or None."""
        for matches, name in self._routes.get(resource, ()):
            try:
                if matches(error):
                    return name
            except Exception:  # a user predicate that breaks does not hide the error
                _log.exception("route predicate %r raised on %r", matches, error)
        return None

    def pool(self, resource: ResourceType) -> TargetPool | None:
        return self._pools.get(resource)

    def provider_states(self) -> dict[str, dict[str, dict[str, Any]]]:
        states = {rtype.value: pool.states() for rtype, pool in self._pools.items()}
        for (rtype, chain), pool in self._chains.items():
            states[f"{rtype.value}:{chain}"] = pool.states()
        return states

    def set_bad(self, resource: ResourceType, names: frozenset[str]) -> None:
        """The names of ``resource``'s monitors now CRITICAL or UNAVAILABLE."""
        self._bad[resource] = names

    def consult(self, known_bad: dict[ResourceType, frozenset[str]]) -> None:
        """Ask ``known_bad`` which resources are bad from now on: a dict whose ``get`` may add
        what other processes know (shared verdicts); :meth:`set_bad` still writes to it."""
        known_bad.update(self._bad)
        self._bad = known_bad
        self._offload = True

    def with_timeout(self, resource: ResourceType, seconds: float | None) -> Timeout | None:
        if seconds is None:
            return None
        timeout = self._timeouts.get((resource, seconds))
        if timeout is None:
            timeout = self._timeouts[(resource, seconds)] = Timeout(
                timeout_seconds=seconds, name=f"{self.team}.{resource.value}", clock=self._clock
            )
        return timeout

    def breaker(
        self, resource: ResourceType, name: str | None = None, **options: Any
    ) -> CircuitBreaker:
        """The resource's breaker (``<team>.<type>`` unless named), put in force for its calls."""
        name = name or f"{self.team}.{resource.value}"
        with self._lock:
            breaker = self._breakers.get(resource)
            if breaker is None or breaker.name != name:
                if name in circuit_breakers():
                    breaker = get_circuit_breaker(name)
                else:
                    options.setdefault("excluded_exceptions", (RequestQueued,))
                    breaker = get_circuit_breaker(name, **options)
                self._breakers[resource] = breaker
                self._changed(resource)
        return breaker

    def limiter(self, resource: ResourceType) -> AdaptiveConcurrency:
        with self._lock:
            limiter = self._limiters.get(resource)
            if limiter is None:
                limiter = self._limiters[resource] = AdaptiveConcurrency(
                    name=f"{self.team}.{resource.value}", clock=self._clock
                )
                self._changed(resource)
        return limiter

    def restore(self, resource: ResourceType) -> None:
        """The resource is healthy again: lift a SCALE_DOWN and the degraded service."""
        limiter = self._limiters.get(resource)
        if limiter is not None and limiter.scale < 1.0:
            limiter.restore()
        self._recovered(resource)

    def _changed(self, resource: ResourceType) -> None:
        self._plans.pop(resource, None)

    def _plan(self, resource: ResourceType) -> _Plan:
        plan = self._plans.get(resource)
        if plan is not None:
            return plan
        with self._lock:
            protocol = self.protocol(resource)
            cache = None
            for action in protocol.actions:
                if action.strategy is FallbackStrategy.USE_CACHE:
                    cache = self._caches.get(resource)
                    if cache is None:
                        cache = self._caches[resource] = _Cache(
                            action.params["size"], action.params["max_age"]
                        )
            limiter = self._limiters.get(resource)
            plan = _Plan(
                protocol,
                self._pools.get(resource),
                self._breakers.get(resource),
                limiter if limiter is not None and limiter.scale < 1.0 else None,
                cache,
                resource in self._degraded,
            )
            self._plans[resource] = plan
        return plan

    # -- running calls ---------------------------------------------------------------------------

    def call(
        self,
        resource: ResourceType,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        variant: Callable[..., Any] | None = None,
        bound: bool = False,
        name: str | None = None,
        write: bool = False,
    ) -> Any:
        """Run the sync ``fn(*args, **kwargs)`` under the resource's protocol."""
        plan = self._plans.get(resource) or self._plan(resource)
        if plan.simple and not write:
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                run = _Run(self, plan, resource, fn, args, kwargs, variant, bound, name, error)
                return _drive(run)
            if hasattr(result, "__await__"):
                _refuse_awaitable(fn, result)
            if plan.cache is not None:
                self._remember(plan.cache, fn, args, kwargs, result)
            if plan.recovering:
                self._recovered(resource)
            return result
        if plan.pooled and not write:
            bad = self._bad.get(resource)  # (_admit, inlined)
            choice = plan.pool.choose(exclude=bad) if bad else plan.pool.choose()  # type: ignore[union-attr]
            if choice is not None:
                call, cargs, ckwargs = _aimed(fn, args, kwargs, choice, bound)
                token = _current_target.set(choice.name)
                try:
                    result = call(*cargs, **ckwargs)
                except Exception as error:
                    run = _Run(self, plan, resource, fn, args, kwargs, variant, bound, name, error)
                    run.choice, run.target = choice, choice.name
                    return _drive(run)
                except BaseException:  # interrupted: the call ended neither way
                    if choice.probe:
                        plan.pool.release(choice)  # type: ignore[union-attr]
                    raise
                finally:
                    _current_target.reset(token)
                if hasattr(result, "__await__"):
                    _refuse_awaitable(fn, result)
                if plan.cache is None and not plan.recovering:
                    plan.pool.succeeded(choice)  # type: ignore[union-attr]
                    return result
                return self._done(plan, resource, choice, fn, args, kwargs, result)
        run = _Run(self, plan, resource, fn, args, kwargs, variant, bound, name, None)
        run.writes(write)
        timeout = self.with_timeout(resource, plan.protocol.timeout)
        breaker = plan.breaker
        if breaker is not None:
            if timeout is not None:
                return timeout.call(breaker.call, _drive, run)
            return breaker.call(_drive, run)
        if timeout is not None:
            return timeout.call(_drive, run)
        return _drive(run)

    async def acall(
        self,
        resource: ResourceType,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        variant: Callable[..., Any] | None = None,
        bound: bool = False,
        name: str | None = None,
        write: bool = False,
    ) -> Any:
        """Await ``fn(*args, **kwargs)`` under the resource's protocol."""
        plan = self._plans.get(resource) or self._plan(resource)
        if plan.simple and not write:
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                run = _Run(self, plan, resource, fn, args, kwargs, variant, bound, name, error)
                run.is_async = True
                return await _adrive(run)
            if plan.cache is not None:
                self._remember(plan.cache, fn, args, kwargs, result)
            if plan.recovering:
                self._recovered(resource)
            return result
        if plan.pooled and not write:
            if self._offload:  # the choice reads the store
                choice = await self._admit_off_loop(plan, resource)
            else:
                bad = self._bad.get(resource)  # (_admit, inlined)
                choice = plan.pool.choose(exclude=bad) if bad else plan.pool.choose()  # type: ignore[union-attr]
            if choice is not None:
                call, cargs, ckwargs = _aimed(fn, args, kwargs, choice, bound)
                token = _current_target.set(choice.name)
                try:
                    result = call(*cargs, **ckwargs)
                    if hasattr(result, "__await__"):
                        result = await result
                except Exception as error:
                    run = _Run(self, plan, resource, fn, args, kwargs, variant, bound, name, error)
                    run.choice, run.target, run.is_async = choice, choice.name, True
                    return await _adrive(run)
                except BaseException:  # cancelled: the call ended neither way
                    if choice.probe:
                        self._give_back(plan, choice)
                    raise
                finally:
                    _current_target.reset(token)
                assert plan.pool is not None
                if self._offload and not plan.pool.settles_quietly(choice):
                    return await asyncio.to_thread(
                        self._done, plan, resource, choice, fn, args, kwargs, result
                    )
                if plan.cache is None and not plan.recovering:
                    plan.pool.succeeded(choice)
                    return result
                return self._done(plan, resource, choice, fn, args, kwargs, result)
        run = _Run(self, plan, resource, fn, args, kwargs, variant, bound, name, None)
        run.writes(write)
        run.is_async = True
        timeout = self.with_timeout(resource, plan.protocol.timeout)
        breaker = plan.breaker
        if breaker is not None:
            if timeout is not None:
                return await timeout.acall(breaker.acall, _adrive, run)
            return await breaker.acall(_adrive, run)
        if timeout is not None:
            return await timeout.acall(_adrive, run)
        return await _adrive(run)

    async def stream(
        self,
        resource: ResourceType,
        fn: Callable[..., AsyncIterator[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        variant: Callable[..., Any] | None = None,
        bound: bool = False,
        name: str | None = None,
        write: bool = False,
    ) -> AsyncIterator[Any]:
        """Stream ``fn(*args, **kwargs)`` (an async generator) under the resource's protocol."""
        plan = self._plan(resource)
        run = _Run(self, plan, resource, fn, args, kwargs, variant, bound, name, None)
        run.writes(write)
        run.is_async = run.streaming = True
        breaker = plan.breaker
        if breaker is not None and breaker.state is CircuitState.OPEN:
            # Refused as the breaker refuses; asking it to admit a call here would take (and
            # spend) a half-open probe on a call it does not see through.
            raise CircuitOpenError(
                f"circuit breaker {breaker.name!r} is open; retry after {breaker.retry_after:.3f}s",
                retry_after=breaker.retry_after,
                name=breaker.name,
            )
        agen, first = await _adrive(run)
        if agen is None:
            return
        partial = [first]
        yield first
        target = run.target
        while True:
            token = _current_target.set(target) if target is not None else None
            try:
                chunk = await agen.__anext__()
            except StopAsyncIteration:
                return
            except Exception as error:
                run.broke(error)
                raise StreamInterrupted(
                    f"{run.name}: the stream from {target or 'the resource'!r} failed after "
                    f"{len(partial)} chunk(s): {error!r}; not switching mid-answer",
                    partial=partial,
                    target=target,
                ) from error
            finally:
                if token is not None:
                    _current_target.reset(token)
            partial.append(chunk)
            yield chunk

    def recover(
        self,
        plan: _Plan,
        resource: ResourceType,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        error: BaseException,
        variant: Callable[..., Any] | None,
        bound: bool,
        name: str | None,
    ) -> Any:
        """Walk the protocol for a sync call whose first attempt raised ``error``."""
        return _drive(_Run(self, plan, resource, fn, args, kwargs, variant, bound, name, error))

    async def arecover(
        self,
        plan: _Plan,
        resource: ResourceType,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        error: BaseException,
        variant: Callable[..., Any] | None,
        bound: bool,
        name: str | None,
    ) -> Any:
        """Walk the protocol for an async call whose first attempt raised ``error``."""
        run = _Run(self, plan, resource, fn, args, kwargs, variant, bound, name, error)
        run.is_async = True
        return await _adrive(run)

    def _admit(self, plan: _Plan, resource: ResourceType) -> TargetChoice | None:
        """The first target of a call on the fast path (None: let the walk choose and wait)."""
        pool = plan.pool
        assert pool is not None
        bad = self._bad.get(resource)
        return pool.choose(exclude=bad) if bad else pool.choose()

    async def _admit_off_loop(self, plan: _Plan, resource: ResourceType) -> TargetChoice | None:
        """:meth:`_admit` in a worker thread. A caller cancelled meanwhile leaves the thread
        running: a probe it takes is given back when it ends, not held until its lease ends."""
        choosing = asyncio.ensure_future(asyncio.to_thread(self._admit, plan, resource))
        try:
            return await asyncio.shield(choosing)
        except asyncio.CancelledError:
            choosing.add_done_callback(lambda done: self._given_up(plan, done))
            raise

    def _given_up(self, plan: _Plan, done: asyncio.Future[TargetChoice | None]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        choice = done.result()
        if choice is not None and choice.probe:
            self._give_back(plan, choice)

    def _give_back(self, plan: _Plan, choice: TargetChoice) -> None:
        """Free the probe of a call that ended neither way, from async code: a shared pool's
        store step goes to a worker thread, unawaited (the caller is being cancelled)."""
        pool = plan.pool
        assert pool is not None
        if self._offload:
            try:
                asyncio.get_running_loop().run_in_executor(None, pool.release, choice)
                return
            except RuntimeError:  # the loop is shutting its executor down: free it here
                pass
        pool.release(choice)

    def _done(
        self,
        plan: _Plan,
        resource: ResourceType,
        choice: TargetChoice,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
    ) -> Any:
        assert plan.pool is not None
        plan.pool.succeeded(choice)
        if plan.cache is not None:
            self._remember(plan.cache, fn, args, kwargs, result)
        if plan.recovering:
            self._recovered(resource)
        return result

    def _remember(
        self,
        cache: _Cache,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
    ) -> None:
        now = (self._clock or get_clock()).now()
        try:  # hashed once, by the cache (a tuple does not keep its hash)
            cache.put(_call_key(fn, args, kwargs), (now, result), now)
        except TypeError:  # arguments that cannot be hashed: by their JSON form
            key = _json_key(fn, args, kwargs)
            if key is not None:
                cache.put(key, (now, result), now)

    # -- degradation -----------------------------------------------------------------------------

    def _service(self, resource: ResourceType) -> str:
        return f"protocol:{resource.value}"

    def degrade(self, resource: ResourceType, action: FallbackAction, error: BaseException) -> None:
        manager = self.degradation
        if manager is not None:
            manager.register_service(
                self._service(resource),
                ServiceCategory.CUSTOM,
                unhealthy_tier=action.params["tier"],
            )
            manager.update_health(self._service(resource), healthy=False, error=error)
        with self._lock:
            if resource not in self._degraded:
                self._degraded.add(resource)
                self._changed(resource)

    def _recovered(self, resource: ResourceType) -> None:
        with self._lock:
            if resource not in self._degraded:
                return
            self._degraded.discard(resource)
            self._changed(resource)
        if self.degradation is not None:
            self.degradation.update_health(self._service(resource), healthy=True)

    # -- the record ------------------------------------------------------------------------------

    def step(
        self,
        run: _Run,
        strategy: str,
        target: str | None,
        outcome: str,
        error: BaseException | None = None,
    ) -> None:
        now = self.clock.now()
        kind = _FailedStep if outcome == "failed" else _events.ProtocolStep
        event = kind(
            policy="protocol",
            name=run.name,
            at=now,
            resource=run.resource.value,
            strategy=strategy,
            target=target,
            outcome=outcome,
            elapsed=max(0.0, now - run.started),
            exception=error,
        )
        _events.emit(event, self._record)
        if outcome == "failed":
            # An outage fails every call: the first failure is a WARNING, then one summary per
            # interval; the detail of each stays at DEBUG and in the hooks.
            clock = self.clock
            _FAILED.hit(
                (run.name, strategy), lambda: run.name, clock, is_real(clock), now, event.message
            )

    def _record(self, event: _events.Event) -> None:
        assert isinstance(event, _events.ProtocolStep)
        with self._lock:
            self._counts[(event.resource, event.strategy, event.outcome)] += 1
            self._steps.append(
                {
                    "name": event.name,
                    "resource": event.resource,
                    "strategy": event.strategy,
                    "target": event.target,
                    "outcome": event.outcome,
                    "elapsed": round(event.elapsed, 6),
                    "error": None
                    if event.exception is None
                    else f"{type(event.exception).__name__}: {event.exception}"[:200],
                    "at": event.at,
                }
            )

    def report(self) -> dict[str, Any]:
        """The ``protocols`` section of the health report: steps in force, counts, last steps."""
        with self._lock:
            counts: dict[str, dict[str, dict[str, int]]] = {}
            for (resource, strategy, outcome), n in sorted(self._counts.items()):
                counts.setdefault(resource, {}).setdefault(strategy, {})[outcome] = n
            last = list(self._steps)[-10:]
            configured = {
                r.value: repr(p)
                for r, p in sorted(self._protocols.items(), key=lambda i: i[0].value)
            }
        return {
            "configured": configured,
            "counts": counts,
            "last_steps": last,
            "targets": self.provider_states(),
            "degraded": sorted(r.value for r in self._degraded),
        }


class _Run:
    """One failing call's walk down its protocol (module documentation)."""

    def __init__(
        self,
        host: ProtocolHost,
        plan: _Plan,
        resource: ResourceType,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        variant: Callable[..., Any] | None,
        bound: bool,
        name: str | None,
        error: BaseException | None,
    ) -> None:
        self.host, self.plan, self.resource = host, plan, resource
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.variant, self.bound = variant, bound
        self.name = name or callable_name(fn)
        self.error = error
        self.first_error = error
        self.clock = host.clock
        self.started = self.clock.now()
        self.is_async = False
        self.streaming = False
        self.tried: set[str] = set()
        self.choice: TargetChoice | None = None
        self.stash: TargetChoice | None = None
        self.target: str | None = None
        self.shortest: float | None = None
        self.waited = 0.0
        self.target_fault = False
        self.only: str | None = None  # a write: the primary (first target) only
        self.write = False
        self.deadline = deadline_on(self.clock, is_real(self.clock))
        self.classify = plan.protocol.classifier
        self.routed: TargetPool | None = None  # the chain a routed call now runs on

    # -- helpers ---------------------------------------------------------------------------------

    def writes(self, write: bool) -> None:
        """Mark the call a write: it goes to the pool's first target (the primary) only."""
        self.write = write
        pool = self.plan.pool
        if write and pool is not None:
            self.only = pool.primary

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock.now()

    def fits(self, wait: float) -> bool:
        """Whether waiting ``wait`` still leaves time for an attempt before the deadline."""
        if self.deadline is None:
            return True
        return self.clock.now() + wait + (self.shortest or 0.0) < self.deadline

    def known_bad(self) -> bool:
        bad = self.host._bad.get(self.resource)
        if not bad:
            return False
        if self.plan.pool is None:
            return True
        target = self.target if self.target is not None else self.only
        return target is not None and target in bad

    def command(self, choice: TargetChoice | None, *, degraded: bool = False) -> _Command:
        fn, args, kwargs = self.fn, self.args, self.kwargs
        if degraded and self.variant is not None:
            fn = self.variant
        self.choice = choice
        self.target = None if choice is None else choice.name
        if choice is not None and not degraded:
            fn, args, kwargs = _aimed(fn, args, kwargs, choice, self.bound)
        return _Command(fn, args, kwargs, self.target, self.plan.limiter, degraded)

    def succeeded(self, took: float, value: Any) -> Any:
        self._timed(took)
        choice, pool = self.choice, self.plan.pool
        if choice is not None and pool is not None:
            pool.succeeded(choice)
            self.choice = None
        cache = self.plan.cache
        if cache is not None and not self.streaming and not self.write:
            self.host._remember(cache, self.fn, self.args, self.kwargs, value)
            _cache_age.set(None)
        return value

    def failed(self, took: float, error: BaseException) -> bool:
        """Record a failed attempt; True when it is the resource failing (walk on)."""
        self._timed(took)
        self.error = error
        choice, pool = self.choice, self.plan.pool
        if choice is not None and pool is not None and self.routed is None:
            chain = self.host.route_of(self.resource, error)
            if chain is not None:
                routed = self.host.chain(self.resource, chain)
                if routed is not None:
                    # The request's size, not the target's health: never cooled, never retried.
                    pool.failed(choice, error, cool=False)
                    self.tried.add(choice.name)
                    self.choice = None
                    raise _Reroute(error, chain, routed)
                self.host.step(self, "ROUTE", chain, "skipped", error)
        resource = self.classify(error)
        if choice is not None and pool is not None:
            # A credential refused is that target's fault, not the request's: cool it and go to
            # another target, but never retry it.
            self.target_fault = not resource and self.classify.cools_target(error)
            pool.failed(
                choice,
                error,
                retry_after=retry_after_of(error),
                cool=resource or self.target_fault,
            )
            self.tried.add(choice.name)
            self.choice = None
            return resource or self.target_fault
        return resource

    def broke(self, error: BaseException) -> None:
        """A stream failed after its first chunk (the pool hears of it; nothing is retried)."""
        pool = self.plan.pool if self.routed is None else self.routed
        if pool is not None and self.target is not None:
            pool.failed(
                TargetChoice(name=self.target, target=None, probe=False),
                error,
                retry_after=retry_after_of(error),
                cool=self.classify(error),
            )
        self.host.step(self, "STREAM", self.target, "failed", error)

    def _timed(self, took: float) -> None:
        if took >= 0 and (self.shortest is None or took < self.shortest):
            self.shortest = took

    # -- the walk --------------------------------------------------------------------------------

    def walk(self) -> Generator[Any, Any, Any]:
        """Yields a float (sleep) or a :class:`_Command`; receives ``(ok, value, took)``."""
        try:
            try:
                return (yield from self._walk())
            except _Reroute as reroute:
                return (yield from self._rerouted(reroute))
        finally:
            self._give_back()

    def _give_back(self) -> None:
        """Free the probes the walk still holds: its call ended neither way (cancelled,
        interrupted, closed) or a target it set aside was never used."""
        choice, stash, self.choice, self.stash = self.choice, self.stash, None, None
        pool = self.routed or self.plan.pool
        if choice is not None and choice.probe and pool is not None:
            pool.release(choice)
        if stash is not None and stash.probe and self.plan.pool is not None:
            self.plan.pool.release(stash)

    def _rerouted(self, reroute: _Reroute) -> Generator[Any, Any, Any]:
        """The call on its routed chain: each of the chain's targets once, in its order, within
        the deadline; a failure that routes (the same class of error) or that means the target
        is failing moves on to the chain's next target, any other request error propagates."""
        host, pool = self.host, reroute.pool
        self.routed = pool
        self.error = reroute.error
        host.step(self, "ROUTE", self.target, "routed", reroute.error)
        tried: set[str] = set()
        while True:
            choice = pool.choose(exclude=tried)
            if choice is None:
                if set(pool.names) <= tried:
                    raise self.error
                ready = pool.earliest_ready(exclude=tried)
                wait = None if ready is None else max(0.0, ready - self.clock.now())
                if wait is None or self.waited + wait > _FIRST_WAIT or not self.fits(wait):
                    self.error = pool.exhausted_error(exclude=tried)
                    host.step(self, "ROUTE", reroute.chain, "skipped", self.error)
                    raise self.error
                self.waited += wait
                yield wait
                continue
            ok, value, took = yield self.command(choice)
            target = self.target
            self._timed(took)
            self.choice = None
            if ok:
                pool.succeeded(choice)
                cache = self.plan.cache
                if cache is not None and not self.streaming and not self.write:
                    host._remember(cache, self.fn, self.args, self.kwargs, value)
                    _cache_age.set(None)
                host.step(self, "ROUTE", target, "succeeded")
                return value
            resource = self.classify(value)
            fault = not resource and self.classify.cools_target(value)
            size = not resource and not fault and host.route_of(self.resource, value) is not None
            pool.failed(choice, value, retry_after=retry_after_of(value), cool=resource or fault)
            tried.add(choice.name)
            self.error = value
            host.step(self, "ROUTE", target, "failed", value)
            if not (resource or fault or size):
                raise value
            if not self.fits(0.0):
                raise value

    def _walk(self) -> Generator[Any, Any, Any]:
        host, plan = self.host, self.plan
        # Read here, not when the run was made: the protocol's own timeout is entered between.
        self.deadline = deadline_on(self.clock, is_real(self.clock))
        if self.error is None:
            pool = plan.pool
            choice = None
            if pool is not None:
                bad = host._bad.get(self.resource) or frozenset()
                if self.only is not None:
                    choice = pool.choose(exclude=self._excluded(self.only, tried=False))
                    if choice is None and self.only in bad:
                        # Its monitor says the primary is down: no wait for its cooldown, the
                        # protocol (a queue, or a clear error) takes the write at once.
                        choice = _MISSING
                else:
                    choice = pool.choose(exclude=bad) if bad else pool.choose()
                    if choice is None and bad:
                        choice = pool.choose()
                if choice is None:
                    # A write does not sit out its primary's cooldown: the protocol takes it at
                    # once (a RETRY waits for the primary no longer than its backoff, then a
                    # queue or a clear error), as later writes fail fast while it cools.
                    first_wait = 0.0 if self.only is not None else _FIRST_WAIT
                    choice = yield from self._wait_for_target(self.only, first_wait)
            if choice is _MISSING:
                assert pool is not None
                if self.error is None:
                    self.error = pool.exhausted_error(only=self.only)
                host.step(self, "CALL", None, "skipped", self.error)
            else:
                ok, value, took = yield self.command(choice)
                if ok:
                    if plan.recovering:
                        host._recovered(self.resource)
                    return self.succeeded(took, value)
                resource_failing = self.failed(took, value)
                host.step(self, "CALL", self.target, "failed", value)
                if not resource_failing:
                    raise value
        elif self.choice is not None:  # the first attempt ran on a target, on the fast path
            if not self.failed(-1.0, self.error):  # its duration was not measured
                raise self.error
            host.step(self, "CALL", self.target, "failed", self.error)
        elif not self.classify(self.error):
            raise self.error
        else:
            host.step(self, "CALL", None, "failed", self.error)
        actions = plan.protocol.actions
        for index, action in enumerate(actions):
            if action.strategy not in _INSTANT and not self.fits(0.0):
                host.step(self, label(action.strategy), action.target, "skipped")
                continue
            value = yield from self._take(action, actions[index + 1 :])
            if value is not _MISSING:
                return value
        assert self.error is not None
        raise self.error

    def _take(
        self, action: FallbackAction, later: tuple[FallbackAction, ...]
    ) -> Generator[Any, Any, Any]:
        strategy = action.strategy
        if strategy is FallbackStrategy.RETRY:
            return (yield from self._retry(action, later))
        if strategy is FallbackStrategy.SWITCH_PROVIDER:
            return (yield from self._switch(action))
        if strategy is FallbackStrategy.DEGRADE_SERVICE:
            return (yield from self._degrade(action))
        if strategy is FallbackStrategy.QUEUE_REQUEST:
            return (yield from self._queue(action))
        if strategy is FallbackStrategy.USE_CACHE:
            return self._cached()
        if strategy is FallbackStrategy.SCALE_DOWN:
            return (yield from self._scale_down(action))
        return self._circuit_break(action)

    def _attempt(
        self, strategy: str, choice: TargetChoice | None, *, degraded: bool = False
    ) -> Generator[Any, Any, Any]:
        ok, value, took = yield self.command(choice, degraded=degraded)
        target = self.target
        if ok:
            self.succeeded(took, value)
            self.host.step(self, strategy, target, "succeeded")
            return value
        resource_failing = self.failed(took, value)
        self.host.step(self, strategy, target, "failed", value)
        if not resource_failing:
            raise value
        return _MISSING

    def _retry(
        self, action: FallbackAction, later: tuple[FallbackAction, ...]
    ) -> Generator[Any, Any, Any]:
        host, pool, params = self.host, self.plan.pool, action.params
        if self.known_bad() or self.target_fault:
            host.step(self, "RETRY", self.target, "skipped", self.error)
            return _MISSING
        if (
            pool is not None
            and self.only is None
            and any(a.strategy is FallbackStrategy.SWITCH_PROVIDER for a in later)
        ):
            # A provider-level failure with an untried target left: switch now, not after a backoff.
            choice = self._choose(pool, set(self.tried))
            if choice is not None:
                self.stash = choice
                host.step(self, "RETRY", self.target, "skipped")
                return _MISSING
        backoff = params["backoff"]
        jitter = _JITTER.get(params["jitter"], Jitter.FULL)
        for attempt in range(1, params["attempts"] + 1):
            # The pool's own "all cooling" estimate is no server's Retry-After: with another
            # call's probe in flight it is that probe's whole lease, though the probe usually
            # answers at once. Waiting for targets is _wait_for_target's job, on a fresh look.
            hint = None if isinstance(self.error, AllTargetsCooling) else retry_after_of(self.error)
            delay = combine_with_retry_after(backoff.delay(attempt), hint, jitter, host._random())
            if not self.fits(delay):
                host.step(self, "RETRY", self.target, "skipped", self.error)
                return _MISSING
            if delay > 0:
                yield delay
            choice = None
            if pool is not None:
                choice = pool.choose(exclude=self._excluded(self.only, tried=False))
                if choice is None:
                    # every target cooling: wait for one no longer than this attempt's backoff
                    # (a retry is paced by it, not by a cooldown that may last half a minute),
                    # else leave the call to the next step (a write: QUEUE_REQUEST)
                    choice = yield from self._wait_for_target(self.only, self.waited + delay)
                    if choice is _MISSING:
                        return _MISSING
            value = yield from self._attempt("RETRY", choice)
            if value is not _MISSING:
                return value
        return _MISSING

    def _wait_for_target(self, only: str | None, max_wait: float) -> Generator[Any, Any, Any]:
        """Wait for the earliest cooling target (tried ones included: their cooldown may end
        in time) when the deadline and ``max_wait`` allow; else note the pool's exhausted error
        and give up (``_MISSING``)."""
        pool = self.plan.pool
        assert pool is not None
        exclude = self._excluded(only, tried=False)
        while True:
            choice = pool.choose(exclude=exclude)
            if choice is not None:
                return choice
            ready = pool.earliest_ready(exclude=exclude)
            wait = None if ready is None else max(0.0, ready - self.clock.now())
            if wait is None or self.waited + wait > max_wait or not self.fits(wait):
                if self.only is None or self.error is None:
                    self.error = pool.exhausted_error(exclude=exclude, only=self.only)
                # else a write keeps its primary's own error: the replicas were never a choice
                return _MISSING
            self.waited += wait
            yield wait

    def _choose(self, pool: TargetPool, exclude: set[str]) -> TargetChoice | None:
        """A target outside ``exclude`` to switch to: one that no monitor says is down while
        there is one, else any."""
        bad = self.host._bad.get(self.resource)
        if bad:
            choice = pool.choose(exclude=exclude | bad)
            if choice is not None:
                return choice
        return pool.choose(exclude=exclude)

    def _excluded(self, only: str | None, *, tried: bool = True) -> set[str]:
        exclude = set(self.tried) if tried else set()
        pool = self.plan.pool
        if only is not None and pool is not None:
            exclude |= {name for name in pool.names if name != only}
        return exclude

    def _switch(self, action: FallbackAction) -> Generator[Any, Any, Any]:
        host, pool = self.host, self.plan.pool
        if pool is None or self.only is not None:  # a write is never sent to a replica
            host.step(self, "SWITCH_PROVIDER", action.target, "skipped")
            return _MISSING
        only = action.target
        while True:
            choice, self.stash = self.stash, None
            if choice is not None and only is not None and choice.name != only:
                pool.release(choice)
                choice = None
            if choice is None:
                choice = self._choose(pool, self._excluded(only))
            if choice is None:
                if not action.params["wait"]:
                    self.error = pool.exhausted_error(exclude=self._excluded(only))
                    host.step(self, "SWITCH_PROVIDER", only, "skipped", self.error)
                    return _MISSING
                choice = yield from self._wait_for_target(only, action.params["max_wait"])
                if choice is _MISSING:
                    host.step(self, "SWITCH_PROVIDER", only, "skipped", self.error)
                    return _MISSING
            value = yield from self._attempt("SWITCH_PROVIDER", choice)
            if value is not _MISSING:
                return value
            if not self.fits(0.0):
                return _MISSING

    def _degrade(self, action: FallbackAction) -> Generator[Any, Any, Any]:
        assert self.error is not None
        self.host.degrade(self.resource, action, self.error)
        return (yield from self._attempt("DEGRADE_SERVICE", None, degraded=True))

    def _queue(self, action: FallbackAction) -> Generator[Any, Any, Any]:
        host = self.host
        queue = host.queue
        if queue is None or self.streaming:
            host.step(self, "QUEUE_REQUEST", None, "skipped")
            return _MISSING
        handler = action.params["handler"] or callable_name(self.fn)
        replaying = _replaying.get()
        if replaying is not None and replaying.handler == handler:
            # This is the queue's own replay failing again: the queue retries it later (with
            # its backoff and dead letters); queueing it anew would only hide the failure.
            host.step(self, "QUEUE_REQUEST", None, "skipped", self.error)
            return _MISSING
        args = self.args
        if handler not in queue.handlers:
            queue.handler(handler)(self._replayer())
        if self.bound and args:
            args = args[1:]
        put = queue.aput if self.is_async else queue.put
        ok, value, _ = yield _Command(
            put,
            (handler, list(args), dict(self.kwargs)),
            {"resource": self.resource.value, "ttl": action.params["ttl"]},
        )
        if not ok:
            host.step(self, "QUEUE_REQUEST", None, "failed", value)
            return _MISSING
        host.step(self, "QUEUE_REQUEST", None, "queued", self.error)
        raise RequestQueued(
            f"{self.name}: {self.resource.value} is failing ({self.error!r}); queued as "
            f"request {value.id} for {handler!r}",
            ticket=value.id,
            key=value.key,
            handler=handler,
            name=self.name,
        ) from self.error

    def _replayer(self) -> Callable[..., Any]:
        """The queue's handler for this call: the call again under the protocol, so a replayed
        write goes to the primary (never a replica) and sees its target as the first run did.
        A method's replays run on the instance whose call registered the handler."""
        host, resource, fn, variant = self.host, self.resource, self.fn, self.variant
        name = self.name
        owner = self.args[:1] if self.bound else ()
        bound, write = bool(owner), self.write
        if self.is_async:

            async def areplay(*args: Any, **kwargs: Any) -> Any:
                return await host.acall(
                    resource, fn, (*owner, *args), kwargs,
                    variant=variant, bound=bound, name=name, write=write,
                )  # fmt: skip

            return areplay

        def replay(*args: Any, **kwargs: Any) -> Any:
            return host.call(
                resource, fn, (*owner, *args), kwargs,
                variant=variant, bound=bound, name=name, write=write,
            )  # fmt: skip

        return replay

    def _cached(self) -> Any:
        cache = self.plan.cache
        # A write is never answered from a cache: that would report a write that did not happen.
        key = (
            None
            if cache is None or self.streaming or self.write
            else _cache_key(self.fn, self.args, self.kwargs)
        )
        if cache is None or key is None:
            self.host.step(self, "USE_CACHE", None, "skipped")
            return _MISSING
        now = self.clock.now()
        entry = cache.get(key, now)
        if entry is _UNCACHED:
            self.host.step(self, "USE_CACHE", None, "skipped")
            return _MISSING
        stored, value = entry
        _cache_age.set(max(0.0, now - stored))
        self.host.step(self, "USE_CACHE", None, "succeeded", self.error)
        return value

    def _scale_down(self, action: FallbackAction) -> Generator[Any, Any, Any]:
        limiter = self.host.limiter(self.resource)
        limiter.scale_down(action.params["factor"])
        self.host._changed(self.resource)
        self.plan = self.host._plan(self.resource)
        return (yield from self._attempt("SCALE_DOWN", None))

    def _circuit_break(self, action: FallbackAction) -> Any:
        if self.write and self.plan.pool is not None:
            # The primary's own cooldown already fails later writes fast; opening the
            # resource's breaker would also refuse the reads the replicas still serve.
            self.host.step(self, "CIRCUIT_BREAK", action.target, "skipped", self.error)
            return _MISSING
        breaker = self.host.breaker(
            self.resource, action.target, recovery_timeout=action.params["recovery_timeout"]
        )
        breaker.open()
        self.host.step(self, "CIRCUIT_BREAK", breaker.name, "opened", self.error)
        return _MISSING


def _refuse_awaitable(fn: Callable[..., Any], result: Any) -> None:
    """A plain call returned an awaitable: closed (never to be awaited) and refused."""
    close = getattr(result, "close", None)
    if close is not None:
        close()
    raise TypeError(f"{callable_name(fn)} returned an awaitable to a plain call; use an async def")


def _aimed(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    choice: TargetChoice,
    bound: bool,
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The call to make on ``choice``: ``fn`` with ``target=`` when it takes one, else a callable
    target itself (without the instance of a method), else ``fn`` as it is (it reads
    :func:`~buttress.current_target`)."""
    try:
        takes = _TAKES_TARGET.get(fn)  # (a plain function: found at once)
    except TypeError:  # an unhashable callable
        takes = None
    if takes is None:
        takes = _takes_target(fn)
    if takes:
        return fn, args, {**kwargs, "target": choice.target}
    target = choice.target
    if callable(target):
        return target, args[1:] if bound else args, kwargs
    return fn, args, kwargs


_TAKES_TARGET: dict[Any, bool] = {}


def _takes_target(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a ``target`` keyword (looked up once per function)."""
    key = getattr(fn, "__func__", fn)
    try:
        return _TAKES_TARGET[key]
    except (KeyError, TypeError):
        pass
    try:
        takes = "target" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes = False
    try:
        if len(_TAKES_TARGET) > 4096:
            _TAKES_TARGET.clear()
        _TAKES_TARGET[key] = takes
    except TypeError:
        pass
    return takes


def _drive(run: _Run) -> Any:
    """Run a walk with sync calls and sleeps."""
    walk = run.walk()
    clock = run.clock
    try:
        command = next(walk)
        while True:
            if command.__class__ is float:
                clock.sleep(command)
                command = walk.send(None)
                continue
            began = clock.now()
            token = _current_target.set(command.target) if command.target is not None else None
            flag = _degraded.set(True) if command.degraded else None
            try:
                if command.limiter is not None:
                    value = command.limiter.call(command.fn, *command.args, **command.kwargs)
                else:
                    value = command.fn(*command.args, **command.kwargs)
                if hasattr(value, "__await__"):
                    close = getattr(value, "close", None)
                    if close is not None:
                        close()
                    raise TypeError(
                        f"{callable_name(command.fn)} returned an awaitable to a plain call"
                    )
                reply: tuple[bool, Any, float] = (True, value, clock.now() - began)
            except Exception as error:
                reply = (False, error, clock.now() - began)
            finally:
                if flag is not None:
                    _degraded.reset(flag)
                if token is not None:
                    _current_target.reset(token)
            command = walk.send(reply)
    except StopIteration as stop:
        return stop.value
    finally:
        walk.close()


def _resume(walk: Generator[Any, Any, Any], reply: Any) -> tuple[bool, Any]:
    """One step of a walk: (True, its result) once it ends, else (False, its next command)."""
    try:
        return False, walk.send(reply)
    except StopIteration as stop:
        return True, stop.value


class _Offloaded:
    """A walk whose steps run in a worker thread (they may wait on a store), never on the loop.

    The steps run in one copy of the caller's context; what a step sets there that the caller
    reads (:func:`cached_age`) is copied back after each step. A cancelled call leaves its step
    running (a thread cannot be stopped): the walk is closed when that step ends.
    """

    __slots__ = ("context", "running", "walk")

    def __init__(self, walk: Generator[Any, Any, Any]) -> None:
        self.walk = walk
        self.context = contextvars.copy_context()
        self.running: asyncio.Future[tuple[bool, Any]] | None = None

    async def resume(self, reply: Any) -> tuple[bool, Any]:
        loop = asyncio.get_running_loop()
        self.running = loop.run_in_executor(None, self.context.run, _resume, self.walk, reply)
        step = await asyncio.shield(self.running)
        self.running = None
        _cache_age.set(self.context.get(_cache_age))
        return step

    def close(self) -> None:
        # A walk left before its end (its caller cancelled) is closed in a worker thread, as
        # every step: closing it may free a probe in the store. One that ended has nothing left.
        running = self.running
        if running is not None and not running.done():
            running.add_done_callback(lambda _: self._close_off_loop())
        elif inspect.getgeneratorstate(self.walk) != inspect.GEN_CLOSED:
            self._close_off_loop()

    def _close_off_loop(self) -> None:
        try:
            asyncio.get_running_loop().run_in_executor(None, self.context.run, self.walk.close)
        except RuntimeError:  # the loop is shutting its executor down: close it here
            self.context.run(self.walk.close)


async def _adrive(run: _Run) -> Any:
    """Run a walk with awaited calls and sleeps (for a stream: up to its first chunk)."""
    walk = run.walk()
    offloaded = _Offloaded(walk) if run.host._offload else None
    clock = run.clock
    try:
        finished, command = (
            _resume(walk, None) if offloaded is None else await offloaded.resume(None)
        )
        while not finished:
            if command.__class__ is float:
                await clock.asleep(command)
                reply: tuple[bool, Any, float] | None = None
            else:
                began = clock.now()
                token = _current_target.set(command.target) if command.target is not None else None
                flag = _degraded.set(True) if command.degraded else None
                try:
                    if run.streaming:
                        value = await _first_chunk(command)
                    elif command.limiter is not None:
                        value = await command.limiter.acall(
                            command.fn, *command.args, **command.kwargs
                        )
                    else:
                        value = command.fn(*command.args, **command.kwargs)
                        if hasattr(value, "__await__"):
                            value = await value
                    reply = (True, value, clock.now() - began)
                except Exception as error:
                    reply = (False, error, clock.now() - began)
                finally:
                    if flag is not None:
                        _degraded.reset(flag)
                    if token is not None:
                        _current_target.reset(token)
            finished, command = (
                _resume(walk, reply) if offloaded is None else await offloaded.resume(reply)
            )
        return command
    finally:
        if offloaded is None:
            walk.close()
        else:
            offloaded.close()


async def _first_chunk(command: _Command) -> tuple[Any, Any]:
    stream = command.fn(*command.args, **command.kwargs)
    if not hasattr(stream, "__anext__"):
        if hasattr(stream, "__await__"):
            stream = await stream
        if not hasattr(stream, "__anext__"):
            raise TypeError(f"{callable_name(command.fn)} did not return an async iterator")
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        return (None, None)
    except BaseException:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        raise
    return (stream, first)
