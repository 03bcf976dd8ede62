"""Graceful degradation: one service-wide tier computed from the health of its dependencies.

Theory of operation
-------------------
A :class:`DegradationManager` keeps the last reported health of each dependency (a *service*:
``manager.update_health("llm_api", healthy=False, error="Timeout")``). Every service has a
:class:`ServiceCategory`, and a *rule* maps a category to the tier its failure forces:

=====================  ==================================
unhealthy category     tier
=====================  ==================================
``LLM``                ``TIER_2_CORE`` (no LLM features)
``EXTERNAL_API``       ``TIER_3_READ_ONLY``
``DATABASE``           ``TIER_4_MAINTENANCE``
=====================  ==================================

The *target* tier is the worst tier any unhealthy service forces (``TIER_1_FULL`` when all are
healthy). The *current* tier follows the target with hysteresis: a worse target takes effect at
once; a better one only after it has held for ``min_dwell`` seconds without interruption, so a
dependency that flaps between healthy and unhealthy does not flap the whole service. Each better
tier waits out its own dwell: when a database recovers and, 20 seconds later, an external API
too, the tier steps from 4 to 3 when the database's dwell has passed and to 1 when the API's
has. Time is the manager's clock (the process default unless one is given), so tests drive the
dwell with :class:`buttress.testing.FakeClock`.

A service's category comes from :meth:`DegradationManager.register_service`, or, for a service
first seen in ``update_health``, from its name (:func:`category_for`), read as people write names:
case does not matter, and words are split at anything that is not a letter and at camelCase
boundaries, while each run of letters also counts as one word (``OrdersDB``, ``ordersdb``,
``orders_db`` and ``orders-db`` read alike). A word that starts or ends with ``llm`` makes an
LLM (``openaiLLM``, ``llm_gateway``). Otherwise a word that ends with ``db`` or ``sql``, starts
with ``sql``, contains ``database``, or is ``postgres``, ``redis`` or ``mongo`` makes a
database (``mongodb``, ``MySQL``, ``PostgresPrimary``, ``user-database``). Anything else is an
external API: ``db`` inside a word does not count (``adobe``, ``dbt_cloud``). A name the rule
misreads (``imdb`` reads as a database) is registered with its category.
``ServiceCategory.CUSTOM`` services carry their own tier.

:func:`degradation_handler` guards a function with a minimum tier: ``min_tier=TIER_2_CORE`` runs
the function in tiers 1 and 2 and returns ``fallback_value`` (or raises
:class:`ServiceDegraded`, if asked) in tiers 3 and 4. The check is one comparison of integers on
the hot path.

Tier changes emit :class:`buttress.events.TierChanged` (logged at WARNING on
``buttress.degradation``), call the manager's callbacks, and feed the Prometheus metrics; a
service turning healthy or unhealthy emits :class:`buttress.events.ServiceHealthChanged`. Every
live manager's tier and service health are published as readings (``degradation_tier``,
``service_health``: :func:`buttress.events.add_reading`) for metrics to read when scraped.

The health input is deliberately small (name, healthy, response time, error): health checks,
circuit breakers and resource monitors all report through :meth:`DegradationManager.update_health`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, TypeVar, cast

from . import events as _events
from ._callables import is_async
from ._config import boolean, env_float, nonblank, number, optional_seconds
from .clock import Clock, checked_clock, get_clock
from .errors import ServiceDegraded

__all__ = [
    "DEFAULT_RULES",
    "DegradationManager",
    "DegradationTier",
    "ServiceCategory",
    "ServiceDegraded",
    "ServiceHealth",
    "category_for",
    "degradation_handler",
    "get_degradation_manager",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable giving the default ``min_dwell`` (seconds) of new managers.
MIN_DWELL_ENV = "BUTTRESS_DEGRADATION_MIN_DWELL"
DEFAULT_MIN_DWELL = 30.0


class DegradationTier(IntEnum):
    """How much of the service works; a larger number is a more degraded service."""

    TIER_1_FULL = 1
    """Full functionality: all features enabled."""
    TIER_2_CORE = 2
    """Core functionality: external APIs work, no LLM."""
    TIER_3_READ_ONLY = 3
    """Read-only: no writes, no external APIs."""
    TIER_4_MAINTENANCE = 4
    """Maintenance: database trouble, minimal functionality."""


class ServiceCategory(Enum):
    """What kind of dependency a service is; the rules map a category to a tier."""

    LLM = "llm"
    EXTERNAL_API = "external_api"
    DATABASE = "database"
    CUSTOM = "custom"
    """A service with its own ``unhealthy_tier`` given at registration."""


#: The seed table: the tier an unhealthy service of each category forces.
DEFAULT_RULES: Mapping[ServiceCategory, DegradationTier] = {
    ServiceCategory.LLM: DegradationTier.TIER_2_CORE,
    ServiceCategory.EXTERNAL_API: DegradationTier.TIER_3_READ_ONLY,
    ServiceCategory.DATABASE: DegradationTier.TIER_4_MAINTENANCE,
}

# Database names that do not end in "db" or "sql" (those are recognised by their ending).
_DATABASE_WORDS = frozenset({"postgres", "redis", "mongo"})
# A lowercase letter run ("mongodb", "openaillm") and the camelCase words inside it ("Orders",
# "DB"; "HTTP", "Server"), so "OrdersDB", "ordersdb" and "orders_db" read alike.
_RUNS = re.compile(r"[a-z]+")
_CAMEL_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")


def _name_words(name: str) -> set[str]:
    words = set(_RUNS.findall(name.lower()))
    words.update(word.lower() for word in _CAMEL_WORDS.findall(name))
    return words


def _is_database_word(word: str) -> bool:
    # Only at an end: no English word ends in "db" or "sql", but many hold "db" inside ("adobe",
    # "feedback") or start with it ("dbt"); "redis" and "mongo" start longer words
    # ("redistribute", "mongolia"), so those two must be the whole word.
    return (
        word in _DATABASE_WORDS
        or word.endswith(("db", "sql"))
        or word.startswith("sql")
        or "database" in word
    )


def category_for(name: str) -> ServiceCategory:
    """The default category of a service called ``name`` (see the module documentation)."""
    words = _name_words(name)
    if any(word.startswith("llm") or word.endswith("llm") for word in words):
        return ServiceCategory.LLM
    if any(_is_database_word(word) for word in words):
        return ServiceCategory.DATABASE
    return ServiceCategory.EXTERNAL_API


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """The last health report of one service (what :meth:`DegradationManager.snapshot` shows)."""

    name: str
    category: ServiceCategory
    healthy: bool
    response_time_ms: float | None
    error: str | None
    updated_at: float | None
    """The manager clock's ``now()`` at the last report; ``None`` if never reported."""
    unhealthy_tier: DegradationTier
    """The tier this service forces while unhealthy."""


class _Service:
    __slots__ = (
        "category",
        "error",
        "healthy",
        "max_response_time_ms",
        "own_tier",
        "response_time_ms",
        "unhealthy_tier",
        "updated_at",
    )

    def __init__(
        self,
        category: ServiceCategory,
        unhealthy_tier: DegradationTier,
        max_response_time_ms: float | None,
        own_tier: bool = False,
    ) -> None:
        self.category = category
        self.unhealthy_tier = unhealthy_tier
        self.own_tier = own_tier  # registered with its own tier: category rules do not apply
        self.max_response_time_ms = max_response_time_ms
        self.healthy = True
        self.response_time_ms: float | None = None
        self.error: str | None = None
        self.updated_at: float | None = None


TierCallback = Callable[[DegradationTier, DegradationTier, str], None]


class DegradationManager:
    """The degradation tier of a service, from the health of its dependencies.

    Args:
        min_dwell: seconds an improvement must hold before the tier gets better (worse is
            immediate). Default: ``BUTTRESS_DEGRADATION_MIN_DWELL``, else 30.
        rules: the tier an unhealthy service of each category forces; merged over
            :data:`DEFAULT_RULES`.
        name: the name in events, logs and metrics.
        clock: the clock for dwell times (default: the process default at the time of use).

    Raises:
        ValueError / TypeError: a bad setting, naming it.
    """

    def __init__(
        self,
        *,
        min_dwell: float | None = None,
        rules: Mapping[ServiceCategory, DegradationTier] | None = None,
        name: str = "default",
        clock: Clock | None = None,
    ) -> None:
        if min_dwell is None:
            min_dwell = env_float(MIN_DWELL_ENV, DEFAULT_MIN_DWELL)
        self.min_dwell = cast(float, optional_seconds("min_dwell", min_dwell))
        self._rules: dict[ServiceCategory, DegradationTier] = dict(DEFAULT_RULES)
        if rules is not None:
            self._rules.update(_check_rules(rules))
        self.name = nonblank("name", name)
        self._clock = checked_clock(clock)
        self._lock = threading.RLock()
        self._services: dict[str, _Service] = {}
        self._forced: DegradationTier | None = None
        self._callbacks: list[TierCallback] = []
        # The hot path reads these two without the lock.
        self._tier = DegradationTier.TIER_1_FULL
        self._improving_since: float | None = None  # set while the target is better than _tier
        # For each tier better than _tier: since when the target has been that tier or better,
        # without interruption (each better tier waits out its own dwell).
        self._better_since: dict[DegradationTier, float] = {}
        self._changed_at: float | None = None
        _MANAGERS[name] = weakref.ref(self)

    def __repr__(self) -> str:
        return f"DegradationManager(name={self.name!r}, tier={self._tier.name})"

    # -- health input ---------------------------------------------------------------------------

    def register_service(
        self,
        name: str,
        category: ServiceCategory | None = None,
        *,
        unhealthy_tier: DegradationTier | None = None,
        max_response_time_ms: float | None = None,
    ) -> None:
        """Declare a dependency (optional: ``update_health`` registers unknown names itself).

        Args:
            name: the service name used in ``update_health``.
            category: its category (default: from the name, :func:`category_for`).
            unhealthy_tier: the tier it forces while unhealthy, overriding the category's rule
                (required for ``ServiceCategory.CUSTOM``).
            max_response_time_ms: a healthy report slower than this counts as unhealthy.
        """
        nonblank("service name", name)
        if category is None:
            category = category_for(name)
        elif not isinstance(category, ServiceCategory):
            raise TypeError(f"category must be a ServiceCategory, got {category!r}")
        if unhealthy_tier is not None:
            unhealthy_tier = _tier("unhealthy_tier", unhealthy_tier)
        elif category is ServiceCategory.CUSTOM:
            raise ValueError(f"service {name!r}: a CUSTOM category needs unhealthy_tier=")
        slow = (
            None
            if max_response_time_ms is None
            else number("max_response_time_ms", max_response_time_ms, minimum=0.0)
        )
        with self._lock:
            old = self._services.get(name)
            service = _Service(
                category, unhealthy_tier or self._rules[category], slow, unhealthy_tier is not None
            )
            if old is not None:
                service.healthy, service.error = old.healthy, old.error
                service.response_time_ms, service.updated_at = old.response_time_ms, old.updated_at
            self._services[name] = service
            self._evaluate(f"service {name!r} registered")

    def update_health(
        self,
        name: str,
        healthy: bool = True,
        response_time_ms: float | None = None,
        error: str | BaseException | None = None,
    ) -> DegradationTier:
        """Report the health of service ``name``; returns the current tier afterwards.

        A report with ``healthy=True`` but a response time over the service's
        ``max_response_time_ms`` counts as unhealthy.
        """
        boolean("healthy", healthy)
        if response_time_ms is not None:
            response_time_ms = number("response_time_ms", response_time_ms, minimum=0.0)
        if error is not None and not isinstance(error, str | BaseException):
            raise TypeError(f"error must be a string or an exception, got {error!r}")
        nonblank("service name", name)
        message = None if error is None else (error if isinstance(error, str) else repr(error))
        now = self._now()
        with self._lock:
            service = self._services.get(name)
            if service is None:
                category = category_for(name)
                service = self._services[name] = _Service(category, self._rules[category], None)
            slow = (
                healthy
                and response_time_ms is not None
                and service.max_response_time_ms is not None
                and response_time_ms > service.max_response_time_ms
            )
            if slow:
                healthy = False
                message = message or (
                    f"response time {response_time_ms:g} ms over "
                    f"{service.max_response_time_ms:g} ms"
                )
            flipped = service.healthy != healthy
            service.healthy = healthy
            service.response_time_ms = response_time_ms
            service.error = None if healthy else message
            service.updated_at = now
            if flipped:
                _events.emit(
                    _events.ServiceHealthChanged(
                        policy="degradation",
                        name=self.name,
                        at=now,
                        service=name,
                        healthy=healthy,
                        error=service.error,
                    )
                )
            return self._evaluate(f"{name} {'healthy' if healthy else 'unhealthy'}", now)

    def remove_service(self, name: str) -> None:
        """Stop tracking ``name`` (its health no longer counts); unknown names are ignored."""
        with self._lock:
            if self._services.pop(name, None) is not None:
                self._evaluate(f"service {name!r} removed")

    # -- rules and manual control ---------------------------------------------------------------

    @property
    def rules(self) -> dict[ServiceCategory, DegradationTier]:
        """A copy of the category rules."""
        return dict(self._rules)

    def set_rule(self, category: ServiceCategory, tier: DegradationTier) -> None:
        """Make an unhealthy service of ``category`` force ``tier`` from now on."""
        if not isinstance(category, ServiceCategory):
            raise TypeError(f"set_rule: category must be a ServiceCategory, got {category!r}")
        if category is ServiceCategory.CUSTOM:
            raise ValueError(
                "set_rule: category must be LLM, EXTERNAL_API or DATABASE (CUSTOM services "
                "carry their own unhealthy_tier)"
            )
        tier = _tier("set_rule: tier", tier)
        with self._lock:
            self._rules[category] = tier
            for service in self._services.values():
                if service.category is category and not service.own_tier:
                    service.unhealthy_tier = tier
            self._evaluate(f"rule {category.name} -> {tier.name}")

    def force_tier(self, tier: DegradationTier | None) -> None:
        """Hold the tier at ``tier`` whatever the health says (``None`` lifts it).

        Forcing and lifting take effect at once, without the dwell (an operator's decision).
        """
        forced = None if tier is None else _tier("tier", tier)
        with self._lock:
            self._forced = forced
            self._improving_since = None
            self._better_since.clear()
            reason = "forced" if forced is not None else "force lifted"
            self._set_tier(self._target() if forced is None else forced, reason, self._now())

    def on_tier_change(self, callback: TierCallback) -> TierCallback:
        """Call ``callback(old, new, reason)`` on every tier change; returns it (a decorator).

        Callbacks run in the thread that caused the change, after the change; one that raises is
        logged and skipped.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        with self._lock:
            self._callbacks.append(callback)
        return callback

    def remove_callback(self, callback: TierCallback) -> None:
        """Stop calling ``callback``; one not registered is ignored."""
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def reset(self) -> None:
        """Forget every service, lift any forced tier and return to ``TIER_1_FULL`` at once."""
        with self._lock:
            self._services.clear()
            self._forced = None
            self._improving_since = None
            self._better_since.clear()
            self._set_tier(DegradationTier.TIER_1_FULL, "reset", self._now())

    # -- reading the tier -----------------------------------------------------------------------

    def get_current_tier(self) -> DegradationTier:
        """The current tier (an improvement whose dwell has passed is applied first)."""
        if self._improving_since is not None:
            with self._lock:
                return self._evaluate("recovered")
        return self._tier

    @property
    def tier(self) -> DegradationTier:
        """The same as :meth:`get_current_tier`."""
        return self.get_current_tier()

    def allows(self, min_tier: DegradationTier) -> bool:
        """Whether an operation needing at most ``min_tier`` may run now."""
        return self.get_current_tier() <= min_tier

    def target_tier(self) -> DegradationTier:
        """The tier the health reports call for now, before hysteresis."""
        with self._lock:
            return self._forced if self._forced is not None else self._target()

    def snapshot(self) -> dict[str, Any]:
        """The tier, the pending improvement and every service's health, as plain data."""
        with self._lock:
            tier = self._evaluate("recovered")
            target = self._forced if self._forced is not None else self._target()
            return {
                "name": self.name,
                "tier": tier,
                "target": target,
                "forced": self._forced,
                "improving_since": self._improving_since,
                "changed_at": self._changed_at,
                "min_dwell": self.min_dwell,
                "services": {
                    name: ServiceHealth(
                        name=name,
                        category=s.category,
                        healthy=s.healthy,
                        response_time_ms=s.response_time_ms,
                        error=s.error,
                        updated_at=s.updated_at,
                        unhealthy_tier=s.unhealthy_tier,
                    )
                    for name, s in sorted(self._services.items())
                },
            }

    def services(self) -> dict[str, ServiceHealth]:
        """Every tracked service's last health report."""
        services: dict[str, ServiceHealth] = self.snapshot()["services"]
        return services

    # -- internals ------------------------------------------------------------------------------

    def _now(self) -> float:
        return (self._clock or get_clock()).now()

    def _target(self) -> DegradationTier:
        worst = DegradationTier.TIER_1_FULL
        for service in self._services.values():
            if not service.healthy and service.unhealthy_tier > worst:
                worst = service.unhealthy_tier
        return worst

    def _evaluate(self, reason: str, now: float | None = None) -> DegradationTier:
        """Move the tier toward the target (lock held); returns the current tier."""
        if self._forced is not None:
            return self._tier
        target = self._target()
        current = self._tier
        since = self._better_since
        if target >= current:
            since.clear()
            self._improving_since = None
            if target > current:
                self._set_tier(target, reason, self._now() if now is None else now)
            return self._tier
        now = self._now() if now is None else now
        for tier in DegradationTier:
            if tier < target:
                since.pop(tier, None)  # the target is worse than this tier again
            elif tier < current:
                since.setdefault(tier, now)
        # The best tier the target has been at or better than for the whole dwell.
        new = next(
            (t for t in sorted(since) if now - since[t] >= self.min_dwell),
            current,
        )
        if new != current:
            for tier in [t for t in since if t >= new]:
                del since[tier]
            self._set_tier(new, reason, now)
        self._improving_since = min(since.values(), default=None)
        return self._tier

    def _set_tier(self, new: DegradationTier, reason: str, now: float) -> None:
        old = self._tier
        if new == old:
            return
        self._tier = new
        self._changed_at = now
        _events.emit(
            _events.TierChanged(
                policy="degradation", name=self.name, at=now, old=old, new=new, reason=reason
            )
        )
        for callback in tuple(self._callbacks):
            try:
                callback(old, new, reason)
            except Exception:
                _events._log.exception("degradation callback %r failed", callback)


def _tier(field: str, value: object) -> DegradationTier:
    if isinstance(value, DegradationTier):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return DegradationTier(value)
        except ValueError:
            pass
    raise ValueError(f"{field} must be a DegradationTier (1-4), got {value!r}")


def _check_rules(
    rules: Mapping[ServiceCategory, DegradationTier],
) -> dict[ServiceCategory, DegradationTier]:
    if not isinstance(rules, Mapping):
        raise TypeError(
            f"rules must be a mapping of ServiceCategory to DegradationTier, got {rules!r}"
        )
    out: dict[ServiceCategory, DegradationTier] = {}
    for category, tier in rules.items():
        if not isinstance(category, ServiceCategory) or category is ServiceCategory.CUSTOM:
            raise ValueError(
                f"rules keys must be LLM, EXTERNAL_API or DATABASE categories, got {category!r}"
            )
        out[category] = _tier(f"rules[{category.name}]", tier)
    return out


# The latest live manager of each name (what metrics report).
_MANAGERS: dict[str, weakref.ref[DegradationManager]] = {}


def managers() -> list[DegradationManager]:
    """The live managers, one per name (the latest made), sorted by name."""
    live = [(name, ref()) for name, ref in sorted(_MANAGERS.items())]
    return [manager for _, manager in live if manager is not None]


def _tier_readings() -> list[tuple[str, float]]:
    return [(manager.name, float(manager.get_current_tier())) for manager in managers()]


def _health_readings() -> list[tuple[tuple[str, str], float]]:
    return [
        ((manager.name, service.name), 1.0 if service.healthy else 0.0)
        for manager in managers()
        for service in manager.services().values()
    ]


# What metrics read when scraped, published here so that instrumentation never imports this module.
_events.add_reading("degradation_tier", _tier_readings)
_events.add_reading("service_health", _health_readings)


_DEFAULT: DegradationManager | None = None
_DEFAULT_LOCK = threading.Lock()


def get_degradation_manager() -> DegradationManager:
    """The process-wide manager (made on first use, reading the environment then)."""
    global _DEFAULT
    manager = _DEFAULT
    if manager is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = DegradationManager()
            manager = _DEFAULT
    return manager


def degradation_handler(
    min_tier: DegradationTier,
    fallback_value: Any = None,
    *,
    fallback_function: Callable[..., Any] | None = None,
    raise_on_degraded: bool = False,
    manager: DegradationManager | None = None,
) -> Callable[[F], F]:
    """Run the decorated function only while the tier is ``min_tier`` or better.

    Args:
        min_tier: the most degraded tier in which the function still runs
            (``TIER_2_CORE``: runs in tiers 1 and 2).
        fallback_value: returned instead in a worse tier (default ``None``).
        fallback_function: called with the call's arguments instead, in a worse tier (awaited
            when the function is ``async def``); overrides ``fallback_value``.
        raise_on_degraded: raise :class:`ServiceDegraded` instead of returning a fallback, so
            an outer ``@fallback`` (for instance a cache) can answer.
        manager: the manager to consult (default: :func:`get_degradation_manager` at call time).
    """
    needed = _tier("min_tier", min_tier)
    boolean("raise_on_degraded", raise_on_degraded)
    if fallback_function is not None and not callable(fallback_function):
        raise TypeError(f"fallback_function must be callable, got {fallback_function!r}")
    if fallback_function is not None and raise_on_degraded:
        raise ValueError("give fallback_function= or raise_on_degraded=True, not both")
    if manager is not None and not isinstance(manager, DegradationManager):
        raise TypeError(f"manager must be a DegradationManager, got {manager!r}")

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"degradation_handler decorates a function, got {fn!r}")
        qualname = getattr(fn, "__qualname__", repr(fn))

        def refused(current: DegradationManager) -> DegradationTier | None:
            tier = current._tier if current._improving_since is None else current.get_current_tier()
            if tier <= needed:
                return None
            if _events.HOOKS or _events._logger("degradation").isEnabledFor(logging.DEBUG):
                _events.emit(
                    _events.CallRejected(
                        policy="degradation",
                        name=current.name,
                        at=current._now(),
                        reason=f"tier {tier.name} worse than {needed.name} for {qualname}",
                    )
                )
            return tier

        def degraded_error(current: DegradationManager, tier: DegradationTier) -> ServiceDegraded:
            return ServiceDegraded(
                f"{qualname} needs {needed.name} or better; the service is in {tier.name}",
                name=current.name,
            )

        if is_async(fn):  # async callable objects too: awaitable in every tier

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                current = manager or get_degradation_manager()
                tier = refused(current)
                if tier is None:
                    return await fn(*args, **kwargs)
                if raise_on_degraded:
                    raise degraded_error(current, tier)
                if fallback_function is not None:
                    result = fallback_function(*args, **kwargs)
                    return await result if inspect.isawaitable(result) else result
                return fallback_value

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            current = manager or get_degradation_manager()
            tier = refused(current)
            if tier is None:
                return fn(*args, **kwargs)
            if raise_on_degraded:
                raise degraded_error(current, tier)
            if fallback_function is not None:
                return fallback_function(*args, **kwargs)
            return fallback_value

        return cast(F, wrapper)

    return decorate
