"""Early warnings from a resource's own history: time to exhaustion and a learned latency baseline.

Theory of operation
-------------------
**Time to exhaustion.** :class:`UsageTrend` keeps the last ``history`` usage samples
``(t_i, u_i)`` (``t`` in the manager clock's seconds, ``u`` in percent) and fits a line robustly
with the Theil-Sen estimator:

* slope ``m = median{ (u_j - u_i) / (t_j - t_i) : i < j, t_j > t_i }``;
* intercept ``b = median{ u_i - m * t_i }``;
* level now ``L = m * t_last + b`` (the fitted usage at the latest sample, not the raw sample);
* time to exhaustion ``T = (100 - L) / m`` seconds (``0`` when ``L >= 100``).

Theil-Sen ignores up to ~29% of wild samples, so one spike does not predict an outage, and a
linear ramp is recovered exactly. No prediction is made (``None``) with fewer than
``min_samples`` samples, when the trend is flat or falling (``m <= 0``), or when the rise the
trend explains over the window is not clearly above what noise alone would give:

``m * (t_last - t_first) < noise_factor * s * sqrt(12 / n)``

where ``s = sqrt(sum (u_i - (m t_i + b))^2 / (n - 2))`` is the spread of the samples around the
line and ``s * sqrt(12 / n)`` the standard error of the rise of a line fitted to ``n`` evenly
spaced samples. A spike widens ``s``, so it can only delay a prediction, never cause one. With
the defaults (``min_samples = 8``, ``noise_factor = 4``) a flat resource with +-8 points of
uniform noise shows a trend in about one window in 5,000, and then one too slow to matter
(measured over 40,000 windows: never under 1,000 s); this rule is what keeps noise from
predicting exhaustion.

**Latency baseline.** :class:`LatencyBaseline` keeps the last ``window`` latencies of successful
checks and compares each new one with their median ``M`` and scaled median absolute deviation
``S = 1.4826 * median |x_i - M|`` (the robust standard deviation). A latency ``x`` is
*anomalous* when, with at least ``min_samples`` samples behind it,

``x > M + max(factor * S, (ratio - 1) * M, min_excess)``

(defaults: ``factor = 4``, ``ratio = 2``, ``min_excess = 10 ms``): far outside the usual spread,
at least twice the usual latency, and not a difference of a few milliseconds. Every latency
joins the window afterwards, so a lasting change becomes the new baseline after half a window of
checks (the "dynamic threshold"), while a short spike does not move the median.

Both are pure arithmetic on the samples given: with a fake clock they are fully deterministic.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import median

from .._config import integer, number

__all__ = ["LatencyBaseline", "UsageTrend", "theil_sen"]

#: Scales a median absolute deviation to a standard deviation for normally distributed values.
MAD_SCALE = 1.4826


def theil_sen(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The Theil-Sen line ``(slope, intercept)`` through ``points``; ``None`` below two times."""
    slopes = [
        (uj - ui) / (tj - ti)
        for i, (ti, ui) in enumerate(points)
        for tj, uj in points[i + 1 :]
        if tj != ti
    ]
    if not slopes:
        return None
    slope = median(slopes)
    return slope, median(u - slope * t for t, u in points)


class UsageTrend:
    """The usage history of one resource and its predicted time to 100% (module docs).

    Args:
        history: how many recent samples the fit uses.
        min_samples: no prediction with fewer samples than this.
        noise_factor: how many standard errors above noise the explained rise must be.
    """

    __slots__ = ("_prediction", "_samples", "min_samples", "noise_factor")

    def __init__(
        self, *, history: int = 20, min_samples: int = 8, noise_factor: float = 4.0
    ) -> None:
        history = integer("history", history, minimum=2)
        self.min_samples = integer("min_samples", min_samples, minimum=3)
        if self.min_samples > history:
            raise ValueError(f"min_samples ({min_samples}) must be <= history ({history})")
        self.noise_factor = number("noise_factor", noise_factor, minimum=0.0)
        self._samples: deque[tuple[float, float]] = deque(maxlen=history)
        self._prediction: float | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, at: float, usage: float) -> float | None:
        """Record ``usage`` percent at time ``at``; returns the new time to exhaustion."""
        samples = self._samples
        if samples and at < samples[-1][0]:
            samples.clear()  # the clock went backwards (a new fake clock): start over
        samples.append((float(at), float(usage)))
        self._prediction = self._predict()
        return self._prediction

    def clear(self) -> None:
        self._samples.clear()
        self._prediction = None

    @property
    def time_to_exhaustion(self) -> float | None:
        """Seconds until usage reaches 100% at the current trend, or ``None`` (module docs)."""
        return self._prediction

    def _predict(self) -> float | None:
        points = list(self._samples)
        if len(points) < self.min_samples:
            return None
        line = theil_sen(points)
        if line is None:
            return None
        slope, intercept = line
        if not slope > 0:
            return None
        first, last = points[0][0], points[-1][0]
        n = len(points)
        spread = math.sqrt(sum((u - slope * t - intercept) ** 2 for t, u in points) / (n - 2))
        if slope * (last - first) < self.noise_factor * spread * math.sqrt(12.0 / n):
            return None
        level = slope * last + intercept
        if level >= 100.0:
            return 0.0
        eta = (100.0 - level) / slope
        return eta if math.isfinite(eta) else None


class LatencyBaseline:
    """A resource's usual check latency, learned from its recent checks (module docs).

    Args:
        window: how many recent latencies form the baseline.
        min_samples: no latency is anomalous before this many samples.
        factor: how many robust standard deviations above the median is anomalous.
        ratio: how many times the median is anomalous.
        min_excess: seconds above the median below which nothing is anomalous.
    """

    __slots__ = ("_samples", "factor", "min_excess", "min_samples", "ratio")

    def __init__(
        self,
        *,
        window: int = 30,
        min_samples: int = 5,
        factor: float = 4.0,
        ratio: float = 2.0,
        min_excess: float = 0.010,
    ) -> None:
        window = integer("window", window, minimum=1)
        self.min_samples = integer("min_samples", min_samples, minimum=1)
        if self.min_samples > window:
            raise ValueError(f"min_samples ({min_samples}) must be <= window ({window})")
        self.factor = number("factor", factor, minimum=0.0)
        self.ratio = number("ratio", ratio, minimum=1.0)
        self.min_excess = number("min_excess", min_excess, minimum=0.0)
        self._samples: deque[float] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def median(self) -> float | None:
        """The baseline latency (seconds), or ``None`` before any sample."""
        return median(self._samples) if self._samples else None

    def threshold(self) -> float | None:
        """The latency above which a check is anomalous now, or ``None`` while learning."""
        samples = self._samples
        if len(samples) < self.min_samples:
            return None
        center = median(samples)
        spread = MAD_SCALE * median(abs(x - center) for x in samples)
        return center + max(self.factor * spread, (self.ratio - 1.0) * center, self.min_excess)

    def observe(self, latency: float) -> bool:
        """Judge ``latency`` (seconds) against the baseline, then add it; True if anomalous."""
        limit = self.threshold()
        self._samples.append(float(latency))
        return limit is not None and latency > limit

    def clear(self) -> None:
        self._samples.clear()
