"""Backoff schedules: the delay before each retry, as pure arithmetic.

A schedule is a small immutable value; ``delay(n)`` is the wait before retry ``n`` (1-based) with no
jitter. Jitter is applied separately by :func:`jittered`, with the random number passed in, so the
arithmetic stays deterministic and testable. ``max_delay`` caps the schedule; it never caps a wait a
server asked for (see :func:`combine_with_retry_after`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from .._config import number, seconds

__all__ = [
    "Backoff",
    "ExponentialBackoff",
    "FibonacciBackoff",
    "FixedDelay",
    "Jitter",
    "LinearBackoff",
    "combine_with_retry_after",
    "jittered",
]


class Jitter(Enum):
    """How randomness spreads retries: NONE, FULL (uniform in [0, d]) or EQUAL ([d/2, d])."""

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Base of the schedules: ``base_delay`` seconds scaled per retry, capped at ``max_delay``."""

    base_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_delay", seconds("base_delay", self.base_delay))
        object.__setattr__(self, "max_delay", seconds("max_delay", self.max_delay))
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay must be >= base_delay, got max_delay={self.max_delay!r} "
                f"and base_delay={self.base_delay!r}"
            )

    def factor(self, retry: int) -> float:
        """The multiple of ``base_delay`` before retry ``retry`` (1-based)."""
        raise NotImplementedError

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry ``retry`` (1-based), without jitter."""
        if retry < 1:
            raise ValueError(f"retry must be >= 1, got {retry!r}")
        return min(self.base_delay * self.factor(retry), self.max_delay)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExponentialBackoff(Backoff):
    """1, 2, 4, 8 ... times ``base_delay`` (``multiplier`` sets the ratio)."""

    multiplier: float = 2.0

    def __post_init__(self) -> None:
        Backoff.__post_init__(self)
        number("multiplier", self.multiplier, minimum=1.0)

    def factor(self, retry: int) -> float:
        # Past ~1000 doublings the float overflows; the cap applies long before.
        exponent = min(retry - 1, 1000)
        try:
            return float(self.multiplier**exponent)
        except OverflowError:
            return math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearBackoff(Backoff):
    """1, 2, 3, 4 ... times ``base_delay``."""

    def factor(self, retry: int) -> float:
        return float(retry)


@dataclass(frozen=True, slots=True, kw_only=True)
class FixedDelay(Backoff):
    """``base_delay`` before every retry."""

    def factor(self, retry: int) -> float:
        return 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FibonacciBackoff(Backoff):
    """1, 1, 2, 3, 5, 8 ... times ``base_delay``."""

    def factor(self, retry: int) -> float:
        a, b = 1, 1
        for _ in range(min(retry, 1500) - 1):
            a, b = b, a + b
        return float(a)


def jittered(delay: float, jitter: Jitter, random_unit: float) -> float:
    """``delay`` spread by ``jitter`` using ``random_unit`` drawn uniformly from [0, 1)."""
    if jitter is Jitter.FULL:
        return delay * random_unit
    if jitter is Jitter.EQUAL:
        return delay / 2 + delay / 2 * random_unit
    return delay


def combine_with_retry_after(
    backoff_delay: float, retry_after: float | None, jitter: Jitter, random_unit: float
) -> float:
    """The wait before the next attempt, honouring a server-given ``retry_after``.

    Without ``retry_after``: the jittered backoff delay. With it: never less than ``retry_after``.
    Jitter then only adds, up to 10% of ``retry_after`` on top, so clients told to come back at the
    same moment do not all return at once, and none returns early.
    """
    wait = jittered(backoff_delay, jitter, random_unit)
    if retry_after is None:
        return wait
    spread = 0.0 if jitter is Jitter.NONE else 0.1 * retry_after * random_unit
    return max(wait, retry_after + spread)
