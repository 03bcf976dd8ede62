"""Typed events and the hooks that receive them.

Policies describe what happened as frozen event objects and hand them to :func:`emit`, which
logs them through the ``buttress.<policy>`` logger (with structured fields in ``extra=``) and calls
every installed hook. Events are made only when something happens that is worth telling (a retry,
a give-up, a state change, a rejection); the success path builds nothing. The one exception is
:class:`CallCompleted`, which exists for metrics and is built only while a hook is installed
(:func:`listening`).

Logging levels: per-attempt events at DEBUG, fallbacks and health changes at INFO, state changes,
time-outs and give-ups at WARNING.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

__all__ = [
    "AttemptFailed",
    "CallCompleted",
    "CallRejected",
    "CircuitStateChanged",
    "Event",
    "FallbackUsed",
    "GaveUp",
    "Hook",
    "RetryScheduled",
    "ServiceHealthChanged",
    "TierChanged",
    "TimedOut",
    "add_hook",
    "emit",
    "listening",
    "remove_hook",
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
                value = f"{type(value).__name__}: {value}"
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
            logger.log(event.level, event.message(), extra=event.log_fields())
    if local is not None:
        _call(local, event)
    for hook in tuple(HOOKS):
        _call(hook, event)


def _call(hook: Hook, event: Event) -> None:
    try:
        hook(event)
    except Exception:
        _log.exception("buttress event hook %r failed on %s", hook, event.kind)
