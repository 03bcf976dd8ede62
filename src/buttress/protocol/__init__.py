"""Fallback protocols: what a team's call does when the resource it depends on fails.

A protocol is an ordered chain of steps (:class:`FallbackAction`) for one resource type:
retry, switch provider, degrade, queue, cache, scale down, circuit break. The engine
(:mod:`buttress.protocol.engine`) walks it for a failing call within the call's deadline; the
classifier (:mod:`buttress.protocol.classify`) decides which failures walk on and which are the
request's own fault; :mod:`buttress.protocol.defaults` holds each resource type's default chain;
:func:`with_fallback` and ``ResilienceManager.with_resilience`` put functions under it.
"""

from __future__ import annotations

from .action import PROTOCOL_STRATEGIES, FallbackAction, FallbackProtocol
from .classify import Classifier, http_status_of, retry_after_of
from .decorators import current_manager, set_default_manager, use_manager, with_fallback
from .defaults import DEFAULT_PROTOCOLS, default_protocol
from .engine import ProtocolHost, cached_age, degraded
from .targets import TargetChoice, TargetPool, current_target

__all__ = [
    "DEFAULT_PROTOCOLS",
    "PROTOCOL_STRATEGIES",
    "Classifier",
    "FallbackAction",
    "FallbackProtocol",
    "ProtocolHost",
    "TargetChoice",
    "TargetPool",
    "cached_age",
    "current_manager",
    "current_target",
    "default_protocol",
    "degraded",
    "http_status_of",
    "retry_after_of",
    "set_default_manager",
    "use_manager",
    "with_fallback",
]
