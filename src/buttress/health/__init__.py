"""Watching the resources a service depends on (see :mod:`buttress.health.types`).

* :mod:`buttress.health.types`: resource kinds, statuses, what a check observes;
* :mod:`buttress.health.manager`: :class:`ResourceManager`, the scheduler, hysteresis and
  aggregation;
* :mod:`buttress.health.predict`: time to exhaustion and latency baselines;
* :mod:`buttress.health.component`: :class:`HealthMonitor`, components judged by their calls;
* :mod:`buttress.health.quota`: API quotas, asked or read from responses;
* the checks of each resource kind (system, cgroup, database, network, docker, kubernetes, mcp)
  live in modules of their own, imported only when used.
"""

from __future__ import annotations

from .component import ComponentState, HealthMonitor
from .manager import Monitor, OverallHealth, ResourceManager, ResourceState, aggregate
from .predict import LatencyBaseline, UsageTrend
from .quota import QuotaTracker, quota_check
from .types import Check, Reading, ResourceStatus, ResourceType, redact

__all__ = [
    "Check",
    "ComponentState",
    "HealthMonitor",
    "LatencyBaseline",
    "Monitor",
    "OverallHealth",
    "QuotaTracker",
    "Reading",
    "ResourceManager",
    "ResourceState",
    "ResourceStatus",
    "ResourceType",
    "UsageTrend",
    "aggregate",
    "quota_check",
    "redact",
]
