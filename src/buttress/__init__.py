"""buttress: resilience for Python services.

Every public name is exported here. A few groups are also reachable as submodules of their own:
``buttress.http`` (HTTP rate-limit headers), ``buttress.presets`` (recommended settings),
``buttress.testing`` (the fake clock), ``buttress.events`` (event types and hooks) and
``buttress.backends`` (state stores).
"""

from __future__ import annotations

from typing import Any

from ._deadline import remaining
from .clock import Clock, SystemClock, get_clock, set_clock
from .config import ConfigError, TeamConfig, build_manager, load_config, load_settings
from .degradation import (
    DegradationManager,
    DegradationTier,
    ServiceCategory,
    ServiceHealth,
    degradation_handler,
    get_degradation_manager,
)
from .errors import (
    AllTargetsCooling,
    BulkheadFull,
    ButtressError,
    CircuitOpenError,
    OperationTimeout,
    RateLimitExceeded,
    RejectedError,
    RequestQueued,
    ServiceDegraded,
    StorageError,
    StorageUnavailable,
    StreamInterrupted,
    UnknownRateLimit,
)
from .events import ProtocolStep, add_hook, remove_hook
from .health import (
    ComponentState,
    HealthMonitor,
    OverallHealth,
    QuotaTracker,
    Reading,
    ResourceManager,
    ResourceState,
    ResourceStatus,
    ResourceType,
    quota_check,
)
from .http import RateLimitInfo, parse_retry_after, raise_for_rate_limit, rate_limit_info
from .machines.backoff import (
    Backoff,
    ExponentialBackoff,
    FibonacciBackoff,
    FixedDelay,
    LinearBackoff,
)
from .manager import ResilienceManager
from .policies.adaptive import AdaptiveConcurrency, adaptive_concurrency
from .policies.bulkhead import Bulkhead, bulkhead
from .policies.circuit import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    circuit_breaker,
    circuit_breakers,
    get_circuit_breaker,
)
from .policies.fallback import Fallback, FallbackStrategy, fallback
from .policies.pipeline import Pipeline
from .policies.ratelimit import (
    RateLimit,
    RateLimitAlgorithm,
    RateLimitConfig,
    RateLimiter,
    get_rate_limiter,
    rate_limit,
)
from .policies.retry import Retry, RetryStrategy, retry
from .policies.timeout import (
    DEFAULT_TIMEOUTS,
    OperationType,
    Timeout,
    abandoned_calls,
    deadline,
    timeout,
)
from .presets import OperationProfile, preset
from .protocol import (
    Classifier,
    FallbackAction,
    FallbackProtocol,
    cached_age,
    current_target,
    degraded,
    set_default_manager,
    use_manager,
    with_fallback,
)
from .protocol.targets import TargetChoice, TargetPool
from .queue import QueueFull, RequestQueue, current_request

__version__ = "0.1.0"


def enable_prometheus(registry: Any = None, namespace: str = "buttress") -> Any:
    """Keep Prometheus metrics of every buttress event (needs the ``prometheus`` extra).

    See :func:`buttress.instrumentation.prometheus.enable_prometheus`.
    """
    from .instrumentation.prometheus import enable_prometheus as enable

    return enable(registry, namespace)


__all__ = [
    "AdaptiveConcurrency",
    "AllTargetsCooling",
    "Backoff",
    "Bulkhead",
    "BulkheadFull",
    "ButtressError",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Classifier",
    "Clock",
    "ComponentState",
    "ConfigError",
    "DEFAULT_TIMEOUTS",
    "DegradationManager",
    "DegradationTier",
    "ExponentialBackoff",
    "Fallback",
    "FallbackAction",
    "FallbackProtocol",
    "FallbackStrategy",
    "FibonacciBackoff",
    "FixedDelay",
    "HealthMonitor",
    "LinearBackoff",
    "OperationProfile",
    "OperationTimeout",
    "OperationType",
    "OverallHealth",
    "Pipeline",
    "ProtocolStep",
    "QueueFull",
    "QuotaTracker",
    "RateLimit",
    "RateLimitAlgorithm",
    "RateLimitConfig",
    "RateLimitExceeded",
    "RateLimitInfo",
    "RateLimiter",
    "Reading",
    "RejectedError",
    "RequestQueue",
    "RequestQueued",
    "ResilienceManager",
    "ResourceManager",
    "ResourceState",
    "ResourceStatus",
    "ResourceType",
    "Retry",
    "RetryStrategy",
    "ServiceCategory",
    "ServiceDegraded",
    "ServiceHealth",
    "StorageError",
    "StorageUnavailable",
    "StreamInterrupted",
    "SystemClock",
    "TargetChoice",
    "TargetPool",
    "TeamConfig",
    "Timeout",
    "UnknownRateLimit",
    "abandoned_calls",
    "adaptive_concurrency",
    "add_hook",
    "build_manager",
    "bulkhead",
    "cached_age",
    "circuit_breaker",
    "circuit_breakers",
    "current_request",
    "current_target",
    "deadline",
    "degradation_handler",
    "degraded",
    "enable_prometheus",
    "fallback",
    "get_circuit_breaker",
    "get_clock",
    "get_degradation_manager",
    "get_rate_limiter",
    "load_config",
    "load_settings",
    "parse_retry_after",
    "preset",
    "quota_check",
    "raise_for_rate_limit",
    "rate_limit",
    "rate_limit_info",
    "remaining",
    "remove_hook",
    "retry",
    "set_clock",
    "set_default_manager",
    "timeout",
    "use_manager",
    "with_fallback",
]
