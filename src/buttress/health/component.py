"""Components: the parts of a service judged by how their calls go, not by a probe.

Theory of operation
-------------------
A :class:`HealthMonitor` keeps, per named component, the outcomes of its calls in a sliding time
window of ``window`` seconds, held as ``buckets`` counters of ``window / buckets`` seconds each (so
memory is fixed however many calls arrive, and the window slides by one bucket at a time). The
outcomes come from the application (``record_success`` / ``record_failure``) or from the policies'
events for a named breaker or operation (``watch=``): a breaker's :class:`CallCompleted` counts
as a success or a failure (``ignored`` outcomes do not count), a retry's :class:`GaveUp` and any
policy's :class:`CallRejected` count as failures. Retries and rate limits report no successes, so
watch a circuit breaker's name (every call it guards is reported) or record successes yourself.

Status, read from the window at the time of reading:

====================================================  ===============
condition                                             status
====================================================  ===============
``fail_threshold`` (3) failures in a row               UNAVAILABLE
``calls >= min_calls`` and error rate >= 0.5           CRITICAL
``calls >= min_calls`` and error rate >= 0.1           DEGRADED
otherwise                                             HEALTHY
====================================================  ===============

``uptime`` is the seconds since the component last became available: since it was registered,
or since the first success after it was UNAVAILABLE (``0`` while it is). Reading never changes
anything but expired buckets; the time is the monitor's clock (a :class:`FakeClock` drives it).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from .. import events as _events
from .._config import integer, number, seconds
from ..clock import Clock, get_clock
from .types import ResourceStatus, redact

__all__ = ["ComponentState", "HealthMonitor"]

HEALTHY, DEGRADED = ResourceStatus.HEALTHY, ResourceStatus.DEGRADED
CRITICAL, UNAVAILABLE = ResourceStatus.CRITICAL, ResourceStatus.UNAVAILABLE


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentState:
    """One component's health as read now."""

    name: str
    status: ResourceStatus
    uptime: float
    error_rate: float
    calls: int
    failures: int
    consecutive_failures: int
    last_error: str | None
    critical: bool

    def as_dict(self) -> dict[str, object]:
        """The health report's entry (``status``, ``uptime``, ``error_rate`` and more)."""
        return {
            "status": self.status.value,
            "uptime": round(self.uptime, 3),
            "error_rate": round(self.error_rate, 4),
            "calls": self.calls,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "critical": self.critical,
        }


class _Component:
    __slots__ = (
        "critical",
        "failures_in_row",
        "indexes",
        "last_error",
        "name",
        "outcomes",
        "up_since",
    )

    def __init__(self, name: str, buckets: int, critical: bool, now: float) -> None:
        self.name = name
        self.critical = critical
        self.indexes = [-1] * buckets  # the absolute bucket number each slot holds
        self.outcomes = [[0, 0] for _ in range(buckets)]  # [calls, failures] per slot
        self.failures_in_row = 0
        self.last_error: str | None = None
        self.up_since: float | None = now


class HealthMonitor:
    """Named components with uptime, error rate over a sliding window, and a status.

    Args:
        name: the name in metrics (a team's name).
        window: seconds of history in the error rate (60).
        buckets: how finely the window slides (12: by 5 s with the default window).
        min_calls: calls in the window before the error rate counts (5).
        degraded_rate, critical_rate: error rates that make a component DEGRADED / CRITICAL.
        fail_threshold: failures in a row that make it UNAVAILABLE (3).
        clock: the clock (default: the process default at the time of use).
    """

    def __init__(
        self,
        name: str = "default",
        *,
        window: float = 60.0,
        buckets: int = 12,
        min_calls: int = 5,
        degraded_rate: float = 0.1,
        critical_rate: float = 0.5,
        fail_threshold: int = 3,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.window = seconds("window", window, allow_zero=False)
        self.buckets = integer("buckets", buckets, minimum=1)
        self.width = self.window / self.buckets
        self.min_calls = integer("min_calls", min_calls, minimum=1)
        self.degraded_rate = number("degraded_rate", degraded_rate, minimum=0.0, maximum=1.0)
        self.critical_rate = number("critical_rate", critical_rate, minimum=0.0, maximum=1.0)
        if self.degraded_rate > self.critical_rate:
            raise ValueError(
                f"degraded_rate ({degraded_rate}) must be <= critical_rate ({critical_rate})"
            )
        self.fail_threshold = integer("fail_threshold", fail_threshold, minimum=1)
        self._clock = clock
        self._lock = threading.Lock()
        self._components: dict[str, _Component] = {}
        self._watched: dict[str, tuple[str, frozenset[str] | None]] = {}
        self._attached = False
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"HealthMonitor({self.name!r}, components={len(self._components)})"

    def _now(self) -> float:
        return (self._clock or get_clock()).now()

    # -- components ------------------------------------------------------------------------------

    def register(
        self,
        component: str,
        *,
        critical: bool = True,
        watch: str | Iterable[str] | None = None,
        policies: Iterable[str] | None = None,
    ) -> None:
        """Declare ``component`` (optional: recording registers unknown names as critical).

        Args:
            critical: ``False`` lets it degrade the whole, never more.
            watch: names of policies (a breaker, a retry, a limit) whose events feed it.
            policies: only events of these policy kinds count (``"circuit"``, ``"retry"``,
                ``"ratelimit"``, ``"bulkhead"``); default: any.
        """
        if not isinstance(component, str) or not component:
            raise ValueError(f"component name must be a non-empty string, got {component!r}")
        if not isinstance(critical, bool):
            raise TypeError(f"critical must be True or False, got {critical!r}")
        names = [watch] if isinstance(watch, str) else list(watch or ())
        for policy_name in names:
            if not isinstance(policy_name, str) or not policy_name:
                raise ValueError(f"watch must name policies, got {policy_name!r}")
        kinds = None
        if policies is not None:
            kinds = frozenset(policies)
            if not kinds or not all(isinstance(k, str) and k for k in kinds):
                raise ValueError(f"policies must be policy kinds like 'circuit', got {policies!r}")
        now = self._now()
        with self._lock:
            existing = self._components.get(component)
            if existing is None:
                self._components[component] = _Component(component, self.buckets, critical, now)
            else:
                existing.critical = critical
            for policy_name in names:
                taken = self._watched.get(policy_name)
                if taken is not None and taken[0] != component:
                    raise ValueError(f"policy {policy_name!r} already feeds component {taken[0]!r}")
                self._watched[policy_name] = (component, kinds)
        if names:
            self.attach()

    def record_success(self, component: str) -> None:
        """Count one successful call of ``component``."""
        self._record(component, None)

    def record_failure(self, component: str, error: str | BaseException | None = None) -> None:
        """Count one failed call of ``component`` (``error`` is kept, redacted, as last_error)."""
        if error is None:
            text = "failure recorded"
        elif isinstance(error, BaseException):
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        elif isinstance(error, str):
            text = error
        else:
            raise TypeError(f"error must be a string or an exception, got {error!r}")
        self._record(component, redact(text))

    def _record(self, component: str, error: str | None) -> None:
        now = self._now()
        index = int(now // self.width)
        slot = index % self.buckets
        with self._lock:
            state = self._components.get(component)
            if state is None:
                if not isinstance(component, str) or not component:
                    raise ValueError(
                        f"component name must be a non-empty string, got {component!r}"
                    )
                state = self._components[component] = _Component(component, self.buckets, True, now)
            if state.indexes[slot] != index:
                state.indexes[slot] = index
                state.outcomes[slot] = [0, 0]
            counts = state.outcomes[slot]
            counts[0] += 1
            if error is None:
                state.failures_in_row = 0
                if state.up_since is None:
                    state.up_since = now
            else:
                counts[1] += 1
                state.failures_in_row += 1
                state.last_error = error
                if state.failures_in_row >= self.fail_threshold:
                    state.up_since = None

    # -- reading ---------------------------------------------------------------------------------

    def component(self, name: str) -> ComponentState:
        """The state of component ``name`` now (``KeyError`` naming it when unknown)."""
        now = self._now()
        with self._lock:
            state = self._components.get(name)
            if state is None:
                raise KeyError(f"no component {name!r} is registered")
            return self._read(state, now)

    def components(self) -> dict[str, ComponentState]:
        """Every component's state now, by name."""
        now = self._now()
        with self._lock:
            return {name: self._read(c, now) for name, c in self._components.items()}

    def _read(self, state: _Component, now: float) -> ComponentState:
        oldest = int(now // self.width) - self.buckets + 1
        calls = failures = 0
        for index, (n, bad) in zip(state.indexes, state.outcomes, strict=True):
            if index >= oldest:
                calls += n
                failures += bad
        rate = failures / calls if calls else 0.0
        if state.failures_in_row >= self.fail_threshold:
            status = UNAVAILABLE
        elif calls >= self.min_calls and rate >= self.critical_rate:
            status = CRITICAL
        elif calls >= self.min_calls and rate >= self.degraded_rate:
            status = DEGRADED
        else:
            status = HEALTHY
        up = state.up_since
        return ComponentState(
            name=state.name,
            status=status,
            uptime=0.0 if up is None else max(0.0, now - up),
            error_rate=rate,
            calls=calls,
            failures=failures,
            consecutive_failures=state.failures_in_row,
            last_error=state.last_error if status is not HEALTHY or failures else None,
            critical=state.critical,
        )

    # -- policy events ---------------------------------------------------------------------------

    def attach(self) -> None:
        """Listen to policy events for the watched names (done by ``register(watch=...)``)."""
        with self._lock:
            if self._attached:
                return
            self._attached = True
        _events.add_hook(self._hook)

    def detach(self) -> None:
        """Stop listening to policy events (recording by hand still works)."""
        with self._lock:
            self._attached = False
        _events.remove_hook(self._hook)

    def _hook(self, event: _events.Event) -> None:
        watched = self._watched.get(event.name)
        if watched is None:
            return
        component, kinds = watched
        if kinds is not None and event.policy not in kinds:
            return
        if isinstance(event, _events.CallCompleted):
            if event.outcome == "success":
                self._record(component, None)
            elif event.outcome == "failure":
                self._record(component, f"{event.policy} {event.name!r}: call failed")
        elif isinstance(event, _events.GaveUp):
            exc = event.exception
            detail = f"{type(exc).__name__}: {exc}" if exc is not None else event.reason
            self._record(component, redact(f"{event.policy} {event.name!r} gave up: {detail}"))
        elif isinstance(event, _events.CallRejected):
            self._record(
                component, redact(f"{event.policy} {event.name!r} rejected: {event.reason}")
            )


_LIVE: weakref.WeakSet[HealthMonitor] = weakref.WeakSet()


def _error_rate_readings() -> list[tuple[tuple[str, str], float]]:
    return [
        ((monitor.name, name), state.error_rate)
        for monitor in list(_LIVE)
        for name, state in monitor.components().items()
    ]


_events.add_reading("component_error_rate", _error_rate_readings)
