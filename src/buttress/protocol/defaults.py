"""The default fallback protocol of each resource type.

These are the protocols a team gets without configuring any (its ``fallback_strategies`` or
``set_protocol`` replace them per resource type):

===============  ==============================================================================
API_QUOTA        retry 2x (exponential) -> switch provider -> degrade -> queue
MEMORY, CPU      cache -> degrade -> scale down
DATABASE         retry 3x -> switch to a replica -> cache -> circuit break
MCP_SERVER       retry (backoff) -> switch to the secondary -> circuit break
NETWORK          retry 3x -> switch endpoint -> cache -> circuit break
DOCKER           retry 2x -> circuit break
K8S_POD          retry 2x -> switch pod -> circuit break
===============  ==============================================================================

A step that has nothing to work with is skipped: SWITCH_PROVIDER without registered targets,
QUEUE_REQUEST without a queue, USE_CACHE before any answer was cached.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..health.types import ResourceType
from ..policies.fallback import FallbackStrategy
from .action import FallbackAction, FallbackProtocol

__all__ = ["DEFAULT_PROTOCOLS", "default_protocol"]

_S = FallbackStrategy


def _protocol(resource: ResourceType, *actions: FallbackAction) -> FallbackProtocol:
    return FallbackProtocol(resource, actions)


#: The default protocols (module documentation).
DEFAULT_PROTOCOLS: Mapping[ResourceType, FallbackProtocol] = {
    ResourceType.API_QUOTA: _protocol(
        ResourceType.API_QUOTA,
        FallbackAction(_S.RETRY, attempts=2, backoff="exponential"),
        FallbackAction(_S.SWITCH_PROVIDER),
        FallbackAction(_S.DEGRADE_SERVICE),
        FallbackAction(_S.QUEUE_REQUEST),
    ),
    ResourceType.MEMORY: _protocol(
        ResourceType.MEMORY,
        FallbackAction(_S.USE_CACHE),
        FallbackAction(_S.DEGRADE_SERVICE),
        FallbackAction(_S.SCALE_DOWN),
    ),
    ResourceType.CPU: _protocol(
        ResourceType.CPU,
        FallbackAction(_S.USE_CACHE),
        FallbackAction(_S.DEGRADE_SERVICE),
        FallbackAction(_S.SCALE_DOWN),
    ),
    ResourceType.DATABASE: _protocol(
        ResourceType.DATABASE,
        FallbackAction(_S.RETRY, attempts=3),
        FallbackAction(_S.SWITCH_PROVIDER),
        FallbackAction(_S.USE_CACHE),
        FallbackAction(_S.CIRCUIT_BREAK),
    ),
    ResourceType.MCP_SERVER: _protocol(
        ResourceType.MCP_SERVER,
        FallbackAction(_S.RETRY, attempts=2, backoff="exponential"),
        FallbackAction(_S.SWITCH_PROVIDER),
        FallbackAction(_S.CIRCUIT_BREAK),
    ),
    ResourceType.NETWORK: _protocol(
        ResourceType.NETWORK,
        FallbackAction(_S.RETRY, attempts=3),
        FallbackAction(_S.SWITCH_PROVIDER),
        FallbackAction(_S.USE_CACHE),
        FallbackAction(_S.CIRCUIT_BREAK),
    ),
    ResourceType.DOCKER: _protocol(
        ResourceType.DOCKER,
        FallbackAction(_S.RETRY, attempts=2),
        FallbackAction(_S.CIRCUIT_BREAK),
    ),
    ResourceType.K8S_POD: _protocol(
        ResourceType.K8S_POD,
        FallbackAction(_S.RETRY, attempts=2),
        FallbackAction(_S.SWITCH_PROVIDER),
        FallbackAction(_S.CIRCUIT_BREAK),
    ),
}


def default_protocol(resource: ResourceType) -> FallbackProtocol:
    """The default protocol of ``resource``."""
    return DEFAULT_PROTOCOLS[resource]
