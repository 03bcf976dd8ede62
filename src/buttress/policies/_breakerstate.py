"""Where a circuit breaker's state lives: this process's memory, or a store shared by processes.

Theory of operation
-------------------
The shell (:mod:`buttress.policies.circuit`) decides nothing itself: it asks a *state* object,
which is one of two kinds behind one small interface:

* :class:`LocalState`: a :class:`~buttress.machines.breaker.BreakerMachine` and the lock that
  guards it. No I/O, so it has no async methods.
* :class:`StoredState`: a store (SQLite, Redis, ...) that applies each step atomically for every
  process using the breaker's name, the :class:`~._storeguard.StoreGuard` that watches the store's
  health, and a :class:`LocalState` to decide on while the store cannot answer (``fail_mode``
  ``"local"``; ``"open"`` admits uncounted calls, ``"closed"`` refuses them). The steps of a
  call have async twins that await the store (``aadmit``, ``asettle``: ``store.abreaker``), so
  async callers never block the loop; so does ``aclose``.

The interface:

``admit(now)``
    An :class:`~buttress.machines.breaker.Admission` for an admitted call, or a ``float``: the
    call is refused, retry after that many seconds. (The shell admits CLOSED and refuses OPEN
    local breakers without asking, by reading the machine's ``closed_generation`` and
    ``reopens_at``.)
``settle(admission, now, failed, slow)``
    The outcome of an admitted call: ``failed`` is ``True``, ``False``, or ``None`` for a call
    that does not count (an excluded error, a cancelled call), which only gives a probe slot back.
``snapshot(now)``
    A :class:`Snapshot` without I/O: the stored state as this process last saw it. What ``repr``
    and metrics read.
``read(now)``
    A :class:`Snapshot` asked of the store (the local one for local state).
``force(target, now, reason)``, ``close()``
    A manual transition; releasing what the state holds.

Transitions are handed to ``announce(transition, now)``, given at construction, outside any lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

from ..backends.base import ACQUIRE, READ, BreakerReply, BreakerStep
from ..clock import Clock, wall_time
from ..machines.breaker import (
    Admission,
    BreakerMachine,
    BreakerSettings,
    CircuitState,
    Transition,
)
from ._storeguard import StoreGuard, store_faults, store_time

__all__ = ["NO_GATE", "DisposedState", "Gate", "LocalState", "Snapshot", "StoredState"]

_CLOSED, _OPEN, _HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
Announce = Callable[[Transition, float], None]


class Snapshot(NamedTuple):
    """A breaker's state at one moment; an OPEN breaker past its recovery time reads HALF_OPEN."""

    state: CircuitState
    failures: int
    retry_after: float
    failure_rate: float


def _snapshot(
    state: CircuitState, failures: int, opened_at: float, now: float, settings: BreakerSettings
) -> Snapshot:
    wait = opened_at + settings.recovery - now if state is _OPEN else 0.0
    if state is _OPEN and wait <= 0:
        state, wait = _HALF_OPEN, 0.0
    # an open or half-open breaker holds its dependency failing until a probe closes it: its
    # rate stays 1, as a windowed breaker's stays at the window that tripped it (kept until it
    # closes), and does not read 0 because the count starts again at the trip
    rate = min(1.0, failures / settings.fail_max) if state is _CLOSED else 1.0
    return Snapshot(state, failures, wait, rate)


class LocalState:
    """A breaker in this process's memory: the machine and its lock."""

    __slots__ = ("announce", "lock", "machine")

    def __init__(self, settings: BreakerSettings, announce: Announce) -> None:
        self.machine = BreakerMachine(settings)
        self.announce = announce
        self.lock = threading.Lock()

    def admit(self, now: float) -> Admission | float:
        with self.lock:
            admission, transition = self.machine.acquire(now)
        if transition is not None:
            self.announce(transition, now)
        return admission if admission.allowed else admission.retry_after

    def settle(
        self, admission: Admission, now: float, failed: bool | None, slow: bool = False
    ) -> None:
        with self.lock:
            if failed is None:
                self.machine.release(admission)
                return
            transition = self.machine.record(admission, now, failed=failed, slow=slow)
        if transition is not None:
            self.announce(transition, now)

    def succeeded(self, generation: int) -> None:
        """A call admitted lock-free in CLOSED state succeeded after failures were counted."""
        machine = self.machine
        with self.lock:
            if machine.closed_generation == generation:
                machine.failures = 0

    def snapshot(self, now: float) -> Snapshot:
        machine = self.machine
        with self.lock:
            snap = _snapshot(
                machine.state, machine.failures, machine.opened_at, now, machine.settings
            )
            if machine.settings.windowed:
                snap = snap._replace(failure_rate=machine.failure_rate(now))
        return snap

    read = snapshot

    def force(self, target: CircuitState, now: float, reason: str) -> Transition | None:
        """Move to ``target`` (announced); returns the transition."""
        with self.lock:
            transition = self.machine.force(target, now, reason)
        if transition is not None:
            self.announce(transition, now)
        return transition

    def close(self) -> None:
        """Nothing to release."""


class _StoredAdmission(Admission):
    """An admission the store granted: its outcome is reported to the store."""

    __slots__ = ()


#: Admitted while the store is unreachable with ``fail_mode="open"``: counted nowhere.
_UNCOUNTED = Admission(True, generation=-1)


class StoredState:
    """A breaker whose state lives in a store, with a local fallback for outages.

    Args:
        name: the breaker's name (the key every process shares).
        settings: the machine settings (the store applies them).
        guard: the store and its health.
        owned: whether the store was opened for this breaker (from a URL, or around a client):
            :meth:`close` gives it back then, and leaves a store passed in to its owner.
        clock: the breaker's clock, or ``None`` for the process default at each step.
        announce: called with every transition.
    """

    __slots__ = ("_seen", "announce", "clock", "guard", "local", "name", "owned", "settings")

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        guard: StoreGuard,
        *,
        owned: bool,
        clock: Clock | None,
        announce: Announce,
    ) -> None:
        self.name = name
        self.settings = settings
        self.guard = guard
        self.owned = owned
        self.clock = clock
        self.announce = announce
        self.local = LocalState(settings, announce)
        self._seen: BreakerReply | None = None  # the store's last answer, for snapshots

    # -- one step on the store: None when it cannot answer -----------------------------------------

    def _ask(self, step: BreakerStep, now: float) -> BreakerReply | None:
        guard = self.guard
        if not guard.should_try(now):
            return None
        try:
            reply = guard.store.breaker(self.name, self.settings, step, store_time(self.clock))
        except store_faults() as error:
            guard.failed(error, now)
            return None
        return self._heard(reply, now)

    async def _aask(self, step: BreakerStep, now: float) -> BreakerReply | None:
        guard = self.guard
        if not guard.should_try(now):
            return None
        try:
            reply = await guard.store.abreaker(
                self.name, self.settings, step, store_time(self.clock)
            )
        except store_faults() as error:
            guard.failed(error, now)
            return None
        return self._heard(reply, now)

    def _heard(self, reply: BreakerReply, now: float) -> BreakerReply:
        """Remember the answer; announce what it changed, or what another process changed."""
        self.guard.answered()
        with self.local.lock:
            seen, self._seen = self._seen, reply
        before = _CLOSED if seen is None else seen.state
        if reply.transition is not None:
            old, new, reason = reply.transition
            if old is not before:
                self.announce(Transition(before, old, "changed by another process"), now)
            self.announce(Transition(old, new, reason), now)
        elif reply.state is not before:
            self.announce(Transition(before, reply.state, "changed by another process"), now)
        return reply

    # -- the interface -----------------------------------------------------------------------------

    def admit(self, now: float) -> Admission | float:
        return self._admission(self._ask(ACQUIRE, now), now)

    async def aadmit(self, now: float) -> Admission | float:
        return self._admission(await self._aask(ACQUIRE, now), now)

    def _admission(self, reply: BreakerReply | None, now: float) -> Admission | float:
        if reply is not None:
            if reply.allowed:
                return _StoredAdmission(True, reply.probe, reply.ticket)
            return reply.retry_after
        mode = self.guard.fail_mode
        if mode == "open":
            return _UNCOUNTED
        if mode == "closed":
            return self.guard.retry_interval  # when the store is asked again
        return self.local.admit(now)

    def settle(
        self, admission: Admission, now: float, failed: bool | None, slow: bool = False
    ) -> None:
        step = self._settlement(admission, now, failed)
        if step is not None:
            self._ask(step, now)

    async def asettle(
        self, admission: Admission, now: float, failed: bool | None, slow: bool = False
    ) -> None:
        step = self._settlement(admission, now, failed)
        if step is not None:
            await self._aask(step, now)

    def _settlement(
        self, admission: Admission, now: float, failed: bool | None
    ) -> BreakerStep | None:
        """The store step that settles ``admission``; ``None`` when there is none to send."""
        if not isinstance(admission, _StoredAdmission):
            if admission is not _UNCOUNTED:
                self.local.settle(admission, now, failed)  # admitted locally during an outage
            return None
        if failed is None:
            # only a probe holds something to give back
            return (
                BreakerStep.release(admission.generation, probe=True) if admission.probe else None
            )
        return BreakerStep.record(admission.generation, probe=admission.probe, failed=failed)

    def snapshot(self, now: float) -> Snapshot:
        if self.guard.degraded and self.guard.fail_mode == "local":
            return self.local.snapshot(now)
        return self._view(self._seen)

    def read(self, now: float) -> Snapshot:
        reply = self._ask(READ, now)
        return self.snapshot(now) if reply is None else self._view(reply)

    def _view(self, reply: BreakerReply | None) -> Snapshot:
        if reply is None:
            return Snapshot(_CLOSED, 0, 0.0, 0.0)
        now = store_time(self.clock)
        return _snapshot(
            reply.state,
            reply.failures,
            reply.opened_at,
            wall_time() if now is None else now,
            self.settings,
        )

    def force(self, target: CircuitState, now: float, reason: str) -> Transition | None:
        """Move the stored breaker (and the local fallback) to ``target``."""
        local = self.local
        with local.lock:
            transition = local.machine.force(target, now, reason)
        if self._ask(BreakerStep.force(target, reason), now) is None and transition is not None:
            self.announce(transition, now)  # the store did not hear it: say what holds here
        return transition

    def close(self) -> None:
        if self.owned:
            self.guard.store.close()

    async def aclose(self) -> None:
        if self.owned:
            await self.guard.store.aclose()


class DisposedState:
    """The state of a disposed breaker: refuses to admit, lets calls in flight finish quietly."""

    __slots__ = ("last", "name")

    def __init__(self, name: str, last: Snapshot) -> None:
        self.name, self.last = name, last

    def admit(self, now: float) -> Admission | float:
        raise self._gone()

    def force(self, target: CircuitState, now: float, reason: str) -> Transition | None:
        raise self._gone()

    def _gone(self) -> RuntimeError:
        return RuntimeError(f"circuit breaker {self.name!r} was disposed; make a new one")

    def settle(self, admission: Admission, now: float, failed: bool | None, slow: bool) -> None:
        """Outcomes of calls admitted before the breaker was disposed are dropped."""

    def snapshot(self, now: float) -> Snapshot:
        return self.last

    read = snapshot

    def close(self) -> None:
        """Released already."""


class Gate:
    """What the shell reads of a machine without its lock (see
    :mod:`buttress.machines.breaker`): this one never admits nor refuses, so every call asks
    the state (a store decides, or a window counts)."""

    __slots__ = ()
    closed_generation = -1
    failures = 0
    reopens_at = float("-inf")


NO_GATE = Gate()
