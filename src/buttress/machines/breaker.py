"""The circuit breaker as a state machine: no clock, no locks, no I/O.

States and transitions (``now`` is passed in by the caller, which also holds any lock):

=============  =====================================================  ==========
from           on                                                     to
=============  =====================================================  ==========
CLOSED         ``fail_max`` consecutive failures, or a window whose   OPEN
               failure or slow-call rate reaches its threshold
OPEN           a caller arrives ``recovery`` seconds after opening    HALF_OPEN
HALF_OPEN      ``success_threshold`` probe successes                  CLOSED
HALF_OPEN      a probe failure, or a probe running past               OPEN
               ``probe_timeout``
any            manual ``open`` / ``close``                            OPEN / CLOSED
=============  =====================================================  ==========

Half-open admits at most ``half_open_max_calls`` probes at once. Each admission carries the
machine's *generation*, bumped at every transition; an outcome reported with an old generation
(a call admitted before the breaker moved on, or a probe already written off by its timeout) is
ignored, so a late answer cannot undo a newer decision.

Two attributes let a shell decide the common cases without its lock, each by reading one value
(so a decision cannot pair a new state with an old number):

* ``closed_generation`` is the generation while CLOSED and -1 otherwise: a call admitted by
  reading it is stamped with the generation it was admitted in;
* ``reopens_at`` is, while OPEN, the time it turns HALF_OPEN, and -inf otherwise: a call arriving
  before it is refused, with ``reopens_at - now`` as its ``retry_after``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Admission", "BreakerMachine", "BreakerSettings", "CircuitState", "Transition"]


class CircuitState(StrEnum):
    """CLOSED (normal), OPEN (rejecting), HALF_OPEN (probing for recovery)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def code(self) -> int:
        """0 closed, 1 open, 2 half-open (the metric encoding)."""
        return _CODES[self]


_CODES = {CircuitState.CLOSED: 0, CircuitState.OPEN: 1, CircuitState.HALF_OPEN: 2}
CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
_NEVER = float("-inf")


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """What the machine needs of a breaker's configuration (validated by the caller)."""

    fail_max: int
    recovery: float
    half_open_max_calls: int = 1
    success_threshold: int = 1
    failure_rate_threshold: float | None = None
    slow_call_rate_threshold: float | None = None
    window_type: str = "count"
    window_size: float = 100
    minimum_calls: int = 10
    probe_timeout: float | None = None

    @property
    def windowed(self) -> bool:
        return self.failure_rate_threshold is not None or self.slow_call_rate_threshold is not None


@dataclass(frozen=True, slots=True)
class Transition:
    old: CircuitState
    new: CircuitState
    reason: str


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may this call run?"."""

    allowed: bool
    probe: bool = False
    generation: int = 0  # the machine's generation, or the probe's ticket when ``probe``
    retry_after: float = 0.0


class BreakerMachine:
    """The mutable state of one breaker and its transitions."""

    __slots__ = (
        "_buckets",
        "_outcomes",
        "_probe_starts",
        "_tickets",
        "closed_generation",
        "failures",
        "generation",
        "opened_at",
        "probe_successes",
        "reopens_at",
        "settings",
        "state",
        "window_calls",
        "window_failures",
        "window_slow",
    )

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.state = CLOSED
        self.generation = 0
        self.closed_generation = 0
        self.failures = 0
        self.opened_at = 0.0
        self.reopens_at = _NEVER
        self.probe_successes = 0
        self._probe_starts: dict[int, float] = {}  # probe ticket -> start time
        self._tickets = 0
        self._outcomes: deque[int] = deque()
        self._buckets: deque[list[float]] = deque()
        self.window_calls = 0
        self.window_failures = 0
        self.window_slow = 0

    # -- transitions ---------------------------------------------------------------------------

    def _move(self, new: CircuitState, now: float, reason: str) -> Transition:
        old = self.state
        # first: a lock-free reader never admits into, nor refuses out of, the new state
        self.closed_generation = -1
        self.reopens_at = _NEVER
        self.state = new
        self.generation += 1
        self.failures = 0
        self.probe_successes = 0
        self._probe_starts.clear()
        if new is OPEN:
            self.opened_at = now
            self.reopens_at = now + self.settings.recovery
        if new is CLOSED:
            self._outcomes.clear()
            self._buckets.clear()
            self.window_calls = self.window_failures = self.window_slow = 0
            self.closed_generation = self.generation
        return Transition(old, new, reason)

    def force(self, new: CircuitState, now: float, reason: str) -> Transition | None:
        """A manual transition (``open()``, ``close()``)."""
        if new is self.state and new is not CLOSED:
            return None
        if new is CLOSED and self.state is CLOSED:
            self._move(CLOSED, now, reason)  # reset counters without a visible transition
            return None
        return self._move(new, now, reason)

    def acquire(self, now: float) -> tuple[Admission, Transition | None]:
        """Decide whether a call may run now, moving OPEN -> HALF_OPEN when due."""
        transition = None
        s = self.settings
        if self.state is OPEN:
            due = self.opened_at + s.recovery
            if now < due:
                return Admission(False, retry_after=due - now), None
            transition = self._move(HALF_OPEN, now, "recovery timeout elapsed")
        if self.state is HALF_OPEN:
            if s.probe_timeout is not None and self._probe_starts:
                oldest = min(self._probe_starts.values())
                if now - oldest >= s.probe_timeout:
                    transition = self._move(OPEN, now, "half-open probe timed out")
                    return Admission(False, retry_after=s.recovery), transition
            if len(self._probe_starts) >= s.half_open_max_calls:
                return Admission(False, retry_after=self._probe_wait(now)), transition
            self._tickets += 1
            ticket = self._tickets
            self._probe_starts[ticket] = now
            return Admission(True, probe=True, generation=ticket), transition
        return Admission(True, generation=self.generation), transition

    def _probe_wait(self, now: float) -> float:
        timeout = self.settings.probe_timeout
        if timeout is None or not self._probe_starts:
            return 0.0
        return max(0.0, min(self._probe_starts.values()) + timeout - now)

    def release(self, admission: Admission) -> None:
        """A call ended without an outcome that counts (cancelled, excluded error)."""
        if admission.probe:
            self._probe_starts.pop(admission.generation, None)

    def record(
        self, admission: Admission, now: float, *, failed: bool, slow: bool = False
    ) -> Transition | None:
        """Count the outcome of an admitted call; may trip or close the breaker."""
        s = self.settings
        if admission.probe:
            if self._probe_starts.pop(admission.generation, None) is None:
                return None  # written off already (timeout or a transition)
            if failed or slow:
                return self._move(OPEN, now, "half-open probe failed")
            self.probe_successes += 1
            if self.probe_successes >= s.success_threshold:
                return self._move(CLOSED, now, "half-open probes succeeded")
            return None
        if admission.generation != self.generation or self.state is not CLOSED:
            return None
        if failed:
            self.failures += 1
        else:
            self.failures = 0
        if s.windowed:
            self._observe(now, failed, slow)
            reason = self._window_trips()
            if reason:
                return self._move(OPEN, now, reason)
        if failed and self.failures >= s.fail_max:
            return self._move(OPEN, now, f"{self.failures} consecutive failures")
        return None

    # -- sliding windows -----------------------------------------------------------------------

    def _observe(self, now: float, failed: bool, slow: bool) -> None:
        s = self.settings
        if s.window_type == "count":
            self._outcomes.append(int(failed) | (int(slow) << 1))
            self.window_calls += 1
            self.window_failures += failed
            self.window_slow += slow
            if len(self._outcomes) > s.window_size:
                gone = self._outcomes.popleft()
                self.window_calls -= 1
                self.window_failures -= gone & 1
                self.window_slow -= gone >> 1
            return
        second = float(int(now))
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow
        self.window_calls += 1
        self.window_failures += failed
        self.window_slow += slow
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.settings.window_size
        while self._buckets and self._buckets[0][0] + 1 <= horizon:
            _, calls, fails, slows = self._buckets.popleft()
            self.window_calls -= int(calls)
            self.window_failures -= int(fails)
            self.window_slow -= int(slows)

    def _window_trips(self) -> str:
        s = self.settings
        calls = self.window_calls
        if calls < s.minimum_calls or calls == 0:
            return ""
        rate = self.window_failures / calls
        if s.failure_rate_threshold is not None and rate >= s.failure_rate_threshold:
            return f"failure rate {rate:.0%} over {calls} calls"
        slow_rate = self.window_slow / calls
        if s.slow_call_rate_threshold is not None and slow_rate >= s.slow_call_rate_threshold:
            return f"slow-call rate {slow_rate:.0%} over {calls} calls"
        return ""

    def failure_rate(self, now: float) -> float:
        """Failures over calls in the window, or consecutive failures over ``fail_max``."""
        if self.settings.windowed:
            if self.settings.window_type == "time":
                self._expire(now)
            return self.window_failures / self.window_calls if self.window_calls else 0.0
        return min(1.0, self.failures / self.settings.fail_max)

    def probes_in_flight(self) -> int:
        return len(self._probe_starts)

    # -- persistence ---------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The state as JSON-able data (consecutive-failure breakers; windows are not kept)."""
        return {
            "v": STATE_VERSION,
            "state": self.state.value,
            "generation": self.generation,
            "failures": self.failures,
            "opened_at": self.opened_at,
            "probe_successes": self.probe_successes,
            "probes": {str(ticket): start for ticket, start in self._probe_starts.items()},
            "tickets": self._tickets,
        }

    @classmethod
    def from_state(cls, settings: BreakerSettings, data: object) -> BreakerMachine:
        """A machine holding ``data`` (from :meth:`to_state`); ``ValueError`` names a bad field."""
        machine = cls(settings)
        if data is None:
            return machine
        if not isinstance(data, dict):
            raise ValueError(f"breaker state must be an object, got {data!r}")
        if data.get("v") != STATE_VERSION:
            raise ValueError(f"breaker state version {data.get('v')!r} is not {STATE_VERSION}")
        try:
            machine.state = CircuitState(data["state"])
            machine.generation = _int(data, "generation")
            machine.failures = _int(data, "failures")
            machine.opened_at = _float(data, "opened_at")
            machine.probe_successes = _int(data, "probe_successes")
            machine._tickets = _int(data, "tickets")
            probes = data["probes"]
            if not isinstance(probes, dict):
                raise ValueError(f"probes must be an object, got {probes!r}")
            machine._probe_starts = {int(t): _float(probes, t) for t in probes}
            machine.closed_generation = machine.generation if machine.state is CLOSED else -1
            if machine.state is OPEN:
                machine.reopens_at = machine.opened_at + settings.recovery
        except KeyError as exc:
            raise ValueError(f"breaker state lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"breaker state is malformed: {exc}") from None
        return machine


STATE_VERSION = 1


def _int(data: dict[str, Any], field: str) -> int:
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    return value


def _float(data: dict[str, Any], field: str) -> float:
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{field} must be a number, got {value!r}")
    return float(value)
