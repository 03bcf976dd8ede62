"""Circuit breaker: stop calling a dependency that keeps failing, and probe for its recovery.

Theory of operation
-------------------
The states and transitions live in :mod:`buttress.machines.breaker` (see its table). This module
is the shell: it holds the lock and the clock, classifies outcomes, raises
:class:`buttress.CircuitOpenError` (with ``retry_after``) for rejected calls, and tells listeners,
logs and hooks about transitions.

Guarantees:

* Thread- and task-safe: admissions and outcomes go through one lock, held only for a few
  arithmetic steps (never across the guarded call, never across an ``await``). Under any number of
  concurrent callers, at most ``half_open_max_calls`` probes run at once.
* A late outcome cannot undo a newer decision (admissions carry a generation).
* Cost: in CLOSED state with the consecutive-failure rule, a successful call reads one attribute
  before the call and, only if failures were counted, resets them after: no lock, no clock, no
  allocation. Sliding windows, slow-call detection and installed event hooks take the general path.

Breakers with a name are registered: every :class:`CircuitBreaker` built with the same name shares
one state (the same dependency seen from several places). A different configuration under the same
name is an error. ``name=None`` gives a private breaker.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import timedelta
from time import time as _wall
from types import TracebackType
from typing import Any, TypeVar, cast

from .. import events as _events
from .._config import env_float, env_int, integer, number, optional_seconds, seconds
from ..backends import BreakerReply, open_storage
from ..backends.base import ACQUIRE, READ, BreakerStep
from ..clock import Clock, get_clock
from ..errors import CircuitOpenError
from ..machines.breaker import (
    Admission,
    BreakerMachine,
    BreakerSettings,
    CircuitState,
    Transition,
)
from ._storeguard import StoreGuard, check_fail_mode, store_faults, store_time

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitState",
    "circuit_breaker",
    "circuit_breakers",
    "get_circuit_breaker",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
ExcTypes = tuple[type[BaseException], ...]
_CLOSED = CircuitState.CLOSED


def _types(field_name: str, value: object) -> ExcTypes:
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, tuple | list) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        return tuple(value)
    raise TypeError(f"{field_name} must be an exception type or a tuple of them, got {value!r}")


def _resolve_alias(
    primary: str, primary_value: Any, alias: str, alias_value: Any, default: Callable[[], Any]
) -> Any:
    if primary_value is not None and alias_value is not None and primary_value != alias_value:
        raise ValueError(
            f"{primary} and its alias {alias} disagree: {primary}={primary_value!r}, "
            f"{alias}={alias_value!r}"
        )
    if primary_value is not None:
        return primary_value
    if alias_value is not None:
        return alias_value
    return default()


@dataclass(frozen=True, kw_only=True)
class CircuitBreakerConfig:
    """How a breaker trips and recovers. Every field is optional.

    Attributes:
        name: registry name; breakers with the same name share state. ``None``: private.
        fail_max: consecutive failures that trip the breaker (alias ``failure_threshold``;
            default ``CIRCUIT_FAILURE_THRESHOLD`` or 5).
        timeout_duration: seconds OPEN before probing (alias ``recovery_timeout``; default
            ``CIRCUIT_RECOVERY_TIMEOUT`` or 60).
        failure_rate_threshold: trip when failures/calls in the window reach this (0 < x <= 1).
        slow_call_duration: a call slower than this many seconds is slow.
        slow_call_rate_threshold: trip when slow calls/calls in the window reach this.
        window_type: ``"count"`` (last ``window_size`` calls) or ``"time"`` (last ``window_size``
            seconds).
        window_size: the window's length in calls or seconds (default 100).
        minimum_calls: calls in the window before a rate can trip it (default 10).
        half_open_max_calls: probes admitted at once in HALF_OPEN (default 1).
        success_threshold: probe successes that close it (default ``half_open_max_calls``).
        probe_timeout: a probe running longer counts as failed (default: none).
        excluded_exceptions: exceptions that do not count at all.
        failure_exceptions: exceptions that count as failures (default ``Exception``).
        storage: where the state lives, shared by every process using the same store and name:
            ``None`` (``BUTTRESS_STORAGE_URL``, else memory), ``"memory://"``,
            ``"sqlite:///state.db"``, ``"redis://host:6379/0"``, a redis client or a store (see
            :mod:`buttress.backends`). A stored breaker counts consecutive failures (windows
            stay in memory) and its probes hold leases that expire after ``probe_timeout``
            (default: the recovery time), so a crashed prober cannot wedge it.
        fail_mode: with a store, what to do while it is unreachable: ``"local"`` (default:
            this process's own breaker), ``"open"`` (admit every call) or ``"closed"`` (reject).
    """

    name: str | None = None
    fail_max: int | None = None
    failure_threshold: int | None = None
    timeout_duration: float | timedelta | None = None
    recovery_timeout: float | timedelta | None = None
    failure_rate_threshold: float | None = None
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float | None = None
    window_type: str = "count"
    window_size: float = 100
    minimum_calls: int = 10
    half_open_max_calls: int = 1
    success_threshold: int | None = None
    probe_timeout: float | None = None
    excluded_exceptions: ExcTypes = ()
    failure_exceptions: ExcTypes = (Exception,)
    storage: object = None
    fail_mode: str = "local"

    def __post_init__(self) -> None:
        put = functools.partial(object.__setattr__, self)
        fail_max = _resolve_alias(
            "fail_max",
            self.fail_max,
            "failure_threshold",
            self.failure_threshold,
            lambda: env_int("CIRCUIT_FAILURE_THRESHOLD", 5, minimum=1),
        )
        fail_max = integer("fail_max", fail_max, minimum=1)
        put("fail_max", fail_max)
        put("failure_threshold", fail_max)
        recovery = _resolve_alias(
            "timeout_duration",
            self.timeout_duration,
            "recovery_timeout",
            self.recovery_timeout,
            lambda: env_float("CIRCUIT_RECOVERY_TIMEOUT", 60.0),
        )
        recovery = seconds("timeout_duration", recovery)
        put("timeout_duration", recovery)
        put("recovery_timeout", recovery)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"name must be a non-empty string or None, got {self.name!r}")
        for rate_field in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, rate_field)
            if value is not None:
                number(rate_field, value, minimum=0.0, maximum=1.0, exclusive_minimum=True)
        put(
            "slow_call_duration",
            optional_seconds("slow_call_duration", self.slow_call_duration, allow_zero=False),
        )
        if (self.slow_call_rate_threshold is None) != (self.slow_call_duration is None):
            raise ValueError(
                "slow_call_duration and slow_call_rate_threshold go together; got "
                f"slow_call_duration={self.slow_call_duration!r}, "
                f"slow_call_rate_threshold={self.slow_call_rate_threshold!r}"
            )
        if self.window_type not in ("count", "time"):
            raise ValueError(f"window_type must be 'count' or 'time', got {self.window_type!r}")
        if self.window_type == "count":
            integer("window_size", self.window_size, minimum=1)
        else:
            put("window_size", seconds("window_size", self.window_size, allow_zero=False))
        integer("minimum_calls", self.minimum_calls, minimum=1)
        integer("half_open_max_calls", self.half_open_max_calls, minimum=1)
        threshold = (
            self.half_open_max_calls if self.success_threshold is None else self.success_threshold
        )
        put("success_threshold", integer("success_threshold", threshold, minimum=1))
        put(
            "probe_timeout",
            optional_seconds("probe_timeout", self.probe_timeout, allow_zero=False),
        )
        put("excluded_exceptions", _types("excluded_exceptions", self.excluded_exceptions))
        put("failure_exceptions", _types("failure_exceptions", self.failure_exceptions))
        check_fail_mode(self.fail_mode)
        if self.storage is not None and self.name is None:
            raise ValueError(
                f"storage={self.storage!r} needs a name: the name is what processes share"
            )
        if self.storage is not None and (
            self.failure_rate_threshold is not None or self.slow_call_duration is not None
        ):
            raise ValueError(
                f"storage={self.storage!r}: a stored breaker counts consecutive failures; "
                "failure-rate and slow-call windows are kept in memory only (use storage=None)"
            )

    def settings(self) -> BreakerSettings:
        """The machine's view of this configuration."""
        return BreakerSettings(
            fail_max=cast(int, self.fail_max),
            recovery=cast(float, self.timeout_duration),
            half_open_max_calls=self.half_open_max_calls,
            success_threshold=cast(int, self.success_threshold),
            failure_rate_threshold=self.failure_rate_threshold,
            slow_call_rate_threshold=self.slow_call_rate_threshold,
            window_type=self.window_type,
            window_size=self.window_size,
            minimum_calls=self.minimum_calls,
            probe_timeout=self.probe_timeout,
        )


class _Shared:
    """One breaker's state, shared by every CircuitBreaker object with its name."""

    __slots__ = ("clock", "config", "guard", "listeners", "lock", "machine", "seen", "simple")

    def __init__(self, config: CircuitBreakerConfig, clock: Clock | None) -> None:
        self.config = config
        self.machine = BreakerMachine(config.settings())
        self.lock = threading.Lock()
        self.listeners: list[Callable[[_events.CircuitStateChanged], None]] = []
        self.clock = clock
        self.guard: StoreGuard | None = None
        windowed = self.machine.settings.windowed or config.slow_call_duration is not None
        # BUTTRESS_STORAGE_URL applies to named breakers that can be stored; explicit storage=
        # without a name or with a window was refused by the config.
        if config.storage is not None or (config.name is not None and not windowed):
            store = open_storage(config.storage)
            if store is not None:
                owner = f"circuit breaker {config.name or 'unnamed'!r}"
                self.guard = StoreGuard(store, owner, config.fail_mode, 1.0)
        self.seen = CircuitState.CLOSED  # the stored state as this process last saw it
        # The fast path applies when nothing but consecutive failures is counted in memory.
        self.simple = not windowed and self.guard is None


class _StoredAdmission(Admission):
    """An admission the store granted (its outcome is reported to the store)."""

    __slots__ = ()


_REGISTRY: dict[str, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()


def _differences(a: CircuitBreakerConfig, b: CircuitBreakerConfig) -> list[str]:
    return [
        f"{f.name}={getattr(a, f.name)!r} vs {getattr(b, f.name)!r}"
        for f in fields(a)
        if f.compare and getattr(a, f.name) != getattr(b, f.name)
    ]


class CircuitBreaker:
    """A circuit breaker; use with ``with cb:``, ``cb.call(fn, ...)``, or as a decorator.

    Args:
        config: a :class:`CircuitBreakerConfig`; or give its fields as keyword arguments.
        clock: the clock to use (default: the process default at the time of use).

    Raises:
        ValueError: a bad setting, or a configuration that conflicts with the registered breaker
            of the same name.
    """

    __slots__ = ("_shared", "_tickets")

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        **options: Any,
    ) -> None:
        if config is None:
            config = CircuitBreakerConfig(**options)
        elif options:
            raise TypeError("give a CircuitBreakerConfig or keyword settings, not both")
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        if config.name is None:
            self._shared = _Shared(config, clock)
        else:
            with _REGISTRY_LOCK:
                shared = _REGISTRY.get(config.name)
                if shared is None:
                    shared = _REGISTRY[config.name] = _Shared(config, clock)
                elif shared.config != config:
                    raise ValueError(
                        f"circuit breaker {config.name!r} is already registered with another "
                        f"configuration: {', '.join(_differences(config, shared.config))}"
                    )
            self._shared = shared
        self._tickets: contextvars.ContextVar[tuple[tuple[Admission, float], ...]] = (
            contextvars.ContextVar(f"buttress_breaker_{id(self)}", default=())
        )

    # -- introspection ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._shared.config.name or f"breaker-{id(self._shared):x}"

    @property
    def config(self) -> CircuitBreakerConfig:
        return self._shared.config

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN breaker past its recovery time reads as HALF_OPEN."""
        reply = self._stored(READ)
        if reply is not None:
            state, opened_at = reply.state, reply.opened_at
            now = self._store_now()
        else:
            machine = self._shared.machine
            state, opened_at, now = machine.state, machine.opened_at, self._now()
        if state is CircuitState.OPEN and now >= opened_at + self._shared.machine.settings.recovery:
            return CircuitState.HALF_OPEN
        return state

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted in CLOSED state."""
        reply = self._stored(READ)
        return reply.failures if reply is not None else self._shared.machine.failures

    @property
    def storage(self) -> str:
        """Where the state lives (``memory://`` or the store's URL)."""
        guard = self._shared.guard
        return "memory://" if guard is None else str(getattr(guard.store, "url", guard.store))

    @property
    def degraded(self) -> bool:
        """Whether the store is unreachable and this process decides on its own."""
        guard = self._shared.guard
        return guard is not None and guard.degraded

    @property
    def failure_rate(self) -> float:
        """Failures over calls in the window; without a window, consecutive failures/fail_max."""
        with self._shared.lock:
            return self._shared.machine.failure_rate(self._now())

    @property
    def retry_after(self) -> float:
        """Seconds until an OPEN breaker will admit a probe (0 otherwise)."""
        machine = self._shared.machine
        reply = self._stored(READ)
        if reply is not None:
            if reply.state is not CircuitState.OPEN:
                return 0.0
            return max(0.0, reply.opened_at + machine.settings.recovery - self._store_now())
        if machine.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, machine.opened_at + machine.settings.recovery - self._now())

    # -- the store -------------------------------------------------------------------------------

    def _store_now(self) -> float:
        now = store_time(self._shared.clock)
        return _wall() if now is None else now

    def _stored(self, step: BreakerStep) -> BreakerReply | None:
        """One step on the store; ``None`` without a store or while it is unreachable."""
        shared = self._shared
        guard = shared.guard
        if guard is None:
            return None
        local_now = self._now()
        if not guard.should_try(local_now):
            return None
        try:
            reply: BreakerReply = guard.store.breaker(
                self.name, shared.machine.settings, step, store_time(shared.clock)
            )
        except store_faults() as error:
            guard.failed(error, local_now)
            return None
        return self._heard(guard, reply, local_now)

    async def _astored(self, step: BreakerStep) -> BreakerReply | None:
        """Async twin of :meth:`_stored` (the store's async step when it has one)."""
        shared = self._shared
        guard = shared.guard
        if guard is None:
            return None
        local_now = self._now()
        if not guard.should_try(local_now):
            return None
        store = guard.store
        abreaker = getattr(store, "abreaker", None)
        ask = (self.name, shared.machine.settings, step, store_time(shared.clock))
        try:
            if abreaker is not None:
                reply: BreakerReply = await abreaker(*ask)
            else:
                reply = store.breaker(*ask)
        except store_faults() as error:
            guard.failed(error, local_now)
            return None
        return self._heard(guard, reply, local_now)

    def _heard(self, guard: StoreGuard, reply: BreakerReply, now: float) -> BreakerReply:
        guard.answered()
        self._observe(reply, now)
        return reply

    def _observe(self, reply: BreakerReply, now: float) -> None:
        """Announce what the step changed, or what another process changed since last seen."""
        shared = self._shared
        with shared.lock:
            seen, shared.seen = shared.seen, reply.state
        if reply.transition is not None:
            old, new, reason = reply.transition
            if old is not seen:
                self._announce(Transition(seen, old, "changed by another process"), now)
            self._announce(Transition(old, new, reason), now)
        elif reply.state is not seen:
            self._announce(Transition(seen, reply.state, "changed by another process"), now)

    def _from_reply(self, reply: BreakerReply | None, now: float) -> Admission:
        if reply is not None:
            if reply.allowed:
                return _StoredAdmission(True, reply.probe, reply.ticket)
            return Admission(False, retry_after=reply.retry_after)
        mode = self._shared.config.fail_mode
        if mode == "open":
            return Admission(True, generation=-1)  # counted nowhere
        if mode == "closed":
            return Admission(False, retry_after=1.0)
        shared = self._shared
        with shared.lock:
            admission, transition = shared.machine.acquire(now)
        self._announce(transition, now)
        return admission

    def _refuse(self, admission: Admission, now: float) -> CircuitOpenError:
        _events.emit(
            _events.CallRejected(
                policy="circuit",
                name=self.name,
                at=now,
                reason="circuit_open",
                retry_after=admission.retry_after,
            )
        )
        return CircuitOpenError(
            f"circuit breaker {self.name!r} is open; retry after {admission.retry_after:.3f}s",
            retry_after=admission.retry_after,
            name=self.name,
        )

    def _settle_stored(self, admission: Admission, failed: bool | None) -> BreakerStep | None:
        """The store step that settles ``admission`` (``None``: settle locally instead)."""
        if not isinstance(admission, _StoredAdmission):
            return None
        if failed is None:
            return BreakerStep.release(admission.generation, probe=admission.probe)
        return BreakerStep.record(admission.generation, probe=admission.probe, failed=failed)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state.value!r})"

    def _now(self) -> float:
        return (self._shared.clock or get_clock()).now()

    # -- listeners and manual control -----------------------------------------------------------

    def add_listener(self, listener: Callable[[_events.CircuitStateChanged], None]) -> None:
        """Call ``listener(event)`` on every state change of this breaker."""
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {listener!r}")
        self._shared.listeners.append(listener)

    def remove_listener(self, listener: Callable[[_events.CircuitStateChanged], None]) -> None:
        if listener in self._shared.listeners:
            self._shared.listeners.remove(listener)

    def _announce(self, transition: Transition | None, now: float) -> None:
        if transition is None:
            return
        event = _events.CircuitStateChanged(
            policy="circuit",
            name=self.name,
            at=now,
            old=transition.old,
            new=transition.new,
            reason=transition.reason,
        )
        _events.emit(event)
        for listener in tuple(self._shared.listeners):
            try:
                listener(event)
            except Exception:
                _events._log.exception("circuit breaker listener %r failed", listener)

    def _force(self, state: CircuitState, reason: str) -> None:
        now = self._now()
        with self._shared.lock:
            transition = self._shared.machine.force(state, now, reason)
        if self._shared.guard is not None:
            self._stored(BreakerStep.force(state, reason))
            return
        self._announce(transition, now)

    def open(self) -> None:
        """Open the breaker now (calls are rejected until the recovery timeout)."""
        self._force(CircuitState.OPEN, "opened manually")

    def close(self) -> None:
        """Close the breaker now and clear its counts."""
        self._force(CircuitState.CLOSED, "closed manually")

    def reset(self) -> None:
        """Back to a fresh CLOSED breaker."""
        self._force(CircuitState.CLOSED, "reset")

    # -- the general path ------------------------------------------------------------------------

    def _admit(self) -> tuple[Admission, float]:
        shared = self._shared
        if shared.guard is not None:
            reply = self._stored(ACQUIRE)
            now = self._now()
            admission = self._from_reply(reply, now)
            if not admission.allowed:
                raise self._refuse(admission, now)
            return admission, now
        now = self._now()
        with shared.lock:
            admission, transition = shared.machine.acquire(now)
        self._announce(transition, now)
        if not admission.allowed:
            _events.emit(
                _events.CallRejected(
                    policy="circuit",
                    name=self.name,
                    at=now,
                    reason="circuit_open",
                    retry_after=admission.retry_after,
                )
            )
            raise CircuitOpenError(
                f"circuit breaker {self.name!r} is {shared.machine.state.value}; retry after "
                f"{admission.retry_after:.3f}s",
                retry_after=admission.retry_after,
                name=self.name,
            )
        return admission, now

    def _outcome(self, error: BaseException | None) -> bool | None:
        """``True`` failed, ``False`` succeeded, ``None`` does not count."""
        config = self._shared.config
        if error is not None and (
            isinstance(error, config.excluded_exceptions)
            or not isinstance(error, config.failure_exceptions)
        ):
            return None
        return error is not None

    def _completed(self, failed: bool | None, began: float, now: float) -> None:
        if _events.HOOKS:
            outcome = "ignored" if failed is None else "failure" if failed else "success"
            _events.emit(
                _events.CallCompleted(
                    policy="circuit", name=self.name, at=now, outcome=outcome, duration=now - began
                )
            )

    def _settle(self, admission: Admission, began: float, error: BaseException | None) -> None:
        shared = self._shared
        config = shared.config
        now = self._now()
        duration = now - began
        if shared.guard is not None and admission.generation != -1:
            failed = self._outcome(error)
            step = self._settle_stored(admission, failed)
            if step is not None:
                self._stored(step)
            else:
                self._settle_local(admission, failed, now)
            self._completed(failed, began, now)
            return
        if error is not None and (
            isinstance(error, config.excluded_exceptions)
            or not isinstance(error, config.failure_exceptions)
        ):
            with shared.lock:
                shared.machine.release(admission)
            outcome = "ignored"
            transition = None
        else:
            failed = error is not None
            slow = config.slow_call_duration is not None and duration > config.slow_call_duration
            with shared.lock:
                transition = shared.machine.record(admission, now, failed=failed, slow=slow)
            outcome = "failure" if failed else "success"
        self._announce(transition, now)
        if _events.HOOKS:
            _events.emit(
                _events.CallCompleted(
                    policy="circuit", name=self.name, at=now, outcome=outcome, duration=duration
                )
            )

    def _settle_local(self, admission: Admission, failed: bool | None, now: float) -> None:
        shared = self._shared
        with shared.lock:
            if failed is None:
                shared.machine.release(admission)
                transition = None
            else:
                transition = shared.machine.record(admission, now, failed=failed)
        self._announce(transition, now)

    async def _aadmit(self) -> tuple[Admission, float]:
        reply = await self._astored(ACQUIRE)
        now = self._now()
        admission = self._from_reply(reply, now)
        if not admission.allowed:
            raise self._refuse(admission, now)
        return admission, now

    async def _asettle(
        self, admission: Admission, began: float, error: BaseException | None
    ) -> None:
        now = self._now()
        failed = self._outcome(error)
        if admission.generation != -1:
            step = self._settle_stored(admission, failed)
            if step is not None:
                await self._astored(step)
            else:
                self._settle_local(admission, failed, now)
        self._completed(failed, began, now)

    def _fail(self, error: BaseException) -> None:
        """Fast-path failure in CLOSED state (consecutive counting)."""
        shared = self._shared
        config = shared.config
        if isinstance(error, config.excluded_exceptions) or not isinstance(
            error, config.failure_exceptions
        ):
            return
        now = self._now()
        with shared.lock:
            machine = shared.machine
            admission = Admission(True, generation=machine.generation)
            transition = machine.record(admission, now, failed=True)
        self._announce(transition, now)

    def _succeed(self) -> None:
        shared = self._shared
        with shared.lock:
            if shared.machine.state is _CLOSED:
                shared.machine.failures = 0

    def _call_general(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        admission, began = self._admit()
        try:
            result = fn(*args, **kwargs)
        except Exception as error:
            self._settle(admission, began, error)
            raise
        except BaseException:
            self._release(admission)
            raise
        self._settle(admission, began, None)
        return result

    def _release(self, admission: Admission) -> None:
        if isinstance(admission, _StoredAdmission):
            self._stored(BreakerStep.release(admission.generation, probe=admission.probe))
            return
        with self._shared.lock:
            self._shared.machine.release(admission)

    async def _acall_general(
        self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Any:
        if self._shared.guard is not None:
            return await self._acall_stored(fn, args, kwargs)
        admission, began = self._admit()
        try:
            result = await fn(*args, **kwargs)
        except Exception as error:
            self._settle(admission, began, error)
            raise
        except BaseException:
            with self._shared.lock:
                self._shared.machine.release(admission)
            raise
        self._settle(admission, began, None)
        return result

    async def _acall_stored(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        admission, began = await self._aadmit()
        try:
            result = await fn(*args, **kwargs)
        except Exception as error:
            await self._asettle(admission, began, error)
            raise
        except BaseException:
            self._release(admission)  # cancelled: give the probe slot back at once
            raise
        await self._asettle(admission, began, None)
        return result

    # -- decoration and calls -------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        if not callable(fn):
            raise TypeError(f"a circuit breaker decorates a callable, got {fn!r}")
        shared = self._shared
        machine = shared.machine
        hooks = _events.HOOKS
        fail, succeed = self._fail, self._succeed
        if inspect.iscoroutinefunction(fn):
            general_async = self._acall_general

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if machine.state is not _CLOSED or not shared.simple or hooks:
                    return await general_async(fn, args, kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as error:
                    fail(error)
                    raise
                if machine.failures:
                    succeed()
                return result

            return cast(F, async_wrapper)
        general = self._call_general

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if machine.state is not _CLOSED or not shared.simple or hooks:
                return general(fn, args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                fail(error)
                raise
            if machine.failures:
                succeed()
            return result

        return cast(F, wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` through the breaker."""
        shared = self._shared
        if shared.machine.state is not _CLOSED or not shared.simple or _events.HOOKS:
            return cast(T, self._call_general(fn, args, kwargs))
        try:
            result = fn(*args, **kwargs)
        except Exception as error:
            self._fail(error)
            raise
        if shared.machine.failures:
            self._succeed()
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await the async ``fn(*args, **kwargs)`` through the breaker."""
        shared = self._shared
        if shared.machine.state is not _CLOSED or not shared.simple or _events.HOOKS:
            return cast(T, await self._acall_general(fn, args, kwargs))
        try:
            result = await fn(*args, **kwargs)
        except Exception as error:
            self._fail(error)
            raise
        if shared.machine.failures:
            self._succeed()
        return result

    # -- context manager -------------------------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        ticket = self._admit()
        self._tickets.set((*self._tickets.get(), ticket))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = self._tickets.get()
        admission, began = stack[-1]
        self._tickets.set(stack[:-1])
        if exc is not None and not isinstance(exc, Exception):
            self._release(admission)
            return
        self._settle(admission, began, exc)

    async def __aenter__(self) -> CircuitBreaker:
        if self._shared.guard is None:
            return self.__enter__()
        ticket = await self._aadmit()
        self._tickets.set((*self._tickets.get(), ticket))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._shared.guard is None:
            self.__exit__(exc_type, exc, tb)
            return
        stack = self._tickets.get()
        admission, began = stack[-1]
        self._tickets.set(stack[:-1])
        if exc is not None and not isinstance(exc, Exception):
            self._release(admission)
            return
        await self._asettle(admission, began, exc)


def get_circuit_breaker(name: str, **options: Any) -> CircuitBreaker:
    """The registered breaker called ``name``, created with ``options`` if new.

    With no options, an existing breaker is returned whatever its configuration.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    clock = options.pop("clock", None)
    if not options:
        with _REGISTRY_LOCK:
            shared = _REGISTRY.get(name)
        if shared is not None:
            return CircuitBreaker(shared.config, clock=clock)
    return CircuitBreaker(CircuitBreakerConfig(name=name, **options), clock=clock)


def circuit_breaker(name: str, **options: Any) -> CircuitBreaker:
    """Decorator: ``@circuit_breaker("external_api", failure_threshold=5, recovery_timeout=60)``.

    Uses the registered breaker of that name (created on first use), so every function decorated
    with the same name shares one state.
    """
    return get_circuit_breaker(name, **options)


def circuit_breakers() -> dict[str, CircuitBreaker]:
    """A snapshot of the registered breakers by name."""
    with _REGISTRY_LOCK:
        configs = {name: shared.config for name, shared in _REGISTRY.items()}
    return {name: CircuitBreaker(config) for name, config in configs.items()}
