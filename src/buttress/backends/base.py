"""What every state store does: one atomic step on one keyed state.

Theory of operation
-------------------
A store keeps small JSON-able states under ``(kind, name, key)`` and offers a few *steps*, each
atomic with respect to every other caller of the same store (threads, processes, hosts):

* rate limits: ``reserve`` (the arithmetic of :func:`buttress.machines.ratelimit.reserve`, after
  any block), ``block`` and ``reset``;
* circuit breakers: ``breaker_step`` applies one operation of
  :class:`buttress.machines.breaker.BreakerMachine` (``acquire``, ``record``, ``release``,
  ``force`` or ``read``) to the stored state and returns a :class:`BreakerReply`.

The memory and SQLite stores run the Python machines inside a lock or a transaction; the Redis
store runs Lua twins of them inside the server. Times are wall-clock seconds (states outlive a
process, so a monotonic clock would mean nothing to the next reader); a caller passes ``now`` or
lets the store read its own clock (the Redis server's, by default).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import StorageError, StorageUnavailable
from ..machines.breaker import Admission, BreakerMachine, BreakerSettings, CircuitState
from ..machines.ratelimit import Params, idle, reserve

__all__ = [
    "BREAKER_OPS",
    "BreakerReply",
    "MemoryStore",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "apply_breaker",
]

BREAKER_OPS = ("acquire", "record", "release", "force", "read")


@dataclass(frozen=True, slots=True)
class BreakerReply:
    """The answer of one breaker step, and the shared state after it."""

    allowed: bool
    probe: bool
    ticket: int  # the generation of a closed admission, or the probe's ticket
    retry_after: float
    state: CircuitState
    failures: int
    opened_at: float
    transition: tuple[CircuitState, CircuitState, str] | None


class Store(Protocol):
    """The interface the policies use (see the module documentation)."""

    url: str

    def reserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]: ...

    def block(
        self, name: str, key: str | None, seconds: float, now: float | None = None
    ) -> None: ...

    def reset(self, name: str, key: str | None = None) -> None: ...

    def breaker_step(
        self,
        name: str,
        settings: BreakerSettings,
        op: str,
        now: float | None = None,
        *,
        probe: bool = False,
        ticket: int = 0,
        failed: bool = False,
        target: CircuitState | None = None,
        reason: str = "",
    ) -> BreakerReply: ...


def apply_breaker(
    machine: BreakerMachine,
    op: str,
    now: float,
    *,
    probe: bool = False,
    ticket: int = 0,
    failed: bool = False,
    target: CircuitState | None = None,
    reason: str = "",
) -> BreakerReply:
    """Run one breaker operation on ``machine`` (in place) and describe the result."""
    allowed, is_probe, number, retry_after = False, False, 0, 0.0
    transition = None
    if op == "acquire":
        admission, moved = machine.acquire(now)
        allowed, is_probe = admission.allowed, admission.probe
        number, retry_after = admission.generation, admission.retry_after
        transition = moved
    elif op == "record":
        transition = machine.record(Admission(True, probe, ticket), now, failed=failed)
    elif op == "release":
        machine.release(Admission(True, probe, ticket))
    elif op == "force":
        if not isinstance(target, CircuitState):
            raise ValueError(f"force needs a target CircuitState, got {target!r}")
        transition = machine.force(target, now, reason or f"forced {target.value}")
    elif op != "read":
        raise ValueError(f"unknown breaker operation {op!r}; known: {', '.join(BREAKER_OPS)}")
    return BreakerReply(
        allowed=allowed,
        probe=is_probe,
        ticket=number,
        retry_after=retry_after,
        state=machine.state,
        failures=machine.failures,
        opened_at=machine.opened_at,
        transition=None
        if transition is None
        else (transition.old, transition.new, transition.reason),
    )


def shared_settings(settings: BreakerSettings) -> BreakerSettings:
    """``settings`` as a stored breaker runs them: a probe always holds a lease with an expiry.

    Without ``probe_timeout``, a prober that died would hold its probe slot forever; a stored
    breaker therefore writes a probe off after ``probe_timeout`` or, when none is set, after the
    recovery time (at least 1 s).
    """
    if settings.probe_timeout is not None:
        return settings
    from dataclasses import replace

    return replace(settings, probe_timeout=max(1.0, settings.recovery))


class MemoryStore:
    """The store interface over process memory (for the contract tests and as a reference).

    The rate limiter and circuit breaker keep their in-memory state themselves, on faster paths;
    this class states what the other stores must do.
    """

    url = "memory://"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[tuple[str, str | None], list[float] | deque[float]] = {}
        self._blocks: dict[tuple[str, str | None], float] = {}
        self._breakers: dict[str, dict[str, Any]] = {}

    def reserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        now = time.time() if now is None else now
        slot = (name, key)
        with self._lock:
            until = self._blocks.get(slot)
            if until is not None:
                if now < until:
                    return False, until - now
                del self._blocks[slot]
            state, wait = reserve(self._limits.get(slot), now, cost, max_wait, params)
            if state is None:
                return False, wait
            self._limits[slot] = state
            return True, wait

    def block(self, name: str, key: str | None, seconds: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            slot = (name, key)
            self._blocks[slot] = max(self._blocks.get(slot, 0.0), now + seconds)

    def reset(self, name: str, key: str | None = None) -> None:
        with self._lock:
            self._limits.pop((name, key), None)
            self._blocks.pop((name, key), None)

    def idle_keys(self, params: Params, now: float) -> int:
        """How many stored rate-limit states are idle (could be forgotten) at ``now``."""
        with self._lock:
            return sum(1 for state in self._limits.values() if idle(state, now, params))

    def breaker_step(
        self,
        name: str,
        settings: BreakerSettings,
        op: str,
        now: float | None = None,
        *,
        probe: bool = False,
        ticket: int = 0,
        failed: bool = False,
        target: CircuitState | None = None,
        reason: str = "",
    ) -> BreakerReply:
        now = time.time() if now is None else now
        with self._lock:
            machine = BreakerMachine.from_state(shared_settings(settings), self._breakers.get(name))
            reply = apply_breaker(
                machine,
                op,
                now,
                probe=probe,
                ticket=ticket,
                failed=failed,
                target=target,
                reason=reason,
            )
            self._breakers[name] = machine.to_state()
            return reply
