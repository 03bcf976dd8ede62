"""Recommended settings per operation and environment, as named presets.

The recommendations table of the resilience-patterns design, as data::

    profile = preset("erp_api", env="production")
    limiter.configure("erp_api", profile.rate_limit)      # 5 req/s, burst 10

    @retry(**profile.retry)                               # 5 retries, 1 s base, jitter
    @timeout(timeout_seconds=profile.timeout)             # 10 s
    @fallback(strategy=profile.fallback)                  # CACHED
    def fetch_procurement_data(supplier_id): ...

Production follows the table (factor lookup 3 retries / 5 s / cached / 10 req/s; LLM inference
2 / 30 s / cached / 5 req/s; ERP API 5 / 10 s / cached / 5 req/s; database 3 / 10 s / no fallback /
no limit; report generation 2 / 60 s / default / no limit), with 1 s base delay and jitter, and
breakers of ``fail_max=5`` and 60 s recovery. Development relaxes it: 2 retries of 0.5 s base,
timeouts doubled, 100 req/s, ``fail_max=10``. Bursts are two seconds' worth of the rate.

``env`` defaults to the ``BUTTRESS_ENV`` environment variable, else ``production``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _config
from .policies.fallback import FallbackStrategy
from .policies.ratelimit import RateLimitConfig
from .policies.timeout import OperationType

__all__ = ["ENVIRONMENTS", "OperationProfile", "preset"]

ENVIRONMENTS = _config.ENVIRONMENTS


@dataclass(frozen=True, kw_only=True)
class OperationProfile:
    """The recommended settings for one operation in one environment.

    Attributes:
        operation: the canonical operation name.
        environment: ``development`` or ``production``.
        retry: keyword arguments for :func:`buttress.retry`.
        timeout: seconds, for ``timeout(timeout_seconds=...)``.
        operation_type: the matching :class:`buttress.OperationType`.
        fallback: the recommended fallback strategy, or ``None``.
        rate_limit: a :class:`buttress.RateLimitConfig`, or ``None`` for no limit.
        circuit: keyword arguments for :class:`buttress.CircuitBreakerConfig`.
    """

    operation: str
    environment: str
    retry: dict[str, Any] = field(default_factory=dict)
    timeout: float
    operation_type: OperationType
    fallback: FallbackStrategy | None
    rate_limit: RateLimitConfig | None
    circuit: dict[str, Any] = field(default_factory=dict)


# operation: (retries, operation type, fallback, production req/s or None)
_TABLE: dict[str, tuple[int, OperationType, FallbackStrategy | None, float | None]] = {
    "factor_lookup": (3, OperationType.FACTOR_LOOKUP, FallbackStrategy.CACHED, 10.0),
    "llm_inference": (2, OperationType.LLM_INFERENCE, FallbackStrategy.CACHED, 5.0),
    "erp_api": (5, OperationType.ERP_API_CALL, FallbackStrategy.CACHED, 5.0),
    "database": (3, OperationType.DATABASE_QUERY, None, None),
    "report_generation": (2, OperationType.REPORT_GENERATION, FallbackStrategy.DEFAULT, None),
}
_ALIASES = {
    "factor_lookup": "factor_lookup",
    "factor_api": "factor_lookup",
    "factor": "factor_lookup",
    "llm_inference": "llm_inference",
    "llm_api": "llm_inference",
    "llm": "llm_inference",
    "erp_api": "erp_api",
    "erp": "erp_api",
    "erp_api_call": "erp_api",
    "database": "database",
    "database_query": "database",
    "db": "database",
    "report_generation": "report_generation",
    "report": "report_generation",
    "reports": "report_generation",
}


def _environment(env: str | None) -> str:
    if env is None:
        return _config.environment()
    resolved = _config.ENV_ALIASES.get(env.lower()) if isinstance(env, str) else None
    if resolved is None:
        raise ValueError(f"env must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    return resolved


def preset(operation: str, env: str | None = None) -> OperationProfile:
    """The recommended settings for ``operation`` in ``env`` (see the module docstring).

    Raises:
        ValueError: an unknown operation or environment, listing the known ones.
    """
    name = _ALIASES.get(operation.lower()) if isinstance(operation, str) else None
    if name is None:
        raise ValueError(f"unknown operation {operation!r}; known: {', '.join(sorted(_ALIASES))}")
    environment = _environment(env)
    retries, operation_type, strategy, rate = _TABLE[name]
    production = environment == "production"
    if production:
        retry = {"max_retries": retries, "base_delay": 1.0, "jitter": True}
        timeout = operation_type.default_timeout
        circuit = {"fail_max": 5, "timeout_duration": 60.0}
    else:
        retry = {"max_retries": 2, "base_delay": 0.5, "jitter": True}
        timeout = 2 * operation_type.default_timeout
        circuit = {"fail_max": 10, "timeout_duration": 60.0}
        rate = 100.0 if rate is not None else None
    limit = (
        None
        if rate is None
        else RateLimitConfig(requests_per_second=rate, burst_size=int(2 * rate))
    )
    return OperationProfile(
        operation=name,
        environment=environment,
        retry=retry,
        timeout=timeout,
        operation_type=operation_type,
        fallback=strategy,
        rate_limit=limit,
        circuit=circuit,
    )
