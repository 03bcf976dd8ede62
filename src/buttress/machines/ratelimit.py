"""Rate-limit algorithms as pure reservations over a tiny state.

Every algorithm answers one question: *when may a request of ``cost`` units, arriving at ``now``,
be admitted?* ``reserve(state, now, cost, max_wait, p)`` returns ``(new_state, wait)`` when the
request is admitted after waiting ``wait`` seconds (``0`` for at once) and no more than
``max_wait``, or ``(None, retry_after)`` when it is refused: the state is then unchanged, and
``retry_after`` is how long until it would be admitted without waiting. A non-waiting check is
``max_wait=0``. Because an admitted reservation updates the state at once, requests that arrive
later are given later slots: waiting callers are served first come, first served, with no polling.

States are short lists of floats (JSON-able), times on the caller's clock:

* TOKEN_BUCKET, as GCRA: ``[tat]``, the theoretical arrival time. Emission interval
  ``T = 1/rate``, burst tolerance ``tau = burst * T``. Admits while ``tat + cost*T - now <= tau``.
  In any interval of length ``w`` it admits at most ``burst + rate * w``.
* LEAKY_BUCKET (shaping): ``[tat]`` as well, but without burst tolerance: requests leave the bucket
  exactly ``T`` apart. A non-waiting check admits only when the next slot is now; a waiting
  acquire queues for its slot, up to ``burst`` requests deep. Output is smooth: at most
  ``1 + rate * w`` in any interval ``w``.
* FIXED_WINDOW: ``[window_start, count]``. A window opens with the first request after the
  previous one has closed (so a run of ``n`` windows' length admits ``n * limit``, wherever it
  starts), and a full window's successor opens exactly when it closes. At most ``limit`` per
  window; twice that can fall in a short span across a boundary: that is the algorithm.
* SLIDING_WINDOW (exact): ``[t1, t2, ...]``, the admission times still inside the window and any
  reserved ahead for waiters (a deque in memory). Admits at ``t`` only if fewer than ``limit``
  admissions fall in ``(t - window, t]``: never more than ``limit`` in ANY interval of length
  ``window``. State is bounded by ``limit`` entries plus the units reserved for waiters:
  exactness costs memory in proportion to the limit (prefer the token bucket for limits in the
  millions).

The fast path. ``one_step(p)`` is the single-unit, non-waiting decision of ``reserve`` specialised
for one limit, updating a state in place: what an in-memory limiter runs for every request once a
key has a state. It must decide exactly as ``reserve(state, now, 1, 0.0, p)`` does.

Giving a reservation back. A waiter that gives up before its slot (a cancelled task, a timeout
around ``acquire``) returns what it reserved with ``cancel``. What is exact:

* The most recent reservation is undone outright (``give_back``): the state becomes what it
  would have been without it, so the next request is served as if it had never been made.
* An earlier one cannot be: the reservations made after it were placed behind it and keep their
  slots (their waiters are already asleep until them), and for GCRA a single ``tat`` cannot have
  a piece taken out of its middle. It becomes a *hole* instead, and ``take_hole`` gives exactly
  that slot (its time, its cost at most) to the next request that can wait for it: the requests
  that run are then a subset of a schedule the algorithm admitted, so the limit still holds. When
  the reservations after a hole are given back in turn, the hole is the most recent again and is
  undone too (waiters that give up out of order); for a fixed window, a window reserved ahead
  whose every reservation is given back never opened. A hole nobody takes by its time (the end
  of its window, for a fixed window) is capacity lost until the state catches up, and units of a
  hole its taker does not need go unused: never an excess.

The stores (SQLite, Redis) have no give-back step: a waiter on a stored limit that gives up
forfeits its slot, as a request that was admitted and then not sent would.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Held",
    "Params",
    "RateLimitAlgorithm",
    "FAR_AHEAD",
    "cancel",
    "fresh_at",
    "give_back",
    "idle",
    "one_step",
    "reserve",
    "reserve_held",
    "spent",
    "state_problem",
    "take_hole",
    "with_remaining",
]

EPSILON = 1e-9

#: How far ahead of ``now`` a time in a stored state may lie (seconds; ten years). The reservations
#: of waiters and a server's ``Retry-After`` reach far less; a state further ahead was not written
#: by a limiter, and would refuse its key for ever.
FAR_AHEAD = 315_360_000.0

State = list[float] | deque[float]


class RateLimitAlgorithm(Enum):
    """The rate-limiting algorithms (see :mod:`buttress.machines.ratelimit`)."""

    TOKEN_BUCKET = "token_bucket"
    LEAKY_BUCKET = "leaky_bucket"
    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"


_TOKEN = RateLimitAlgorithm.TOKEN_BUCKET
_LEAKY = RateLimitAlgorithm.LEAKY_BUCKET
_FIXED = RateLimitAlgorithm.FIXED_WINDOW
_SLIDING = RateLimitAlgorithm.SLIDING_WINDOW


@dataclass(frozen=True, slots=True)
class Params:
    """Derived numbers an algorithm needs."""

    algorithm: RateLimitAlgorithm
    interval: float  # seconds per request (1 / rate)
    burst: int
    window: float
    limit: int  # requests per window

    @property
    def tau(self) -> float:
        return self.burst * self.interval

    @property
    def capacity(self) -> int:
        """The most units one request may cost: the burst (buckets) or the limit (windows)."""
        return self.burst if self.algorithm in (_TOKEN, _LEAKY) else self.limit


def reserve(
    state: State | None,
    now: float,
    cost: int,
    max_wait: float,
    p: Params,
) -> tuple[State | None, float]:
    """Admit ``cost`` units at ``now`` waiting at most ``max_wait``; see the module docstring."""
    algorithm = p.algorithm
    if algorithm is _TOKEN:
        tat = state[0] if state and state[0] > now else now
        new_tat = tat + cost * p.interval
        wait = new_tat - p.tau - now
        if wait <= max_wait + EPSILON:
            return [new_tat], max(0.0, wait)
        return None, wait
    if algorithm is _LEAKY:
        slot = state[0] if state and state[0] > now else now
        wait = slot - now
        queue_room = p.burst * p.interval
        if wait <= min(max_wait, queue_room) + EPSILON:
            return [slot + cost * p.interval], max(0.0, wait)
        return None, wait
    if algorithm is _FIXED:
        return _fixed(state, now, cost, max_wait, p)
    return _sliding(state, now, cost, max_wait, p)


def _fixed(
    state: State | None, now: float, cost: int, max_wait: float, p: Params
) -> tuple[list[float] | None, float]:
    if state and now < state[0] + p.window:
        start, count = state[0], state[1]
    else:
        start, count = now, 0.0
    if count + cost > p.limit:
        start, count = start + p.window, 0.0
    wait = max(0.0, start - now)
    if wait <= max_wait + EPSILON:
        return [start, count + cost], wait
    return None, wait


def _sliding(
    state: State | None, now: float, cost: int, max_wait: float, p: Params
) -> tuple[deque[float] | None, float]:
    # The log is a deque updated in place when the caller keeps one (the in-memory limiter).
    # Entries that have left the window change no decision, so dropping them before a refusal is
    # harmless; entries are dropped by time only, never by count, so that the most recent
    # reservation can be given back exactly (see ``give_back``). O(1) amortised per decision.
    log = state if isinstance(state, deque) else deque(state or ())
    horizon = now - p.window
    while log and log[0] <= horizon:
        log.popleft()
    slot = max(now, log[-1]) if log else now
    need = p.limit - cost + 1  # the admission `need` places back must have left the window
    if need <= len(log):
        slot = max(slot, log[-need] + p.window)
    wait = slot - now
    if wait <= max_wait + EPSILON:
        log.extend([slot] * cost)
        return log, max(0.0, wait)
    return None, wait


Step = Callable[[State, float], float]


def one_step(p: Params) -> Step:
    """``step(state, now)``: one unit, no waiting, ``state`` updated in place when admitted.

    Returns ``0.0`` when admitted, else the ``retry_after`` (always > 0) with the state unchanged
    (a sliding window's log may have dropped entries that left the window). The same decision as
    ``reserve(state, now, 1, 0.0, p)``, without its allocations: the in-memory hot path.
    """
    interval, window, limit = p.interval, p.window, p.limit
    if p.algorithm is _TOKEN:
        tau = p.tau

        def token(state: State, now: float) -> float:
            tat = state[0] if state[0] > now else now
            wait = tat + interval - tau - now
            if wait <= EPSILON:
                state[0] = tat + interval
                return 0.0
            return wait

        return token
    if p.algorithm is _LEAKY:

        def leaky(state: State, now: float) -> float:
            slot = state[0]
            if slot <= now + EPSILON:
                state[0] = (slot if slot > now else now) + interval
                return 0.0
            return slot - now

        return leaky
    if p.algorithm is _FIXED:

        def fixed(state: State, now: float) -> float:
            start = state[0]
            if now >= start + window:  # the window has closed: this request opens the next
                state[0], state[1] = now, 1.0
                return 0.0
            if state[1] + 1 > limit:  # full: the next window opens when this one closes
                wait = start + window - now
                if wait > EPSILON:
                    return wait
                state[0], state[1] = start + window, 1.0
                return 0.0
            if start > now + EPSILON:  # a window reserved ahead for waiters has not opened
                return start - now
            state[1] += 1
            return 0.0

        return fixed

    def sliding(log: State, now: float) -> float:
        horizon = now - window
        while log and log[0] <= horizon:
            log.popleft()  # type: ignore[union-attr]
        slot = now
        if log:
            last = log[-1]
            if last > now:
                slot = last
            if len(log) >= limit:
                edge = log[-limit] + window
                if edge > slot:
                    slot = edge
        if slot - now <= EPSILON:
            log.append(slot)
            return 0.0
        return slot - now

    return sliding


def state_problem(state: State, until: float | None, now: float) -> str | None:
    """What makes a state read from a store one no limiter writes (``None``: nothing): a number
    that is not finite, or a time (an entry, the end of a block) more than :data:`FAR_AHEAD`
    seconds after ``now``. Times in the past are an expired state, however old.

    A fixed window's count is no time, but a finite count is never beyond the bound either.
    """
    ahead = now + FAR_AHEAD
    for x in state:
        if not -math.inf < x <= ahead:  # NaN fails both comparisons
            return f"{x!r} is not a finite time within {FAR_AHEAD:g} s of now ({now!r})"
    if until is not None and not -math.inf < until <= ahead:
        return f"the block's end {until!r} is not a finite time within {FAR_AHEAD:g} s of now"
    return None


def spent(now: float, p: Params) -> State:
    """A state that has just used everything it may: the most cautious starting point."""
    algorithm = p.algorithm
    if algorithm in (_TOKEN, _LEAKY):
        return [now + p.tau]
    if algorithm is _FIXED:
        return [now, float(p.limit)]
    return deque([now] * p.limit)


def with_remaining(state: State | None, now: float, remaining: int, p: Params) -> State:
    """``state`` tightened so that at most ``remaining`` more units are admitted before it
    refills (a server's quota): never loosened, so neither limit is exceeded.
    """
    algorithm = p.algorithm
    if algorithm in (_TOKEN, _LEAKY):
        floor = now + p.tau - remaining * p.interval
        return [floor] if state is None or state[0] < floor else state
    used = max(0, p.limit - remaining)
    if algorithm is _FIXED:
        if state is None or state[0] + p.window <= now:
            return [now, float(used)]
        return [state[0], max(state[1], float(used))]
    log = deque(t for t in (state or ()) if t > now - p.window)
    if len(log) < used:
        log = deque(sorted([now] * (used - len(log)) + list(log)))
    return log


def fresh_at(state: State, p: Params) -> float:
    """When ``state`` will say nothing a fresh state would not (``idle`` from then on)."""
    algorithm = p.algorithm
    if algorithm in (_TOKEN, _LEAKY):
        return state[0]
    if algorithm is _FIXED:
        return state[0] + p.window
    return state[-1] + p.window if state else -math.inf


def idle(state: State, now: float, p: Params) -> bool:
    """Whether ``state`` says nothing a fresh state would not (so the key can be forgotten)."""
    algorithm = p.algorithm
    if algorithm in (_TOKEN, _LEAKY):
        return state[0] <= now
    if algorithm is _FIXED:
        return state[0] + p.window <= now
    return not state or state[-1] <= now - p.window


# -- giving reservations back ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation a waiter holds until its slot: what giving it back needs.

    Attributes:
        start: when the request may run.
        until: the last moment another request may run in its place (``start``; the end of its
            window for a fixed window).
        cost: the units reserved.
        mark: the state's newest entry right after this reservation (the tat, the window's
            start, the slot), by which ``give_back`` recognises it as the most recent.
        before: the bucket algorithms' tat before this reservation.
    """

    start: float
    until: float
    cost: int
    mark: float
    before: float


def reserve_held(
    state: State | None, now: float, cost: int, max_wait: float, p: Params
) -> tuple[State | None, float, Held | None]:
    """:func:`reserve`, plus the :class:`Held` of an admission that must wait (else ``None``)."""
    before = state[0] if state else now  # read first: a sliding window's log changes in place
    new_state, wait = reserve(state, now, cost, max_wait, p)
    if new_state is None or wait <= 0.0:
        return new_state, wait, None
    start = now + wait
    algorithm = p.algorithm
    if algorithm is _FIXED:
        return new_state, wait, Held(start, new_state[0] + p.window, cost, new_state[0], math.nan)
    return new_state, wait, Held(start, start, cost, new_state[-1], before)


def give_back(state: State, held: Held, p: Params) -> bool:
    """Undo ``held`` in ``state`` (in place) if no later reservation depends on it.

    True when undone; False (state unchanged) when it is not the most recent reservation.
    """
    algorithm = p.algorithm
    mark = held.mark
    if algorithm is _FIXED:
        # A window's count is all that matters, so any reservation of the state's window comes
        # out. Window starts are a window apart: half a window tells one from another whatever
        # the rounding of ``start + window``.
        if not abs(state[0] - mark) < p.window / 2:
            return False
        count = state[1] - held.cost
        if count > 0:
            state[1] = count
        else:
            # Nothing is left in a window that only waiters had reserved: it never opened, and
            # the state is its predecessor's again, taken as full (it was when this one opened).
            state[0], state[1] = state[0] - p.window, float(p.limit)
        return True
    if algorithm is _SLIDING:
        cost = held.cost
        if len(state) < cost or any(state[-i] != mark for i in range(1, cost + 1)):
            return False
        for _ in range(cost):
            state.pop()
        return True
    if state[0] == mark:
        state[0] = held.before
        return True
    return False


def cancel(state: State, holes: list[Held], held: Held, now: float, p: Params) -> None:
    """A waiter gave ``held`` up at ``now``: give it back to ``state``, or make it a hole.

    ``holes`` (the key's, in place) keeps the slots given up that later reservations prevent from
    being undone; when the most recent reservation is undone, the holes that are thereby the most
    recent are undone too. Holes past their ``until`` are dropped.
    """
    if give_back(state, held, p):
        while holes:
            latest = max(holes, key=_start)
            if not give_back(state, latest, p):
                break
            holes.remove(latest)
    else:
        holes.append(held)
    holes[:] = [hole for hole in holes if hole.until + EPSILON >= now]


def take_hole(holes: list[Held], now: float, cost: int, max_wait: float) -> Held | None:
    """The earliest hole a request of ``cost`` arriving at ``now`` can wait for, taken out of
    ``holes`` (in place), or ``None``. Holes past their ``until`` are dropped.

    The request takes the whole hole, and waits until its ``start`` (at once when that has
    passed, which only a fixed window's hole allows). A hole is never split: units of it the
    request does not need go unused (two parts of one slot would run at one instant, which a
    leaky bucket forbids), and the request can give it back whole.
    """
    holes[:] = [hole for hole in holes if hole.until + EPSILON >= now]
    fitting = [
        hole for hole in holes if hole.cost >= cost and hole.start - now <= max_wait + EPSILON
    ]
    if not fitting:
        return None
    hole = min(fitting, key=_start)
    holes.remove(hole)
    return hole


def _start(hole: Held) -> float:
    return hole.start
