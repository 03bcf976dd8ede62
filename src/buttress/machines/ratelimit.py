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
* SLIDING_WINDOW (exact): ``[t1, t2, ...]``, the last ``limit`` admission times (a deque in
  memory). Admits at ``t`` only if fewer than ``limit`` admissions fall in ``(t - window, t]``:
  never more than ``limit`` in ANY interval of length ``window``. State is bounded by ``limit``
  entries: exactness costs memory in proportion to the limit (prefer the token bucket for limits
  in the millions).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum

__all__ = ["Params", "RateLimitAlgorithm", "fresh_at", "idle", "reserve", "spent"]

EPSILON = 1e-9


class RateLimitAlgorithm(Enum):
    """The rate-limiting algorithms (see :mod:`buttress.machines.ratelimit`)."""

    TOKEN_BUCKET = "token_bucket"
    LEAKY_BUCKET = "leaky_bucket"
    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"


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


def reserve(
    state: list[float] | deque[float] | None,
    now: float,
    cost: int,
    max_wait: float,
    p: Params,
) -> tuple[list[float] | deque[float] | None, float]:
    """Admit ``cost`` units at ``now`` waiting at most ``max_wait``; see the module docstring."""
    algorithm = p.algorithm
    if algorithm is RateLimitAlgorithm.TOKEN_BUCKET:
        tat = state[0] if state and state[0] > now else now
        new_tat = tat + cost * p.interval
        wait = new_tat - p.tau - now
        if wait <= max_wait + EPSILON:
            return [new_tat], max(0.0, wait)
        return None, wait
    if algorithm is RateLimitAlgorithm.LEAKY_BUCKET:
        slot = state[0] if state and state[0] > now else now
        wait = slot - now
        queue_room = p.burst * p.interval
        if wait <= min(max_wait, queue_room) + EPSILON:
            return [slot + cost * p.interval], max(0.0, wait)
        return None, wait
    if algorithm is RateLimitAlgorithm.FIXED_WINDOW:
        return _fixed(state, now, cost, max_wait, p)
    return _sliding(state, now, cost, max_wait, p)


def _fixed(
    state: list[float] | deque[float] | None, now: float, cost: int, max_wait: float, p: Params
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
    state: list[float] | deque[float] | None,
    now: float,
    cost: int,
    max_wait: float,
    p: Params,
) -> tuple[deque[float] | None, float]:
    # The log is a deque updated in place when the caller keeps one (the in-memory limiter);
    # dropping entries that have left the window changes no decision, so doing it before a
    # refusal is harmless. Cost per decision: O(1) amortised.
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
        while len(log) > p.limit:
            log.popleft()
        return log, max(0.0, wait)
    return None, wait


def spent(now: float, p: Params) -> list[float] | deque[float]:
    """A state that has just used everything it may: the most cautious starting point."""
    algorithm = p.algorithm
    if algorithm in (RateLimitAlgorithm.TOKEN_BUCKET, RateLimitAlgorithm.LEAKY_BUCKET):
        return [now + p.tau]
    if algorithm is RateLimitAlgorithm.FIXED_WINDOW:
        return [now, float(p.limit)]
    return deque([now] * p.limit)


def fresh_at(state: list[float] | deque[float], p: Params) -> float:
    """When ``state`` will say nothing a fresh state would not (``idle`` from then on)."""
    algorithm = p.algorithm
    if algorithm in (RateLimitAlgorithm.TOKEN_BUCKET, RateLimitAlgorithm.LEAKY_BUCKET):
        return state[0]
    if algorithm is RateLimitAlgorithm.FIXED_WINDOW:
        return state[0] + p.window
    return state[-1] + p.window if state else -math.inf


def idle(state: list[float] | deque[float], now: float, p: Params) -> bool:
    """Whether ``state`` says nothing a fresh state would not (so the key can be forgotten)."""
    algorithm = p.algorithm
    if algorithm in (RateLimitAlgorithm.TOKEN_BUCKET, RateLimitAlgorithm.LEAKY_BUCKET):
        return state[0] <= now
    if algorithm is RateLimitAlgorithm.FIXED_WINDOW:
        return state[0] + p.window <= now
    return not state or state[-1] <= now - p.window
