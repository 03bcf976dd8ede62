"""Circuit breaker: stop calling a dependency that keeps failing, and probe for its recovery.

Theory of operation
-------------------
The states and transitions live in :mod:`buttress.machines.breaker` (see its table); where that
state lives (this process, or a store shared by processes) is a *state* object from
:mod:`buttress.policies._breakerstate`, behind one small interface (admit, settle, snapshot). This
module is the shell: it holds the clock, classifies outcomes, raises
:class:`buttress.CircuitOpenError` (with ``retry_after``) for refused calls, and tells listeners,
logs and hooks about transitions.

Guarantees:

* Thread- and task-safe: admissions and outcomes go through the state's lock, held only for a few
  arithmetic steps (never across the guarded call, never across an ``await``). Under any number of
  concurrent callers, at most ``half_open_max_calls`` probes run at once.
* A late outcome cannot undo a newer decision: every admission carries the generation it was
  admitted in, on the fast path too, so a call admitted before a trip cannot re-open a breaker that
  has recovered since, whether or not a hook is installed.
* One fast path for every entry point (decorator, ``call``/``acall``, ``with``): in CLOSED state
  with the consecutive-failure rule, in memory and with no hook installed, a call is admitted by
  reading one attribute (the machine's ``closed_generation``, also the ticket its failure is
  stamped with) and, only if failures were counted, a success resets them: no lock, no clock, no
  allocation. Anything else (OPEN or HALF_OPEN, windows, slow-call detection, a store, a hook)
  takes the one general path. The decisions are made in one place; each entry point only holds
  the few lines around the call, because delegating them would cost a Python frame, a tenth of
  the whole success path.
* Refusing is cheap: an OPEN breaker in memory refuses without its lock; the
  :class:`buttress.events.CallRejected` event is built only when a hook or a DEBUG logger reads it,
  and the WARNING line is one per burst of refusals, then a summary per interval ("1,234 calls
  rejected by circuit breaker 'erp' in the last 10 s", :class:`buttress.events.Repeats`).
* ``repr`` and metrics never do I/O: they show a stored breaker as this process last saw it. The
  ``state``, ``failure_count`` and ``retry_after`` properties ask the store.

Breakers with a name are registered: every :class:`CircuitBreaker` built with the same name shares
one state (the same dependency seen from several places). A different configuration under the same
name is an error. ``name=None`` gives a private breaker. :meth:`CircuitBreaker.dispose` takes a
breaker out of the registry and closes the store it opened (``close()`` already means closing the
circuit, and ``with breaker:`` guards a block).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, fields
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar, cast

from .. import events as _events
from .._callables import guarded_kind, refused_awaitable, resolved
from .._config import (
    env_float,
    env_int,
    integer,
    nonblank,
    number,
    optional_nonblank,
    optional_seconds,
    seconds,
)
from ..backends import open_storage
from ..clock import Clock, checked_clock, get_clock
from ..errors import CircuitOpenError
from ..machines.breaker import (
    Admission,
    BreakerMachine,
    BreakerSettings,
    CircuitState,
    Transition,
)
from ._breakerstate import NO_GATE, DisposedState, Gate, LocalState, Snapshot, StoredState
from ._storeguard import StoreGuard, check_fail_mode

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
_HOOKS = _events.HOOKS
_blank_refusal = CircuitOpenError.__new__
_detail = logging.getLogger("buttress.circuit")
_DEBUG = logging.DEBUG


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
        optional_nonblank("name", self.name)
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


Ticket = int | tuple[Admission, float]  # a fast-path generation, or an admission and its start


class _Core:
    """One breaker: its configuration, state, listeners and paths; shared by every
    :class:`CircuitBreaker` object with its name."""

    __slots__ = (
        "clock",
        "config",
        "counted",
        "excluded",
        "first_refusal",
        "gate",
        "listeners",
        "local",
        "name",
        "open_gate",
        "repeats",
        "slow_after",
        "state",
        "stored",
        "tickets",
        "where",
    )

    def __init__(self, config: CircuitBreakerConfig, clock: Clock | None) -> None:
        self.config = config
        self.clock = clock
        self.name = config.name or f"breaker-{id(self):x}"
        self.listeners: list[Callable[[_events.CircuitStateChanged], None]] = []
        self.excluded, self.counted = config.excluded_exceptions, config.failure_exceptions
        self.slow_after = config.slow_call_duration
        settings = config.settings()
        windowed = settings.windowed or config.slow_call_duration is not None
        self.local = LocalState(settings, self.announce)
        self.state: LocalState | StoredState | DisposedState = self.local
        self.stored: StoredState | None = None
        self.where = "memory://"
        # BUTTRESS_STORAGE_URL applies to named breakers that can be stored; explicit storage=
        # without a name or with a window was refused by the config.
        if config.storage is not None or (config.name is not None and not windowed):
            store = open_storage(config.storage)
            if store is not None:
                guard = StoreGuard(store, f"circuit breaker {self.name!r}", config.fail_mode, 1.0)
                owned = store is not config.storage  # opened here: from a URL, or around a client
                self.where = str(getattr(store, "url", store))
                self.state = self.stored = StoredState(
                    self.name, settings, guard, owned=owned, clock=clock, announce=self.announce
                )
        # The machine's lock-free reads: admitting in CLOSED state when nothing but consecutive
        # failures is counted, refusing in OPEN state whenever the state is local.
        self.open_gate: BreakerMachine | Gate = (
            self.local.machine if self.stored is None else NO_GATE
        )
        self.gate = self.open_gate if not windowed else NO_GATE
        self.tickets: contextvars.ContextVar[tuple[Ticket, ...]] = contextvars.ContextVar(
            f"buttress_breaker_{id(self):x}", default=()
        )
        what = f"circuit breaker {self.name!r}"
        self.first_refusal = f"{what} is open: rejecting calls".__str__
        self.repeats = _events.Repeats("circuit", self.name, f"calls rejected by {what}")

    def now(self) -> float:
        return (self.clock or get_clock()).now()

    # -- the general path (the fast one is in CircuitBreaker's entry points) --------------------

    def run(self, fn: Callable[..., Any], args: Any, kwargs: Any, gated: bool = False) -> Any:
        """The general sync path; ``gated``: an awaitable returned is refused, and not counted
        (its work has not run)."""
        began = (self.clock or get_clock()).now()  # admit(), inlined for the refusals of outages
        wait = self.open_gate.reopens_at - began
        admission = self.state.admit(began) if wait <= 0 else wait
        if isinstance(admission, float):
            raise self.refuse(admission, began)
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            self.finish(admission, began, error)
            raise
        if gated and hasattr(result, "__await__"):  # _callables.is_awaitable, inlined
            self.state.settle(admission, self.now(), None, False)  # no verdict: a probe is freed
            raise refused_awaitable("circuit breaker", fn, result)
        self.finish(admission, began, None)
        return result

    def arun(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Awaitable[Any]:
        """The general async path. A local breaker decides before making a coroutine, so a
        refusal raises at once, as cheap as a sync one."""
        if self.stored is not None:
            return self.arun_stored(fn, args, kwargs)
        began = (self.clock or get_clock()).now()  # admit(), inlined as in run()
        wait = self.open_gate.reopens_at - began
        admission = self.state.admit(began) if wait <= 0 else wait
        if isinstance(admission, float):
            raise self.refuse(admission, began)
        return self.arun_admitted(fn, args, kwargs, (admission, began))

    async def arun_stored(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        return await self.arun_admitted(fn, args, kwargs, await self.aadmit())

    async def arun_admitted(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: Any,
        kwargs: Any,
        ticket: tuple[Admission, float],
    ) -> Any:
        try:
            result = fn(*args, **kwargs)
            if hasattr(result, "__await__"):  # acall of a plain function: its value as it is
                result = await result
        except BaseException as error:
            await self.afinish(*ticket, error)
            raise
        await self.afinish(*ticket, None)
        return result

    def failed(self, ticket: int, error: BaseException) -> None:
        """A call admitted on the fast path raised: count it in the generation it came in."""
        if isinstance(error, self.counted) and not isinstance(error, self.excluded):
            self.local.settle(Admission(True, generation=ticket), self.now(), True)

    # -- admissions and outcomes -------------------------------------------------------------------

    def admit(self) -> tuple[Admission, float]:
        """Admit a call now, or raise :class:`CircuitOpenError`; returns it with the time."""
        now = (self.clock or get_clock()).now()
        wait = self.open_gate.reopens_at - now  # an OPEN local breaker refuses without its lock
        admission = self.state.admit(now) if wait <= 0 else wait
        if isinstance(admission, float):
            raise self.refuse(admission, now)
        return admission, now

    async def aadmit(self) -> tuple[Admission, float]:
        now = self.now()
        admission = await cast(StoredState, self.stored).aadmit(now)
        if isinstance(admission, float):
            raise self.refuse(admission, now)
        return admission, now

    def refuse(self, wait: float, now: float) -> CircuitOpenError:
        """Count one refused call and return the error to raise (its message is formatted only
        if it is read)."""
        self.repeats.hit(now, self.first_refusal)
        if _HOOKS or _detail.isEnabledFor(_DEBUG):  # events.wanted("circuit"), inlined
            _events.emit(
                _events.CallRejected(
                    policy="circuit",
                    name=self.name,
                    at=now,
                    reason="circuit_open",
                    retry_after=wait,
                )
            )
        error = _blank_refusal(CircuitOpenError)
        error.retry_after, error.name = wait, self.name
        return error

    def outcome(self, error: BaseException | None, began: float) -> tuple[float, bool | None, bool]:
        """``now``; whether the call failed (``None``: it does not count); whether it was slow."""
        now = self.now()
        failed: bool | None = None  # cancelled, interrupted, excluded: no verdict on the dependency
        if error is None:
            failed = False
        elif isinstance(error, Exception) and isinstance(error, self.counted):
            failed = None if isinstance(error, self.excluded) else True
        slow = self.slow_after is not None and now - began > self.slow_after
        return now, failed, slow

    def finish(self, admission: Admission, began: float, error: BaseException | None) -> None:
        now, failed, slow = self.outcome(error, began)
        self.state.settle(admission, now, failed, slow)
        self.completed(error, failed, now - began, now)

    async def afinish(
        self, admission: Admission, began: float, error: BaseException | None
    ) -> None:
        stored = self.stored
        if stored is None:
            self.finish(admission, began, error)
            return
        now, failed, slow = self.outcome(error, began)
        await stored.asettle(admission, now, failed, slow)
        self.completed(error, failed, now - began, now)

    def completed(
        self, error: BaseException | None, failed: bool | None, duration: float, now: float
    ) -> None:
        if _HOOKS and (error is None or isinstance(error, Exception)):
            outcome = "ignored" if failed is None else "failure" if failed else "success"
            _events.emit(
                _events.CallCompleted(
                    policy="circuit", name=self.name, at=now, outcome=outcome, duration=duration
                )
            )

    # -- a guarded block (``with breaker:``) -------------------------------------------------------

    def enter(self, ticket: Ticket | None = None) -> None:
        if ticket is None:
            generation = self.gate.closed_generation
            ticket = generation if generation >= 0 and not _HOOKS else self.admit()
        self.tickets.set((*self.tickets.get(), ticket))

    def leave(self) -> Ticket:
        """Pop the innermost block's ticket."""
        stack = self.tickets.get()
        self.tickets.set(stack[:-1])
        return stack[-1]

    def exit(self, ticket: Ticket, error: BaseException | None) -> None:
        """Settle a block's ticket (a stored admission, in async code: ``afinish``)."""
        if not isinstance(ticket, int):
            self.finish(*ticket, error)
        elif error is None:
            if self.gate.failures:
                self.local.succeeded(ticket)
        elif isinstance(error, Exception):
            self.failed(ticket, error)

    # -- transitions -------------------------------------------------------------------------------

    def announce(self, transition: Transition, now: float) -> None:
        event = _events.CircuitStateChanged(
            policy="circuit",
            name=self.name,
            at=now,
            old=transition.old,
            new=transition.new,
            reason=transition.reason,
        )
        _events.emit(event)
        for listener in tuple(self.listeners):
            try:
                listener(event)
            except Exception:
                _events._log.exception("circuit breaker listener %r failed", listener)

    def dispose(self) -> StoredState | None:
        """Unregister; returns the stored state whose store is still to be closed."""
        with _REGISTRY_LOCK:
            if _REGISTRY.get(self.name) is self:
                del _REGISTRY[self.name]
        state = self.state
        if isinstance(state, DisposedState):
            return None
        self.gate = self.open_gate = NO_GATE
        self.stored = None
        self.state = DisposedState(self.name, state.snapshot(self.now()))
        return state if isinstance(state, StoredState) else None


_REGISTRY: dict[str, _Core] = {}
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

    __slots__ = ("_core",)

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        **options: Any,
    ) -> None:
        clock = checked_clock(clock)
        if config is None:
            config = CircuitBreakerConfig(**options)
        elif options:
            raise TypeError("give a CircuitBreakerConfig or keyword settings, not both")
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        if config.name is None:
            self._core = _Core(config, clock)
            return
        with _REGISTRY_LOCK:
            core = _REGISTRY.get(config.name)
            if core is None:
                core = _REGISTRY[config.name] = _Core(config, clock)
            elif core.config != config:
                raise ValueError(
                    f"circuit breaker {config.name!r} is already registered with another "
                    f"configuration: {', '.join(_differences(config, core.config))}"
                )
        self._core = core

    @classmethod
    def _of(cls, core: _Core) -> CircuitBreaker:
        breaker = cls.__new__(cls)
        breaker._core = core
        return breaker

    # -- introspection -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def config(self) -> CircuitBreakerConfig:
        return self._core.config

    def _read(self) -> Snapshot:
        core = self._core
        return core.state.read(core.now())

    @property
    def state(self) -> CircuitState:
        """The current state (a stored breaker asks its store); an OPEN breaker past its recovery
        time reads as HALF_OPEN."""
        return self._read().state

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted in CLOSED state (a stored breaker asks its store)."""
        return self._read().failures

    @property
    def retry_after(self) -> float:
        """Seconds until an OPEN breaker will admit a probe, 0 otherwise (asks a store)."""
        return self._read().retry_after

    @property
    def failure_rate(self) -> float:
        """Failures over calls in the window; without a window, consecutive failures/fail_max
        while CLOSED and 1.0 while OPEN or HALF_OPEN (the failures that opened it).

        Never asks a store: a stored breaker reports the failures it last heard of.
        """
        core = self._core
        return core.state.snapshot(core.now()).failure_rate

    @property
    def storage(self) -> str:
        """Where the state lives (``memory://`` or the store's URL)."""
        return self._core.where

    @property
    def degraded(self) -> bool:
        """Whether the store is unreachable and this process decides on its own."""
        stored = self._core.stored
        return stored is not None and stored.guard.degraded

    def __repr__(self) -> str:
        core = self._core
        state = core.state.snapshot(core.now()).state  # as last seen: repr never asks a store
        return f"CircuitBreaker(name={core.name!r}, state={state.value!r})"

    # -- listeners, manual control, disposal -------------------------------------------------------

    def add_listener(self, listener: Callable[[_events.CircuitStateChanged], None]) -> None:
        """Call ``listener(event)`` on every state change of this breaker."""
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {listener!r}")
        self._core.listeners.append(listener)

    def remove_listener(self, listener: Callable[[_events.CircuitStateChanged], None]) -> None:
        if listener in self._core.listeners:
            self._core.listeners.remove(listener)

    def _force(self, state: CircuitState, reason: str) -> None:
        core = self._core
        core.state.force(state, core.now(), reason)

    def open(self) -> None:
        """Open the breaker now (calls are rejected until the recovery timeout)."""
        self._force(CircuitState.OPEN, "opened manually")

    def close(self) -> None:
        """Close the circuit now and clear its counts (see :meth:`dispose` to release a store)."""
        self._force(CircuitState.CLOSED, "closed manually")

    def reset(self) -> None:
        """Back to a fresh CLOSED breaker."""
        self._force(CircuitState.CLOSED, "reset")

    def dispose(self) -> None:
        """Retire this breaker: take its name out of the registry and close the store it opened.

        A store opened for the breaker from a URL (``storage="sqlite:///…"`` or
        ``BUTTRESS_STORAGE_URL``) is closed, releasing its connections and files; a store or
        client passed in as ``storage=`` is left to its owner. Every object using this breaker's
        name is affected: calls already running finish, new ones raise ``RuntimeError``, and a new
        ``CircuitBreaker`` with the name starts afresh (from the stored state, for a stored one).
        Idempotent. Async code with a store uses :meth:`adispose`.
        """
        stored = self._core.dispose()
        if stored is not None:
            stored.close()

    async def adispose(self) -> None:
        """:meth:`dispose`, closing the store's async connections without blocking the loop."""
        stored = self._core.dispose()
        if stored is not None:
            await stored.aclose()

    # -- decoration and calls ----------------------------------------------------------------------

    # Every entry point opens with the same fast path (see the module documentation): read the
    # gate, call, and hand a failure (with the generation it was admitted in) or a reset to the
    # shared methods; anything else goes to the general path, core.run or core.arun.

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` (``def`` or ``async def``)."""
        core = self._core
        if guarded_kind("circuit breaker", fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                ticket = core.gate.closed_generation
                if ticket < 0 or _HOOKS:
                    return await core.arun(fn, args, kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as error:
                    core.failed(ticket, error)
                    raise
                if core.gate.failures:
                    core.local.succeeded(ticket)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ticket = core.gate.closed_generation
            if ticket < 0 or _HOOKS:
                return core.run(fn, args, kwargs, True)
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                core.failed(ticket, error)
                raise
            if hasattr(result, "__await__"):  # _callables.is_awaitable, inlined
                raise refused_awaitable("circuit breaker", fn, result)
            if core.gate.failures:
                core.local.succeeded(ticket)
            return result

        return cast(F, wrapper)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the sync ``fn(*args, **kwargs)`` through the breaker.

        Raises:
            TypeError: ``fn`` returned an awaitable (not counted; use :meth:`acall`).
        """
        core = self._core
        ticket = core.gate.closed_generation
        if ticket < 0 or _HOOKS:
            outcome: T = core.run(fn, args, kwargs, True)
            return outcome
        try:
            result = fn(*args, **kwargs)
        except Exception as error:
            core.failed(ticket, error)
            raise
        if hasattr(result, "__await__"):  # _callables.is_awaitable, inlined
            raise refused_awaitable("circuit breaker", fn, result)
        if core.gate.failures:
            core.local.succeeded(ticket)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await what ``fn(*args, **kwargs)`` returns through the breaker (a plain value as
        it is)."""
        core = self._core
        ticket = core.gate.closed_generation
        if ticket < 0 or _HOOKS:
            outcome: T = await core.arun(fn, args, kwargs)
            return outcome
        try:
            result: T = await resolved(fn(*args, **kwargs))
        except Exception as error:
            core.failed(ticket, error)
            raise
        if core.gate.failures:
            core.local.succeeded(ticket)
        return result

    # -- context manager ---------------------------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        self._core.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._core.exit(self._core.leave(), exc)

    async def __aenter__(self) -> CircuitBreaker:
        core = self._core
        core.enter(await core.aadmit() if core.stored is not None else None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        core = self._core
        ticket = core.leave()
        if isinstance(ticket, tuple) and core.stored is not None:
            await core.afinish(*ticket, exc)  # a stored admission: settled by the store
        else:
            core.exit(ticket, exc)


def get_circuit_breaker(name: str, **options: Any) -> CircuitBreaker:
    """The registered breaker called ``name``, created with ``options`` if new.

    With no options, an existing breaker is returned whatever its configuration.
    """
    nonblank("name", name)
    clock = options.pop("clock", None)
    if not options:
        with _REGISTRY_LOCK:
            core = _REGISTRY.get(name)
        if core is not None:
            return CircuitBreaker._of(core)
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
        cores = dict(_REGISTRY)
    return {name: CircuitBreaker._of(core) for name, core in cores.items()}


def _failure_rates() -> Iterator[tuple[str, float]]:
    """Every registered breaker's failure rate, for metrics read when scraped (no I/O)."""
    with _REGISTRY_LOCK:
        cores = list(_REGISTRY.values())
    for core in cores:
        yield core.name, core.state.snapshot(core.now()).failure_rate


_events.add_reading("circuit_failure_rate", _failure_rates)
