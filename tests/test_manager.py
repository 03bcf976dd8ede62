"""ResilienceManager: a team's monitors, components, breakers, tier and health report."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from buttress import (
    CircuitBreaker,
    DegradationTier,
    FallbackStrategy,
    Reading,
    ResilienceManager,
    ResourceStatus,
    ResourceType,
    ServiceCategory,
    current_target,
)
from buttress.health import QuotaTracker
from buttress.testing import FakeClock


def aio(test: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(test(*args, **kwargs))

    return run


async def until(predicate: Callable[[], bool], turns: int = 200_000) -> None:
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition was never reached")


class Switch:
    """A check whose resource is up or down as the test says."""

    def __init__(self, up: bool = True, usage: float | None = None) -> None:
        self.up = up
        self.usage = usage
        self.calls = 0

    async def __call__(self) -> Reading:
        self.calls += 1
        if not self.up:
            raise ConnectionError("connection refused")
        return Reading(usage=self.usage)


# -- the design document's example ---------------------------------------------------------------


@aio
async def test_the_basic_team_integration_example_starts(clock: FakeClock) -> None:
    # The design document's example, as written but for the import line; the MCP server stands
    # in through the generic registration (its own module brings register_mcp_monitor's check).
    class MarketingTeam:
        def __init__(self) -> None:
            self.resilience = ResilienceManager("marketing-team")

        async def start(self) -> None:
            # Start resilience monitoring
            await self.resilience.start()

            # Register custom monitors
            self.resilience.register_monitor(ResourceType.MCP_SERVER, "supabase", self.ping_mcp)
            self.resilience.register_api_quota_monitor("openai", self.check_openai_quota)

        async def ping_mcp(self) -> bool:
            return True

        async def check_openai_quota(self) -> tuple[int, int]:
            return (855, 1000)

    team = MarketingTeam()
    await team.start()
    try:
        await until(lambda: team.resilience.resources.executions >= 2)
        await until(lambda: len(team.resilience.resources.states()) == 2)
        await until(lambda: all(s.status for s in team.resilience.resources.states().values()))
        report = await team.resilience.get_health_report()
    finally:
        await team.resilience.stop()
    assert report["team"] == "marketing-team"
    assert report["overall_health"] == "degraded"
    assert report["resources"]["api_quota:openai"]["status"] == "degraded"
    assert report["resources"]["api_quota:openai"]["usage"] == 85.5
    assert report["resources"]["mcp_server:supabase"]["status"] == "healthy"


@aio
async def test_the_report_has_the_documented_shape_and_types(clock: FakeClock) -> None:
    breaker = CircuitBreaker(name="rm-database_query", fail_max=50)
    for _ in range(49):
        breaker.call(lambda: 1)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    rm = ResilienceManager("marketing-team", circuits=["rm-database_query"])
    rm.register_component("system")
    clock.advance(3600)
    for _ in range(98):
        rm.record_success("system")
    rm.record_failure("system", "boom")
    rm.record_failure("system", "boom")

    async def quota() -> float:
        return 85.5

    rm.register_api_quota_monitor("openai", quota)
    async with rm:
        await until(lambda: rm.get_resource_status("api_quota", "openai") is not None)
        report = await rm.get_health_report()
    assert json.loads(json.dumps(report)) == report
    assert report["team"] == "marketing-team"
    assert report["overall_health"] in {"healthy", "degraded", "unhealthy"}
    system = report["components"]["system"]
    assert system["status"] == "healthy"
    assert system["uptime"] == 3600
    assert system["error_rate"] == 0.02
    quota = report["resources"]["api_quota:openai"]
    assert (quota["status"], quota["usage"]) == ("degraded", 85.5)
    for key in ("latency_ms", "last_error", "checked_at", "predicted_exhaustion_s"):
        assert key in quota
    circuit = report["circuits"]["rm-database_query"]
    assert circuit == {"state": "closed", "success_rate": 0.98, "failure_rate": 0.02}
    assert report["degradation_tier"] == 1
    assert isinstance(report["generated_at"], float)


@aio
async def test_reading_the_report_never_runs_a_check(clock: FakeClock) -> None:
    check = Switch()
    rm = ResilienceManager("team", check_interval=60)
    rm.register_monitor(ResourceType.NETWORK, "api", check)
    async with rm:
        await until(lambda: check.calls == 1)
        for _ in range(1000):
            await rm.get_health_report()
        assert check.calls == 1
        assert rm.resources.executions == 1


# -- degradation -----------------------------------------------------------------------------------


@aio
async def test_a_database_down_puts_the_team_in_maintenance(clock: FakeClock) -> None:
    db = Switch()
    rm = ResilienceManager("shop", check_interval=10, degradation=None)
    rm.register_monitor(ResourceType.DATABASE, "orders", db)
    rm.register_api_quota_monitor("openai", Switch(usage=10.0))
    async with rm:
        await until(lambda: rm.get_resource_status("database", "orders") is ResourceStatus.HEALTHY)
        assert rm.degradation.get_current_tier() is DegradationTier.TIER_1_FULL
        db.up = False
        await until(
            lambda: rm.get_resource_status("database", "orders") is ResourceStatus.UNAVAILABLE
        )
        assert rm.degradation.get_current_tier() is DegradationTier.TIER_4_MAINTENANCE
        services = rm.degradation.services()
        assert services["database:orders"].error == "ConnectionError: connection refused"
        db.up = True
        await until(lambda: rm.get_resource_status("database", "orders") is ResourceStatus.HEALTHY)
        assert rm.degradation.get_current_tier() is DegradationTier.TIER_4_MAINTENANCE  # dwell
        clock.advance(rm.degradation.min_dwell)
        assert rm.degradation.get_current_tier() is DegradationTier.TIER_1_FULL


@pytest.mark.parametrize(
    ("rtype", "status", "tier"),
    [
        (ResourceType.DATABASE, ResourceStatus.CRITICAL, DegradationTier.TIER_4_MAINTENANCE),
        (ResourceType.NETWORK, ResourceStatus.UNAVAILABLE, DegradationTier.TIER_3_READ_ONLY),
        (ResourceType.MCP_SERVER, ResourceStatus.CRITICAL, DegradationTier.TIER_3_READ_ONLY),
        (ResourceType.DOCKER, ResourceStatus.CRITICAL, DegradationTier.TIER_3_READ_ONLY),
        (ResourceType.K8S_POD, ResourceStatus.UNAVAILABLE, DegradationTier.TIER_3_READ_ONLY),
        (ResourceType.API_QUOTA, ResourceStatus.UNAVAILABLE, DegradationTier.TIER_2_CORE),
        (ResourceType.MEMORY, ResourceStatus.CRITICAL, DegradationTier.TIER_2_CORE),
        (ResourceType.CPU, ResourceStatus.CRITICAL, DegradationTier.TIER_2_CORE),
        (ResourceType.DATABASE, ResourceStatus.DEGRADED, DegradationTier.TIER_1_FULL),
    ],
)
@aio
async def test_resource_types_map_to_tiers(
    clock: FakeClock, rtype: ResourceType, status: ResourceStatus, tier: DegradationTier
) -> None:
    rm = ResilienceManager("team", check_interval=10)

    async def check() -> Reading:
        return Reading(status=status)

    rm.register_monitor(rtype, "x", check)
    await rm.resources.check_now()
    assert rm.degradation.get_current_tier() is tier


@aio
async def test_the_category_of_a_resource_can_be_chosen(clock: FakeClock) -> None:
    rm = ResilienceManager("team", check_interval=10)
    rm.register_monitor("network", "llm-gateway", lambda: False, category=ServiceCategory.LLM)
    rm.register_monitor("memory", "cache", lambda: False, category=DegradationTier.TIER_1_FULL)
    await rm.resources.check_now()
    assert rm.degradation.get_current_tier() is DegradationTier.TIER_2_CORE
    with pytest.raises(ValueError, match="DegradationTier"):
        rm.register_monitor("cpu", "c", lambda: 1, category=ServiceCategory.CUSTOM)
    with pytest.raises(TypeError, match="category"):
        rm.register_monitor("cpu", "c", lambda: 1, category="llm")  # type: ignore[arg-type]


@aio
async def test_unregistering_removes_the_service_from_the_tier(clock: FakeClock) -> None:
    rm = ResilienceManager("team", check_interval=10)
    rm.register_monitor("database", "db", lambda: False)
    await rm.resources.check_now()
    assert rm.degradation.target_tier() is DegradationTier.TIER_4_MAINTENANCE
    assert rm.unregister("database", "db")
    assert rm.degradation.target_tier() is DegradationTier.TIER_1_FULL
    assert not rm.unregister("database", "db")


@aio
async def test_an_unregistered_resource_is_no_longer_skipped_as_a_target(clock: FakeClock) -> None:
    rm = ResilienceManager("team", check_interval=10)
    rm.register_monitor("api_quota", "openai", lambda: False)
    rm.register_targets("api_quota", ["openai", "anthropic"])
    await rm.resources.check_now()

    async def call() -> str | None:
        return current_target()

    assert await rm.with_resilience(call, "api_quota") == "anthropic"  # openai known bad
    assert rm.unregister("api_quota", "openai")
    assert await rm.with_resilience(call, "api_quota") == "openai"
    assert rm.call_with_resilience(current_target, "api_quota") == "openai"


# -- overall health --------------------------------------------------------------------------------


@aio
async def test_an_open_circuit_degrades_a_healthy_team(clock: FakeClock) -> None:
    breaker = CircuitBreaker(name="rm-open-circuit", fail_max=1, timeout_duration=60)
    rm = ResilienceManager("team", circuits=["rm-open-circuit", "rm-never-made"])
    rm.register_monitor("network", "api", lambda: True)
    await rm.resources.check_now()
    assert rm.overall_health().value == "healthy"
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    report = rm.health_report()
    assert report["overall_health"] == "degraded"
    assert report["circuits"] == {
        "rm-open-circuit": {"state": "open", "success_rate": 0.0, "failure_rate": 1.0}
    }
    breaker.reset()


@aio
async def test_a_non_critical_component_only_degrades_the_team(clock: FakeClock) -> None:
    rm = ResilienceManager("team", circuits=[])
    rm.register_component("recommendations", critical=False)
    rm.register_component("checkout")
    for _ in range(3):
        rm.record_failure("recommendations", "down")
    assert rm.component_state("recommendations").status is ResourceStatus.UNAVAILABLE
    assert rm.overall_health().value == "degraded"
    for _ in range(3):
        rm.record_failure("checkout", "down")
    assert rm.overall_health().value == "unhealthy"


@aio
async def test_components_fed_by_a_breakers_events(clock: FakeClock) -> None:
    rm = ResilienceManager("team", circuits=[])
    rm.register_component("erp", watch="rm-erp-breaker")
    breaker = CircuitBreaker(name="rm-erp-breaker", fail_max=5)
    try:
        for _ in range(9):
            breaker.call(lambda: 1)
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
        state = rm.component_state("erp")
        assert (state.calls, state.error_rate) == (10, 0.1)
    finally:
        rm.health.detach()


# -- several managers, sync applications -----------------------------------------------------------


@aio
async def test_several_managers_in_one_process_are_independent(clock: FakeClock) -> None:
    marketing = ResilienceManager("marketing-team", check_interval=10, circuits=[])
    sales = ResilienceManager("sales-team", check_interval=10, circuits=[])
    down = Switch(up=False)
    marketing.register_monitor("database", "crm", Switch())
    sales.register_monitor("database", "crm", down)
    async with marketing, sales:
        await until(lambda: down.calls >= 3)
        await until(lambda: marketing.get_resource_status("database", "crm") is not None)
        a = await marketing.get_health_report()
        b = await sales.get_health_report()
    assert a["overall_health"] == "healthy"
    assert b["overall_health"] == "unhealthy"
    assert (a["degradation_tier"], b["degradation_tier"]) == (1, 4)
    assert marketing.degradation is not sales.degradation


def test_a_sync_application_starts_monitoring_on_a_thread() -> None:
    rm = ResilienceManager("django-app", check_interval=3600)
    seen = threading.Event()
    rm.resources.on_status_change(lambda state, old: seen.set())
    rm.register_monitor("network", "api", lambda: True)
    rm.start_in_thread()
    try:
        assert seen.wait(10)
        assert rm.running
        assert rm.health_report()["resources"]["network:api"]["status"] == "healthy"
    finally:
        rm.stop()
    assert not rm.running


@aio
async def test_passive_quota_tracking_through_the_manager(clock: FakeClock) -> None:
    httpx = pytest.importorskip("httpx")
    rm = ResilienceManager("team", check_interval=10)
    monitor = rm.register_api_quota_monitor("openai")
    tracker = monitor.check
    assert isinstance(tracker, QuotaTracker)
    tracker.observe(
        httpx.Response(
            200,
            headers={"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "10"},
        )
    )
    await rm.resources.check_now()
    assert rm.get_resource_status("api_quota", "openai") is ResourceStatus.DEGRADED
    tracker.observe(httpx.Response(429, headers={"Retry-After": "30"}))
    await rm.resources.check_now()
    state = rm.resource_state("api_quota", "openai")
    assert state.status is ResourceStatus.UNAVAILABLE
    assert "rate limited" in (state.reason or "")


# -- configuration ---------------------------------------------------------------------------------


def test_per_team_configuration() -> None:
    config = {
        "check_interval": 20,
        "thresholds": {ResourceType.MEMORY: {"degraded": 70, "critical": 90}},
        "fallback_strategies": {
            ResourceType.API_QUOTA: [FallbackStrategy.SWITCH_PROVIDER, FallbackStrategy.USE_CACHE]
        },
    }
    rm = ResilienceManager("team", config)
    assert rm.resources.check_interval == 20.0
    assert rm.fallback_strategies == {
        ResourceType.API_QUOTA: (FallbackStrategy.SWITCH_PROVIDER, FallbackStrategy.USE_CACHE)
    }
    monitor = rm.register_monitor("memory", "system", lambda: 1.0)
    assert (monitor.degraded_at, monitor.critical_at) == (70.0, 90.0)
    assert ResilienceManager("team", config, check_interval=5).resources.check_interval == 5.0


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"check_interval": -1}, ValueError, "check_interval"),
        ({"check_interval": "soon"}, TypeError, "check_interval"),
        ({"interval": 20}, ValueError, "unknown configuration key"),
        ({"fallback_strategies": {"gpu": []}}, ValueError, "unknown resource type 'gpu'"),
        ({"fallback_strategies": {"api_quota": "switch"}}, TypeError, "list of actions"),
        ({"fallback_strategies": ["x"]}, TypeError, "fallback_strategies"),
        ({"fallback_strategies": {"api_quota": [None]}}, ValueError, "None"),
        ({"circuits": "db"}, TypeError, "circuits"),
        ({"thresholds": {"cpu": {"degraded": 99, "critical": 1}}}, ValueError, "degraded"),
        (
            {"thresholds": {"memory": {"degraded": 150, "critical": 200}}},
            ValueError,
            r"thresholds\[memory\]\.degraded must be <= 100",
        ),
        ({"check_interval": 1e-9}, ValueError, "check_interval must be at least 0.01"),
        ({"timeouts": {"api_quota": float("inf")}}, ValueError, r"timeouts\[api_quota\]"),
        ({"timeouts": {"database": float("nan")}}, ValueError, r"timeouts\[database\]"),
        ("fast", TypeError, "config"),
    ],
)
def test_bad_configuration_says_what_is_wrong(
    config: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ResilienceManager("team", config)


def test_bad_environment_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENCE_CHECK_INTERVAL", "abc")
    with pytest.raises(ValueError, match="RESILIENCE_CHECK_INTERVAL"):
        ResilienceManager("team")
    with pytest.raises(ValueError, match="team"):
        ResilienceManager("", check_interval=1)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("ftp://files.example.com", "http"),
        ("example.com", "host:port"),
        ("example.com:http", "host:port"),
        ("tcp://:80", "host:port"),
    ],
)
def test_an_unparsable_network_target_fails_at_registration(target: str, match: str) -> None:
    rm = ResilienceManager("team", check_interval=10)
    with pytest.raises(ValueError, match=match):
        rm.register_network_monitor("api", target)
    with pytest.raises(ValueError, match="host= and port="):
        rm.register_network_monitor("api")
    with pytest.raises(ValueError, match="not both"):
        rm.register_network_monitor("api", "a:1", host="a", port=1)


def test_an_unknown_resource_type_fails_at_registration() -> None:
    rm = ResilienceManager("team", check_interval=10)
    with pytest.raises(ValueError, match="unknown resource type 'GPU'"):
        rm.register_monitor("GPU", "x", lambda: True)


# -- the register_* methods call the check factories with their arguments ------------------------


class StubFactory:
    """Stands in for a check factory of another module: records its arguments, returns a check."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Callable[[], Any]:
        self.calls.append((args, kwargs))

        async def check() -> Reading:
            return Reading(usage=1.0)

        check.target = "stub"  # type: ignore[attr-defined]
        return check


@pytest.mark.parametrize(
    ("module", "factory", "register", "rtype", "args", "kwargs"),
    [
        (
            "system",
            "memory_check",
            lambda rm: rm.register_memory_monitor(scope="container", interval=5),
            ResourceType.MEMORY,
            (),
            {"scope": "container", "cgroup_root": "/sys/fs/cgroup", "proc_root": "/proc"},
        ),
        (
            "system",
            "cpu_check",
            lambda rm: rm.register_cpu_monitor("host-cpu", scope="host"),
            ResourceType.CPU,
            (),
            {"scope": "host", "cgroup_root": "/sys/fs/cgroup", "proc_root": "/proc"},
        ),
        (
            "database",
            "database_check",
            lambda rm: rm.register_database_monitor("orders", "sqlite:///x.db", query="SELECT 2"),
            ResourceType.DATABASE,
            ("sqlite:///x.db",),
            {"query": "SELECT 2"},
        ),
        (
            "network",
            "http_check",
            lambda rm: rm.register_network_monitor("erp", "https://erp/h", latency_budget=0.5),
            ResourceType.NETWORK,
            ("https://erp/h",),
            {"expect_status": 200, "latency_budget": 0.5, "headers": None},
        ),
        (
            "network",
            "tcp_check",
            lambda rm: rm.register_network_monitor("pg", "tcp://127.0.0.1:5432"),
            ResourceType.NETWORK,
            ("127.0.0.1", 5432),
            {},
        ),
        (
            "network",
            "tcp_check",
            lambda rm: rm.register_network_monitor("v6", "[::1]:6379"),
            ResourceType.NETWORK,
            ("::1", 6379),
            {},
        ),
        (
            "network",
            "tcp_check",
            lambda rm: rm.register_network_monitor("kw", host="db", port=5432),
            ResourceType.NETWORK,
            ("db", 5432),
            {},
        ),
        (
            "docker",
            "docker_check",
            lambda rm: rm.register_docker_monitor("web", "web-1"),
            ResourceType.DOCKER,
            ("web-1",),
            {"socket": "/var/run/docker.sock"},
        ),
        (
            "kubernetes",
            "pod_check",
            lambda rm: rm.register_k8s_monitor(pod="api-0", host="10.0.0.1", timeout=2),
            ResourceType.K8S_POD,
            (),
            {"pod": "api-0", "namespace": None, "host": "10.0.0.1"},
        ),
        (
            "mcp",
            "mcp_check",
            lambda rm: rm.register_mcp_monitor("supabase"),
            ResourceType.MCP_SERVER,
            ("supabase",),
            {"command": None, "args": (), "env": None, "url": None, "config": None},
        ),
    ],
)
def test_register_methods_call_their_factory(
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    factory: str,
    register: Callable[[ResilienceManager], Any],
    rtype: ResourceType,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    import sys
    import types

    stub = StubFactory()
    fake = types.ModuleType(f"buttress.health.{module}")
    setattr(fake, factory, stub)
    monkeypatch.setitem(sys.modules, f"buttress.health.{module}", fake)
    rm = ResilienceManager("team", check_interval=10)
    monitor = register(rm)
    assert stub.calls == [(args, kwargs)]
    assert monitor.type is rtype
    assert monitor.target == "stub"
    assert monitor.key in rm.degradation.services()


@pytest.mark.parametrize(("team", "error"), [("  ", ValueError), ("", ValueError), (5, TypeError)])
def test_a_team_name_must_be_a_non_empty_string(team: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"team must be a non-empty string.*got {team!r}"):
        ResilienceManager(team)  # type: ignore[arg-type]
