"""What resource monitoring is made of: resource kinds, statuses, and what one check observed.

A *check* is an async callable taking no arguments that returns a :class:`Reading` and raises when
the resource failed (any exception: the manager records its type and message, redacted). Checks
that need a blocking client run it in a worker thread themselves, so every check can be awaited
on the event loop. A check knows nothing of intervals, timeouts, thresholds or hysteresis: the
resource manager applies those to every check alike.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from .._redact import redact

__all__ = ["Check", "Reading", "ResourceStatus", "ResourceType", "redact"]


class ResourceType(Enum):
    """The kinds of resource a team depends on."""

    API_QUOTA = "api_quota"
    MEMORY = "memory"
    CPU = "cpu"
    DATABASE = "database"
    MCP_SERVER = "mcp_server"
    NETWORK = "network"
    DOCKER = "docker"
    K8S_POD = "k8s_pod"

    # Every protocol call looks its resource type up in a few dicts: Enum's own __hash__ is a
    # Python function (hash of the name), object's is a C slot. Members are singletons and
    # compare by identity, so identity hashing is consistent with equality.
    __hash__ = object.__hash__


class ResourceStatus(Enum):
    """A resource's status, best first."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"
    UNAVAILABLE = "unavailable"

    __hash__ = object.__hash__  # as ResourceType's

    @property
    def rank(self) -> int:
        """0 for HEALTHY up to 3 for UNAVAILABLE: a larger rank is worse."""
        return _RANKS[self]


_RANKS = {status: rank for rank, status in enumerate(ResourceStatus)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """What one check observed.

    Attributes:
        usage: percent of the resource in use (0-100), where that means something.
        status: a status the check decided itself (a container reported unhealthy, a pod not
            ready); the manager takes the worse of it and the status the usage thresholds give.
        detail: JSON-able figures worth reporting (pool size, restarts, effective CPUs...).
        message: a short human note for the report.
    """

    usage: float | None = None
    status: ResourceStatus | None = None
    detail: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    message: str | None = None

    def __post_init__(self) -> None:
        if self.usage is not None:
            if isinstance(self.usage, bool) or not isinstance(self.usage, int | float):
                raise TypeError(f"usage must be a number of percent, got {self.usage!r}")
            if not math.isfinite(self.usage) or self.usage < 0.0:
                raise ValueError(f"usage must be a finite percentage >= 0, got {self.usage!r}")
        if self.status is not None and not isinstance(self.status, ResourceStatus):
            raise TypeError(f"status must be a ResourceStatus, got {self.status!r}")


#: A resource check (see the module documentation).
Check = Callable[[], Awaitable[Reading]]
