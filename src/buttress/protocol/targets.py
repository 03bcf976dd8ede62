"""Named targets of a call (providers, replicas, servers) and which one to use now.

Theory of operation
-------------------
A :class:`TargetPool` holds targets in order of preference. :meth:`TargetPool.choose` admits the
first target that is usable now: a healthy one, or a cooling one whose cooldown has passed, which
is then admitted as the single recovery probe. A failure cools a target for its cooldown (never
shortened by a later failure or ``Retry-After``); a failed probe doubles the cooldown up to
``max_cooldown``; ``probes`` consecutive successful probes make it healthy again.

This is a small implementation of the pool's interface; the engine relies only on the methods
below.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..clock import Clock, get_clock
from ..errors import ButtressError

__all__ = ["AllTargetsCooling", "TargetChoice", "TargetPool", "current_target"]

_current_target: ContextVar[str | None] = ContextVar("buttress_current_target", default=None)


def current_target() -> str | None:
    """The name of the target the running call uses (``None`` outside a targeted call)."""
    return _current_target.get()


class AllTargetsCooling(ButtressError):
    """Every target of a pool is cooling down; ``targets`` says why and until when."""

    def __init__(
        self, message: str, *, targets: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.targets = dict(targets or {})
        ready = [t.get("expires_at") for t in self.targets.values()]
        known = [r for r in ready if isinstance(r, float)]
        self.retry_after: float | None = None
        self.ready_at = min(known) if known else None


@dataclass(frozen=True, slots=True)
class TargetChoice:
    """One admission of one target."""

    name: str
    target: Any
    probe: bool = False


class _State:
    __slots__ = (
        "cooldown",
        "expires",
        "failures",
        "last_error",
        "probing",
        "reason",
        "since",
        "successes",
    )

    def __init__(self) -> None:
        self.cooldown = 0.0
        self.expires: float | None = None
        self.failures = 0
        self.successes = 0
        self.probing = False
        self.reason = ""
        self.since = 0.0
        self.last_error: str | None = None


class TargetPool:
    """Targets in order of preference, each cooled on failure and probed back."""

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
    ) -> None:
        items = list(targets.items()) if isinstance(targets, Mapping) else list(targets)
        if not items:
            raise ValueError(f"target pool {name!r} needs at least one target")
        for entry in items:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise TypeError(f"targets must be (name, target) pairs, got {entry!r}")
        if prefer not in ("order", "cost"):
            raise ValueError(f"prefer must be 'order' or 'cost', got {prefer!r}")
        if prefer == "cost":
            table = dict(costs or {})
            items.sort(key=lambda e: table.get(e[0], float("inf")))
        self.name = name
        self._targets = dict(items)
        self._order = [n for n, _ in items]
        self._probes = probes
        self._cooldown = cooldown
        self._max = max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._states = {n: _State() for n in self._order}

    def _now(self) -> float:
        return (self._clock or get_clock()).now()

    def choose(self, exclude: Collection[str] = ()) -> TargetChoice | None:
        now = self._now()
        with self._lock:
            for name in self._order:
                if name in exclude:
                    continue
                state = self._states[name]
                if state.expires is None:
                    return TargetChoice(name, self._targets[name])
                if state.probing:
                    continue
                if state.expires is None or state.expires <= now:
                    state.probing = True
                    return TargetChoice(name, self._targets[name], True)
        return None

    def succeeded(self, choice: TargetChoice) -> None:
        with self._lock:
            state = self._states[choice.name]
            if not choice.probe:
                state.failures = 0
                return
            state.probing = False
            state.successes += 1
            if state.successes >= self._probes:
                state.successes = 0
                state.expires = None
                state.cooldown = 0.0
                state.failures = 0
                state.reason = ""

    def failed(
        self,
        choice: TargetChoice,
        error: BaseException,
        *,
        retry_after: float | None = None,
        cool: bool = True,
    ) -> None:
        now = self._now()
        with self._lock:
            state = self._states[choice.name]
            state.probing = False if choice.probe else state.probing
            state.last_error = type(error).__name__
            if not cool:
                return
            state.failures += 1
            state.successes = 0
            state.cooldown = (
                min(self._max, state.cooldown * 2)
                if choice.probe
                else (state.cooldown or self._cooldown)
            )
            until = now + max(state.cooldown, retry_after or 0.0)
            if state.expires is None or until > state.expires:
                state.expires = until
            if state.reason == "":
                state.since = now
            state.reason = f"{type(error).__name__}: {error}"[:200]

    def release(self, choice: TargetChoice) -> None:
        if choice.probe:
            with self._lock:
                self._states[choice.name].probing = False

    def earliest_ready(self, exclude: Collection[str] = ()) -> float | None:
        with self._lock:
            times = [
                s.expires
                for n, s in self._states.items()
                if n not in exclude and s.expires is not None
            ]
        return min(times) if times else None

    def exhausted_error(self, exclude: Collection[str] = ()) -> AllTargetsCooling:
        states = self.states()
        listed = "; ".join(
            f"{n}: {s['reason'] or s['state']} until {s['expires_at']}" for n, s in states.items()
        )
        return AllTargetsCooling(
            f"every target of {self.name!r} is cooling down ({listed})", targets=states
        )

    def states(self) -> dict[str, dict[str, Any]]:
        now = self._now()
        with self._lock:
            return {
                n: {
                    "state": "healthy"
                    if s.expires is None
                    else ("cooling" if s.expires > now else "probing"),
                    "reason": s.reason,
                    "since": s.since,
                    "expires_at": s.expires,
                    "consecutive_failures": s.failures,
                    "last_error": s.last_error,
                }
                for n, s in self._states.items()
            }

    def close(self) -> None:
        return None
