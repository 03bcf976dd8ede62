"""Watching resources: checks on a schedule, statuses with hysteresis, one answer for every reader.

Theory of operation
-------------------
A :class:`ResourceManager` holds *monitors*: a resource (a :class:`ResourceType` and a name) and
its check (:mod:`buttress.health.types`). One scheduler task, on the event loop the manager was
started on, wakes when the next check is due or the next running check reaches its deadline:

* each due check starts as its own task, so checks run concurrently and a slow one delays no
  other; a ``def`` check runs in a worker thread (a blocking client never blocks the loop);
* a check still running at its deadline (``timeout``) is cancelled and *abandoned*, never awaited:
  it is recorded at once as failed (``"timeout after 5s"``), a reference is kept until it ends,
  and whatever it returns or raises later is logged at DEBUG and discarded;
* a wake-up also starts the checks due within the next 5% of their interval (at most 1 s
  early; real clock only: waking a process costs more than a trivial check), and the schedule
  is a heap, so 100 monitors cost under 1% of a core at one check per second each
  (``benchmarks/bench_monitoring.py``);
* at most one run per monitor exists at a time: while an abandoned run is still alive (a check
  that ignores cancellation, or a blocking call in its thread), each due time counts as one more
  failure instead of starting another, so a hung dependency costs at most one thread per monitor.

Time is the manager's clock (``clock=``, else the process default when started): with
:class:`buttress.testing.FakeClock` the schedule and the deadlines run in virtual time. The
scheduler yields once after starting checks so checks that finish without waiting are recorded at
the time they were started. Under a fake clock a check that waits on real I/O or on a thread is
overtaken by virtual time (its deadline passes as soon as the scheduler sleeps): test those with
:meth:`ResourceManager.check_now`, which waits in real time, or with the system clock.

**From a check to a status.** A check that returns gives a *raw* status: the worse of what its
usage says by the thresholds (``usage >= critical_at``: CRITICAL, ``>= degraded_at``: DEGRADED;
defaults 95 and 80), DEGRADED when the usage trend predicts 100% within ``horizon`` seconds
(:class:`buttress.health.predict.UsageTrend`), DEGRADED when its latency is far above the
resource's own baseline (:class:`buttress.health.predict.LatencyBaseline`), and any status the
check reported itself. A check that raises, times out or returns ``False`` has *failed*. Leaving a
threshold needs the usage ``margin`` (5 points) below it, and a predicted exhaustion clears only
past ``1.25 * horizon``, so a value hovering at a boundary does not flap.

The reported status then follows with hysteresis:

* a worse raw status from a successful check applies at once (the check saw it);
* failures are counted: the status turns UNAVAILABLE at ``fail_threshold`` (3) failed checks in a
  row and stays as it was before that (the error is shown meanwhile);
* a better raw status applies after ``success_threshold`` (2) checks in a row better than the
  current status, and then to the worst of those checks;
* the first check of a resource sets its status directly (there is no earlier state to protect):
  a resource that is down when monitoring starts is UNAVAILABLE at once. Before its first check a
  resource has no status (``None``, shown as ``"unknown"``).

Each change of the reported status is emitted once as :class:`buttress.events.ResourceStatusChanged`
(a WARNING on ``buttress.health``) and passed to the ``on_status_change`` callbacks; checks that
change nothing log nothing.

**Aggregation** (:func:`aggregate`) of resources and components into one overall health:

==========================================================  ===============
members                                                     overall
==========================================================  ===============
a *critical* member CRITICAL or UNAVAILABLE                 ``unhealthy``
otherwise, any member not HEALTHY (a non-critical member    ``degraded``
CRITICAL or UNAVAILABLE included)
otherwise (all HEALTHY, or not yet checked)                 ``healthy``
==========================================================  ===============

A member registered with ``critical=False`` can therefore make the whole only ``degraded``.

**Readers never check.** :meth:`ResourceManager.state`, :meth:`~ResourceManager.states` and every
report read the immutable :class:`ResourceState` the last check left: no read starts, waits for or
schedules a check.

**Sync applications** call :meth:`ResourceManager.start_in_thread` once (Django, gunicorn workers,
scripts): the same scheduler runs on an event loop in one daemon thread the manager starts;
:meth:`~ResourceManager.stop` ends it. Nothing starts on import or on construction.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import inspect
import itertools
import logging
import math
import queue
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from .. import events as _events
from .._config import (
    callable_name,
    env_check_interval,
    integer,
    number,
    percent,
    seconds,
)
from .._config import check_interval as interval_seconds
from ..clock import Clock, get_clock, is_real
from .predict import LatencyBaseline, UsageTrend
from .types import Reading, ResourceStatus, ResourceType, redact

__all__ = [
    "CHECK_INTERVAL_ENV",
    "DEFAULT_CHECK_INTERVAL",
    "Monitor",
    "OverallHealth",
    "ResourceManager",
    "ResourceState",
    "aggregate",
    "check_interval_from_env",
    "resource_type",
]

_log = logging.getLogger("buttress.health")

#: Environment variable giving the default check interval (seconds).
CHECK_INTERVAL_ENV = "RESILIENCE_CHECK_INTERVAL"
DEFAULT_CHECK_INTERVAL = 30.0
#: The longest default timeout of a check (seconds); shorter intervals shorten it.
DEFAULT_TIMEOUT = 5.0
#: A check due within this fraction of its interval after a wake-up runs in it (real clock
#: only; at most MAX_SLACK seconds early).
COALESCE = 0.05
MAX_SLACK = 1.0

HEALTHY, DEGRADED = ResourceStatus.HEALTHY, ResourceStatus.DEGRADED
CRITICAL, UNAVAILABLE = ResourceStatus.CRITICAL, ResourceStatus.UNAVAILABLE


class OverallHealth(StrEnum):
    """The health of a whole team or service (see :func:`aggregate`)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


def aggregate(members: Iterable[tuple[ResourceStatus | None, bool]]) -> OverallHealth:
    """The overall health of ``(status, critical)`` members, by the module's table."""
    degraded = False
    for status, critical in members:
        if status is None or status is HEALTHY:
            continue
        if critical and status.rank >= CRITICAL.rank:
            return OverallHealth.UNHEALTHY
        degraded = True
    return OverallHealth.DEGRADED if degraded else OverallHealth.HEALTHY


def resource_type(value: object) -> ResourceType:
    """``value`` as a :class:`ResourceType`: a member, its value or its name (any case)."""
    if isinstance(value, ResourceType):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        for member in ResourceType:
            if key in (member.value, member.name.lower()):
                return member
    choices = ", ".join(member.value for member in ResourceType)
    raise ValueError(f"unknown resource type {value!r}; expected one of {choices}")


def check_interval_from_env(default: float = DEFAULT_CHECK_INTERVAL) -> float:
    """The interval in ``RESILIENCE_CHECK_INTERVAL`` (seconds, at least
    :data:`~buttress._config.MIN_CHECK_INTERVAL`), or ``default`` when unset."""
    import os

    raw = os.environ.get(CHECK_INTERVAL_ENV, "").strip()
    if not raw:
        return default
    return env_check_interval(CHECK_INTERVAL_ENV, raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceState:
    """What is known of one resource now (immutable; a new one after every check).

    Attributes:
        status: the reported status (after hysteresis); ``None`` before the first check.
        usage: percent in use at the last successful check that reported one.
        latency: seconds the last check took.
        last_error: the error of the latest failed check, kept until the resource is healthy.
        checked_at: Unix time (the clock's ``wall()``) of the last check's end.
        predicted_exhaustion: seconds until usage reaches 100% at the current trend.
        reason: why the status is what it is, in words.
        since: Unix time of the last status change.
    """

    type: ResourceType
    name: str
    status: ResourceStatus | None = None
    usage: float | None = None
    latency: float | None = None
    last_error: str | None = None
    checked_at: float | None = None
    predicted_exhaustion: float | None = None
    consecutive_failures: int = 0
    checks: int = 0
    critical: bool = True
    required: bool = False
    target: str | None = None
    reason: str | None = None
    message: str | None = None
    since: float | None = None
    detail: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def key(self) -> str:
        """``"<type>:<name>"``, e.g. ``"api_quota:openai"`` (the report's key)."""
        return f"{self.type.value}:{self.name}"

    def as_dict(self) -> dict[str, object]:
        """The state as JSON-able data (the health report's entry for this resource)."""
        return {
            "type": self.type.value,
            "name": self.name,
            "status": "unknown" if self.status is None else self.status.value,
            "usage": None if self.usage is None else round(self.usage, 2),
            "latency_ms": None if self.latency is None else round(self.latency * 1000.0, 3),
            "last_error": self.last_error,
            "checked_at": self.checked_at,
            "predicted_exhaustion_s": None
            if self.predicted_exhaustion is None
            else round(self.predicted_exhaustion, 1),
            "consecutive_failures": self.consecutive_failures,
            "critical": self.critical,
            "required": self.required,
            "reason": self.reason,
            "message": self.message,
            "target": self.target,
            "detail": dict(self.detail),
        }


StatusCallback = Callable[[ResourceState, "ResourceStatus | None"], None]


#: Turns of the event loop check_now gives a cancelled check to end before it runs it again.
_ENDING_TURNS = 3


class _Run:
    """One execution of a check."""

    __slots__ = ("abandoned", "deadline", "job", "started", "task")

    def __init__(self, started: float, deadline: float) -> None:
        self.started = started
        self.deadline = deadline
        self.abandoned = False  # timed out, cancelled or unregistered: its outcome is discarded
        self.task: asyncio.Task[None] | None = None
        self.job: concurrent.futures.Future[Any] | None = None  # a def check's thread

    def alive(self) -> bool:
        if self.job is not None and not self.job.done():
            return True
        return self.task is not None and not self.task.done()


class _Workers:
    """Daemon threads that run ``def`` checks.

    A thread is started whenever no worker is idle, so a hung check never queues another check
    behind it (at most one run per monitor exists, which bounds the threads). The threads are
    daemons: a check blocked for ever does not keep the process from exiting, which the standard
    executors' non-daemon workers would. A worker idle for ``idle`` seconds ends.
    """

    __slots__ = ("_draining", "_idle", "_jobs", "_lock", "idle", "name", "threads")

    def __init__(self, name: str, idle: float = 60.0) -> None:
        self.name, self.idle = name, idle
        self._jobs: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._draining = False
        self.threads = 0

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._draining = False
            if self._idle:
                self._idle -= 1
            else:
                self.threads += 1
                threading.Thread(target=self._work, name=self.name, daemon=True).start()
        self._jobs.put((future, fn))
        return future

    def close(self) -> None:
        """Let the workers end: the idle ones now, the busy ones when their job ends (until the
        next ``submit``)."""
        with self._lock:
            self._draining = True
            idle, self._idle = self._idle, 0
            self.threads -= idle
        for _ in range(idle):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # a spare worker: this one may go
                        self._idle -= 1
                        self.threads -= 1
                        return
                continue  # a job was promised to an idle worker: take it
            if job is None:  # close(): this worker was counted out already
                return
            future, fn = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, job
            with self._lock:
                if self._draining:
                    self.threads -= 1
                    return
                self._idle += 1


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    )


class Monitor:
    """One registered resource: its check, its settings and its current :class:`ResourceState`.

    Made by :meth:`ResourceManager.register`; the settings are read-only afterwards.
    """

    __slots__ = (
        "_better",
        "_better_worst",
        "_error",
        "_failures",
        "_latency",
        "_manager",
        "_next_due",
        "_predicting",
        "_run",
        "_since",
        "_state",
        "_trend",
        "async_check",
        "check",
        "critical",
        "critical_at",
        "degraded_at",
        "fail_threshold",
        "horizon",
        "interval",
        "margin",
        "name",
        "required",
        "success_threshold",
        "target",
        "timeout",
        "type",
    )

    def __init__(
        self,
        manager: ResourceManager,
        rtype: ResourceType,
        name: str,
        check: Callable[[], Any],
        *,
        interval: float,
        timeout: float,
        degraded_at: float,
        critical_at: float,
        margin: float,
        fail_threshold: int,
        success_threshold: int,
        critical: bool,
        horizon: float | None,
        history: int,
        latency_baseline: bool,
        required: bool = False,
    ) -> None:
        self._manager = weakref.ref(manager)
        self.type, self.name, self.check = rtype, name, check
        self.async_check = _is_async(check)
        target = getattr(check, "target", None)
        self.target = target if isinstance(target, str) else callable_name(check)
        self.interval, self.timeout = interval, timeout
        self.degraded_at, self.critical_at, self.margin = degraded_at, critical_at, margin
        self.fail_threshold, self.success_threshold = fail_threshold, success_threshold
        self.critical, self.horizon = critical, horizon
        self.required = required
        self._trend = UsageTrend(history=history, min_samples=min(8, history))
        self._latency = LatencyBaseline() if latency_baseline else None
        self._failures = 0
        self._better = 0
        self._better_worst: ResourceStatus | None = None
        self._predicting = False
        self._error: str | None = None
        self._since: float | None = None
        self._next_due = -math.inf
        self._run: _Run | None = None  # the current run, or an abandoned one still alive
        self._state = ResourceState(
            type=rtype, name=name, critical=critical, required=required, target=self.target
        )

    @property
    def key(self) -> str:
        return f"{self.type.value}:{self.name}"

    @property
    def state(self) -> ResourceState:
        """The current state (no check runs to answer)."""
        return self._state

    def __repr__(self) -> str:
        status = self._state.status
        return f"Monitor({self.key!r}, status={'unknown' if status is None else status.value})"


_LIVE: weakref.WeakSet[ResourceManager] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class _Stopping:
    """What :meth:`ResourceManager.stop` returns: awaiting it waits for the scheduler to end."""

    __slots__ = ("_task",)

    def __init__(self, task: asyncio.Task[None] | None) -> None:
        self._task = task

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task})


class ResourceManager:
    """Runs resource checks on a schedule and keeps each resource's status (module docs).

    Args:
        name: the name in events, logs and metrics (a team's name).
        check_interval: default seconds between two checks of a monitor; default
            ``RESILIENCE_CHECK_INTERVAL``, else 30.
        check_timeout: default deadline of a check (seconds); default
            ``min(5, its interval)``.
        fail_threshold: default failed checks in a row before UNAVAILABLE (3).
        success_threshold: default better checks in a row before a better status (2).
        horizon: default seconds of predicted exhaustion that make a resource DEGRADED
            (600; ``None`` turns prediction off).
        thresholds: default ``{"degraded": 80, "critical": 95}`` usage thresholds by resource
            type, e.g. ``{ResourceType.MEMORY: {"degraded": 70, "critical": 90}}``.
        clock: the clock of the schedule (default: the process default when started).

    Raises:
        ValueError / TypeError: a bad setting or environment variable, naming it.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        check_interval: float | None = None,
        check_timeout: float | None = None,
        fail_threshold: int = 3,
        success_threshold: int = 2,
        horizon: float | None = 600.0,
        thresholds: Mapping[Any, Mapping[str, float]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        if check_interval is None:
            check_interval = check_interval_from_env()
        self.check_interval = interval_seconds("check_interval", check_interval)
        self.check_timeout = (
            None
            if check_timeout is None
            else seconds("check_timeout", check_timeout, allow_zero=False)
        )
        self.fail_threshold = integer("fail_threshold", fail_threshold, minimum=1)
        self.success_threshold = integer("success_threshold", success_threshold, minimum=1)
        self.horizon = None if horizon is None else seconds("horizon", horizon, allow_zero=False)
        self._thresholds = _check_thresholds(thresholds)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(
                f"clock must provide now(), wall(), sleep() and asleep(); got {clock!r}"
            )
        self._clock = clock
        self._lock = threading.RLock()
        self._monitors: dict[str, Monitor] = {}
        self._callbacks: list[StatusCallback] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._sleeper: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._abandoned: set[asyncio.Task[None]] = set()
        self._workers = _Workers(f"buttress-check-{name}")
        self._due: list[tuple[float, int, Monitor]] = []  # the schedule (see _pop_due)
        self._sequence = itertools.count()
        self._active: set[Monitor] = set()  # monitors with a run not yet ended or abandoned
        self._executions = 0
        with _LIVE_LOCK:
            _LIVE.add(self)

    def __repr__(self) -> str:
        return (
            f"ResourceManager({self.name!r}, monitors={len(self._monitors)}, "
            f"running={self.running})"
        )

    # -- registration ----------------------------------------------------------------------------

    def register(
        self,
        rtype: ResourceType | str,
        name: str,
        check: Callable[[], Any],
        *,
        interval: float | None = None,
        timeout: float | None = None,
        degraded_at: float | None = None,
        critical_at: float | None = None,
        margin: float = 5.0,
        fail_threshold: int | None = None,
        success_threshold: int | None = None,
        critical: bool = True,
        horizon: float | bool | None = True,
        history: int = 20,
        latency_baseline: bool = True,
        replace: bool = False,
        required: bool = False,
    ) -> Monitor:
        """Watch resource ``name`` of type ``rtype`` with ``check``, from the next scheduler turn.

        ``check`` is a ``def`` or ``async def`` taking no arguments, returning a
        :class:`Reading`, a number (usage percent), a bool (healthy or not) or ``None`` (healthy),
        and raising when the resource failed. A ``def`` runs in a worker thread.

        Args:
            interval: seconds between checks (default: the manager's ``check_interval``).
            timeout: deadline of one check (default: ``check_timeout``, else
                ``min(5, interval)``).
            degraded_at, critical_at: usage thresholds in percent (default: the manager's
                thresholds for this type, else 80 and 95).
            margin: percentage points below a threshold needed to leave it.
            fail_threshold, success_threshold: the hysteresis (default: the manager's).
            critical: ``False`` makes this resource able to degrade the whole, never more.
            horizon: seconds of predicted exhaustion that make it DEGRADED (``True``: the
                manager's; ``None`` or ``False``: off).
            history: usage samples the trend uses.
            latency_baseline: learn the latency baseline and flag checks far above it.
            replace: replace a monitor already registered under this type and name (otherwise
                that is a ``ValueError``).
            required: the service cannot serve without this resource: readiness probes
                (``/ready`` of :mod:`buttress.server`) fail while it is UNAVAILABLE.

        Returns:
            The :class:`Monitor` (its ``state`` is the resource's current state).
        """
        rtype = resource_type(rtype)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"resource name must be a non-empty string, got {name!r}")
        if not callable(check):
            raise TypeError(f"check for {rtype.value}:{name} must be callable, got {check!r}")
        key = f"{rtype.value}:{name}"
        every = (
            self.check_interval
            if interval is None
            else interval_seconds(f"{key} interval", interval)
        )
        if timeout is None:
            limit = self.check_timeout if self.check_timeout is not None else DEFAULT_TIMEOUT
            limit = min(limit, every)
        else:
            limit = seconds(f"{key} timeout", timeout, allow_zero=False)
        defaults = self._thresholds.get(rtype, {})
        degraded = percent(
            f"{key} degraded_at",
            defaults.get("degraded", 80.0) if degraded_at is None else degraded_at,
        )
        crit = percent(
            f"{key} critical_at",
            defaults.get("critical", 95.0) if critical_at is None else critical_at,
        )
        if degraded > crit:
            raise ValueError(f"{key}: degraded_at ({degraded:g}) must be <= critical_at ({crit:g})")
        if not isinstance(critical, bool):
            raise TypeError(f"{key} critical must be True or False, got {critical!r}")
        if not isinstance(required, bool):
            raise TypeError(f"{key} required must be True or False, got {required!r}")
        if horizon is True:
            ahead = self.horizon
        elif horizon is None or horizon is False:
            ahead = None
        else:
            ahead = seconds(f"{key} horizon", horizon, allow_zero=False)
        monitor = Monitor(
            self,
            rtype,
            name,
            check,
            interval=every,
            timeout=limit,
            degraded_at=degraded,
            critical_at=crit,
            margin=number(f"{key} margin", margin, minimum=0.0),
            fail_threshold=self.fail_threshold
            if fail_threshold is None
            else integer(f"{key} fail_threshold", fail_threshold, minimum=1),
            success_threshold=self.success_threshold
            if success_threshold is None
            else integer(f"{key} success_threshold", success_threshold, minimum=1),
            critical=critical,
            horizon=ahead,
            history=integer(f"{key} history", history, minimum=3),
            latency_baseline=bool(latency_baseline),
            required=required,
        )
        with self._lock:
            old = self._monitors.get(key)
            if old is not None and not replace:
                raise ValueError(f"resource {key} is already registered (pass replace=True)")
            self._monitors[key] = monitor
            heapq.heappush(self._due, (monitor._next_due, next(self._sequence), monitor))
        if old is not None:
            self._call_in_loop(lambda: self._abandon(old))
        self._poke()
        return monitor

    def unregister(self, rtype: ResourceType | str, name: str) -> bool:
        """Stop watching a resource; returns whether it was registered."""
        key = f"{resource_type(rtype).value}:{name}"
        with self._lock:
            monitor = self._monitors.pop(key, None)
        if monitor is None:
            return False
        self._call_in_loop(lambda: self._abandon(monitor))
        return True

    def on_status_change(self, callback: StatusCallback) -> StatusCallback:
        """Call ``callback(state, old_status)`` after every status change; returns it.

        Callbacks run on the scheduler's thread; one that raises is logged and skipped.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        with self._lock:
            self._callbacks.append(callback)
        return callback

    # -- reading ---------------------------------------------------------------------------------

    def monitors(self) -> list[Monitor]:
        """The registered monitors, in registration order."""
        with self._lock:
            return list(self._monitors.values())

    def monitor(self, rtype: ResourceType | str, name: str) -> Monitor:
        """The monitor of a resource (``KeyError`` naming it when unknown)."""
        key = f"{resource_type(rtype).value}:{name}"
        try:
            return self._monitors[key]
        except KeyError:
            raise KeyError(f"no resource {key} is registered") from None

    def state(self, rtype: ResourceType | str, name: str) -> ResourceState:
        """The current state of a resource (never runs a check)."""
        return self.monitor(rtype, name)._state

    def status(self, rtype: ResourceType | str, name: str) -> ResourceStatus | None:
        """The current status of a resource; ``None`` before its first check."""
        return self.monitor(rtype, name)._state.status

    def states(self, rtype: ResourceType | str | None = None) -> dict[str, ResourceState]:
        """Current states by key (``"database:orders"``), optionally of one type only."""
        wanted = None if rtype is None else resource_type(rtype)
        with self._lock:
            monitors = list(self._monitors.values())
        return {m.key: m._state for m in monitors if wanted is None or m.type is wanted}

    def overall(self) -> OverallHealth:
        """The aggregate health of the resources (the module's table)."""
        return aggregate((s.status, s.critical) for s in self.states().values())

    def ready(self) -> bool:
        """Every critical resource checked at least once and neither CRITICAL nor UNAVAILABLE."""
        return all(
            s.status is not None and s.status.rank < CRITICAL.rank
            for s in self.states().values()
            if s.critical
        )

    @property
    def executions(self) -> int:
        """How many checks have been started so far (for tests and diagnostics)."""
        return self._executions

    @property
    def running(self) -> bool:
        task = self._task
        return task is not None and not task.done()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start checking on the running event loop (``RuntimeError`` if already running)."""
        if self.running:
            raise RuntimeError(f"resource manager {self.name!r} is already running")
        self._begin(asyncio.get_running_loop())

    def start_in_thread(self) -> None:
        """Start checking on an event loop in a daemon thread of its own (sync applications)."""
        if self.running or self._thread is not None:
            raise RuntimeError(f"resource manager {self.name!r} is already running")
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._thread_main(started))
            except BaseException as exc:  # pragma: no cover - reported to start_in_thread
                failure.append(exc)
                started.set()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=main, name=f"buttress-monitor-{self.name}", daemon=True)
        self._thread = thread
        thread.start()
        started.wait()
        if failure:  # pragma: no cover - a broken loop
            self._thread = None
            raise failure[0]

    async def _thread_main(self, started: threading.Event) -> None:
        self._begin(asyncio.get_running_loop())
        started.set()
        task = self._task
        assert task is not None
        await asyncio.wait({task})
        pending = [t for t in self._abandoned if not t.done()]
        if pending:  # give cancelled checks a turn to end before the loop closes
            await asyncio.wait(pending, timeout=0.1)

    def stop(self) -> _Stopping:
        """Stop checking. Running checks are cancelled (not awaited).

        Works both as ``manager.stop()`` and ``await manager.stop()`` (which also waits for the
        scheduler task to end); from a thread started by :meth:`start_in_thread`, it joins it.
        """
        loop, task, thread = self._loop, self._task, self._thread
        if loop is None or task is None:
            return _Stopping(None)
        if thread is not None:
            self._thread = None
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._halt)
            if thread is not threading.current_thread():
                thread.join(timeout=10.0)
            self._workers.close()
            return _Stopping(None)
        self._call_in_loop(self._halt)
        self._workers.close()
        return _Stopping(task)

    async def __aenter__(self) -> ResourceManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def check_now(self) -> dict[str, ResourceState]:
        """Check every resource once now and wait for the outcomes (each within its timeout, in
        real time); a check already running is waited for, not doubled. Returns the states.

        For scripts and tests: readers never need it. On a running manager, call it from the
        loop the manager runs on.
        """
        loop = asyncio.get_running_loop()
        if self.running and self._loop is not loop:
            raise RuntimeError("check_now() must run on the event loop the manager runs on")
        clock = self._clock or get_clock()
        # A check an earlier call timed out was cancelled, not awaited: give it a few turns of
        # the loop to end, so that this call runs it again (one that ignores its cancellation
        # stays alive, and this call waits for no new run of it).
        for _ in range(_ENDING_TURNS):
            ending = [
                run.task
                for run in (monitor._run for monitor in self.monitors())
                if run is not None and run.abandoned and run.task is not None
                if not run.task.done()
            ]
            if not ending:
                break
            await asyncio.sleep(0)
        runs: list[tuple[Monitor, _Run]] = []
        for monitor in self.monitors():
            run = monitor._run
            if run is not None and run.alive():
                if not run.abandoned:
                    runs.append((monitor, run))
                continue
            runs.append((monitor, self._launch(monitor, clock.now(), loop)))
        # Each run is timed out at its own timeout, not when the slowest one ends: a check that
        # hangs is reported as such while a longer one is still allowed to run.
        started = loop.time()
        waiting = {
            run.task: (monitor, run)
            for monitor, run in runs
            if run.task is not None and not run.task.done()
        }
        while waiting:
            until = min(started + monitor.timeout for monitor, _ in waiting.values())
            done, _ = await asyncio.wait(set(waiting), timeout=max(0.0, until - loop.time()))
            for task in done:
                del waiting[task]
            now_real = loop.time()
            for task, (monitor, run) in list(waiting.items()):
                if now_real >= started + monitor.timeout:
                    del waiting[task]
                    if monitor._run is run and not run.abandoned and run.alive():
                        self._time_out(monitor, run, max(clock.now(), run.deadline))
        return self.states()

    # -- the scheduler ---------------------------------------------------------------------------

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._task = loop.create_task(self._schedule(), name=f"buttress-monitor:{self.name}")

    def _call_in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or not self.running or threading.get_ident() == self._loop_thread:
            fn()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn)

    def _poke(self) -> None:
        """Wake the scheduler so it sees a new monitor now, not at its next planned wake-up."""
        if self.running:
            self._call_in_loop(self._wake)

    def _wake(self) -> None:
        sleeper = self._sleeper
        if sleeper is not None and not sleeper.done():
            sleeper.cancel()

    def _halt(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        for monitor in self.monitors():
            self._abandon(monitor)

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self._clock or get_clock()
        real = is_real(clock)
        me = asyncio.current_task()
        while True:
            now = clock.now()
            timed_out = False
            for monitor in list(self._active):
                run = monitor._run
                if run is None or run.abandoned or not run.alive():
                    self._active.discard(monitor)
                elif now >= run.deadline:
                    self._active.discard(monitor)
                    self._time_out(monitor, run, now)
                    timed_out = True
            if timed_out:
                await asyncio.sleep(0)  # a cancelled check ends now, unless it resists
            launched = False
            for monitor in self._pop_due(now, COALESCE if real else 0.0):
                run = monitor._run
                if run is not None and run.alive():
                    if run.abandoned:  # a timed-out check that has not ended yet
                        self._failed(
                            monitor,
                            f"the previous check is still running {now - run.deadline:.3g}s "
                            "after its timeout",
                            now,
                            None,
                        )
                    continue  # still within its timeout (a timeout longer than the interval)
                self._launch(monitor, now, loop)
                launched = True
            if launched and not real:
                # Under a test clock, checks that do not wait finish at the virtual time they
                # began, before the scheduler's sleep moves the clock on.
                await asyncio.sleep(0)
            with self._lock:
                wake = self._due[0][0] if self._due else math.inf
            for monitor in self._active:
                run = monitor._run
                if run is not None and not run.abandoned:
                    wake = min(wake, run.deadline)
            delay = wake - clock.now()
            if delay <= 0:
                continue
            delay = min(delay, 86_400.0)
            sleeper: asyncio.Future[None]
            timer: asyncio.TimerHandle | None = None
            if real:  # a timer, not a task: the cheapest wait the loop offers
                sleeper = loop.create_future()
                timer = loop.call_later(delay, _wake_up, sleeper)
            else:
                sleeper = loop.create_task(clock.asleep(delay))
            self._sleeper = sleeper
            try:
                await sleeper
            except asyncio.CancelledError:
                if me is not None and me.cancelling():
                    sleeper.cancel()
                    raise
            finally:
                self._sleeper = None
                if timer is not None:
                    timer.cancel()

    def _pop_due(self, now: float, slack: float) -> list[Monitor]:
        """The monitors due by ``now`` plus ``slack`` of their interval (at most
        :data:`MAX_SLACK`), each rescheduled for its next interval.

        The schedule is a heap of ``(due, sequence, monitor)``: a wake-up costs O(log n) per
        monitor due, not a scan of every monitor. Entries of monitors unregistered or replaced
        are skipped when they surface. ``slack`` lets checks due close together share one
        wake-up (on a real clock, waking the process costs more than a check); the next due
        time counts from the scheduled one, so running early never shifts the schedule.
        """
        due: list[Monitor] = []
        heap = self._due
        with self._lock:
            while heap and heap[0][0] <= now + min(slack * heap[0][2].interval, MAX_SLACK):
                at, _, monitor = heapq.heappop(heap)
                if monitor._next_due != at or self._monitors.get(monitor.key) is not monitor:
                    continue
                following = at + monitor.interval
                monitor._next_due = following if following > now else now + monitor.interval
                heapq.heappush(heap, (monitor._next_due, next(self._sequence), monitor))
                due.append(monitor)
        return due

    def _launch(self, monitor: Monitor, now: float, loop: asyncio.AbstractEventLoop) -> _Run:
        run = _Run(now, now + monitor.timeout)
        monitor._run = run
        self._executions += 1
        run.task = loop.create_task(
            self._execute(monitor, run), name=f"buttress-check:{monitor.key}"
        )
        self._active.add(monitor)
        return run

    async def _execute(self, monitor: Monitor, run: _Run) -> None:
        try:
            if monitor.async_check:
                result = await monitor.check()
            else:
                run.job = self._workers.submit(monitor.check)
                result = await asyncio.wrap_future(run.job)
                if inspect.isawaitable(result):  # a def returning a coroutine
                    result = await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._finished(monitor, run, None, exc)
        else:
            self._finished(monitor, run, result, None)

    def _abandon(self, monitor: Monitor) -> None:
        run = monitor._run
        if run is None:
            return
        run.abandoned = True
        task = run.task
        if task is not None and not task.done():
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(self._reap)
        if run.job is not None:
            run.job.cancel()  # only a job not yet started; a running thread runs on
        if not run.alive():
            monitor._run = None

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.debug("an abandoned check ended with %r", task.exception())

    def _time_out(self, monitor: Monitor, run: _Run, now: float) -> None:
        self._abandon(monitor)
        self._failed(monitor, f"timeout after {monitor.timeout:g}s", now, None)

    # -- from a check to a status ----------------------------------------------------------------

    def _finished(
        self, monitor: Monitor, run: _Run, result: object, error: BaseException | None
    ) -> None:
        clock = self._clock or get_clock()
        now = clock.now()
        if run.abandoned or monitor._run is not run:
            _log.debug(
                "late outcome of an abandoned check of %s discarded: %r",
                monitor.key,
                error if error is not None else result,
            )
            return
        monitor._run = None
        latency = max(0.0, now - run.started)
        if error is None:
            try:
                reading = _as_reading(result)
            except (TypeError, ValueError) as exc:
                error = exc
            else:
                if reading is None:
                    self._failed(monitor, "the check returned False", now, latency)
                else:
                    self._succeeded(monitor, reading, now, latency)
                return
        detail = str(error)
        text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        self._failed(monitor, redact(text), now, latency)

    def _succeeded(self, monitor: Monitor, reading: Reading, now: float, latency: float) -> None:
        with self._lock:
            old = monitor._state
            current = old.status
            rank = 0 if current is None else current.rank
            raw, reason = HEALTHY, "ok"
            usage = reading.usage
            eta: float | None = None
            if usage is not None:
                crit = monitor.critical_at - (monitor.margin if rank >= CRITICAL.rank else 0.0)
                degr = monitor.degraded_at - (monitor.margin if rank >= DEGRADED.rank else 0.0)
                if usage >= crit:
                    raw, reason = CRITICAL, f"usage {usage:.1f}% >= {monitor.critical_at:g}%"
                elif usage >= degr:
                    raw, reason = DEGRADED, f"usage {usage:.1f}% >= {monitor.degraded_at:g}%"
                eta = monitor._trend.add(now, usage)
                horizon = monitor.horizon
                if horizon is not None and eta is not None:
                    limit = horizon * (1.25 if monitor._predicting else 1.0)
                    monitor._predicting = eta <= limit
                    if monitor._predicting and raw is HEALTHY:
                        raw, reason = DEGRADED, f"predicted to reach 100% in {eta:.0f}s"
                else:
                    monitor._predicting = False
            baseline = monitor._latency
            if baseline is not None:
                usual = baseline.median
                if baseline.observe(latency) and raw is HEALTHY:
                    raw = DEGRADED
                    reason = (
                        f"latency {latency * 1000:.0f} ms, usually {(usual or 0) * 1000:.0f} ms"
                    )
            if reading.status is not None and reading.status.rank > raw.rank:
                raw = reading.status
                reason = reading.message or f"the check reported {raw.value}"
            monitor._failures = 0
            status = self._hysteresis(monitor, current, raw)
            if status is HEALTHY:
                monitor._error = None
            if raw.rank < status.rank:
                reason = (
                    f"recovering, {monitor._better} of {monitor.success_threshold} better "
                    f"checks: {reason}"
                )
            state = ResourceState(
                type=monitor.type,
                name=monitor.name,
                status=status,
                usage=usage,
                latency=latency,
                last_error=monitor._error,
                checked_at=self._wall(),
                predicted_exhaustion=eta,
                consecutive_failures=0,
                checks=old.checks + 1,
                critical=monitor.critical,
                required=monitor.required,
                target=monitor.target,
                reason=reason,
                message=reading.message,
                since=old.since if status is current else self._wall(),
                detail=reading.detail,
            )
            monitor._state = state
        self._changed(monitor, state, current, now)

    def _failed(self, monitor: Monitor, error: str, now: float, latency: float | None) -> None:
        with self._lock:
            old = monitor._state
            current = old.status
            monitor._failures += 1
            monitor._better, monitor._better_worst = 0, None
            monitor._error = error
            failures = monitor._failures
            if current is None or failures >= monitor.fail_threshold:
                status = UNAVAILABLE
                reason = f"{failures} failed check{'s' if failures > 1 else ''} in a row: {error}"
            else:
                status = current
                reason = (
                    f"{failures} of {monitor.fail_threshold} failed checks before unavailable: "
                    f"{error}"
                )
            state = ResourceState(
                type=monitor.type,
                name=monitor.name,
                status=status,
                usage=old.usage,
                latency=latency,
                last_error=error,
                checked_at=self._wall(),
                predicted_exhaustion=old.predicted_exhaustion,
                consecutive_failures=failures,
                checks=old.checks + 1,
                critical=monitor.critical,
                required=monitor.required,
                target=monitor.target,
                reason=reason,
                message=None,
                since=old.since if status is current else self._wall(),
                detail=old.detail,
            )
            monitor._state = state
        self._changed(monitor, state, current, now)

    @staticmethod
    def _hysteresis(
        monitor: Monitor, current: ResourceStatus | None, raw: ResourceStatus
    ) -> ResourceStatus:
        """The reported status after a successful check whose raw status is ``raw``."""
        if current is None or raw.rank >= current.rank:
            monitor._better, monitor._better_worst = 0, None
            return raw
        monitor._better += 1
        worst = monitor._better_worst
        monitor._better_worst = raw if worst is None or raw.rank > worst.rank else worst
        if monitor._better < monitor.success_threshold:
            return current
        status = monitor._better_worst
        monitor._better, monitor._better_worst = 0, None
        return status

    def _changed(
        self, monitor: Monitor, state: ResourceState, old: ResourceStatus | None, now: float
    ) -> None:
        new = state.status
        if new is old:
            return
        if self._monitors.get(monitor.key) is not monitor:
            return  # unregistered or replaced meanwhile
        if old is not None or new is not HEALTHY:
            _events.emit(
                _events.ResourceStatusChanged(
                    policy="health",
                    name=self.name,
                    at=now,
                    resource=state.key,
                    old="unknown" if old is None else old.value,
                    new="unknown" if new is None else new.value,
                    reason=state.reason or "",
                )
            )
        for callback in tuple(self._callbacks):
            try:
                callback(state, old)
            except Exception:
                _log.exception("resource status callback %r failed", callback)

    def _wall(self) -> float:
        return (self._clock or get_clock()).wall()


def _wake_up(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


def _as_reading(result: object) -> Reading | None:
    """What a check returned, as a Reading; ``None`` for ``False`` (the check says: failed)."""
    if isinstance(result, Reading):
        return result
    if result is None or result is True:
        return Reading()
    if result is False:
        return None
    if isinstance(result, int | float):
        return Reading(usage=float(result))
    raise TypeError(
        f"a check must return a Reading, a usage number, a bool or None; got {result!r}"
    )


def _check_thresholds(
    thresholds: Mapping[Any, Mapping[str, float]] | None,
) -> dict[ResourceType, dict[str, float]]:
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise TypeError(
            f"thresholds must map resource types to {{'degraded': x, 'critical': y}}, "
            f"got {thresholds!r}"
        )
    out: dict[ResourceType, dict[str, float]] = {}
    for key, value in thresholds.items():
        rtype = resource_type(key)
        out[rtype] = threshold_levels(f"thresholds[{rtype.value}]", value)
    return out


def threshold_levels(where: str, levels: object) -> dict[str, float]:
    """One resource type's ``{"degraded": x, "critical": y}`` (either may be left out): percents
    from 0 to 100, degraded no higher than critical. Errors name ``where``.

    The one check of thresholds, whether they come from code or a configuration file.
    """
    if not isinstance(levels, Mapping):
        raise TypeError(
            f"{where} must be a mapping like {{'degraded': 80, 'critical': 95}}, got {levels!r}"
        )
    unknown = set(levels) - {"degraded", "critical"}
    if unknown:
        raise ValueError(
            f"{where} has unknown keys {sorted(map(str, unknown))}; "
            "expected 'degraded' and 'critical'"
        )
    entry = {k: percent(f"{where}.{k}", v) for k, v in levels.items()}
    if entry.get("degraded", 80.0) > entry.get("critical", 95.0):
        raise ValueError(f"{where}: 'degraded' must be <= 'critical', got {dict(levels)!r}")
    return entry


# -- readings for metrics --------------------------------------------------------------------------


def _live() -> list[ResourceManager]:
    with _LIVE_LOCK:
        return list(_LIVE)


def _status_readings() -> list[tuple[tuple[str, str, str], float]]:
    return [
        ((manager.name, s.type.value, s.name), float(s.status.rank))
        for manager in _live()
        for s in manager.states().values()
        if s.status is not None
    ]


def _usage_readings() -> list[tuple[tuple[str, str, str], float]]:
    return [
        ((manager.name, s.type.value, s.name), s.usage)
        for manager in _live()
        for s in manager.states().values()
        if s.usage is not None
    ]


def _exhaustion_readings() -> list[tuple[tuple[str, str, str], float]]:
    return [
        ((manager.name, s.type.value, s.name), s.predicted_exhaustion)
        for manager in _live()
        for s in manager.states().values()
        if s.predicted_exhaustion is not None
    ]


def _latency_readings() -> list[tuple[tuple[str, str, str], float]]:
    return [
        ((manager.name, s.type.value, s.name), s.latency)
        for manager in _live()
        for s in manager.states().values()
        if s.latency is not None
    ]


# What metrics read when scraped, published so that instrumentation never imports this module.
_events.add_reading("resource_status", _status_readings)
_events.add_reading("resource_usage", _usage_readings)
_events.add_reading("resource_exhaustion_seconds", _exhaustion_readings)
_events.add_reading("resource_check_latency_seconds", _latency_readings)
