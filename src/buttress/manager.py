"""A team's resilience in one object: its resources, components, breakers, tier and health report.

Theory of operation
-------------------
``ResilienceManager("marketing-team")`` owns, for one team:

* a :class:`buttress.health.ResourceManager` that checks the team's resources on a schedule
  (``register_*_monitor``; started by ``await start()`` or, in a sync application,
  ``start_in_thread()``);
* a :class:`buttress.health.HealthMonitor` of its components (``register_component``, fed by the
  policies' events or by ``record_success`` / ``record_failure``);
* a :class:`buttress.DegradationManager` named after the team, fed by resource status: a resource
  that turns CRITICAL or UNAVAILABLE reports its service unhealthy, any better status healthy,
  and the tier follows by the degradation rules and their hysteresis. The service is the
  resource's key (``"database:orders"``) and its category comes from the resource type:

  ==========================================  ===========================================
  resource type                               while CRITICAL or UNAVAILABLE
  ==========================================  ===========================================
  ``DATABASE``                                ``DATABASE``: ``TIER_4_MAINTENANCE``
  ``NETWORK``, ``MCP_SERVER``, ``DOCKER``,    ``EXTERNAL_API``: ``TIER_3_READ_ONLY``
  ``K8S_POD``
  ``API_QUOTA``                               ``LLM``: ``TIER_2_CORE`` (the quotas a team
                                              watches are its model providers')
  ``MEMORY``, ``CPU``                         ``TIER_2_CORE`` (shed optional features)
  ==========================================  ===========================================

  ``category=`` on any ``register_*`` call overrides it (a :class:`ServiceCategory`, or a
  :class:`DegradationTier` for a tier of its own; ``TIER_1_FULL`` never degrades the team).

:meth:`ResilienceManager.get_health_report` answers from what the monitors last saw: no check
runs to answer it. Several managers in one process are independent (their own resources,
components, schedule and degradation manager); circuit breakers are process-wide by name, so the
report's ``circuits`` shows the registered breakers (all, or the names given in ``circuits=``).

Fallback protocols: the manager holds a :class:`buttress.protocol.ProtocolHost` (``protocol_host``)
with the team's protocol per resource type (the defaults, its ``fallback_strategies``
configuration, or :meth:`ResilienceManager.set_protocol`), its target pools
(:meth:`ResilienceManager.register_targets`), the durable queue of QUEUE_REQUEST steps (``queue=``)
and the record of the steps taken (the report's ``protocols``). Resource status feeds it too: the
names of CRITICAL or UNAVAILABLE monitors are skipped as targets and never retried, and a resource
turning HEALTHY lifts its SCALE_DOWN and degraded service and replays the queue.
:meth:`ResilienceManager.with_resilience` runs a call through a timeout, the resource's breaker
and its protocol.

Shared state (``storage=``, a store URL or object; also the config key ``storage``): target
pools registered by the manager keep their state in the store under the resource type's name, so
every team on that store skips a target another process cooled; and a
:class:`buttress.health.shared.SharedVerdicts` publishes the monitors' statuses there and lets the
protocol engine consult everybody's (see that module for how a local and a shared reading
combine). Without storage nothing is published or read.

The ``register_*`` methods for system, database, network, Docker, Kubernetes and MCP resources
import their check factories only when called, so the optional dependencies they need are never
imported otherwise; bad arguments fail at registration with the factory's error.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from ._config import nonblank
from .backends import open_storage
from .clock import Clock, get_clock
from .degradation import DegradationManager, DegradationTier, ServiceCategory
from .health.component import ComponentState, HealthMonitor
from .health.manager import (
    CRITICAL,
    Monitor,
    OverallHealth,
    ResourceManager,
    ResourceState,
    _Stopping,
    aggregate,
    resource_type,
)
from .health.quota import QuotaTracker, quota_check
from .health.shared import KnownBad, SharedVerdicts
from .health.types import ResourceStatus, ResourceType
from .policies.circuit import CircuitState, circuit_breakers
from .protocol.action import FallbackAction, FallbackProtocol
from .protocol.engine import ProtocolHost
from .protocol.targets import TargetPool
from .queue import RequestQueue

__all__ = ["DEGRADATION_CATEGORIES", "ResilienceManager"]

#: Replays after a recovery at most (paced by the queue's retry delay) while requests are left.
_REPLAY_ROUNDS = 20

#: How a resource type degrades the team while CRITICAL or UNAVAILABLE (module documentation).
DEGRADATION_CATEGORIES: Mapping[ResourceType, ServiceCategory | DegradationTier] = {
    ResourceType.DATABASE: ServiceCategory.DATABASE,
    ResourceType.NETWORK: ServiceCategory.EXTERNAL_API,
    ResourceType.MCP_SERVER: ServiceCategory.EXTERNAL_API,
    ResourceType.DOCKER: ServiceCategory.EXTERNAL_API,
    ResourceType.K8S_POD: ServiceCategory.EXTERNAL_API,
    ResourceType.API_QUOTA: ServiceCategory.LLM,
    ResourceType.MEMORY: DegradationTier.TIER_2_CORE,
    ResourceType.CPU: DegradationTier.TIER_2_CORE,
}

_CONFIG_KEYS = frozenset(
    {
        "check_interval",
        "check_timeout",
        "fail_threshold",
        "success_threshold",
        "horizon",
        "thresholds",
        "fallback_strategies",
        "circuits",
        "timeouts",
        "storage",
    }
)


def _factory(module: str, name: str) -> Callable[..., Any]:
    """The check factory ``buttress.health.<module>.<name>``, imported on first use (the
    modules import their optional dependencies lazily in turn)."""
    factory: Callable[..., Any] = getattr(
        importlib.import_module(f"buttress.health.{module}"), name
    )
    return factory


def _check_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping like {{'check_interval': 20}}, got {config!r}")
    unknown = sorted(str(k) for k in config if k not in _CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"unknown configuration key(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{', '.join(sorted(_CONFIG_KEYS))}"
        )
    return dict(config)


def _fallback_strategies(value: object) -> dict[ResourceType, tuple[object, ...]]:
    """The ``fallback_strategies`` of a team's configuration: actions per resource type."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"fallback_strategies must map resource types to lists of actions, got {value!r}"
        )
    out: dict[ResourceType, tuple[object, ...]] = {}
    for key, actions in value.items():
        rtype = resource_type(key)
        if isinstance(actions, str | bytes) or not isinstance(actions, Sequence):
            raise TypeError(
                f"fallback_strategies[{rtype.value}] must be a list of actions, got {actions!r}"
            )
        if any(action is None for action in actions):
            raise ValueError(f"fallback_strategies[{rtype.value}] holds None")
        out[rtype] = tuple(actions)
    return out


def _timeouts(value: object) -> dict[ResourceType, float]:
    """The ``timeouts`` of a team's configuration: seconds per resource type for
    ``with_resilience``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"timeouts must map resource types to seconds, got {value!r}")
    out: dict[ResourceType, float] = {}
    for key, seconds in value.items():
        rtype = resource_type(key)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 < seconds < math.inf
        ):
            raise ValueError(
                f"timeouts[{rtype.value}] must be a finite number of seconds > 0, got {seconds!r}"
            )
        out[rtype] = float(seconds)
    return out


#: Seconds ``with_resilience`` gives a call of each resource type unless configured otherwise.
DEFAULT_TIMEOUT = 30.0


class ResilienceManager:
    """One team's resource monitoring, component health, degradation tier and health report.

    Args:
        team: the team's name (the report's ``team``; names its metrics, logs and tier).
        queue: the durable :class:`~buttress.RequestQueue` for the QUEUE_REQUEST steps of its
            fallback protocols (without one, those steps are skipped).
        config: the team's configuration: ``check_interval``, ``check_timeout``,
            ``fail_threshold``, ``success_threshold``, ``horizon``, ``thresholds``
            (``{ResourceType.MEMORY: {"degraded": 70, "critical": 90}}``), ``circuits`` and
            ``fallback_strategies`` (kept as :attr:`fallback_strategies` for the fallback
            protocols). Unknown keys are a ``ValueError``.
        check_interval: overrides ``config["check_interval"]`` and ``RESILIENCE_CHECK_INTERVAL``.
        degradation: the degradation manager to feed (default: a new one named after the team).
        circuits: breaker names shown in the report (default: every registered breaker).
        clock: the clock of the schedule, components and tier (default: the process default).
        storage: a store URL (``"redis://..."``, ``"sqlite:///state.db"``) or store object shared
            with other teams and processes (also ``config["storage"]``; default ``None``: this
            process only). With it, target pools are shared by resource type and the monitors'
            verdicts are published and read (see "Teams sharing state" in the README).

    Raises:
        ValueError / TypeError: a bad setting or environment variable, naming it.
    """

    def __init__(
        self,
        team: str,
        config: Mapping[str, Any] | None = None,
        *,
        check_interval: float | None = None,
        degradation: DegradationManager | None = None,
        circuits: Iterable[str] | None = None,
        clock: Clock | None = None,
        queue: RequestQueue | None = None,
        storage: Any = None,
    ) -> None:
        nonblank("team", team)
        settings = _check_config(config)
        self.team = team
        self.config: Mapping[str, Any] = settings
        self.fallback_strategies = _fallback_strategies(settings.get("fallback_strategies"))
        self.resources = ResourceManager(
            team,
            check_interval=check_interval
            if check_interval is not None
            else settings.get("check_interval"),
            check_timeout=settings.get("check_timeout"),
            fail_threshold=settings.get("fail_threshold", 3),
            success_threshold=settings.get("success_threshold", 2),
            horizon=settings.get("horizon", 600.0),
            thresholds=settings.get("thresholds"),
            clock=clock,
        )
        self.health = HealthMonitor(team, clock=clock)
        if degradation is not None and not isinstance(degradation, DegradationManager):
            raise TypeError(f"degradation must be a DegradationManager, got {degradation!r}")
        self.degradation = degradation or DegradationManager(name=team, clock=clock)
        circuits = circuits if circuits is not None else settings.get("circuits")
        if circuits is not None:
            if isinstance(circuits, str) or not isinstance(circuits, Iterable):
                raise TypeError(f"circuits must be a list of breaker names, got {circuits!r}")
            circuits = tuple(circuits)
            if not all(isinstance(c, str) and c for c in circuits):
                raise ValueError(f"circuits must be breaker names, got {circuits!r}")
        self._circuits: tuple[str, ...] | None = circuits
        self._clock = clock
        self.resources.on_status_change(self._feed_degradation)
        #: The team's fallback protocols, target pools and their record.
        self.protocol_host = ProtocolHost(
            team, degradation=self.degradation, queue=queue, clock=clock
        )
        for rtype, actions in self.fallback_strategies.items():
            try:
                self.set_protocol(rtype, list(actions))  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"fallback_strategies[{rtype.value}]: {exc}") from None
        self._timeouts = _timeouts(settings.get("timeouts"))
        self.resources.on_status_change(self._feed_protocols)
        #: The team's link to verdicts shared through ``storage`` (``None`` without storage).
        self.shared: SharedVerdicts | None = None
        self._store: Any = None
        self._owns_store = False
        self._share(storage if storage is not None else settings.get("storage"))

    def __repr__(self) -> str:
        return f"ResilienceManager({self.team!r}, resources={len(self.resources.monitors())})"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start monitoring on the running event loop (``RuntimeError`` if already running)."""
        await self.resources.start()
        if self.shared is not None:
            self.shared.start()

    def start_in_thread(self) -> None:
        """Start monitoring on a background thread of its own (sync applications)."""
        self.resources.start_in_thread()
        if self.shared is not None:
            self.shared.start()

    def stop(self) -> _Stopping:
        """Stop monitoring (and publishing shared verdicts); ``await`` it in asyncio code, call
        it plainly otherwise."""
        if self.shared is not None:
            self.shared.stop()
        return self.resources.stop()

    def close(self) -> None:
        """Stop publishing and release the store the manager opened from a URL (a store object
        passed in stays the caller's). Monitoring is stopped with :meth:`stop`."""
        if self.shared is not None:
            self.shared.stop()
        for rtype in ResourceType:
            pool = self.protocol_host.pool(rtype)
            if pool is not None:
                pool.close()
        store, self._store = self._store, None
        if store is not None and self._owns_store:
            store.close()

    @property
    def running(self) -> bool:
        return self.resources.running

    async def __aenter__(self) -> ResilienceManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- resources -------------------------------------------------------------------------------

    def register_monitor(
        self,
        rtype: ResourceType | str,
        name: str,
        check: Callable[[], Any],
        *,
        category: ServiceCategory | DegradationTier | None = None,
        **options: Any,
    ) -> Monitor:
        """Watch a resource with any check (see :meth:`ResourceManager.register` for options).

        ``check`` (``def`` or ``async def``, no arguments) returns a :class:`Reading`, a usage
        percentage, a bool (healthy or not) or ``None`` (healthy), and raises when the resource
        failed. May be called before or after :meth:`start`. Every ``register_*`` method takes
        ``required=True`` for a resource the service cannot serve without (readiness fails
        while it is UNAVAILABLE) and ``critical=False`` for one that can only degrade the team.
        """
        rtype = resource_type(rtype)
        degrades = DEGRADATION_CATEGORIES[rtype] if category is None else category
        if not isinstance(degrades, ServiceCategory | DegradationTier):
            raise TypeError(
                f"category must be a ServiceCategory or a DegradationTier, got {category!r}"
            )
        if degrades is ServiceCategory.CUSTOM:
            raise ValueError("category: give the tier itself (a DegradationTier) for a custom rule")
        monitor = self.resources.register(rtype, name, check, **options)
        if isinstance(degrades, DegradationTier):
            self.degradation.register_service(
                monitor.key, ServiceCategory.CUSTOM, unhealthy_tier=degrades
            )
        else:
            self.degradation.register_service(monitor.key, degrades)
        return monitor

    def unregister(self, rtype: ResourceType | str, name: str) -> bool:
        """Stop watching a resource (its health no longer counts for the tier, and its name is no
        longer skipped as a known bad target)."""
        rtype = resource_type(rtype)
        removed = self.resources.unregister(rtype, name)
        if removed:
            self.degradation.remove_service(f"{rtype.value}:{name}")
            self._feed_protocols(None, None)
        return removed

    def register_api_quota_monitor(
        self, name: str, fn: Callable[[], Any] | QuotaTracker | None = None, **options: Any
    ) -> Monitor:
        """Watch an API quota: ``fn()`` returns its figure, or a :class:`QuotaTracker` is fed the
        API's responses (without ``fn``, one is made: ``monitor.check.observe(response)``).

        See :mod:`buttress.health.quota` for what ``fn`` may return.
        """
        check = QuotaTracker(name, clock=self._clock) if fn is None else quota_check(fn)
        return self.register_monitor(ResourceType.API_QUOTA, name, check, **options)

    def register_memory_monitor(
        self,
        name: str = "system",
        *,
        scope: str = "auto",
        cgroup_root: str = "/sys/fs/cgroup",
        proc_root: str = "/proc",
        **options: Any,
    ) -> Monitor:
        """Watch memory (``scope``: ``auto``, ``process``, ``host`` or ``container``)."""
        system = {"scope": scope, "cgroup_root": cgroup_root, "proc_root": proc_root}
        return self._system_monitor(ResourceType.MEMORY, name, system, options)

    def register_cpu_monitor(
        self,
        name: str = "system",
        *,
        scope: str = "auto",
        cgroup_root: str = "/sys/fs/cgroup",
        proc_root: str = "/proc",
        **options: Any,
    ) -> Monitor:
        """Watch CPU (``scope``: ``auto``, ``process``, ``host`` or ``container``)."""
        system = {"scope": scope, "cgroup_root": cgroup_root, "proc_root": proc_root}
        return self._system_monitor(ResourceType.CPU, name, system, options)

    def _system_monitor(
        self, kind: ResourceType, name: str, system: dict[str, str], options: dict[str, Any]
    ) -> Monitor:
        factory = "memory_check" if kind is ResourceType.MEMORY else "cpu_check"
        check = _factory("system", factory)(**system)
        return self.register_monitor(kind, name, check, **options)

    def register_database_monitor(
        self, name: str, target: object, *, query: str = "SELECT 1", **options: Any
    ) -> Monitor:
        """Watch a database: a SQLAlchemy engine, a psycopg/asyncpg pool or connection, a DSN,
        or a SQLite path (ping with ``query`` plus the pool's figures)."""
        check = _factory("database", "database_check")(target, query=query)
        return self.register_monitor(ResourceType.DATABASE, name, check, **options)

    def register_network_monitor(
        self,
        name: str,
        target: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        expect_status: int | Collection[int] = 200,
        latency_budget: float | None = None,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Monitor:
        """Watch a network endpoint: an ``http(s)://`` URL (GET, expected status, latency
        budget), or a TCP endpoint as ``host=``/``port=``, ``"tcp://host:port"`` or
        ``"host:port"`` (connect)."""
        check: Callable[[], Any]
        if target is not None and (host is not None or port is not None):
            raise ValueError("give a target, or host= and port=, not both")
        if target is None:
            if host is None or port is None:
                raise ValueError(f"network monitor {name!r} needs a URL, or host= and port=")
            check = _factory("network", "tcp_check")(host, port)
        elif not isinstance(target, str):
            raise TypeError(f"network target must be a URL or 'host:port', got {target!r}")
        elif target.lower().startswith(("http://", "https://")):
            check = _factory("network", "http_check")(
                target,
                expect_status=expect_status,
                latency_budget=latency_budget,
                headers=headers,
            )
        else:
            address = target[len("tcp://") :] if target.lower().startswith("tcp://") else target
            where, sep, number = address.rpartition(":")
            where = where.strip("[]")  # [::1]:5432
            if not sep or not where or not number.isdigit() or "/" in address:
                raise ValueError(
                    f"network target must be http(s)://..., tcp://host:port or host:port; "
                    f"got {target!r}"
                )
            check = _factory("network", "tcp_check")(where, int(number))
        return self.register_monitor(ResourceType.NETWORK, name, check, **options)

    def register_docker_monitor(
        self,
        name: str = "docker",
        container: str | None = None,
        *,
        socket: str = "/var/run/docker.sock",
        **options: Any,
    ) -> Monitor:
        """Watch the Docker daemon (``/_ping``) or one container's state, health and restarts."""
        check = _factory("docker", "docker_check")(container, socket=socket)
        return self.register_monitor(ResourceType.DOCKER, name, check, **options)

    def register_k8s_monitor(
        self,
        name: str = "pod",
        *,
        pod: str | None = None,
        namespace: str | None = None,
        **options: Any,
    ) -> Monitor:
        """Watch a Kubernetes pod's conditions and restarts from inside the cluster (the pod
        itself by default; ``host=``, ``port=``, ``token_path=``, ``ca_path=`` and
        ``namespace_path=`` go to the check)."""
        factory_keys = ("host", "port", "token_path", "ca_path", "namespace_path")
        factory = {key: options.pop(key) for key in factory_keys if key in options}
        check = _factory("kubernetes", "pod_check")(pod=pod, namespace=namespace, **factory)
        return self.register_monitor(ResourceType.K8S_POD, name, check, **options)

    def register_mcp_monitor(
        self,
        name: str,
        *,
        command: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        url: str | None = None,
        config: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Monitor:
        """Watch an MCP server: with only a name, found in the MCP configuration file
        (``MCP_CONFIG``, else ``./mcp.json``); or started with ``command``/``args``/``env``
        (stdio); or reached at ``url`` (streamable HTTP)."""
        check = _factory("mcp", "mcp_check")(
            name, command=command, args=args, env=env, url=url, config=config
        )
        return self.register_monitor(ResourceType.MCP_SERVER, name, check, **options)

    def get_resource_status(self, rtype: ResourceType | str, name: str) -> ResourceStatus | None:
        """A resource's current status (``None`` before its first check); runs no check."""
        return self.resources.status(rtype, name)

    def resource_state(self, rtype: ResourceType | str, name: str) -> ResourceState:
        """A resource's current state; runs no check."""
        return self.resources.state(rtype, name)

    # -- components ------------------------------------------------------------------------------

    def register_component(
        self,
        name: str,
        *,
        critical: bool = True,
        watch: str | Iterable[str] | None = None,
        policies: Iterable[str] | None = None,
    ) -> None:
        """Declare a component, optionally fed by the events of the policies named in ``watch``
        (see :class:`buttress.health.HealthMonitor`)."""
        self.health.register(name, critical=critical, watch=watch, policies=policies)

    def record_success(self, component: str) -> None:
        self.health.record_success(component)

    def record_failure(self, component: str, error: str | BaseException | None = None) -> None:
        self.health.record_failure(component, error)

    def component_state(self, name: str) -> ComponentState:
        return self.health.component(name)

    # -- the report ------------------------------------------------------------------------------

    def _circuit_report(self) -> dict[str, dict[str, object]]:
        breakers = circuit_breakers()
        names = sorted(breakers) if self._circuits is None else self._circuits
        out: dict[str, dict[str, object]] = {}
        for name in names:
            breaker = breakers.get(name)
            if breaker is None:
                continue
            state = breaker.state
            # An open breaker refuses every call, whatever its counters say after tripping.
            failure_rate = 1.0 if state is CircuitState.OPEN else breaker.failure_rate
            out[name] = {
                "state": state.value,
                "success_rate": round(1.0 - failure_rate, 4),
                "failure_rate": round(failure_rate, 4),
            }
        return out

    def overall_health(self) -> OverallHealth:
        """The team's health: resources and components by the aggregation table, and at least
        ``degraded`` while a reported circuit breaker is not closed."""
        return self._overall(
            self.resources.states().values(), self.health.components().values(), None
        )

    def _overall(
        self,
        resources: Iterable[ResourceState],
        components: Iterable[ComponentState],
        circuits: Mapping[str, Mapping[str, object]] | None,
    ) -> OverallHealth:
        members = [(s.status, s.critical) for s in resources]
        members += [(c.status, c.critical) for c in components]
        overall = aggregate(members)
        if circuits is None:
            circuits = self._circuit_report()
        if overall is OverallHealth.HEALTHY and any(
            c["state"] != CircuitState.CLOSED.value for c in circuits.values()
        ):
            overall = OverallHealth.DEGRADED
        return overall

    def health_report(self) -> dict[str, Any]:
        """The team's health report as JSON-able data (what :meth:`get_health_report` returns)."""
        states = self.resources.states()
        components = self.health.components()
        circuits = self._circuit_report()
        tier = self.degradation.get_current_tier()
        unhealthy = sorted(
            key
            for key, s in states.items()
            if s.status is not None and s.status.rank >= CRITICAL.rank
        )
        return {
            "team": self.team,
            "overall_health": self._overall(states.values(), components.values(), circuits).value,
            "components": {name: c.as_dict() for name, c in components.items()},
            "resources": {key: s.as_dict() for key, s in states.items()},
            "circuits": circuits,
            "degradation_tier": int(tier),
            "degradation_tier_name": tier.name,
            "unhealthy_resources": unhealthy,
            "protocols": self.protocol_host.report(),
            **({} if self.shared is None else {"shared": self.shared.report()}),
            "monitoring": self.resources.running,
            "check_interval": self.resources.check_interval,
            "generated_at": (self._clock or get_clock()).wall(),
        }

    async def get_health_report(self) -> dict[str, Any]:
        """The team's health report (the documented JSON shape), from the last results: no check
        runs to answer it. With ``storage``, the shared part is read in a worker thread."""
        if self.shared is None and not self.protocol_host.stored:
            return self.health_report()
        return await asyncio.to_thread(self.health_report)

    # -- operator surface ------------------------------------------------------------------------

    def asgi_app(self, token: str | None = None, **options: Any) -> Any:
        """The team's operator endpoints as an ASGI app (``/health``, ``/live``, ``/ready``,
        ``/metrics``, ``/state``, ``/events`` and the dashboard), to mount in a Starlette or
        FastAPI application: ``app.mount("/resilience", manager.asgi_app())``.

        ``token`` requires ``Authorization: Bearer <token>`` on everything but ``/live``; other
        options go to :func:`buttress.server.create_app`. Needs the ``server`` extra.
        """
        server = importlib.import_module("buttress.server")
        return server.create_app(self, token=token, **options)

    # -- degradation -----------------------------------------------------------------------------

    def _feed_degradation(self, state: ResourceState, old: ResourceStatus | None) -> None:
        status = state.status
        if status is None:
            return
        healthy = status.rank < CRITICAL.rank
        was_healthy = old is None or old.rank < CRITICAL.rank
        if healthy and was_healthy and old is not None:
            return  # healthy <-> degraded: nothing for the tier
        self.degradation.update_health(
            state.key,
            healthy=healthy,
            response_time_ms=None if state.latency is None else state.latency * 1000.0,
            error=None if healthy else (state.last_error or state.reason),
        )

    # -- fallback protocols ----------------------------------------------------------------------

    @property
    def queue(self) -> RequestQueue | None:
        """The durable queue of QUEUE_REQUEST steps."""
        return self.protocol_host.queue

    @queue.setter
    def queue(self, queue: RequestQueue | None) -> None:
        if queue is not None and not isinstance(queue, RequestQueue):
            raise TypeError(f"queue must be a RequestQueue, got {queue!r}")
        self.protocol_host.queue = queue

    def set_protocol(
        self,
        rtype: ResourceType | str,
        protocol: FallbackProtocol | Sequence[FallbackAction],
    ) -> FallbackProtocol:
        """Use ``protocol`` (or a list of actions) for calls depending on ``rtype``."""
        resource = resource_type(rtype)
        if not isinstance(protocol, FallbackProtocol):
            if isinstance(protocol, str | bytes) or not isinstance(protocol, Sequence):
                raise TypeError(
                    f"protocol for {resource.value} must be a FallbackProtocol or a list of "
                    f"FallbackAction, got {protocol!r}"
                )
            protocol = FallbackProtocol(resource, protocol)
        return self.protocol_host.set_protocol(resource, protocol)

    def protocol(self, rtype: ResourceType | str) -> FallbackProtocol:
        """The protocol in force for ``rtype`` (the team's, else the default)."""
        return self.protocol_host.protocol(resource_type(rtype))

    def register_targets(
        self,
        rtype: ResourceType | str,
        targets: Mapping[str, Any] | Sequence[tuple[str, Any]],
        *,
        chain: str | None = None,
        routes: Mapping[Any, str] | None = None,
        **pool_options: Any,
    ) -> TargetPool:
        """Name the targets calls depending on ``rtype`` may use, in order of preference
        (``{"openai": client, "anthropic": client, "local": fn}``, or names only, each its own
        target, for code that reads :func:`~buttress.current_target`); ``pool_options`` go to
        :class:`~buttress.protocol.TargetPool` (``probes``, ``cooldown``, ``prefer``, ``costs``,
        ``storage``...). With the manager's ``storage``, the pool keeps its state there under
        the resource type's name (``"api_quota"``), shared with every team on that storage;
        ``name=`` keeps it apart, ``storage=None`` keeps it in this process.

        ``routes`` sends errors of a class to a named chain instead of down the protocol
        (``{"context_window": "long-context"}``; a key may also be an exception type or a
        predicate of the error): the failing target is neither retried nor cooled, and the call
        goes on over the chain's targets within its deadline. ``chain="long-context"`` registers
        such a chain (its own pool, breakers and cooldowns) without replacing the main targets."""
        resource = resource_type(rtype)
        if chain is not None and (not isinstance(chain, str) or not chain):
            raise TypeError(f"chain must be a non-empty str, got {chain!r}")
        if (
            isinstance(targets, Sequence)
            and not isinstance(targets, str | bytes)
            and all(isinstance(t, str) for t in targets)
        ):
            # names only: each name is its own target
            targets = [(str(name), name) for name in targets]
        pool_options.setdefault("clock", self._clock)
        name = pool_options.pop("name", None)
        if self._store is not None:
            pool_options.setdefault("storage", self._store)
        if name is None:
            # a pool shared through the team's storage is named by its resource type only, so
            # every team on that storage sees the same targets' states
            shared = self._store is not None and pool_options["storage"] is self._store
            name = resource.value if shared else f"{self.team}.{resource.value}"
            if chain is not None:
                name = f"{name}.{chain}"
        pool = TargetPool(name, targets, **pool_options)
        self.protocol_host.register_targets(resource, pool, chain=chain, routes=routes)
        self._feed_protocols(None, None)
        return pool

    def provider_states(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Each target's state, by resource type: state, reason, since, expires_at,
        consecutive_failures, last_error."""
        return self.protocol_host.provider_states()

    def _stack(self, resource: ResourceType) -> float:
        return self._timeouts.get(resource, DEFAULT_TIMEOUT)

    async def with_resilience(
        self, fn: Callable[..., Any], rtype: ResourceType | str, /, *args: Any, **kwargs: Any
    ) -> Any:
        """Await ``fn(*args, **kwargs)`` with the full stack: a timeout (``timeouts`` config,
        default 30 s) around the resource's breaker (``<team>.<type>``, put in force for every
        call of the resource type from then on) around its fallback protocol (retry, switch,
        degrade, queue, cache... as configured)."""
        resource = resource_type(rtype)
        host = self.protocol_host
        timeout = host.with_timeout(resource, self._stack(resource))
        host.breaker(resource)  # in force from now on for every call of the resource
        assert timeout is not None
        return await timeout.acall(host.acall, resource, fn, args, kwargs)

    def call_with_resilience(
        self, fn: Callable[..., Any], rtype: ResourceType | str, /, *args: Any, **kwargs: Any
    ) -> Any:
        """The sync twin of :meth:`with_resilience` for a plain ``def``."""
        resource = resource_type(rtype)
        host = self.protocol_host
        timeout = host.with_timeout(resource, self._stack(resource))
        host.breaker(resource)
        assert timeout is not None
        return timeout.call(host.call, resource, fn, args, kwargs)

    def _feed_protocols(self, state: ResourceState | None, old: ResourceStatus | None) -> None:
        """Tell the protocols which resources are known bad; lift their measures on recovery."""
        host = self.protocol_host
        types = set(ResourceType) if state is None else {state.type}
        states = self.resources.states()
        for rtype in types:
            bad = frozenset(
                s.name
                for s in states.values()
                if s.type is rtype and s.status is not None and s.status.rank >= CRITICAL.rank
            )
            host.set_bad(rtype, bad)
        if state is None or state.status is not ResourceStatus.HEALTHY:
            return
        host.restore(state.type)
        queue = host.queue
        if queue is not None:
            threading.Thread(
                target=self._replay,
                args=(queue, state.type),
                name=f"buttress-replay-{self.team}",
                daemon=True,
            ).start()

    def _replay(self, queue: RequestQueue, rtype: ResourceType) -> None:
        """Replay the queue after ``rtype`` recovered. A first replay may find the target still
        being probed back (its requests fail and wait out the queue's retry delay): replay again,
        paced by that delay, while the resource stays healthy and requests are left, a bounded
        number of rounds (the next recovery starts again)."""
        clock = self._clock or get_clock()
        for _ in range(_REPLAY_ROUNDS):
            queue.replay()
            if queue.backlog()[0] == 0 or self.protocol_host._bad.get(rtype):
                return
            clock.sleep(queue.retry_delay)

    # -- shared state ----------------------------------------------------------------------------

    def _share(self, storage: object) -> None:
        """Share target pools and resource verdicts through ``storage`` (a URL or a store)."""
        if storage is None:
            return
        store = open_storage(storage)
        if store is None:  # "memory://": this process only
            return
        try:
            shared = SharedVerdicts(store, self.team, self.resources, clock=self._clock)
        except TypeError:
            if store is not storage:
                store.close()
            raise
        self._store, self._owns_store, self.shared = store, store is not storage, shared
        host = self.protocol_host

        def targets(resource: ResourceType) -> tuple[str, ...]:
            pool = host.pool(resource)
            return () if pool is None else pool.names

        host.consult(KnownBad(shared, targets))
        self.resources.on_status_change(lambda state, old: shared.nudge())
