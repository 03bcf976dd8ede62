"""The state of one named target (a provider, a replica) in a pool that switches between them.

Theory of operation
-------------------
A target is HEALTHY (its calls are admitted) or COOLING (refused until ``until``). A cooling
target whose ``until`` has passed is *probing*: it admits one call at a time, the probe, marked
by ``probe_at`` (when it was admitted); other calls keep going elsewhere. ``probes`` consecutive
successful probes make it HEALTHY again; a failed probe cools it again with its cooldown doubled
up to a cap. Traffic therefore returns to a target only once it has answered, never on a timer
alone.

Two kinds of trouble need opposite schedules, so a cooling target runs one of two clocks, each
doubled by a failed probe up to its own cap:

* **Down** (every probe of this cooling has failed, and the target was not cooled again soon after
  a recovery): the target may come back at any moment, so it is probed at a *pace* that doubles
  per failed probe from its first cooldown up to ``max_probe_interval`` (default 1.5 s). Whatever
  the outage's length, the first probe after the recovery comes within that cap, and traffic
  returns ``probes`` successful probes (back to back) later. The price is one failed round trip
  per ``max_probe_interval`` while it stays down.
* **Flapping** (a probe failed after one of this cooling succeeded, or the target was cooled again
  before its cooldown had decayed since its last recovery): the target answers, but not reliably,
  and probing it often only wastes calls and flips traffic. Its *hold-off* ``level`` doubles on
  every failed probe and every cooling soon after a recovery, up to ``max_cooldown``; a flapping
  target is probed only when its hold-off ends. A persistently half-broken target thus ends up
  with a long cooldown and a small share of the traffic, where a timer-based re-admission would
  flap between it and the others for ever.

``level`` is the hold-off of the target's next cooling: 0 for a target with no recent trouble
(its first cooling lasts ``cooldown``). It halves per ``decay_after`` consecutive successes once
HEALTHY, falling back to 0 at ``cooldown``, so a target that served well for a while is treated as
fresh again. ``flapping`` says which clock the current cooling runs; ``pace`` is the down clock
(0 until a probe of this cooling has failed). The two are told apart only by what the target has
answered, so a flapping target that then goes down for good keeps its long hold-off until its
cooldown has decayed: its return waits for a probe at the end of its hold-off.

Cooldowns only lengthen: ``until`` is only ever raised by a failure, a ``Retry-After`` or an
authentication error (which cools for ``auth_cooldown``). A failure reported by a call that was
admitted before the target cooled (still in flight then) updates the counters but does not push
``until`` out, except by the ``Retry-After`` it carries.

Pure: no clock, no I/O, no locks. Every function takes ``now`` (seconds on any one scale) and
mutates the :class:`TargetMachine` it is given; :meth:`TargetMachine.to_state` and
:meth:`TargetMachine.from_state` carry it through JSON for the stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUTH",
    "COOLING",
    "HEALTHY",
    "NORMAL",
    "PROBE",
    "PROBING",
    "REFUSED",
    "TargetMachine",
    "TargetSettings",
]

HEALTHY = "healthy"
COOLING = "cooling"
PROBING = "probing"  # reported only: a COOLING target whose ``until`` has passed

#: What :meth:`TargetMachine.admit` answers.
REFUSED, NORMAL, PROBE = 0, 1, 2

#: The reason of an authentication failure (cooled for ``auth_cooldown``).
AUTH = "auth"


def _seconds(field: str, value: object, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{field} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _count(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetSettings:
    """How a pool cools and probes its targets (validated; every error names the field).

    Attributes:
        probes: consecutive successful probes that make a cooling target healthy again.
        cooldown: seconds of a target's first cooling.
        max_cooldown: the cap of the doubling.
        threshold: consecutive failures that cool a healthy target.
        decay_after: consecutive successes of a healthy target that halve its grown cooldown.
        probe_timeout: seconds after which a probe that never reported is written off (its
            caller died), so the target can be probed again.
        auth_cooldown: seconds an authentication failure cools a target for.
        max_probe_interval: the cap of the probe pace of a target that is down (every probe
            of its cooling failed): a recovered target is found within about this long. The
            pace never exceeds ``max_cooldown`` either.
    """

    probes: int = 3
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    threshold: int = 1
    decay_after: int = 20
    probe_timeout: float = 60.0
    auth_cooldown: float = 3600.0
    max_probe_interval: float = 1.5

    def __post_init__(self) -> None:
        _count("probes", self.probes)
        _count("threshold", self.threshold)
        _count("decay_after", self.decay_after)
        _seconds("cooldown", self.cooldown)
        _seconds("max_cooldown", self.max_cooldown)
        _seconds("probe_timeout", self.probe_timeout)
        _seconds("auth_cooldown", self.auth_cooldown)
        _seconds("max_probe_interval", self.max_probe_interval)
        if self.max_cooldown < self.cooldown:
            raise ValueError(
                f"max_cooldown ({self.max_cooldown!r}) must be >= cooldown ({self.cooldown!r})"
            )


class TargetMachine:
    """One target's state (see the module documentation); mutated in place by its methods."""

    __slots__ = (
        "failures",
        "flapping",
        "healthy",
        "last_error",
        "level",
        "pace",
        "probe_at",
        "reason",
        "since",
        "streak",
        "until",
    )

    def __init__(self, now: float = 0.0) -> None:
        self.healthy = True
        self.reason = ""
        self.since = now
        self.until = 0.0
        self.failures = 0  # consecutive failures
        self.last_error = ""
        self.level = 0.0
        self.pace = 0.0  # the probe pace of a target that is down (0: no failed probe yet)
        self.flapping = False  # this cooling runs the hold-off clock, not the pace
        self.streak = 0  # consecutive successes (healthy) or successful probes (cooling)
        self.probe_at: float | None = None

    # -- transitions -------------------------------------------------------------------------------

    def admit(self, now: float, settings: TargetSettings) -> int:
        """Admit a call now: :data:`NORMAL`, :data:`PROBE` (``probe_at`` set) or :data:`REFUSED`."""
        if self.healthy:
            return NORMAL
        if now < self.until:
            return REFUSED
        if self.probe_at is not None and now - self.probe_at < settings.probe_timeout:
            return REFUSED
        self.probe_at = now
        return PROBE

    def ready_at(self, settings: TargetSettings) -> float:
        """When a call could next be admitted (``-inf``: now, for a healthy target)."""
        if self.healthy:
            return -math.inf
        if self.probe_at is not None:
            return max(self.until, self.probe_at + settings.probe_timeout)
        return self.until

    def succeeded(self, now: float, settings: TargetSettings, probe: float | None = None) -> bool:
        """An admitted call succeeded (``probe``: the ``probe_at`` it was admitted with).

        Returns whether the target became healthy.
        """
        if self.healthy:
            self.failures = 0
            if self.level:
                self.streak += 1
                if self.streak >= settings.decay_after:
                    self.streak = 0
                    self.level /= 2
                    if self.level <= settings.cooldown:
                        self.level = 0.0
            return False
        if probe is None or probe != self.probe_at:
            return False  # admitted before it cooled, or a probe written off: proves nothing
        self.probe_at = None
        self.streak += 1
        if self.streak < settings.probes:
            return False
        self.healthy, self.reason, self.since = True, "recovered", now
        self.failures = self.streak = 0
        self.pace = 0.0
        return True

    def failed(
        self,
        now: float,
        settings: TargetSettings,
        *,
        error: str = "",
        reason: str = "error",
        retry_after: float | None = None,
        probe: float | None = None,
    ) -> bool:
        """An admitted call failed through the target's fault (``probe`` as in :meth:`succeeded`).

        Returns whether the target started cooling (or cooled again after a failed probe).
        """
        self.failures += 1
        self.last_error = error
        wait = retry_after if retry_after is not None and retry_after > 0 else 0.0
        if self.healthy:
            if self.failures < settings.threshold and reason != AUTH and not wait:
                self.streak = 0
                return False
            # cooled again before its cooldown decayed since the last recovery: flapping
            self.flapping = bool(self.level)
            level = settings.cooldown if not self.level else self.level * 2
            self.level = min(level, settings.max_cooldown)
            self.pace = 0.0
            self._cool(now, settings, self.level, reason, wait)
            return True
        if probe is not None and probe == self.probe_at:
            self.probe_at = None
            if self.flapping or self.streak:
                # it answered some probes and failed others: hold it off for longer
                self.flapping = True
                self.level = min(max(self.level, settings.cooldown) * 2, settings.max_cooldown)
                self._cool(now, settings, self.level, reason, wait)
            else:
                # down: probe again soon, so a recovery is seen within max_probe_interval
                pace = 2 * (self.pace or self.level or settings.cooldown)
                cap = min(settings.max_probe_interval, settings.max_cooldown)
                self.pace = min(pace, cap)
                self._cool(now, settings, self.pace, reason, wait)
            return True
        # a call admitted before the target cooled: only what the server said may lengthen it
        if reason == AUTH:
            wait = max(wait, settings.auth_cooldown)
        if now + wait > self.until:
            self.until = now + wait
        return False

    def _cool(
        self, now: float, settings: TargetSettings, length: float, reason: str, wait: float
    ) -> None:
        length = max(length, wait, settings.auth_cooldown if reason == AUTH else 0.0)
        self.until = max(self.until, now + length)
        self.healthy, self.reason, self.since = False, reason, now
        self.streak = 0

    def release(self, probe: float | None) -> bool:
        """An admitted call ended neither way: free its probe slot. Returns whether it held one."""
        if probe is not None and probe == self.probe_at:
            self.probe_at = None
            return True
        return False

    def copy(self) -> TargetMachine:
        """An independent copy (a shared pool changes a copy until the store accepts it)."""
        twin = TargetMachine.__new__(TargetMachine)
        for field in TargetMachine.__slots__:
            setattr(twin, field, getattr(self, field))
        return twin

    # -- reading -----------------------------------------------------------------------------------

    def status(self, now: float) -> str:
        """``healthy``, ``cooling`` or ``probing`` (cooling, and its cooldown has ended)."""
        if self.healthy:
            return HEALTHY
        return COOLING if now < self.until else PROBING

    def to_state(self) -> dict[str, Any]:
        """The state as JSON-able values (``"v": 1``; see :meth:`from_state` for ``pace`` and
        ``flapping``)."""
        return {
            "v": 1,
            "healthy": self.healthy,
            "reason": self.reason,
            "since": self.since,
            "until": self.until,
            "failures": self.failures,
            "last_error": self.last_error,
            "level": self.level,
            "pace": self.pace,
            "flapping": self.flapping,
            "streak": self.streak,
            "probe_at": self.probe_at,
        }

    @classmethod
    def from_state(cls, data: Any) -> TargetMachine:
        """The machine :meth:`to_state` described.

        ``pace`` and ``flapping`` were added to version 1 without changing it: a record written
        before them reads as a target with no failed probe yet on the down clock (the worst it
        does is probe a target that was flapping at the fast pace until it flaps again), and a
        process that predates them reads this version's records, ignoring the two fields.

        Raises:
            ValueError: ``data`` is not such a state (naming the field).
        """
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError(f"a stored target state must be an object with v=1, got {data!r}")
        machine = cls()
        try:
            healthy = data["healthy"]
            if not isinstance(healthy, bool):
                raise ValueError(f"healthy must be true or false, got {healthy!r}")
            machine.healthy = healthy
            for field in ("reason", "last_error"):
                value = data[field]
                if not isinstance(value, str):
                    raise ValueError(f"{field} must be a string, got {value!r}")
                setattr(machine, field, value)
            for field in ("since", "until", "level"):
                setattr(machine, field, _number(field, data[field]))
            for field in ("failures", "streak"):
                value = data[field]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{field} must be an integer >= 0, got {value!r}")
                setattr(machine, field, value)
            probe_at = data["probe_at"]
            machine.probe_at = None if probe_at is None else _number("probe_at", probe_at)
            pace = _number("pace", data.get("pace", 0.0))
            if pace < 0:
                raise ValueError(f"pace must be a number >= 0, got {pace!r}")
            machine.pace = pace
            flapping = data.get("flapping", False)
            if not isinstance(flapping, bool):
                raise ValueError(f"flapping must be true or false, got {flapping!r}")
            machine.flapping = flapping
        except KeyError as exc:
            raise ValueError(f"a stored target state lacks {exc.args[0]!r}") from None
        return machine


def _number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{field} must be a number, got {value!r}")
    return float(value)
