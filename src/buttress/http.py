"""HTTP rate-limit signals: ``Retry-After``, ``429``/``503`` responses and quota headers.

The public face of :mod:`buttress.policies.httpheaders` (the theory of operation is there)::

    from buttress.http import parse_retry_after, raise_for_rate_limit

    parse_retry_after("120")                          # 120.0
    raise_for_rate_limit(response, limiter=limiter, name="erp_api", key=tenant)

The same names are exported from :mod:`buttress`.
"""

from __future__ import annotations

from .policies.httpheaders import (
    MAX_RETRY_AFTER,
    RateLimitInfo,
    parse_retry_after,
    raise_for_rate_limit,
    rate_limit_info,
)

__all__ = [
    "MAX_RETRY_AFTER",
    "RateLimitInfo",
    "parse_retry_after",
    "raise_for_rate_limit",
    "rate_limit_info",
]
