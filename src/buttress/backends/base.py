"""What every state store does: one atomic step on one keyed state.

Theory of operation
-------------------
A store keeps small JSON-able states under ``(kind, name, key)`` and offers a few *steps*, each
atomic with respect to every other caller of the same store (threads, processes, hosts):

* rate limits: ``reserve`` (the arithmetic of :func:`buttress.machines.ratelimit.reserve`, after
  any block), ``block`` and ``reset``;
* circuit breakers: ``breaker`` applies one :class:`BreakerStep` (a typed value: acquire,
  record, release, force or read) of :class:`buttress.machines.breaker.BreakerMachine` to the
  stored state and returns a :class:`BreakerReply`;
* target pools (:class:`TargetStore`, a separate protocol so that stores written before it still
  serve limits and breakers): ``targets`` reads every target state of a pool in one step and
  ``swap_target`` replaces one only if it is still what the caller read (compare-and-set), so the
  pool runs :mod:`buttress.machines.targets` itself and a store keeps opaque JSON strings;
* resource verdicts (:class:`VerdictStore`, separate for the same reason): ``publish_verdicts``
  stores a status record per resource key for a few seconds (a newer reading is never replaced
  by an older one) and ``verdicts`` reads the unexpired ones, so teams see each other's monitors.

:class:`Store` is the synchronous interface and :class:`AsyncStore` its asyncio twin (``a``-named
methods that never block the event loop), as httpx pairs its transports. Every store implements
both, so one object serves a policy's sync and async callers (:class:`AsyncFromSync` gives a store
built on sync steps its async half). Each backend translates its own errors: a store raises only
:class:`StorageUnavailable` (no answer in time: the policy decides without it) or
:class:`StorageError` (an answer it cannot use), besides ``ValueError``/``TypeError`` for bad
arguments.

The memory and SQLite stores run the Python machines inside a lock or a transaction; the Redis
store runs Lua twins of them inside the server. Times are wall-clock seconds (states outlive a
process, so a monotonic clock would mean nothing to the next reader); a caller passes ``now`` or
lets the store read its own clock (the Redis server's, by default).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from .._config import seconds as to_seconds
from ..clock import wall_time
from ..errors import StorageError, StorageUnavailable
from ..machines.breaker import Admission, BreakerMachine, BreakerSettings, CircuitState
from ..machines.ratelimit import FAR_AHEAD, Params, idle, reserve

__all__ = [
    "ACQUIRE",
    "READ",
    "AsyncFromSync",
    "AsyncStore",
    "BreakerOp",
    "BreakerReply",
    "BreakerStep",
    "Key",
    "MemoryStore",
    "Now",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "TargetStore",
    "VerdictStore",
    "apply_breaker",
]


T = TypeVar("T")

#: A rate-limit key: a string, or ``None`` for the limit's shared state.
Key = str | None
#: Wall-clock seconds, or ``None`` for the store's own clock.
Now = float | None


class BreakerOp(Enum):
    """What a breaker step does to the stored breaker."""

    ACQUIRE = "acquire"  # admit a call (or a probe), or refuse it
    RECORD = "record"  # the outcome of an admitted call
    RELEASE = "release"  # an admitted call that does not count (cancelled, an ignored error)
    FORCE = "force"  # move to ``target`` (manual open/close/reset)
    READ = "read"  # nothing: report the state


@dataclass(frozen=True, slots=True)
class BreakerStep:
    """One operation on a stored breaker, as a value (build it with the class methods).

    ``ticket`` and ``probe`` identify the admission a RECORD or RELEASE settles; ``failed`` is the
    outcome a RECORD reports; ``target`` and ``reason`` belong to FORCE.
    """

    op: BreakerOp
    probe: bool = False
    ticket: int = 0
    failed: bool = False
    target: CircuitState | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.op, BreakerOp):
            raise TypeError(f"op must be a BreakerOp, got {self.op!r}")
        if self.op is BreakerOp.FORCE and not isinstance(self.target, CircuitState):
            raise ValueError(f"a FORCE step needs a target CircuitState, got {self.target!r}")

    @classmethod
    def record(cls, ticket: int, *, probe: bool, failed: bool) -> BreakerStep:
        return cls(BreakerOp.RECORD, probe=probe, ticket=ticket, failed=failed)

    @classmethod
    def release(cls, ticket: int, *, probe: bool) -> BreakerStep:
        return cls(BreakerOp.RELEASE, probe=probe, ticket=ticket)

    @classmethod
    def force(cls, target: CircuitState, reason: str = "") -> BreakerStep:
        return cls(BreakerOp.FORCE, target=target, reason=reason or f"forced {target.value}")


ACQUIRE = BreakerStep(BreakerOp.ACQUIRE)
READ = BreakerStep(BreakerOp.READ)


@dataclass(frozen=True, slots=True)
class BreakerReply:
    """The answer of one breaker step, and the shared state after it."""

    allowed: bool
    probe: bool
    ticket: int  # the generation of a closed admission, or the probe's ticket
    retry_after: float
    state: CircuitState
    failures: int
    opened_at: float
    transition: tuple[CircuitState, CircuitState, str] | None


@runtime_checkable
class Store(Protocol):
    """The synchronous store interface the policies use (see the module documentation).

    Every method raises only :class:`StorageUnavailable` (the store did not answer: the policy
    decides without it) or :class:`StorageError` (the store answered with something unusable);
    each backend translates its own client's exceptions. ``now`` is wall-clock seconds, or
    ``None`` for the store's own clock.
    """

    #: Where the state lives, for messages (any password redacted).
    url: str
    #: Seconds the store may take to answer, or ``None`` when unknown.
    timeout: float | None

    def reserve(
        self, name: str, key: Key, params: Params, cost: int, max_wait: float, now: Now = None
    ) -> tuple[bool, float]:
        """The rate-limit step: ``(admitted, wait)``, after any block on the key."""
        ...

    def block(self, name: str, key: Key, seconds: float, now: Now = None) -> None:
        """Refuse the key for ``seconds`` (a server's ``Retry-After``); never shortens one."""
        ...

    def reset(self, name: str, key: Key = None) -> None:
        """Forget the key's rate-limit state and block."""
        ...

    def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: Now = None
    ) -> BreakerReply:
        """Apply one :class:`BreakerStep` to the breaker ``name``."""
        ...

    def close(self) -> None:
        """Done with the store: release its connections and files (see :mod:`buttress.backends`
        for who closes what). Idempotent; the store is not used afterwards."""
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """The asyncio twin of :class:`Store`: the same steps, awaited, never blocking the loop."""

    url: str
    timeout: float | None

    async def areserve(
        self, name: str, key: Key, params: Params, cost: int, max_wait: float, now: Now = None
    ) -> tuple[bool, float]: ...

    async def ablock(self, name: str, key: Key, seconds: float, now: Now = None) -> None: ...

    async def areset(self, name: str, key: Key = None) -> None: ...

    async def abreaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: Now = None
    ) -> BreakerReply: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class TargetStore(Protocol):
    """The steps of a target pool's shared state: one JSON string per target of a pool.

    Both steps are atomic; ``old`` is the string read before (``None``: no state yet). The
    ``a``-named twins are the asyncio halves.
    """

    def targets(self, pool: str) -> dict[str, str]:
        """Every stored target state of ``pool``, by target name."""
        ...

    def swap_target(
        self, pool: str, name: str, old: str | None, new: str
    ) -> tuple[bool, str | None]:
        """Store ``new`` if the state is still ``old``: ``(True, new)``, else
        ``(False, current)``."""
        ...

    async def atargets(self, pool: str) -> dict[str, str]: ...

    async def aswap_target(
        self, pool: str, name: str, old: str | None, new: str
    ) -> tuple[bool, str | None]: ...


@runtime_checkable
class VerdictStore(Protocol):
    """The steps of shared resource verdicts: one record per resource key, with an expiry.

    A verdict is ``(record, at, ttl)``: an opaque string, the wall-clock time of the reading it
    describes, and the seconds it stays valid from ``now``. Publishing replaces a key's verdict
    unless the stored one is unexpired and newer (a later ``at``); expired verdicts are never
    returned. ``now`` is wall-clock seconds, or ``None`` for the store's own clock.
    """

    def publish_verdicts(
        self, space: str, verdicts: dict[str, tuple[str, float, float]], now: Now = None
    ) -> None:
        """Store each ``key -> (record, at, ttl)`` of ``verdicts`` in ``space``."""
        ...

    def verdicts(self, space: str, now: Now = None) -> dict[str, tuple[str, float]]:
        """Every unexpired verdict of ``space``: ``key -> (record, seconds left)``."""
        ...

    async def apublish_verdicts(
        self, space: str, verdicts: dict[str, tuple[str, float, float]], now: Now = None
    ) -> None: ...

    async def averdicts(self, space: str, now: Now = None) -> dict[str, tuple[str, float]]: ...


class AsyncFromSync:
    """The :class:`AsyncStore` half of a store whose steps are its sync methods.

    Each ``a``-method runs its sync twin: inline when a step never waits (``steps_block =
    False``: a few operations under a lock), else in a worker thread so the event loop never
    blocks (a database lock may hold a step for its busy timeout).
    """

    steps_block = True

    async def _awaited(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.steps_block:
            return await asyncio.to_thread(step, *args, **kwargs)
        return step(*args, **kwargs)

    async def areserve(self, *args: Any, **kwargs: Any) -> tuple[bool, float]:
        return await self._awaited(cast(Store, self).reserve, *args, **kwargs)

    async def ablock(self, *args: Any, **kwargs: Any) -> None:
        await self._awaited(cast(Store, self).block, *args, **kwargs)

    async def areset(self, *args: Any, **kwargs: Any) -> None:
        await self._awaited(cast(Store, self).reset, *args, **kwargs)

    async def abreaker(self, *args: Any, **kwargs: Any) -> BreakerReply:
        return await self._awaited(cast(Store, self).breaker, *args, **kwargs)

    async def aclose(self) -> None:
        await self._awaited(cast(Store, self).close)

    async def atargets(self, pool: str) -> dict[str, str]:
        return await self._awaited(cast(TargetStore, self).targets, pool)

    async def aswap_target(
        self, pool: str, name: str, old: str | None, new: str
    ) -> tuple[bool, str | None]:
        return await self._awaited(cast(TargetStore, self).swap_target, pool, name, old, new)

    async def apublish_verdicts(
        self, space: str, verdicts: dict[str, tuple[str, float, float]], now: Now = None
    ) -> None:
        await self._awaited(cast(VerdictStore, self).publish_verdicts, space, verdicts, now)

    async def averdicts(self, space: str, now: Now = None) -> dict[str, tuple[str, float]]:
        return await self._awaited(cast(VerdictStore, self).verdicts, space, now)


def apply_breaker(machine: BreakerMachine, step: BreakerStep, now: float) -> BreakerReply:
    """Run one breaker step on ``machine`` (in place) and describe the result."""
    allowed, is_probe, number, retry_after = False, False, 0, 0.0
    transition = None
    op = step.op
    if op is BreakerOp.ACQUIRE:
        admission, transition = machine.acquire(now)
        allowed, is_probe = admission.allowed, admission.probe
        number, retry_after = admission.generation, admission.retry_after
    elif op is BreakerOp.RECORD:
        transition = machine.record(
            Admission(True, step.probe, step.ticket), now, failed=step.failed
        )
    elif op is BreakerOp.RELEASE:
        machine.release(Admission(True, step.probe, step.ticket))
    elif op is BreakerOp.FORCE:
        transition = machine.force(cast(CircuitState, step.target), now, step.reason)
    return BreakerReply(
        allowed=allowed,
        probe=is_probe,
        ticket=number,
        retry_after=retry_after,
        state=machine.state,
        failures=machine.failures,
        opened_at=machine.opened_at,
        transition=None
        if transition is None
        else (transition.old, transition.new, transition.reason),
    )


def block_seconds(seconds: object) -> float:
    """``seconds`` of a stored block, checked: a block ends no further ahead than a stored state
    may reach (:data:`~buttress.machines.ratelimit.FAR_AHEAD`)."""
    value = to_seconds("seconds", seconds)
    if value > FAR_AHEAD:
        raise ValueError(f"seconds of a stored block must be <= {FAR_AHEAD:g}, got {seconds!r}")
    return value


def shared_settings(settings: BreakerSettings) -> BreakerSettings:
    """``settings`` as a stored breaker runs them: a probe always holds a lease with an expiry.

    Without ``probe_timeout``, a prober that died would hold its probe slot forever; a stored
    breaker therefore writes a probe off after ``probe_timeout`` or, when none is set, after the
    recovery time (at least 1 s).
    """
    if settings.probe_timeout is not None:
        return settings
    from dataclasses import replace

    return replace(settings, probe_timeout=max(1.0, settings.recovery))


class MemoryStore(AsyncFromSync):
    """The store interface over process memory (for the contract tests and as a reference).

    The rate limiter and circuit breaker keep their in-memory state themselves, on faster paths;
    this class states what the other stores must do. Its async steps run inline.
    """

    url = "memory://"
    timeout: float | None = None
    steps_block = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[tuple[str, str | None], list[float] | deque[float]] = {}
        self._blocks: dict[tuple[str, str | None], float] = {}
        self._breakers: dict[str, dict[str, Any]] = {}
        self._targets: dict[str, dict[str, str]] = {}
        self._verdicts: dict[str, dict[str, tuple[str, float, float]]] = {}

    def reserve(
        self, name: str, key: Key, params: Params, cost: int, max_wait: float, now: Now = None
    ) -> tuple[bool, float]:
        now = wall_time() if now is None else now
        slot = (name, key)
        with self._lock:
            until = self._blocks.get(slot)
            if until is not None:
                if now < until:
                    return False, until - now
                del self._blocks[slot]
            state, wait = reserve(self._limits.get(slot), now, cost, max_wait, params)
            if state is None:
                return False, wait
            self._limits[slot] = state
            return True, wait

    def block(self, name: str, key: Key, seconds: float, now: Now = None) -> None:
        now = wall_time() if now is None else now
        with self._lock:
            slot = (name, key)
            self._blocks[slot] = max(self._blocks.get(slot, 0.0), now + seconds)

    def reset(self, name: str, key: Key = None) -> None:
        with self._lock:
            self._limits.pop((name, key), None)
            self._blocks.pop((name, key), None)

    def idle_keys(self, params: Params, now: float) -> int:
        """How many stored rate-limit states are idle (could be forgotten) at ``now``."""
        with self._lock:
            return sum(1 for state in self._limits.values() if idle(state, now, params))

    def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: Now = None
    ) -> BreakerReply:
        now = wall_time() if now is None else now
        with self._lock:
            machine = BreakerMachine.from_state(shared_settings(settings), self._breakers.get(name))
            reply = apply_breaker(machine, step, now)
            self._breakers[name] = machine.to_state()
            return reply

    def targets(self, pool: str) -> dict[str, str]:
        with self._lock:
            return dict(self._targets.get(pool, {}))

    def swap_target(
        self, pool: str, name: str, old: str | None, new: str
    ) -> tuple[bool, str | None]:
        with self._lock:
            states = self._targets.setdefault(pool, {})
            current = states.get(name)
            if current != old:
                return False, current
            states[name] = new
            return True, new

    def publish_verdicts(
        self, space: str, verdicts: dict[str, tuple[str, float, float]], now: Now = None
    ) -> None:
        now = wall_time() if now is None else now
        with self._lock:
            stored = self._verdicts.setdefault(space, {})
            for key, (record, at, ttl) in verdicts.items():
                old = stored.get(key)
                if old is not None and old[2] > now and old[1] > at:
                    continue  # a newer reading is stored and still valid
                stored[key] = (record, at, now + ttl)

    def verdicts(self, space: str, now: Now = None) -> dict[str, tuple[str, float]]:
        now = wall_time() if now is None else now
        with self._lock:
            stored = self._verdicts.get(space, {})
            for key in [k for k, v in stored.items() if v[2] <= now]:
                del stored[key]
            return {key: (record, expires - now) for key, (record, _, expires) in stored.items()}

    def close(self) -> None:
        """Nothing to release."""
