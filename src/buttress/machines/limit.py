"""Concurrency-limit algorithms as state machines: no clock, no locks, no I/O.

The caller (``AdaptiveConcurrency``) measures every call it admits and reports it with
:meth:`LimitAlgorithm.sample` (``now``, round-trip time, how many calls were in flight when it
started, whether it was dropped); the machine answers with a :class:`LimitChange` when the limit
moves. The caller holds any lock.

Windows
-------
Samples are summarised per *window*: a window closes at the first sample at least ``window``
seconds (or two baseline round trips, if longer) after it opened, once it holds ``min_samples``
samples; a drop closes it at once. (While latency is far above the baseline a window therefore
lasts about one round trip: its samples must start in it.) One decision is made per window.
After every change a new window opens and samples of calls that *started* before it are left
out, so a window measures only calls admitted under the current limit (a cut is judged by what
it did, not by calls already queued).

AIMD
----
One more per clean window at the limit; on a window with a drop the limit is multiplied by
``backoff`` (default 0.9). A drop is a call the caller reports dropped (a timeout, a rejection by
the dependency), a round trip over ``timeout`` if one is set, and, unless ``tolerance=None``,
latency: a window whose mean round trip is over ``tolerance`` (default 1.2) times the baseline
(defined below) is cut once per tolerance exceeded (``backoff ** n``, at most halved per window).
A dependency over its capacity queues before it fails, so waiting for timeouts alone lets the
limit settle where the queue reaches the timeout (twice the capacity with a timeout at twice the
uncontended latency); the latency rule settles it at the knee. Two details make it work:

* A window closes as soon as it holds ``min_samples`` late calls (over ``tolerance`` times the
  baseline) *and* its mean is late, so a collapse of the dependency is met within about one round
  trip per cut, not one full window; a few slow calls (jitter) close nothing.
* After a latency cut, AIMD cuts again while each cut brings latency down about in proportion
  (at least half the cut's share), even under the tolerance: calls are still queueing, the knee
  is lower still. This is what corrects a baseline first measured while overloaded: latency
  falls under it and the baseline follows. When instead the limit has come down by a sixth or
  more over a run of cuts and latency has hardly moved (by less than a quarter of that share),
  the dependency itself got slower: the baseline is reset and the limit given back
  (``"rebaseline"``), as for Gradient2.

Gradient2
---------
As in Netflix's concurrency-limits, a short window's latency is compared with a long-term one.
The short value is the window's mean round trip. The long-term value here is the *baseline*: the
lowest window mean over the last ``baseline_windows`` windows, i.e. the latency with nothing
queued. While the short stays within ``tolerance`` times the baseline the limit grows by
``max(1, sqrt(limit) / 2)`` per window; above it, the limit is multiplied by
``0.9 * baseline / short`` (no smaller than ``min_gradient``): if latency grows in proportion to the
calls queued in the dependency, ``limit * baseline / short`` is its capacity, so the cut lands just
under the knee and the next window measures latency with nothing queued. Landing under it also
corrects a baseline first measured while overloaded: the latency there is lower than that
baseline, which follows it down, cycle after cycle, to the true one.

Three faults of the published algorithms are avoided on purpose (by both algorithms; the
windowing, baseline, growth rule and re-baselining live in :class:`LimitAlgorithm`):

* **Growth without bound under modest overload.** An exponentially averaged long window follows a
  latency that stays high, the gradient returns to 1 and the limit grows every window. Here the
  baseline is a windowed *minimum*, and every cut lands at the knee, so each saw-tooth cycle
  re-measures the uncontended latency: the limit oscillates between about 0.9 and
  ``tolerance`` times the capacity, however long the overload lasts.
* **Growth while the application is the limit.** A window grows the limit only if its calls
  started, on average, with at least 90% of it in flight (``GROW_AT``): nothing is learnt about a
  limit that was never reached, so an application using half of it leaves it where it is. (The
  published rule, "not while under half", still lets a modest overload push the limit up.)
* **Shedding load to re-measure the baseline.** No probe lowers the limit to find the baseline.
  When a cut did not bring latency down although it brought the calls in flight down (latency
  still above the tolerance and not 5% lower than at the cut, in-flight 10% lower; at least one
  window is left for the dependency to drain what was queued before the cut, at most three) the
  dependency itself got slower: the baseline is reset to the new
  latency and the limit restored to where it stood before the cuts (reason ``"rebaseline"``).
  Latency that instead rises past the tolerance since the cut is cut again: the cut's window saw
  only the start of the overload (calls admitted just before the capacity fell).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from .._config import integer, number, seconds

__all__ = ["AIMD", "Gradient2", "LimitAlgorithm", "LimitChange"]

#: A window earns growth only if its calls started, on average, with at least this share of the
#: limit in flight.
GROW_AT = 0.9


@dataclass(frozen=True, slots=True)
class LimitChange:
    """The limit moved from ``old`` to ``new``; ``reason`` says why.

    Reasons: ``"increase"``, ``"drop"`` (a dropped or timed-out call), ``"latency"`` (queueing
    seen in the round trip), ``"rebaseline"`` (the dependency's own latency changed), ``"set"``.
    """

    old: int
    new: int
    reason: str


class LimitAlgorithm:
    """Windowing, baseline, bounds and the latency rules shared by the algorithms.

    A subclass says how far a latency cut goes (``_latency_cut``) and how much a clean window
    adds (``_step``).

    Args:
        initial_limit: the limit before anything is measured.
        min_limit: the limit never goes below this (>= 1).
        max_limit: nor above this.
        window: shortest window, seconds.
        min_samples: samples a window needs before it is judged.
        backoff: factor applied to the limit on a window with a drop (0.5 <= backoff < 1).
        tolerance: how far above the baseline a window's mean round trip may go before the
            limit is cut (> 1; ``None``: latency is not watched).
        baseline_windows: how many windows the baseline (lowest window mean) looks back over.
    """

    name = "limit"
    #: After a latency cut, whether to cut again while each cut brings latency down about in
    #: proportion (the calls are still queueing: the knee is lower still).
    _chases = False
    #: Whether a window closes as soon as it holds ``min_samples`` late calls.
    _closes_late = False

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        window: float = 0.1,
        min_samples: int = 10,
        backoff: float = 0.9,
        tolerance: float | None = 1.2,
        baseline_windows: int = 600,
    ) -> None:
        self.min_limit = integer("min_limit", min_limit, minimum=1)
        self.max_limit = integer("max_limit", max_limit, minimum=1)
        if self.max_limit < self.min_limit:
            raise ValueError(f"max_limit ({max_limit}) must be >= min_limit ({min_limit})")
        initial = integer("initial_limit", initial_limit, minimum=1)
        if not self.min_limit <= initial <= self.max_limit:
            raise ValueError(
                f"initial_limit must be within min_limit..max_limit "
                f"({min_limit}..{max_limit}), got {initial_limit!r}"
            )
        self.window = seconds("window", window, allow_zero=False)
        self.min_samples = integer("min_samples", min_samples, minimum=1)
        self.backoff = number("backoff", backoff, minimum=0.5, maximum=1.0)
        if self.backoff == 1.0:
            raise ValueError("backoff must be < 1, got 1.0")
        self.tolerance = (
            None
            if tolerance is None
            else number("tolerance", tolerance, minimum=1.0, exclusive_minimum=True)
        )
        self.baseline_windows = integer("baseline_windows", baseline_windows, minimum=1)
        self._limit = float(initial)
        self._opened: float | None = None
        self._span = self.window
        self._clear()
        self._drop_after = math.inf  # a round trip over this is a drop (AIMD's timeout)
        self._late_at = math.inf  # a round trip over this is late (tolerance x baseline)
        self._close_late = self.min_samples if self._closes_late else math.inf
        # Monotonic deque of (window index, mean): its head is the lowest mean in the horizon.
        self._means: deque[tuple[int, float]] = deque()
        self._index = 0
        self._cut_at: float | None = None  # the window mean at the last latency cut, while cutting
        self._cut_fall = 1.0  # a window under ``_cut_at`` times this says the cut helped
        self._before_cuts = self._limit
        self._cut_load = 0.0
        self._holds = 0
        self._run = (0.0, 0.0)  # (mean, load) of the window that began a run of cuts
        self.reason = "initial"

    @property
    def limit(self) -> int:
        """The current limit (a whole number of calls within ``min_limit..max_limit``)."""
        return int(self._limit)

    @property
    def baseline(self) -> float | None:
        """The uncontended round trip now assumed (seconds), or ``None`` before any window."""
        return self._means[0][1] if self._means else None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(limit={self.limit}, min_limit={self.min_limit}, "
            f"max_limit={self.max_limit}, reason={self.reason!r})"
        )

    def set(self, now: float, limit: float, reason: str = "set") -> LimitChange | None:
        """Put the limit at ``limit`` (clamped); a new window opens at ``now``."""
        return self._move(now, limit, reason)

    def sample(
        self, now: float, rtt: float, inflight: int, dropped: bool = False
    ) -> LimitChange | None:
        """One finished call: ``rtt`` seconds long, started with ``inflight`` calls in flight
        (itself included), ``dropped`` if it timed out or was refused by the dependency."""
        opened = self._opened
        if opened is None:
            opened = self._opened = now - rtt
        if now - rtt < opened:
            return None  # admitted under an earlier limit
        self._count += 1
        self._total += rtt
        self._load += inflight
        if dropped or rtt > self._drop_after:
            self._drops += 1
        elif rtt > self._late_at:
            self._late += 1
        # An early close needs late calls *and* a late mean: a few slow calls are jitter.
        if (
            not self._drops
            and (self._count < self.min_samples or now - opened < self._span)
            and (self._late < self._close_late or self._total <= self._late_at * self._count)
        ):
            return None
        mean = self._total / self._count
        target, reason = self._decide(mean, self._load / self._count, self._drops)
        if reason:
            return self._move(now, target, reason)
        self._open(now)
        return None

    def _latency_cut(self, mean: float, baseline: float) -> float:
        """The limit after a window whose mean is over the tolerance."""
        raise NotImplementedError

    def _step(self) -> float:
        """What a clean window at the limit adds to it."""
        raise NotImplementedError

    def _remember(self, mean: float) -> float:
        self._index += 1
        means = self._means
        while means and means[-1][1] >= mean:
            means.pop()
        means.append((self._index, mean))
        while means[0][0] <= self._index - self.baseline_windows:
            means.popleft()
        return means[0][1]

    def _decide(self, mean: float, load: float, drops: int) -> tuple[float, str]:
        baseline = self._remember(mean)
        tolerance = self.tolerance
        if self._closes_late and tolerance is not None:
            self._late_at = baseline * tolerance
        if drops:
            self._cut_at = None
            # Always at least one less, or a small limit would never come down.
            return min(self._limit * self.backoff, self._limit - 1), "drop"
        if tolerance is not None:
            if mean > baseline * tolerance:
                return self._over(mean, load, baseline)
            if self._chases and self._cut_at is not None and mean < self._cut_at * self._cut_fall:
                # The cut brought latency down with it: calls still queue in the dependency, so
                # the knee is lower still (a baseline measured while overloaded sits above it,
                # and follows latency down as the cuts go on).
                return self._cut(mean, load, baseline), "latency"
        self._cut_at = None
        self._holds = 0
        if self._app_limited(load):
            return self._limit, ""
        return self._limit + self._step(), "increase"

    def _over(self, mean: float, load: float, baseline: float) -> tuple[float, str]:
        cut_at = self._cut_at
        if cut_at is not None and cut_at * 0.95 <= mean <= cut_at * cast(float, self.tolerance):
            if self._holds < 2 or (self._holds < 3 and load > 0.9 * self._cut_load):
                # Calls admitted before the cut may still be queued in the dependency (and
                # still in flight here): give the cut two windows to take effect. Fewer calls in
                # flight here is not enough to judge by: the dependency's own queue, built under
                # the old limit, drains at its capacity, so its latency lags the cut.
                self._holds += 1
                return self._limit, ""
            # Fewer calls in flight, yet latency is not down: not our queue but the
            # dependency's own pace. Take it as the new baseline, give back what was cut.
            return self._rebaseline(mean), "rebaseline"
        # Latency came down with the cut (the knee is lower still), or it rose past the
        # tolerance since the cut: the cut's window saw only the start of the overload (calls
        # admitted before the capacity fell), so it was judged on too low a latency. Cut again,
        # from the latency now seen; a slower dependency is still given its limit back once
        # latency stops moving (the limit before the first cut is kept).
        return self._cut(mean, load, baseline), "latency"

    def _rebaseline(self, mean: float) -> float:
        self._holds = 0
        self._means.clear()
        self._means.append((self._index, mean))
        if self._closes_late and self.tolerance is not None:
            self._late_at = mean * self.tolerance
        self._cut_at = None
        return self._before_cuts

    def _cut(self, mean: float, load: float, baseline: float) -> float:
        if self._cut_at is None:
            self._before_cuts = self._limit
        self._cut_at = mean
        self._cut_load = load
        self._holds = 0
        target = self._latency_cut(mean, baseline)
        # Over the knee latency falls in proportion to the limit; allow half of that for noise.
        self._cut_fall = 1.0 - (1.0 - target / self._limit) / 2
        return target

    def _app_limited(self, load: float) -> bool:
        # Growth is earned only by a window that reached the limit: a limit the application
        # never hit says nothing about a higher one (and growing it anyway is how a limit ends
        # up far above the capacity under a modest overload).
        return load < GROW_AT * self.limit

    def _open(self, now: float) -> None:
        self._opened = now
        # Two uncontended round trips: while latency is far above the baseline, a window closes
        # about one round trip after it opened (its samples must start in it), with
        # ``min_samples`` calls admitted under the current limit; plenty to see the overload.
        self._span = max(self.window, 2 * (self.baseline or 0.0))
        self._clear()

    def _clear(self) -> None:
        """Empty the window's sums."""
        self._count = 0
        self._total = 0.0
        self._load = 0
        self._drops = 0
        self._late = 0

    def _move(self, now: float, target: float, reason: str) -> LimitChange | None:
        old = self.limit
        self._limit = min(float(self.max_limit), max(float(self.min_limit), target))
        self._open(now)
        if self.limit == old:
            return None
        self.reason = reason
        return LimitChange(old, self.limit, reason)


class AIMD(LimitAlgorithm):
    """Additive increase (one per clean window), multiplicative decrease on a drop or on
    latency over ``tolerance`` times the baseline.

    Args:
        timeout: a round trip longer than this counts as a drop (``None``: only reported drops
            and latency).

    The other arguments are :class:`LimitAlgorithm`'s (``backoff`` 0.9, ``tolerance`` 1.2;
    ``tolerance=None`` gives the classic loss-only AIMD).
    """

    name = "aimd"
    _chases = True
    _closes_late = True

    def __init__(self, *, timeout: float | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.timeout = None if timeout is None else seconds("timeout", timeout, allow_zero=False)
        if self.timeout is not None:
            self._drop_after = self.timeout

    def _over(self, mean: float, load: float, baseline: float) -> tuple[float, str]:
        # A cut of a tenth moves latency by about as much as one window's noise, so a single
        # window cannot tell queueing from a slower dependency: judge the run of cuts instead.
        if self._cut_at is None or mean > self._run[0] * 1.05:
            # A new run of cuts, or latency still climbing (the queue was still building when
            # the run began): judge from here.
            self._run = (mean, load)
        else:
            first_mean, first_load = self._run
            shed = 1.0 - load / first_load
            if shed >= 0.15 and mean > first_mean * (1.0 - shed / 4):
                # The limit came down by a sixth or more and latency hardly moved: not our
                # queue but the dependency's own pace. Take it as the new baseline and give back
                # what was cut.
                return self._rebaseline(mean), "rebaseline"
        return self._cut(mean, load, baseline), "latency"

    def _latency_cut(self, mean: float, baseline: float) -> float:
        # One backoff per tolerance exceeded (a window 9x over the baseline is a dozen drops,
        # not one), at most halved per window, at least one less.
        tolerance = cast(float, self.tolerance)
        steps = max(1, int(math.log(mean / baseline) / math.log(tolerance)))
        return min(self._limit * max(0.5, self.backoff**steps), self._limit - 1)

    def _step(self) -> float:
        return 1.0


class Gradient2(LimitAlgorithm):
    """Latency-gradient limit: grows while the round trip stays near its uncontended baseline,
    cuts to ``limit * baseline / latency`` when calls queue in the dependency.

    Args:
        min_gradient: the deepest single cut (default 0.5: at most halved per window).

    The other arguments are :class:`LimitAlgorithm`'s (``tolerance`` is required here).
    """

    name = "gradient2"

    def __init__(self, *, min_gradient: float = 0.5, **settings: Any) -> None:
        super().__init__(**settings)
        if self.tolerance is None:
            raise ValueError("tolerance must be a number > 1.0 for gradient2, got None")
        self.min_gradient = number(
            "min_gradient", min_gradient, minimum=0.0, maximum=1.0, exclusive_minimum=True
        )

    def _latency_cut(self, mean: float, baseline: float) -> float:
        # A little under the knee: if calls still queue there (a baseline measured while
        # overloaded), latency falls below the baseline, which follows it down.
        return self._limit * max(self.min_gradient, 0.9 * baseline / mean)

    def _step(self) -> float:
        return max(1.0, math.sqrt(self._limit) / 2)
