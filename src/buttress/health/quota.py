"""API quota as a resource: asked of a function, or read from the responses the application gets.

Theory of operation
-------------------
Two ways to know how much of an API quota is spent:

* **Asking.** :func:`quota_check` wraps a function (``def`` or ``async def``, no arguments) that
  returns the figure: a usage percentage (``85.5``), a ``(used, limit)`` pair, or a small object
  or mapping with ``used`` and ``limit`` or ``remaining`` and ``limit`` (a
  :class:`buttress.http.RateLimitInfo` qualifies). A ``def`` runs in a worker thread, since it
  usually calls the provider's API with a blocking client. ``None`` (no figure) has no usage to
  judge and says so in its message; a figure that makes no sense (negative, NaN, a string,
  ``remaining`` over ``limit``) fails the check with a message naming it.
* **Listening.** A :class:`QuotaTracker` is handed every response the application receives from
  the API (``tracker.observe(response)``; httpx, aiohttp or anything with a status and headers)
  and keeps the latest quota figures per dimension, read from the dialects in use:

  ==========================================  =====================================================
  headers                                     dimension
  ==========================================  =====================================================
  ``X-RateLimit-Limit/-Remaining/-Reset``     ``default`` (through :func:`buttress.http
  and the IETF ``RateLimit``/``-Policy``      .rate_limit_info`` and its parsing)
  ``x-ratelimit-limit/remaining-requests``,   ``requests``, ``tokens`` (OpenAI; resets such as
  ``-tokens``, ``x-ratelimit-reset-*``        ``6m0s``, ``1.5s``, ``20ms``)
  ``anthropic-ratelimit-<d>-limit/            ``requests``, ``tokens``, ``input-tokens``,
  -remaining/-reset``                         ``output-tokens`` (Anthropic; reset is RFC 3339)
  ==========================================  =====================================================

  Usage is the most spent dimension: ``max((limit - remaining) / limit * 100)``, so a quota
  that is nearly spent shows as DEGRADED or CRITICAL by the manager's thresholds *before* any
  request is refused. A dimension whose reset time has passed counts as replenished. A ``429``
  (or a ``503`` with ``Retry-After``) makes the tracker report UNAVAILABLE until the wait the
  server gave (``Retry-After``, else the reset) has passed; without any wait, until a response
  that is not refused is observed. (A resource manager then reads it healthy again after its
  ``success_threshold`` good checks, as for any resource.)

The tracker is itself a check (an async callable returning a :class:`Reading`), so it registers
like any other; :func:`quota_check` returns a tracker unchanged. Observing is a few dictionary
operations under a lock, cheap enough for every response; reading never touches the network.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._config import callable_name
from ..clock import Clock, get_clock
from ..policies.httpheaders import MAX_RETRY_AFTER, rate_limit_info
from .types import Reading, ResourceStatus

__all__ = ["QuotaTracker", "quota_check", "quota_reading"]

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|h|m|s))+")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ANTHROPIC_DIMENSIONS = ("requests", "tokens", "input-tokens", "output-tokens")
_OPENAI_DIMENSIONS = ("requests", "tokens")


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI-style reset (``"6m0s"``, ``"1.5s"``, ``"20ms"``), or ``None``."""
    text = text.strip()
    if not text or len(text) > 32:
        return None
    if _DURATION.fullmatch(text) is None:
        try:  # a bare number of seconds
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) and 0 <= value <= MAX_RETRY_AFTER else None
    total = sum(float(n) * _UNIT[unit] for n, unit in _DURATION_PART.findall(text))
    return total if total <= MAX_RETRY_AFTER else None


def _rfc3339(text: str, wall: float) -> float | None:
    """Seconds from ``wall`` until the RFC 3339 instant ``text`` (``0`` if past), or ``None``."""
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    wait = stamp.timestamp() - wall
    return max(0.0, wait) if wait <= MAX_RETRY_AFTER else None


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


@dataclass(frozen=True, slots=True)
class _Dimension:
    limit: int
    remaining: int
    reset_at: float | None  # clock.now() when it replenishes

    def usage(self) -> float:
        spent = max(0, self.limit - self.remaining)
        return 100.0 * spent / self.limit


class _Response:
    """A status and lower-cased headers, in the shape :func:`rate_limit_info` reads."""

    __slots__ = ("headers", "status_code")

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


class QuotaTracker:
    """Quota read from the responses an application receives (module documentation).

    Args:
        name: what the quota belongs to (for the report's target), e.g. ``"openai"``.
        clock: the clock for reset times (default: the process default at the time of use).
    """

    def __init__(self, name: str = "api", *, clock: Clock | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.target = f"quota headers of {name} responses"
        self._clock = clock
        self._lock = threading.Lock()
        self._dimensions: dict[str, _Dimension] = {}
        self._blocked_until: float | None = None  # inf: until a response that is not refused
        self._observed = 0

    def __repr__(self) -> str:
        return f"QuotaTracker({self.name!r}, observed={self._observed})"

    def _now(self) -> float:
        return (self._clock or get_clock()).now()

    def _wall(self) -> float:
        return (self._clock or get_clock()).wall()

    def observe(self, response: Any) -> None:
        """Read the quota figures of ``response`` (anything with a status and ``headers``)."""
        status = getattr(response, "status_code", None)
        if status is None:
            status = getattr(response, "status", None)
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"expected an HTTP response with an integer status, got {response!r}")
        self.observe_headers(getattr(response, "headers", None) or {}, status=status)

    def observe_headers(self, headers: Mapping[str, str], *, status: int = 200) -> None:
        """Read the quota figures of response ``headers`` that came with ``status``."""
        if not isinstance(headers, Mapping) and not hasattr(headers, "items"):
            raise TypeError(f"headers must be a mapping of names to values, got {headers!r}")
        lowered = {
            str(k).lower(): v
            for k, v in headers.items()
            if isinstance(v, str) and isinstance(k, str)
        }
        now, wall = self._now(), self._wall()
        info = rate_limit_info(_Response(status, lowered), now=wall)
        found: dict[str, _Dimension] = {}
        if info.limit and info.remaining is not None:
            reset = None if info.reset_after is None else now + info.reset_after
            found["default"] = _Dimension(info.limit, info.remaining, reset)
        for dim in _OPENAI_DIMENSIONS:
            limit = _count(lowered.get(f"x-ratelimit-limit-{dim}"))
            remaining = _count(lowered.get(f"x-ratelimit-remaining-{dim}"))
            if limit and remaining is not None:
                raw = lowered.get(f"x-ratelimit-reset-{dim}")
                wait = None if raw is None else parse_duration(raw)
                found[dim] = _Dimension(limit, remaining, None if wait is None else now + wait)
        for dim in _ANTHROPIC_DIMENSIONS:
            limit = _count(lowered.get(f"anthropic-ratelimit-{dim}-limit"))
            remaining = _count(lowered.get(f"anthropic-ratelimit-{dim}-remaining"))
            if limit and remaining is not None:
                raw = lowered.get(f"anthropic-ratelimit-{dim}-reset")
                wait = None if raw is None else _rfc3339(raw, wall)
                found[dim] = _Dimension(limit, remaining, None if wait is None else now + wait)
        with self._lock:
            self._observed += 1
            self._dimensions.update(found)
            if info.limited:
                wait = info.retry_after if info.retry_after is not None else info.reset_after
                self._blocked_until = math.inf if wait is None else now + wait
            elif self._blocked_until == math.inf:
                self._blocked_until = None

    def reading(self) -> Reading:
        """The quota as last observed (what the check returns)."""
        now = self._now()
        with self._lock:
            dims = dict(self._dimensions)
            blocked = self._blocked_until
            observed = self._observed
        detail: dict[str, object] = {"responses_observed": observed}
        usage: float | None = None
        for dim, figures in sorted(dims.items()):
            replenished = figures.reset_at is not None and now >= figures.reset_at
            dim_usage = 0.0 if replenished else figures.usage()
            usage = dim_usage if usage is None else max(usage, dim_usage)
            detail[dim] = {
                "limit": figures.limit,
                "remaining": figures.limit if replenished else figures.remaining,
                "reset_in_s": None
                if figures.reset_at is None
                else round(max(0.0, figures.reset_at - now), 3),
            }
        if blocked is not None and now < blocked:
            wait = "until a request succeeds" if blocked == math.inf else f"{blocked - now:.1f}s"
            detail["retry_after_s"] = None if blocked == math.inf else round(blocked - now, 3)
            return Reading(
                usage=usage if usage is not None else 100.0,
                status=ResourceStatus.UNAVAILABLE,
                detail=detail,
                message=f"rate limited by {self.name} (429): {wait}",
            )
        message = None if observed else "no response observed yet"
        return Reading(usage=usage, detail=detail, message=message)

    async def __call__(self) -> Reading:
        return self.reading()


def quota_reading(value: object) -> Reading:
    """A :class:`Reading` from what a quota function returned (see the module documentation)."""
    if isinstance(value, Reading):
        return value
    if value is None:
        # the function cannot tell how much is spent (no answer carried the figures yet, say):
        # no usage to judge, so no degradation; the message says why there is no figure
        return Reading(message="the quota function returned None: no figure of the quota")
    if isinstance(value, bool):
        raise TypeError("a quota function must return a percentage or figures, got a bool")
    if isinstance(value, int | float):
        if not _finite_non_negative(value):
            raise ValueError(
                f"the quota function returned {value!r}; a usage percentage must be a finite "
                "number >= 0"
            )
        return Reading(usage=float(value))
    used: object = None
    remaining: object = None
    limit: object = None
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"a quota pair must be (used, limit), got {value!r}")
        used, limit = value
    elif isinstance(value, Mapping):
        used, remaining, limit = value.get("used"), value.get("remaining"), value.get("limit")
    else:
        used = getattr(value, "used", None)
        remaining = getattr(value, "remaining", None)
        limit = getattr(value, "limit", None)
    figures = {"used": used, "remaining": remaining, "limit": limit}
    for field, figure in figures.items():
        if figure is not None and (
            isinstance(figure, bool)
            or not isinstance(figure, int | float)
            or not _finite_non_negative(figure)
        ):
            raise ValueError(f"quota {field} must be a finite number >= 0, got {figure!r}")
    if limit is None or (used is None and remaining is None):
        raise TypeError(
            "a quota function must return a percentage, (used, limit), or an object with "
            f"used/limit or remaining/limit; got {value!r}"
        )
    assert isinstance(limit, int | float)
    if limit <= 0:
        raise ValueError(f"quota limit must be > 0, got {limit!r}")
    if isinstance(remaining, int | float) and remaining > limit:
        raise ValueError(f"quota remaining {remaining!r} is over its limit {limit!r}")
    if used is None:
        assert isinstance(remaining, int | float)
        used = max(0.0, limit - remaining)
    assert isinstance(used, int | float)
    detail = {k: v for k, v in figures.items() if v is not None}
    if "remaining" not in detail:
        detail["remaining"] = max(0.0, limit - used)
    return Reading(usage=100.0 * used / limit, detail=detail)


def _finite_non_negative(value: float) -> bool:
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return False
    return math.isfinite(number) and number >= 0


class _QuotaFunction:
    """The check :func:`quota_check` makes of a function."""

    __slots__ = ("_async", "fn", "target")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self._async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self.target = f"quota function {callable_name(fn)}"

    async def __call__(self) -> Reading:
        if self._async:
            result = await self.fn()
        else:
            result = await asyncio.to_thread(self.fn)
            if inspect.isawaitable(result):
                result = await result
        return quota_reading(result)

    def __repr__(self) -> str:
        return f"quota_check({self.target!r})"


def quota_check(fn: Callable[[], Any] | QuotaTracker) -> Callable[[], Any]:
    """A check of an API quota: ``fn()`` returns its figure (see the module documentation).

    Args:
        fn: a ``def`` or ``async def`` with no arguments returning a percentage, a
            ``(used, limit)`` pair or an object/mapping with ``used``/``limit`` or
            ``remaining``/``limit``; or a :class:`QuotaTracker`, returned as it is.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if isinstance(fn, QuotaTracker):
        return fn
    if not callable(fn):
        raise TypeError(f"quota_check needs a function returning the quota, got {fn!r}")
    return _QuotaFunction(fn)
