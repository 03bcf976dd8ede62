"""Named targets (providers, replicas) with their own health: which one a call goes to.

Theory of operation
-------------------
A :class:`TargetPool` holds named targets in order of preference (registration order, or cost
with ``prefer="cost"``), each with its own :class:`buttress.machines.targets.TargetMachine`: a
breaker with cooldowns that grow and a quota state fed by ``Retry-After``. A call asks
:meth:`TargetPool.choose` for a target, runs against it, and reports the outcome with
:meth:`~TargetPool.succeeded`, :meth:`~TargetPool.failed` or :meth:`~TargetPool.release`:

* ``choose`` walks the targets in preference order and takes the first that admits a call: a
  healthy one, or a cooling one whose cooldown has ended and that has no probe in flight (the
  call is then that target's single probe, ``choice.probe``). A failed primary is therefore
  skipped at once by every later call, and its only traffic until it recovers is one probe at a
  time. ``None`` means every target (not excluded) is cooling.
* ``failed`` cools a healthy target (after ``threshold`` consecutive failures, default 1) for its
  cooldown, or at least the ``Retry-After`` the error carried; an authentication error (HTTP
  401/403) cools it for ``auth_cooldown``. ``cool=False`` reports an error that was the
  request's fault: the target's state does not change.
* A failed probe cools it again with one of two clocks doubled (see
  :mod:`buttress.machines.targets`): a target that is *down* (no probe of this cooling answered)
  is probed again at a pace that doubles up to ``max_probe_interval`` (1.5 s), so a recovered
  target is found within that long however long its outage lasted; a target that is *flapping*
  (it answered some probes and failed others, or failed again soon after it had recovered) is
  held off for a cooldown that doubles up to ``max_cooldown``, so a half-broken target gets a
  small and shrinking share of the calls and traffic does not flip back and forth.
* ``probes`` consecutive successful probes make the target healthy; its grown cooldown halves per
  ``decay_after`` consecutive successes, so a target that fails again soon cools for longer.
  Neither clock ever shortens a ``Retry-After`` or an authentication cooldown.

The memory path: the common call (the preferred target healthy) is a few attribute reads with no
lock and no allocation, and its success changes nothing. Everything else takes the pool's lock.

Shared state (``storage=``, a Redis URL or any store with :class:`~buttress.backends.base.
TargetStore`): each target's state is one JSON string in the store. ``choose`` reads the pool's
states in one step (so a target cooled by another process is skipped by this one's next call)
and takes a probe by compare-and-set, so one probe is in flight per target across every
process; an outcome that changes a state is written by compare-and-set too, re-applied on the
state another process wrote meanwhile. Times in the store are the clock's ``wall()`` (hosts
should keep their clocks in step). When the store does not answer, the pool decides on its own
last known states, logs one warning for the outage (event ``storage_unavailable``), tries the
store again every ``retry_interval`` seconds, and writes what changed locally at its next update
if no other process changed that target meanwhile.

What it cannot do: it does not run or time the call (the fallback protocol does), and a target
that is never the preferred usable one is never probed (it does not need to be).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..backends import open_storage
from ..backends.base import StorageError, StorageUnavailable, TargetStore
from ..clock import Clock, checked_clock, get_clock
from ..errors import AllTargetsCooling, CircuitOpenError, RateLimitExceeded
from ..events import TargetStateChanged, emit, wanted
from ..machines.targets import AUTH, NORMAL, PROBE, TargetMachine, TargetSettings
from ..policies._storeguard import StoreGuard
from ..policies.httpheaders import parse_retry_after

__all__ = [
    "AllTargetsCooling",
    "TargetChoice",
    "TargetPool",
    "current_target",
    "error_reason",
    "error_status",
    "is_context_window_error",
]

_POLICY = "targets"

#: The target the running attempt goes to (the fallback protocol sets it around each attempt).
_current_target: ContextVar[str | None] = ContextVar("buttress_current_target", default=None)


def current_target() -> str | None:
    """The name of the target the running call was sent to, or ``None`` outside a switch."""
    return _current_target.get()


@dataclass(frozen=True, slots=True)
class TargetChoice:
    """One admission of one target: report its outcome to the pool that gave it.

    Attributes:
        name: the target's name.
        target: what was registered under it (a callable or a client).
        probe: whether this call is the single recovery probe of a cooling target.
        ticket: the probe's lease (when it was admitted, on the pool's time scale).
    """

    name: str
    target: Any
    probe: bool = False
    ticket: float | None = None


# -- classifying errors ----------------------------------------------------------------------------


def error_status(error: BaseException) -> int | None:
    """The HTTP status an exception carries (``status_code``, ``status``, ``response``), if any."""
    for holder in (error, getattr(error, "response", None)):
        if holder is None:
            continue
        for attribute in ("status_code", "status", "http_status"):
            value = getattr(holder, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def error_reason(error: BaseException) -> str:
    """Why a target failed, as a pool reports it.

    ``auth`` (HTTP 401/403), ``rate_limited`` (429, :class:`RateLimitExceeded`),
    ``server_error`` (5xx), ``timeout``, ``connection``, ``circuit_open``, else ``error``.
    """
    status = error_status(error)
    if status is not None:
        if status in (401, 403):
            return AUTH
        if status == 429:
            return "rate_limited"
        if status >= 500:
            return "server_error"
    if isinstance(error, RateLimitExceeded):
        return "rate_limited"
    if isinstance(error, CircuitOpenError):
        return "circuit_open"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionError | OSError):
        return "connection"
    name = type(error).__name__.lower()
    if "auth" in name or "permission" in name:
        return AUTH
    if "ratelimit" in name:
        return "rate_limited"
    if "timeout" in name:
        return "timeout"
    if "connection" in name:
        return "connection"
    return "error"


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context window",
    "context length",
    "maximum context",
    "too many tokens",
    "prompt is too long",
)


def is_context_window_error(error: BaseException) -> bool:
    """Whether ``error`` says the request is too long for the target's context window.

    Such an error is the request's fault for that target (report it with ``cool=False``); a
    target with a larger context may still serve it.
    """
    if "contextwindow" in type(error).__name__.lower():
        return True
    text = f"{getattr(error, 'code', '')} {error}".lower()
    return any(marker in text for marker in _CONTEXT_MARKERS)


def _retry_after(error: BaseException) -> float | None:
    value = getattr(error, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    headers = getattr(getattr(error, "response", None), "headers", None) or getattr(
        error, "headers", None
    )
    if headers is not None and hasattr(headers, "get"):
        header = headers.get("Retry-After") or headers.get("retry-after")
        if header is not None:
            return parse_retry_after(str(header))
    return None


# -- the pool --------------------------------------------------------------------------------------


class _Slot:
    """One target of a pool: its registration, its machine and (shared) the stored string."""

    __slots__ = ("choice", "cost", "machine", "name", "raw", "target")

    def __init__(self, name: str, target: Any, cost: float) -> None:
        self.name = name
        self.target = target
        self.cost = cost
        self.choice = TargetChoice(name, target)  # every normal admission shares it
        self.machine = TargetMachine()
        self.raw: str | None = None  # the stored state this machine mirrors (shared pools)


_PREFER = ("order", "cost")


def _pairs(targets: object) -> list[tuple[str, Any]]:
    if isinstance(targets, Mapping):
        pairs = list(targets.items())
    elif isinstance(targets, Sequence) and not isinstance(targets, str | bytes):
        pairs = []
        for item in targets:
            if not isinstance(item, tuple) or len(item) != 2:
                raise TypeError(f"targets must be (name, target) pairs, got {item!r}")
            pairs.append(item)
    else:
        raise TypeError(
            f"targets must be a mapping of name -> target or a sequence of (name, target) pairs, "
            f"got {targets!r}"
        )
    if not pairs:
        raise ValueError("targets must name at least one target")
    seen: set[str] = set()
    for name, _ in pairs:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a target name must be a non-empty string, got {name!r}")
        if name in seen:
            raise ValueError(f"target {name!r} is registered twice")
        seen.add(name)
    return pairs


def _dumps(machine: TargetMachine) -> str:
    return json.dumps(machine.to_state(), separators=(",", ":"))


class TargetPool:
    """Named targets, each with its own breaker and quota state (see the module documentation).

    Args:
        name: the pool's name (in events, errors and the store's keys).
        targets: ``{name: target}`` or ``[(name, target), ...]``, in order of preference.
        probes: consecutive successful probes that bring a cooling target back.
        cooldown: seconds of a target's first cooling.
        max_cooldown: cap of the hold-off of a flapping target, which doubles on each of its
            failed probes and each cooling soon after a recovery.
        prefer: ``"order"`` (registration order) or ``"cost"`` (cheapest first; ``costs``).
        costs: cost per target name (targets without one come after those with one).
        storage: a store URL or object shared across processes (``None``: this process only).
        clock: the clock (default: the current default clock, read when needed).
        threshold: consecutive failures that cool a healthy target.
        decay_after: consecutive successes that halve a target's grown cooldown.
        probe_timeout: seconds after which a probe that never reported is written off.
        auth_cooldown: seconds an authentication failure (401/403) cools a target for.
        retry_interval: seconds between tries of a store that did not answer.
        max_probe_interval: cap of the probe pace of a target that is down, which doubles on
            each failed probe: a recovered target is found within about this long.
    """

    def __init__(
        self,
        name: str,
        targets: Mapping[str, Any] | Sequence[tuple[str, Any]],
        *,
        probes: int = 3,
        cooldown: float = 30.0,
        max_cooldown: float = 600.0,
        prefer: str = "order",
        costs: Mapping[str, float] | None = None,
        storage: Any = None,
        clock: Clock | None = None,
        threshold: int = 1,
        decay_after: int = 20,
        probe_timeout: float = 60.0,
        auth_cooldown: float = 3600.0,
        retry_interval: float = 1.0,
        max_probe_interval: float = 1.5,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.settings = TargetSettings(
            probes=probes,
            cooldown=cooldown,
            max_cooldown=max_cooldown,
            threshold=threshold,
            decay_after=decay_after,
            probe_timeout=probe_timeout,
            auth_cooldown=auth_cooldown,
            max_probe_interval=max_probe_interval,
        )
        pairs = _pairs(targets)
        if prefer not in _PREFER:
            raise ValueError(f"prefer must be 'order' or 'cost', got {prefer!r}")
        costs = dict(costs or {})
        names = {n for n, _ in pairs}
        for target_name, cost in costs.items():
            if target_name not in names:
                raise ValueError(f"costs names an unknown target {target_name!r}")
            if isinstance(cost, bool) or not isinstance(cost, int | float) or not cost >= 0:
                raise ValueError(f"costs[{target_name!r}] must be a number >= 0, got {cost!r}")
        if prefer == "cost" and not costs:
            raise ValueError("prefer='cost' needs costs={target: cost, ...}")
        self.prefer = prefer
        slots = [_Slot(n, t, float(costs.get(n, math.inf))) for n, t in pairs]
        if prefer == "cost":
            slots.sort(key=lambda slot: slot.cost)  # stable: equal costs keep their order
        self._order = tuple(slots)
        self._first = slots[0]
        self._primary: str = pairs[0][0]  # registration order, whatever ``prefer`` sorts by
        self._slots = {slot.name: slot for slot in slots}
        self._clock = checked_clock(clock)
        self._lock = threading.Lock()
        self._store: Any = None
        self._shared = False  # a shared pool's machines run on wall time, even after close()
        self._owns_store = False
        self._guard: StoreGuard | None = None
        if storage is not None:
            store = open_storage(storage)
            if store is not None:
                if not isinstance(store, TargetStore):
                    raise TypeError(
                        f"storage {getattr(store, 'url', store)!r} does not keep target pools "
                        "(it lacks targets/swap_target of buttress.backends.base.TargetStore)"
                    )
                self._store = store
                self._shared = True
                self._owns_store = store is not storage
                self._guard = StoreGuard(store, f"target pool {name!r}", "local", retry_interval)
        start = self._times()[0]
        for slot in slots:  # healthy since the pool was made (not since the clock's zero)
            slot.machine.since = start

    def __repr__(self) -> str:
        return f"TargetPool({self.name!r}, {[slot.name for slot in self._order]!r})"

    @property
    def names(self) -> tuple[str, ...]:
        """The target names in order of preference."""
        return tuple(slot.name for slot in self._order)

    @property
    def shared(self) -> bool:
        """Whether the pool keeps its states in a store (``storage=``)."""
        return self._store is not None

    @property
    def primary(self) -> str:
        """The first target registered (a database's primary: where writes go)."""
        return self._primary

    def target(self, name: str) -> Any:
        """What was registered under ``name`` (``KeyError`` naming it if none)."""
        slot = self._slots.get(name)
        if slot is None:
            raise KeyError(f"pool {self.name!r} has no target {name!r}")
        return slot.target

    # -- time --------------------------------------------------------------------------------------

    def _times(self) -> tuple[float, float]:
        """``(pool time, clock now)``: a shared pool runs on wall time, a local one on now()."""
        clock = self._clock or get_clock()
        now = clock.now()
        return (clock.wall() if self._shared else now), now

    # -- choosing ----------------------------------------------------------------------------------

    def choose(self, exclude: Collection[str] = ()) -> TargetChoice | None:
        """The best target usable now and not in ``exclude``, or ``None`` if all are cooling."""
        if self._store is None:
            if not exclude:
                first = self._first
                if first.machine.healthy:
                    return first.choice
                return self._choose_local(exclude)
            for slot in self._order:
                if slot.name in exclude:
                    continue
                if slot.machine.healthy:
                    return slot.choice
                break
            return self._choose_local(exclude)
        self._refresh()
        return self._choose_shared(exclude)

    def _choose_local(self, exclude: Collection[str]) -> TargetChoice | None:
        now = self._times()[0]
        settings = self.settings
        with self._lock:
            for slot in self._order:
                if exclude and slot.name in exclude:
                    continue
                verdict = slot.machine.admit(now, settings)
                if verdict == NORMAL:
                    return slot.choice
                if verdict == PROBE:
                    return TargetChoice(slot.name, slot.target, True, slot.machine.probe_at)
        return None

    def _choose_shared(self, exclude: Collection[str]) -> TargetChoice | None:
        settings = self.settings
        for slot in self._order:
            if exclude and slot.name in exclude:
                continue
            for _ in range(8):
                now = self._times()[0]
                with self._lock:
                    machine = slot.machine.copy()
                    old = slot.raw
                    verdict = machine.admit(now, settings)
                    if verdict == NORMAL:
                        return slot.choice
                    if verdict != PROBE:
                        break
                    slot.machine.probe_at = machine.probe_at  # no other thread of ours probes
                swapped = self._swap(slot, old, machine)
                if swapped:
                    return TargetChoice(slot.name, slot.target, True, machine.probe_at)
        return None

    async def achoose(self, exclude: Collection[str] = ()) -> TargetChoice | None:
        """:meth:`choose` for async callers (a shared pool's store step runs off the loop)."""
        if self._store is None:
            return self.choose(exclude)
        return await asyncio.to_thread(self.choose, exclude)

    # -- outcomes ----------------------------------------------------------------------------------

    def settles_quietly(self, choice: TargetChoice) -> bool:
        """Whether a success of ``choice`` changes nothing (so :meth:`succeeded` writes nothing
        to the store): the common case."""
        machine = self._slots[choice.name].machine
        return machine.healthy and not (machine.failures or machine.level or choice.probe)

    def succeeded(self, choice: TargetChoice) -> None:
        """The call sent to ``choice`` succeeded."""
        slot = self._slots[choice.name]
        machine = slot.machine
        if machine.healthy and not (machine.failures or machine.level or choice.probe):
            return  # the common success changes nothing
        ticket = choice.ticket if choice.probe else None
        settings = self.settings
        self._update(slot, lambda m, now: m.succeeded(now, settings, ticket), "")

    def failed(
        self,
        choice: TargetChoice,
        error: BaseException,
        *,
        retry_after: float | None = None,
        cool: bool = True,
    ) -> None:
        """The call sent to ``choice`` failed with ``error``.

        Args:
            retry_after: seconds the target asked for (default: the error's ``retry_after``
                or its response's ``Retry-After``); the target is not tried before.
            cool: ``False`` when the error was the request's fault (a context-window error, a
                bad request): the target's state does not change.
        """
        if not cool:
            self.release(choice)
            return
        slot = self._slots[choice.name]
        reason = error_reason(error)
        wait = retry_after if retry_after is not None else _retry_after(error)
        if wait is not None and reason == "error":
            reason = "rate_limited"
        kind = type(error).__name__
        ticket = choice.ticket if choice.probe else None
        settings = self.settings

        def fail(machine: TargetMachine, now: float) -> bool:
            return machine.failed(
                now, settings, error=kind, reason=reason, retry_after=wait, probe=ticket
            )

        self._update(slot, fail, kind)

    def release(self, choice: TargetChoice) -> None:
        """The call ended neither way (cancelled, the request's fault): free a probe slot."""
        if choice.probe:
            ticket = choice.ticket
            self._update(self._slots[choice.name], lambda m, now: m.release(ticket), "")

    async def asucceeded(self, choice: TargetChoice) -> None:
        """:meth:`succeeded` for async callers."""
        if self._store is None:
            self.succeeded(choice)
        else:
            await asyncio.to_thread(self.succeeded, choice)

    async def afailed(
        self,
        choice: TargetChoice,
        error: BaseException,
        *,
        retry_after: float | None = None,
        cool: bool = True,
    ) -> None:
        """:meth:`failed` for async callers."""
        if self._store is None:
            self.failed(choice, error, retry_after=retry_after, cool=cool)
        else:
            await asyncio.to_thread(
                lambda: self.failed(choice, error, retry_after=retry_after, cool=cool)
            )

    async def arelease(self, choice: TargetChoice) -> None:
        """:meth:`release` for async callers."""
        if self._store is None:
            self.release(choice)
        else:
            await asyncio.to_thread(self.release, choice)

    def _update(
        self, slot: _Slot, step: Callable[[TargetMachine, float], bool], error: str
    ) -> None:
        if self._store is None:
            now = self._times()[0]
            with self._lock:
                machine = slot.machine
                before = machine.healthy, machine.since
                step(machine, now)
                after = machine.healthy, machine.since
            if after != before:
                self._report(slot, machine, before[0], error)
            return
        for _ in range(8):
            now = self._times()[0]
            with self._lock:
                old = slot.raw
                before = slot.machine.healthy, slot.machine.since
                machine = slot.machine.copy()
                step(machine, now)
            if self._swap(slot, old, machine):
                break
        if (machine.healthy, machine.since) != before:
            self._report(slot, machine, before[0], error)

    # -- the store ---------------------------------------------------------------------------------

    def _swap(self, slot: _Slot, old: str | None, machine: TargetMachine) -> bool:
        """Make ``machine`` the state of ``slot`` if the store still holds ``old``.

        Returns False when another process changed it first (``slot`` then holds theirs). A
        store that does not answer leaves ``machine`` as the local state (True).
        """
        new = _dumps(machine)
        guard = self._guard
        assert guard is not None
        if new == old:
            with self._lock:
                slot.machine = machine
            return True
        clock_now = self._times()[1]
        if guard.should_try(clock_now):
            try:
                swapped, current = self._store.swap_target(self.name, slot.name, old, new)
            except (StorageUnavailable, StorageError) as exc:
                guard.failed(exc, clock_now)
            else:
                guard.answered()
                with self._lock:
                    if swapped:
                        slot.raw, slot.machine = new, machine
                    else:
                        self._adopt(slot, current)
                return bool(swapped)
        with self._lock:
            slot.machine = machine  # decided locally; written at the next update that gets through
        return True

    def _refresh(self) -> None:
        """Read every target's stored state (a store that does not answer: keep local ones)."""
        guard = self._guard
        assert guard is not None
        clock_now = self._times()[1]
        if not guard.should_try(clock_now):
            return
        try:
            stored = self._store.targets(self.name)
        except (StorageUnavailable, StorageError) as exc:
            guard.failed(exc, clock_now)
            return
        guard.answered()
        with self._lock:
            for slot in self._order:
                raw = stored.get(slot.name)
                if raw != slot.raw:
                    self._adopt(slot, raw)

    def _adopt(self, slot: _Slot, raw: str | None) -> None:
        """``raw`` (read from the store) becomes the slot's state; call with the lock held."""
        fresh = TargetMachine(self._times()[0])  # (what no store holds yet: healthy from now)
        try:
            machine = fresh if raw is None else TargetMachine.from_state(json.loads(raw))
        except ValueError as exc:
            logging.getLogger("buttress.targets").warning(
                "target pool %r: the stored state of %r is unusable (%s); using a fresh one",
                self.name,
                slot.name,
                exc,
            )
            machine = fresh
        slot.raw, slot.machine = raw, machine

    # -- reading -----------------------------------------------------------------------------------

    def earliest_ready(self, exclude: Collection[str] = ()) -> float | None:
        """When (on the clock's ``now()`` scale) the first target not in ``exclude`` can be tried.

        Now for a target that admits calls; for a cooling one the end of its cooldown (or, with a
        probe in flight, the end of that probe's lease: it may be sooner, when the probe ends).
        ``None`` when every target is excluded.
        """
        if self._store is not None:
            self._refresh()
        now, clock_now = self._times()
        best: float | None = None
        with self._lock:
            for slot in self._order:
                if exclude and slot.name in exclude:
                    continue
                ready = max(slot.machine.ready_at(self.settings), now)
                best = ready if best is None else min(best, ready)
        return None if best is None else best - now + clock_now

    def exhausted_error(
        self, exclude: Collection[str] = (), *, only: str | None = None
    ) -> AllTargetsCooling:
        """The error for a call that found no target: each target, its reason, its expiry
        (``only``: that target alone, the one a write may go to)."""
        now, clock_now = self._times()
        rows: list[tuple[str, str, float]] = []
        parts: list[str] = []
        earliest: float | None = None
        with self._lock:
            for slot in self._order:
                if only is not None and slot.name != only:
                    continue
                machine = slot.machine
                if machine.healthy or (exclude and slot.name in exclude and now >= machine.until):
                    reason, ready = "already tried by this call", now
                else:
                    reason = machine.reason
                    if machine.last_error and machine.last_error not in reason:
                        reason = f"{reason}: {machine.last_error}"
                    ready = max(machine.ready_at(self.settings), now)
                    if not (exclude and slot.name in exclude):
                        earliest = ready if earliest is None else min(earliest, ready)
                expires = ready - now + clock_now
                rows.append((slot.name, reason, expires))
                parts.append(f"{slot.name} ({reason}; ready in {ready - now:.1f}s)")
        return AllTargetsCooling(
            f"every target of pool {self.name!r} is cooling down: {', '.join(parts)}",
            retry_after=None if earliest is None else earliest - now,
            name=self.name,
            targets=tuple(rows),
        )

    def states(self) -> dict[str, dict[str, Any]]:
        """Each target's state, for reports (times are Unix seconds, from the clock's wall()).

        Keys: ``state`` (healthy, cooling, probing), ``reason``, ``since``, ``expires_at``
        (``None`` when healthy), ``consecutive_failures``, ``last_error`` (a class name),
        ``cooldown`` (the hold-off of its next cooling), ``flapping`` (whether its cooling runs
        the hold-off rather than the fast probe pace), ``probe_in_flight`` and ``cost``.
        """
        if self._store is not None:
            self._refresh()
        clock = self._clock or get_clock()
        now, wall = self._times()[0], clock.wall()
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for slot in self._order:
                machine = slot.machine
                out[slot.name] = {
                    "state": machine.status(now),
                    "reason": machine.reason,
                    "since": machine.since - now + wall,
                    "expires_at": None if machine.healthy else machine.until - now + wall,
                    "consecutive_failures": machine.failures,
                    "last_error": machine.last_error or None,
                    "cooldown": machine.level or self.settings.cooldown,
                    "flapping": machine.flapping and not machine.healthy,
                    "probe_in_flight": machine.probe_at is not None,
                    "cost": None if math.isinf(slot.cost) else slot.cost,
                }
        return out

    def close(self) -> None:
        """Release a store this pool opened (a store object passed in stays the caller's)."""
        store, self._store = self._store, None
        if store is not None and self._owns_store:
            store.close()

    # -- events ------------------------------------------------------------------------------------

    def _report(self, slot: _Slot, machine: TargetMachine, was_healthy: bool, error: str) -> None:
        level = logging.INFO if machine.healthy else logging.WARNING
        if not wanted(_POLICY, level):
            return
        now, clock_now = self._times()
        emit(
            TargetStateChanged(
                policy=_POLICY,
                name=self.name,
                at=clock_now,
                target=slot.name,
                old="healthy" if was_healthy else "cooling",
                new="healthy" if machine.healthy else "cooling",
                reason=machine.reason,
                until=0.0 if machine.healthy else machine.until - now + clock_now,
                error=error,
            )
        )
