"""Typed events and the hooks that receive them.

Policies describe what happened as frozen event objects and hand them to :func:`emit`, which
logs them through the ``buttress.<policy>`` logger (with structured fields in ``extra=``) and calls
every installed hook. Events are made only when something happens that is worth telling (a retry,
a give-up, a state change, a rejection); the success path builds nothing. The one exception is
:class:`CallCompleted`, which exists for metrics and is built only while a hook is installed
(:func:`listening`).

Logging levels: per-attempt events at DEBUG, fallbacks and health changes at INFO, state changes,
time-outs and give-ups at WARNING.

Warnings that repeat (a breaker rejecting every call of an outage, a retry giving up on every
call) go through :class:`Repeats`: the first is logged at its level, then one summary per
interval ("1,234 calls rejected by circuit breaker 'erp' in the last 10 s"), while the per-call
detail stays at DEBUG and hooks (metrics) still see every event. A policy asks :func:`wanted`
before building an event, so a rejection nobody reads costs no allocation.

Upper layers publish values that instrumentation reads when it is scraped (a breaker's failure
rate, a service's health) through :func:`add_reading`; instrumentation reads them back with
:func:`readings`, so it never imports the policies.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, fields
from typing import ClassVar

from ._redact import redact

__all__ = [
    "AttemptFailed",
    "CallCompleted",
    "CallRejected",
    "CircuitStateChanged",
    "Event",
    "FallbackUsed",
    "GaveUp",
    "Hook",
    "LimitChanged",
    "ProtocolStep",
    "Repeats",
    "ResourceStatusChanged",
    "RetryScheduled",
    "SUMMARY_INTERVAL",
    "ServiceHealthChanged",
    "TierChanged",
    "TargetStateChanged",
    "TimedOut",
    "add_hook",
    "add_reading",
    "emit",
    "listening",
    "readings",
    "remove_hook",
    "remove_reading",
    "wanted",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: which policy kind (``policy``) and which instance (``name``), and when.

    ``at`` is the policy clock's monotonic ``now()``.
    """

    kind: ClassVar[str] = "event"
    level: ClassVar[int] = logging.DEBUG
    policy: str
    name: str
    at: float

    def log_fields(self) -> dict[str, object]:
        """The event as flat fields for logging's ``extra=`` (``name`` becomes ``policy_name``)."""
        out: dict[str, object] = {"event": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, BaseException):
                value = redact(f"{type(value).__name__}: {value}")
            elif f.name == "error" and isinstance(value, str):
                value = redact(value)
            elif hasattr(value, "value") and hasattr(value, "name") and f.name != "name":
                value = value.name  # enums by name
            out["policy_name" if f.name == "name" else f.name] = value
        return out

    def message(self) -> str:
        return f"{self.policy} {self.name!r}: {self.kind}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed(Event):
    """One attempt raised (or returned a result the policy retries on)."""

    kind: ClassVar[str] = "attempt_failed"
    attempt: int
    exception: BaseException | None
    result: object = None

    def message(self) -> str:
        return f"{self.policy} {self.name!r}: attempt {self.attempt} failed: {self.exception!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """The policy will try again after ``delay`` seconds."""

    kind: ClassVar[str] = "retry_scheduled"
    attempt: int
    delay: float
    exception: BaseException | None

    def message(self) -> str:
        return (
            f"{self.policy} {self.name!r}: retrying after attempt {self.attempt} "
            f"in {self.delay:.3f}s ({self.exception!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GaveUp(Event):
    """No more attempts.

    ``reason`` is ``attempts``, ``time_limit``, ``deadline`` or ``not_retryable``.
    """

    kind: ClassVar[str] = "gave_up"
    level: ClassVar[int] = logging.WARNING
    attempts: int
    reason: str
    exception: BaseException | None

    def message(self) -> str:
        return (
            f"{self.policy} {self.name!r}: gave up after {self.attempts} attempt(s) "
            f"({self.reason}): {self.exception!r}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedOut(Event):
    """The call ran past its budget of ``timeout`` seconds."""

    kind: ClassVar[str] = "timed_out"
    level: ClassVar[int] = logging.WARNING
    timeout: float

    def message(self) -> str:
        return f"{self.policy} {self.name!r}: timed out after {self.timeout:.3f}s"


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """The call failed and ``strategy`` supplied the result instead."""

    kind: ClassVar[str] = "fallback_used"
    level: ClassVar[int] = logging.INFO
    strategy: str
    exception: BaseException | None

    def message(self) -> str:
        return f"{self.policy} {self.name!r}: fallback {self.strategy} used ({self.exception!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitStateChanged(Event):
    """A breaker moved from ``old`` to ``new`` state (values of ``CircuitState``)."""

    kind: ClassVar[str] = "state_changed"
    level: ClassVar[int] = logging.WARNING
    old: object
    new: object
    reason: str = ""

    def message(self) -> str:
        old = getattr(self.old, "name", self.old)
        new = getattr(self.new, "name", self.new)
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.policy} {self.name!r}: {old} -> {new}{why}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetStateChanged(Event):
    """A target of a pool (``name``) cooled down or recovered: ``old`` -> ``new``.

    ``until`` is when its cooldown ends (the pool clock's ``now()`` scale), ``0.0`` when healthy.
    """

    kind: ClassVar[str] = "target_state_changed"
    target: str
    old: str
    new: str
    reason: str = ""
    until: float = 0.0
    error: str = ""

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.INFO if self.new == "healthy" else logging.WARNING

    def message(self) -> str:
        why = f" ({self.reason}{', ' + self.error if self.error else ''})" if self.reason else ""
        wait = f"; cooling for {self.until - self.at:.1f}s" if self.new == "cooling" else ""
        change = f"target {self.target!r} {self.old} -> {self.new}"
        return f"{self.policy} {self.name!r}: {change}{why}{wait}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(Event):
    """A policy refused a call before it ran (open breaker, full bulkhead, rate limit, tier)."""

    kind: ClassVar[str] = "call_rejected"
    reason: str
    retry_after: float | None = None
    key: str | None = None

    def message(self) -> str:
        return f"{self.policy} {self.name!r}: rejected ({self.reason})"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCompleted(Event):
    """A guarded call finished; built only while a hook listens (for metrics).

    ``outcome`` is ``success``, ``failure`` or ``ignored`` (an exception the policy does not count).
    """

    kind: ClassVar[str] = "call_completed"
    outcome: str
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TierChanged(Event):
    """The degradation tier moved from ``old`` to ``new`` (values of ``DegradationTier``)."""

    kind: ClassVar[str] = "tier_changed"
    level: ClassVar[int] = logging.WARNING
    old: object
    new: object
    reason: str = ""

    def message(self) -> str:
        old = getattr(self.old, "name", self.old)
        new = getattr(self.new, "name", self.new)
        return f"{self.policy} {self.name!r}: tier {old} -> {new} ({self.reason})"


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitChanged(Event):
    """An adaptive concurrency limit moved from ``old`` to ``new`` calls.

    ``reason``: ``increase``, ``latency`` (calls queueing in the dependency), ``drop`` (a call
    dropped or timed out), ``rebaseline`` (the dependency's own latency changed), ``scaled_down``,
    ``restored`` or ``set``. Cuts are logged at INFO, growth at DEBUG (it happens every window).
    """

    kind: ClassVar[str] = "limit_changed"
    old: int
    new: int
    reason: str

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.DEBUG if self.new > self.old else logging.INFO

    def message(self) -> str:
        return f"{self.policy} {self.name!r}: limit {self.old} -> {self.new} ({self.reason})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceHealthChanged(Event):
    """A monitored service became healthy or unhealthy."""

    kind: ClassVar[str] = "health_changed"
    level: ClassVar[int] = logging.INFO
    service: str
    healthy: bool
    error: str | None = None

    def message(self) -> str:
        state = "healthy" if self.healthy else f"unhealthy ({self.error})"
        return f"{self.policy} {self.name!r}: service {self.service!r} is {state}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceStatusChanged(Event):
    """A watched resource's status moved from ``old`` to ``new``.

    ``resource`` is ``"<type>:<name>"`` (``"database:orders"``); ``old`` and ``new`` are status
    values (``"healthy"``, ``"degraded"``, ``"critical"``, ``"unavailable"``, or ``"unknown"``
    before the first check); ``name`` is the resource manager's.
    """

    kind: ClassVar[str] = "resource_status_changed"
    level: ClassVar[int] = logging.WARNING
    resource: str
    old: str
    new: str
    reason: str = ""

    def message(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.policy} {self.name!r}: {self.resource} {self.old} -> {self.new}{why}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolStep(Event):
    """A fallback protocol took a step for a failing call.

    ``resource`` is the resource type's value (``"api_quota"``); ``strategy`` the step's strategy
    name (``RETRY``, ``SWITCH_PROVIDER``, ..., ``CALL`` for the call's own first attempt and
    ``ROUTE`` for an error routed to another chain of targets); ``target`` the target it used, if
    any; ``outcome`` ``succeeded``, ``failed``, ``skipped``, ``queued``, ``opened`` or ``routed``;
    ``elapsed`` seconds since the call began. Steps are logged at INFO; failures at WARNING the
    first time, then summarised per interval (each at DEBUG).
    """

    kind: ClassVar[str] = "protocol_step"
    resource: str
    strategy: str
    target: str | None
    outcome: str
    elapsed: float
    exception: BaseException | None = None

    @property
    def level(self) -> int:  # type: ignore[override]
        return logging.WARNING if self.outcome == "failed" else logging.INFO

    def message(self) -> str:
        on = f" on {self.target!r}" if self.target else ""
        why = f": {self.exception!r}" if self.exception is not None else ""
        return (
            f"{self.policy} {self.name!r}: {self.resource} {self.strategy}{on} {self.outcome} "
            f"after {self.elapsed:.3f}s{why}"
        )


Hook = Callable[[Event], None]

#: Installed hooks. Policies test its truth to decide whether to build per-call events.
HOOKS: list[Hook] = []
_log = logging.getLogger("buttress.events")
# A library logs, the application decides where logs go: without a handler configured, say nothing
# (instead of Python's last-resort handler printing warnings to stderr).
logging.getLogger("buttress").addHandler(logging.NullHandler())
_loggers: dict[str, logging.Logger] = {}


def add_hook(hook: Hook) -> Hook:
    """Call ``hook(event)`` for every event from now on; returns ``hook`` (so it can decorate)."""
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {hook!r}")
    HOOKS.append(hook)
    return hook


def remove_hook(hook: Hook) -> None:
    """Stop calling ``hook``; a hook that is not installed is ignored."""
    with contextlib.suppress(ValueError):
        HOOKS.remove(hook)


def listening() -> bool:
    """Whether any hook is installed (so per-call events are worth building)."""
    return bool(HOOKS)


def _logger(policy: str) -> logging.Logger:
    logger = _loggers.get(policy)
    if logger is None:
        logger = _loggers[policy] = logging.getLogger(f"buttress.{policy}")
    return logger


def emit(event: Event, local: Hook | None = None) -> None:
    """Log ``event``, then hand it to ``local`` (a policy's own hook) and every installed hook.

    A hook that raises is logged and skipped: instrumentation never breaks the guarded call.
    """
    if event.level > logging.DEBUG or type(event) is not CallCompleted:
        logger = _logger(event.policy)
        if logger.isEnabledFor(event.level):
            # an application's exception text may quote a DSN or a token: logs never show it
            logger.log(event.level, redact(event.message()), extra=event.log_fields())
    if local is not None:
        _call(local, event)
    for hook in tuple(HOOKS):
        _call(hook, event)


def _call(hook: Hook, event: Event) -> None:
    try:
        hook(event)
    except Exception:
        _log.exception("buttress event hook %r failed on %s", hook, event.kind)


def wanted(policy: str, level: int = logging.DEBUG) -> bool:
    """Whether an event of ``policy`` at ``level`` would be read: a hook listens or it is logged.

    Policies test this on their failure paths before building an event object.
    """
    return bool(HOOKS) or _logger(policy).isEnabledFor(level)


#: Seconds between two summaries of a repeated warning.
SUMMARY_INTERVAL = 10.0


class Repeats:
    """One warning that repeats: logged the first time, then summarised once per interval.

    ``hit(now, first)`` counts one occurrence at ``now`` (the policy clock's ``now()``). The
    first occurrence after a quiet interval is logged with ``first()`` as its message; later
    ones are counted and logged as one line per ``interval``: "<count> <what> in the last <s> s".
    Counting is one atomic ``next()`` and a comparison; the lock is taken only to log.

    Args:
        policy: the policy kind; the logger is ``buttress.<policy>``.
        name: the policy instance's name (the ``policy_name`` log field).
        what: the plural noun phrase of a summary, e.g. "calls rejected by circuit breaker 'erp'".
        level: the level of the first line and of summaries (WARNING).
        interval: seconds between summaries.
    """

    __slots__ = (
        "_counter",
        "_due",
        "_last",
        "_lock",
        "_logged",
        "interval",
        "level",
        "name",
        "policy",
        "what",
    )

    def __init__(
        self,
        policy: str,
        name: str,
        what: str,
        *,
        level: int = logging.WARNING,
        interval: float = SUMMARY_INTERVAL,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.policy, self.name, self.what = policy, name, what
        self.level, self.interval = level, float(interval)
        self._counter = itertools.count(1)
        self._logged = 0  # the count at the last line logged
        self._last = 0.0  # when that line was logged
        self._due = float("-inf")
        self._lock = threading.Lock()

    def hit(self, now: float, first: Callable[[], str] | None = None) -> None:
        """Count one occurrence; log the first one, or a summary when one is due."""
        count = next(self._counter)
        if now >= self._due:
            self._flush(count, now, first)

    def _flush(self, count: int, now: float, first: Callable[[], str] | None) -> None:
        with self._lock:
            if now < self._due or count <= self._logged:
                return  # another thread logged this interval's line
            since, elapsed = count - self._logged, now - self._last
            quiet = since == 1  # nothing happened since the last line: this is a new first
            self._logged, self._last, self._due = count, now, now + self.interval
        logger = _logger(self.policy)
        if not logger.isEnabledFor(self.level):
            return
        if quiet:
            message = redact(first()) if first is not None else f"1 {self.what}"
            extra = {"event": "repeated_first", "policy": self.policy, "count": 1}
        else:
            message = f"{since:,} {self.what} in the last {elapsed:,.0f} s"
            extra = {"event": "repeated_summary", "policy": self.policy, "count": since}
        extra["policy_name"] = self.name
        extra["interval"] = elapsed if not quiet else 0.0
        logger.log(self.level, message, extra=extra)


Reading = Callable[[], Iterable[tuple[Hashable, float]]]
_READINGS: dict[str, list[Reading]] = {}
_READINGS_LOCK = threading.Lock()


def add_reading(kind: str, provider: Reading) -> Reading:
    """Publish values of ``kind`` read on demand: ``provider()`` yields ``(labels, value)`` pairs.

    Kinds in use: ``"circuit_failure_rate"`` (labels: the breaker's name),
    ``"service_health"`` (labels: ``(manager name, service)``, value 1 healthy or 0), and for
    watched resources, labelled ``(manager name, resource type, resource name)``:
    ``"resource_status"`` (0 healthy, 1 degraded, 2 critical, 3 unavailable),
    ``"resource_usage"`` (percent), ``"resource_exhaustion_seconds"`` (predicted time to 100%)
    and ``"resource_check_latency_seconds"``; for components, ``"component_error_rate"``
    (labels: ``(monitor name, component)``); ``"adaptive_limit"`` (labels: the adaptive
    concurrency limiter's name, value its current limit), ``"adaptive_limit_reason"`` (labels:
    ``(name, reason of the last change)``, value 1); for request queues (labels: the queue's
    name), ``"queue_depth"``, ``"queue_dead_letters"`` and ``"queue_requests"`` (labels:
    ``(name, outcome)``, a count that never goes down).
    """
    if not callable(provider):
        raise TypeError(f"provider must be callable, got {provider!r}")
    with _READINGS_LOCK:
        _READINGS.setdefault(kind, []).append(provider)
    return provider


def remove_reading(kind: str, provider: Reading) -> None:
    """Withdraw a provider added with :func:`add_reading` (an unknown one is ignored)."""
    with _READINGS_LOCK, contextlib.suppress(ValueError, KeyError):
        _READINGS[kind].remove(provider)


def readings(kind: str) -> list[tuple[Hashable, float]]:
    """Every ``(labels, value)`` pair the providers of ``kind`` publish now.

    A provider that raises is logged and skipped: a scrape never fails because of one.
    """
    with _READINGS_LOCK:
        providers = tuple(_READINGS.get(kind, ()))
    out: list[tuple[Hashable, float]] = []
    for provider in providers:
        try:
            out.extend(provider())
        except Exception:
            _log.exception("buttress reading %r of %s failed", provider, kind)
    return out
