"""HTTP rate-limit signals: ``429``/``503`` responses, ``Retry-After`` and quota headers.

Theory of operation
-------------------
Servers say "slow down" in several dialects. :func:`rate_limit_info` reads all of them from a
response without importing any HTTP library (it needs only ``.status_code`` or ``.status`` and
``.headers``, so ``httpx`` and ``aiohttp`` responses both work):

* ``Retry-After`` (RFC 9110): delta-seconds or an HTTP date, via :func:`parse_retry_after`;
* ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (reset as seconds, or as a Unix timestamp
  when larger than 10^9);
* the IETF ``RateLimit`` / ``RateLimit-Policy`` headers, both the older ``limit=, remaining=,
  reset=`` form and the structured-field form ``"default";r=50;t=30``.

:func:`raise_for_rate_limit` turns a 429 (or a 503 with ``Retry-After``) into
:class:`buttress.RateLimitExceeded` with the right ``retry_after``, which a retry policy honours;
given a :class:`buttress.RateLimiter`, it also tells it: a 429 blocks the key for ``retry_after``,
and a nearly spent quota lowers what the key may still send before the reset.

Malformed headers never raise: they are ignored (and logged at DEBUG).
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._config import integer, number, optional_nonblank
from ..clock import wall_time
from ..errors import RateLimitExceeded
from .ratelimit import _check_key

__all__ = [
    "MAX_RETRY_AFTER",
    "RateLimitInfo",
    "parse_retry_after",
    "raise_for_rate_limit",
    "rate_limit_info",
]

_log = logging.getLogger("buttress.http")

#: Longest wait buttress accepts from a server (one day); larger values are treated as garbage.
MAX_RETRY_AFTER = 86_400.0
_DELTA = re.compile(r"[0-9]+(\.[0-9]+)?")
_EPOCH_THRESHOLD = 1e9


def parse_retry_after(
    value: str | bytes | float | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or ``None`` when it says nothing usable.

    Accepts delta-seconds (``"120"``; a decimal such as ``"1.5"`` is accepted too), the same as a
    number (``120``, ``1.5``: a header already parsed by a client or a framework), and HTTP dates
    (IMF-fixdate, and the obsolete RFC 850 and asctime forms). A date in the past gives ``0.0``.
    Garbage (``True``, NaN and infinities included), negative numbers, and waits over
    :data:`MAX_RETRY_AFTER` give ``None``. Never raises for ``str``/``bytes``/``int``/``float``/
    ``None``; any other type is a ``TypeError``.

    Args:
        value: the header value.
        now: the current Unix time for dates (default: the system clock's); a finite number.
    """
    if now is not None:
        number("now", now)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            return None
        # NaN fails both comparisons; + 0.0 turns -0.0 into 0.0.
        return seconds + 0.0 if 0.0 <= seconds <= MAX_RETRY_AFTER else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        raise TypeError(
            f"Retry-After must be str, bytes, a number or None, got {type(value).__name__}"
        )
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if _DELTA.fullmatch(text):
        seconds = float(text)
        return seconds if seconds <= MAX_RETRY_AFTER else None
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    try:
        stamp = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    wait = stamp - (wall_time() if now is None else now)
    if not math.isfinite(wait):
        return None
    if wait <= 0:
        return 0.0
    return wait if wait <= MAX_RETRY_AFTER else None


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What a response said about rate limits (``None``: it did not say)."""

    status: int
    retry_after: float | None = None
    limit: int | None = None
    remaining: int | None = None
    reset_after: float | None = None

    @property
    def limited(self) -> bool:
        """Whether the response refused the request for rate reasons."""
        return self.status == 429 or (self.status == 503 and self.retry_after is not None)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


def _reset(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    text = value.strip()
    if not _DELTA.fullmatch(text) or len(text) > 24:
        return None
    number = float(text)
    if number > _EPOCH_THRESHOLD:
        number -= now
    if number < 0:
        return 0.0
    return number if number <= MAX_RETRY_AFTER else None


def _parameters(text: str) -> dict[str, str]:
    """``a=1, b=2`` and ``"policy";r=5;t=30`` alike, as a flat dict of the last values seen."""
    out: dict[str, str] = {}
    for part in re.split(r"[;,]", text):
        if "=" in part:
            name, _, value = part.partition("=")
            out[name.strip().lower()] = value.strip().strip('"')
    return out


def _status(response: Any) -> int:
    status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(response, "status", None)
    if not isinstance(status, int):
        raise TypeError(f"expected an HTTP response with a status, got {response!r}")
    return status


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value if isinstance(value, str) else None


def rate_limit_info(response: Any, *, now: float | None = None) -> RateLimitInfo:
    """Read status and rate-limit headers of an ``httpx`` / ``aiohttp`` (or similar) response."""
    status = _status(response)
    headers = getattr(response, "headers", None) or {}
    if not callable(getattr(headers, "get", None)):
        raise TypeError(
            "response.headers must be a mapping of header names to values, got "
            f"{type(headers).__name__} {headers!r}"
        )
    clock_now = wall_time() if now is None else number("now", now)
    retry_after = parse_retry_after(_header(headers, "Retry-After"), now=clock_now)
    limit = _int(_header(headers, "X-RateLimit-Limit"))
    remaining = _int(_header(headers, "X-RateLimit-Remaining"))
    reset_after = _reset(_header(headers, "X-RateLimit-Reset"), clock_now)
    ietf = _header(headers, "RateLimit")
    if ietf:
        fields = _parameters(ietf)
        remaining = (
            _int(fields.get("remaining", fields.get("r"))) if remaining is None else remaining
        )
        limit = _int(fields.get("limit")) if limit is None else limit
        if reset_after is None:
            reset_after = _reset(fields.get("reset", fields.get("t")), clock_now)
    policy = _header(headers, "RateLimit-Policy")
    if policy and limit is None:
        limit = _int(_parameters(policy).get("q"))
    if (ietf or policy) and remaining is None and limit is None:
        _log.debug("ignored a malformed RateLimit header: %r / %r", ietf, policy)
    return RateLimitInfo(status, retry_after, limit, remaining, reset_after)


def raise_for_rate_limit(
    response: Any,
    *,
    limiter: Any = None,
    name: str | None = None,
    key: str | None = None,
    low_watermark: int = 0,
    now: float | None = None,
) -> RateLimitInfo:
    """Raise :class:`RateLimitExceeded` for a rate-limited response; otherwise return its info.

    A 429, or a 503 carrying ``Retry-After``, raises with ``retry_after`` from ``Retry-After`` (or
    the reset headers; ``None`` if neither). With ``limiter`` and ``name`` (a configured
    :class:`buttress.RateLimiter` limit), the limiter is told too: a refusal blocks ``key`` for
    ``retry_after``; a success whose remaining quota is at or below ``low_watermark`` lowers what
    ``key`` may still send until the reset.

    Raises:
        ValueError, TypeError: ``limiter`` without ``name`` (the limiter would not be told), a
            ``limiter`` without ``block`` and ``set_remaining``, a ``low_watermark`` that is not an
            integer >= 0, or a bad ``name``, ``key`` or ``now``; each naming the argument.
    """
    if limiter is not None:
        if name is None:
            raise ValueError(
                f"limiter= needs name=, the limit of {limiter!r} to tell about the response"
            )
        if not all(callable(getattr(limiter, m, None)) for m in ("block", "set_remaining")):
            raise TypeError(
                f"limiter must be a RateLimiter (with block() and set_remaining()), got {limiter!r}"
            )
    optional_nonblank("name", name)
    _check_key(key)
    integer("low_watermark", low_watermark, minimum=0)
    info = rate_limit_info(response, now=now)
    tell = limiter is not None
    if info.limited:
        wait = info.retry_after if info.retry_after is not None else info.reset_after
        if tell and wait is not None:
            limiter.block(name, key, seconds=wait)
        raise RateLimitExceeded(
            f"server answered {info.status}"
            + (f"; retry after {wait:.3f}s" if wait is not None else ""),
            retry_after=wait,
            name=name or "",
        )
    if (
        tell
        and info.remaining is not None
        and info.reset_after is not None
        and info.remaining <= low_watermark
    ):
        limiter.set_remaining(name, key, remaining=info.remaining, reset_after=info.reset_after)
    return info
