"""Fallback actions and protocols: what to do, in which order, when a resource fails.

Theory of operation
-------------------
A :class:`FallbackAction` is one step: a protocol :class:`~buttress.FallbackStrategy`, an
optional ``target`` (the provider to switch to, the breaker to open, the queue handler) and the
step's parameters, checked here so a bad one fails when the protocol is written, never during an
outage. A :class:`FallbackProtocol` orders the steps for one :class:`~buttress.ResourceType` by
``priority`` (lower first), then by the order given, and carries the protocol-wide settings: an
overall ``timeout`` and the classifier that decides which errors move the call on to the next step
(:mod:`buttress.protocol.classify`).

Parameters per strategy (defaults in brackets):

=================  ===========================================================================
``RETRY``          ``attempts`` [2] retries after the failure, ``backoff`` (a
                   :class:`~buttress.RetryStrategy`, its name, or a ``Backoff``) [exponential],
                   ``base_delay`` [0.5], ``max_delay`` [30], ``jitter`` [True]
``SWITCH_PROVIDER``  ``target``: only that target [any], ``wait`` for a cooling target when the
                   deadline allows [True]
``DEGRADE_SERVICE``  ``tier`` the team drops to [TIER_2_CORE]
``QUEUE_REQUEST``  ``handler`` name [the function's qualified name], ``ttl`` seconds [none]
``USE_CACHE``      ``max_age`` seconds a cached answer may have [3600], ``size`` [1024]
``SCALE_DOWN``     ``factor`` of the adaptive limit [0.5]
``CIRCUIT_BREAK``  ``target``: the breaker's name [``<team>.<resource type>``],
                   ``recovery_timeout`` seconds [60]
=================  ===========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..degradation import DegradationTier
from ..health.manager import resource_type
from ..health.types import ResourceType
from ..machines.backoff import Backoff
from ..policies.fallback import FallbackStrategy
from ..policies.retry import RetryStrategy
from .classify import Classifier

__all__ = ["PROTOCOL_STRATEGIES", "FallbackAction", "FallbackProtocol", "label"]

#: The strategies a protocol step may use.
PROTOCOL_STRATEGIES = frozenset(
    {
        FallbackStrategy.RETRY,
        FallbackStrategy.SWITCH_PROVIDER,
        FallbackStrategy.DEGRADE_SERVICE,
        FallbackStrategy.QUEUE_REQUEST,
        FallbackStrategy.USE_CACHE,
        FallbackStrategy.SCALE_DOWN,
        FallbackStrategy.CIRCUIT_BREAK,
    }
)

_PARAMS: dict[FallbackStrategy, dict[str, Any]] = {
    FallbackStrategy.RETRY: {
        "attempts": 2,
        "backoff": RetryStrategy.EXPONENTIAL,
        "base_delay": 0.5,
        "max_delay": 30.0,
        "jitter": True,
    },
    FallbackStrategy.SWITCH_PROVIDER: {"wait": True, "max_wait": 30.0},
    FallbackStrategy.DEGRADE_SERVICE: {"tier": DegradationTier.TIER_2_CORE},
    FallbackStrategy.QUEUE_REQUEST: {"handler": None, "ttl": None},
    FallbackStrategy.USE_CACHE: {"max_age": 3600.0, "size": 1024},
    FallbackStrategy.SCALE_DOWN: {"factor": 0.5},
    FallbackStrategy.CIRCUIT_BREAK: {"recovery_timeout": 60.0},
}


def label(strategy: FallbackStrategy) -> str:
    """The strategy's protocol name (``USE_CACHE`` rather than its alias ``CACHED``)."""
    return "USE_CACHE" if strategy is FallbackStrategy.USE_CACHE else strategy.name


def _strategy(value: object) -> FallbackStrategy:
    if isinstance(value, str):
        text = value
        try:
            value = FallbackStrategy(text.lower())
        except ValueError:
            try:
                value = FallbackStrategy[text.upper()]
            except KeyError:
                raise ValueError(f"unknown fallback strategy {value!r}") from None
    if not isinstance(value, FallbackStrategy):
        raise TypeError(f"strategy must be a FallbackStrategy, got {value!r}")
    if value not in PROTOCOL_STRATEGIES:
        raise ValueError(
            f"FallbackStrategy.{value.name} is a value strategy of @fallback, not a protocol "
            "step; a protocol takes RETRY, SWITCH_PROVIDER, DEGRADE_SERVICE, QUEUE_REQUEST, "
            "USE_CACHE, SCALE_DOWN or CIRCUIT_BREAK"
        )
    return value


def _positive(where: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{where} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{where} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _count(where: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where} must be >= {minimum}, got {value!r}")
    return value


def _check(strategy: FallbackStrategy, params: dict[str, Any]) -> dict[str, Any]:
    allowed = _PARAMS[strategy]
    unknown = sorted(set(params) - set(allowed))
    where = f"FallbackAction({label(strategy)})"
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ValueError(
            f"{where}: unknown parameter(s) {', '.join(map(repr, unknown))}; it takes {known}"
        )
    out = {**allowed, **params}
    if strategy is FallbackStrategy.RETRY:
        out["attempts"] = _count(f"{where} attempts", out["attempts"], 1)
        out["base_delay"] = _positive(f"{where} base_delay", out["base_delay"], allow_zero=True)
        out["max_delay"] = _positive(f"{where} max_delay", out["max_delay"], allow_zero=True)
        backoff = out["backoff"]
        if isinstance(backoff, str):
            try:
                backoff = RetryStrategy(backoff.lower())
            except ValueError:
                raise ValueError(
                    f"{where} backoff must be exponential, linear, constant or fibonacci, "
                    f"or a Backoff object; got {backoff!r}"
                ) from None
        if isinstance(backoff, RetryStrategy):
            backoff = backoff.backoff(
                base_delay=out["base_delay"], max_delay=max(out["max_delay"], out["base_delay"])
            )
        if not isinstance(backoff, Backoff):
            raise TypeError(
                f"{where} backoff must be a RetryStrategy or a Backoff, got {backoff!r}"
            )
        out["backoff"] = backoff
        if not isinstance(out["jitter"], bool | str):
            raise TypeError(f"{where} jitter must be True, False or a jitter name")
    elif strategy is FallbackStrategy.SWITCH_PROVIDER:
        if not isinstance(out["wait"], bool):
            raise TypeError(f"{where} wait must be True or False, got {out['wait']!r}")
        out["max_wait"] = _positive(f"{where} max_wait", out["max_wait"], allow_zero=True)
    elif strategy is FallbackStrategy.DEGRADE_SERVICE:
        tier = out["tier"]
        if (
            isinstance(tier, int)
            and not isinstance(tier, bool)
            and not isinstance(tier, DegradationTier)
        ):
            try:
                tier = DegradationTier(tier)
            except ValueError:
                raise ValueError(f"{where} tier must be 1-4, got {tier!r}") from None
        if not isinstance(tier, DegradationTier):
            raise TypeError(f"{where} tier must be a DegradationTier, got {tier!r}")
        out["tier"] = tier
    elif strategy is FallbackStrategy.QUEUE_REQUEST:
        if out["handler"] is not None and (
            not isinstance(out["handler"], str) or not out["handler"]
        ):
            raise TypeError(f"{where} handler must be a handler name, got {out['handler']!r}")
        if out["ttl"] is not None:
            out["ttl"] = _positive(f"{where} ttl", out["ttl"])
    elif strategy is FallbackStrategy.USE_CACHE:
        out["max_age"] = _positive(f"{where} max_age", out["max_age"])
        out["size"] = _count(f"{where} size", out["size"], 1)
    elif strategy is FallbackStrategy.SCALE_DOWN:
        factor = out["factor"]
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise TypeError(f"{where} factor must be a number, got {factor!r}")
        if not 0 < factor < 1:
            raise ValueError(f"{where} factor must be between 0 and 1 (exclusive), got {factor!r}")
        out["factor"] = float(factor)
    elif strategy is FallbackStrategy.CIRCUIT_BREAK:
        out["recovery_timeout"] = _positive(f"{where} recovery_timeout", out["recovery_timeout"])
    return out


class FallbackAction:
    """One step of a fallback protocol (module documentation lists each strategy's parameters).

    Args:
        strategy: a protocol :class:`~buttress.FallbackStrategy` (or its name).
        target: the target this step uses: the provider to switch to, the breaker to open.
        priority: lower runs first; equal priorities keep the order given.
        **params: the strategy's parameters.

    Raises:
        ValueError / TypeError: an unknown strategy or parameter, or a bad value, naming it.
    """

    __slots__ = ("params", "priority", "strategy", "target")

    def __init__(
        self,
        strategy: FallbackStrategy | str,
        target: str | None = None,
        priority: int = 0,
        **params: Any,
    ) -> None:
        self.strategy = _strategy(strategy)
        if target is not None and (not isinstance(target, str) or not target):
            raise TypeError(f"target must be a target's name, got {target!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an integer, got {priority!r}")
        self.target = target
        self.priority = priority
        self.params: Mapping[str, Any] = _check(self.strategy, dict(params))

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v!r}" for k, v in self.params.items() if v != _PARAMS[self.strategy].get(k)
        )
        target = f", target={self.target!r}" if self.target else ""
        priority = f", priority={self.priority}" if self.priority else ""
        return f"FallbackAction({label(self.strategy)}{target}{priority}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FallbackAction):
            return NotImplemented
        return (self.strategy, self.target, self.priority, dict(self.params)) == (
            other.strategy,
            other.target,
            other.priority,
            dict(other.params),
        )

    def __hash__(self) -> int:
        return hash((self.strategy, self.target, self.priority))


class FallbackProtocol:
    """The ordered steps for one resource type (by ``priority``, then the order given).

    Args:
        resource: the :class:`~buttress.ResourceType` it serves.
        actions: its :class:`FallbackAction` steps (a bare :class:`~buttress.FallbackStrategy`
            is the step with its default parameters).
        timeout: seconds the whole call may take, every step included (None: only an enclosing
            deadline bounds it).
        classifier: which errors mean "the resource is failing" (default: the resource type's).

    Raises:
        ValueError / TypeError: no actions, a non-action, two USE_CACHE steps, a bad timeout.
    """

    __slots__ = ("actions", "classifier", "resource", "timeout")

    def __init__(
        self,
        resource: ResourceType | str,
        actions: Iterable[FallbackAction],
        *,
        timeout: float | None = None,
        classifier: Classifier | None = None,
    ) -> None:
        self.resource: ResourceType = resource_type(resource)
        if isinstance(actions, FallbackAction) or not isinstance(actions, Iterable):
            raise TypeError(
                f"actions of the {self.resource.value} protocol must be a list of "
                f"FallbackAction, got {actions!r}"
            )
        # A bare strategy is the step with its default parameters.
        given = [FallbackAction(a) if isinstance(a, FallbackStrategy) else a for a in list(actions)]
        for index, action in enumerate(given):
            if not isinstance(action, FallbackAction):
                raise TypeError(
                    f"step {index} of the {self.resource.value} protocol must be a "
                    f"FallbackAction, got {action!r}"
                )
        order = sorted(range(len(given)), key=lambda i: (given[i].priority, i))
        self.actions: tuple[FallbackAction, ...] = tuple(given[i] for i in order)
        caches = [a for a in self.actions if a.strategy is FallbackStrategy.USE_CACHE]
        if len(caches) > 1:
            raise ValueError(f"the {self.resource.value} protocol has more than one USE_CACHE step")
        self.timeout = None if timeout is None else _positive("timeout", timeout)
        if classifier is not None and not isinstance(classifier, Classifier):
            raise TypeError(f"classifier must be a Classifier, got {classifier!r}")
        self.classifier = classifier or Classifier.for_resource(self.resource)

    @property
    def strategies(self) -> tuple[FallbackStrategy, ...]:
        return tuple(a.strategy for a in self.actions)

    def has(self, strategy: FallbackStrategy) -> bool:
        return any(a.strategy is strategy for a in self.actions)

    def __repr__(self) -> str:
        steps = " -> ".join(
            label(a.strategy) + (f"({a.target})" if a.target else "") for a in self.actions
        )
        return f"FallbackProtocol({self.resource.name}: {steps or 'no steps'})"

    def __iter__(self) -> Any:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)
