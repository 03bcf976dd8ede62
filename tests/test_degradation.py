"""Graceful degradation: rules, hysteresis on the fake clock, handlers, events, metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from buttress import (
    DegradationManager,
    DegradationTier,
    RejectedError,
    ServiceCategory,
    ServiceDegraded,
    degradation_handler,
    get_degradation_manager,
)
from buttress import events as ev
from buttress.degradation import DEFAULT_RULES, category_for
from buttress.instrumentation.prometheus import enable_prometheus
from buttress.testing import FakeClock
from conftest import make, run

T1, T2, T3, T4 = (
    DegradationTier.TIER_1_FULL,
    DegradationTier.TIER_2_CORE,
    DegradationTier.TIER_3_READ_ONLY,
    DegradationTier.TIER_4_MAINTENANCE,
)
_n = itertools.count()


def manager(clock: FakeClock, dwell: float = 10.0, **options: Any) -> DegradationManager:
    return DegradationManager(min_dwell=dwell, clock=clock, name=f"m{next(_n)}", **options)


LLM, DATABASE, API = ServiceCategory.LLM, ServiceCategory.DATABASE, ServiceCategory.EXTERNAL_API


@pytest.mark.parametrize(
    ("name", "category"),
    [
        # words split at punctuation
        ("llm_api", LLM),
        ("openai-llm", LLM),
        ("factor_api", API),
        ("erp", API),
        ("database", DATABASE),
        ("orders_db", DATABASE),
        ("Postgres.Primary", DATABASE),
        ("user-database", DATABASE),
        # case, camelCase and digits
        ("OrdersDB", DATABASE),
        ("ORDERS_DB", DATABASE),
        ("PostgresPrimary", DATABASE),
        ("MySQLReplica", DATABASE),
        ("PostgreSQL", DATABASE),
        ("SQLite3", DATABASE),
        ("userDB2", DATABASE),
        ("db2", DATABASE),
        ("RedisCache", DATABASE),
        ("openaiLLM", LLM),
        ("OpenAILLM", LLM),
        ("LLMGateway", LLM),
        ("llms", LLM),
        # known endings inside one run of letters
        ("mongodb", DATABASE),
        ("ordersdb", DATABASE),
        ("userdatabase", DATABASE),
        ("nosql_store", DATABASE),
        ("sqlserver", DATABASE),
        ("openaillm", LLM),
        ("localllm-7b", LLM),
        # tricky names that are not databases or LLMs
        ("dbt_cloud", API),  # "db" starts a word: dbt is not a database
        ("adobe", API),  # "db" inside a word
        ("feedback_api", API),
        ("sandbox", API),
        ("graphql_api", API),  # ends in "ql", not "sql"
        ("redistribution_api", API),  # starts with "redis"
        ("mongolia_weather", API),  # starts with "mongo"
        ("smallModel", API),  # "llm" across a word boundary
        ("callmanager", API),  # "llm" inside a word
        ("HTTPServer", API),
        ("payments", API),
    ],
)
def test_default_category_from_the_name(name: str, category: ServiceCategory) -> None:
    assert category_for(name) is category


def test_a_name_classed_by_its_words_sets_the_tier(clock: FakeClock) -> None:
    m = manager(clock)
    assert m.update_health("OrdersDB", healthy=False) is T4
    m.reset()
    assert m.update_health("openaiLLM", healthy=False) is T2


def test_the_seed_table(clock: FakeClock) -> None:
    m = manager(clock)
    assert m.get_current_tier() is T1
    m.update_health("factor_api", healthy=True, response_time_ms=150)
    assert m.get_current_tier() is T1
    m.update_health("llm_api", healthy=False, error="Timeout")
    assert m.get_current_tier() is T2
    m.update_health("factor_api", healthy=False, error="HTTP 503")
    assert m.get_current_tier() is T3
    m.update_health("database", healthy=False, error=ConnectionError("refused"))
    assert m.get_current_tier() is T4
    health = m.services()
    assert health["database"].error == "ConnectionError('refused')"
    assert health["factor_api"].category is ServiceCategory.EXTERNAL_API
    assert health["llm_api"].unhealthy_tier is T2


def test_worse_is_immediate_better_waits_for_the_dwell(clock: FakeClock) -> None:
    m = manager(clock, dwell=10.0)
    m.update_health("database", healthy=False)
    assert m.get_current_tier() is T4
    m.update_health("database", healthy=True)
    assert m.get_current_tier() is T4  # improvement pending
    assert m.target_tier() is T1
    clock.advance(9.9)
    assert m.get_current_tier() is T4
    clock.advance(0.1)
    assert m.get_current_tier() is T1


def test_a_flapping_dependency_does_not_flap_the_tier(clock: FakeClock) -> None:
    m = manager(clock, dwell=10.0)
    changes: list[tuple[DegradationTier, DegradationTier]] = []
    m.on_tier_change(lambda old, new, reason: changes.append((old, new)))
    for _ in range(20):  # unhealthy, then healthy for 6 s, over and over: never 10 s healthy
        m.update_health("llm_api", healthy=False)
        clock.advance(1.0)
        m.update_health("llm_api", healthy=True)
        clock.advance(6.0)
        m.get_current_tier()
    assert changes == [(T1, T2)]
    clock.advance(4.0)
    assert m.get_current_tier() is T1
    assert changes == [(T1, T2), (T2, T1)]


def test_partial_recovery_steps_down_after_the_dwell(clock: FakeClock) -> None:
    m = manager(clock, dwell=5.0)
    m.update_health("database", healthy=False)
    m.update_health("llm_api", healthy=False)
    assert m.get_current_tier() is T4
    m.update_health("database", healthy=True)  # the target is now T2
    clock.advance(5.0)
    assert m.get_current_tier() is T2
    m.update_health("llm_api", healthy=True)
    clock.advance(4.0)
    assert m.get_current_tier() is T2
    clock.advance(1.0)
    assert m.get_current_tier() is T1


def test_each_better_tier_waits_out_its_own_dwell(clock: FakeClock) -> None:
    m = manager(clock, dwell=30.0)
    m.update_health("orders_db", healthy=False)
    m.update_health("factor_api", healthy=False)
    assert m.get_current_tier() is T4
    m.update_health("orders_db", healthy=True)  # T3 called for from t=0
    clock.advance(20.0)
    m.update_health("factor_api", healthy=True)  # T1 called for from t=20
    clock.advance(10.0)
    assert m.get_current_tier() is T3  # T3 or better held 30 s, T1 only 10 s
    assert m.snapshot()["improving_since"] is not None
    clock.advance(19.0)
    assert m.get_current_tier() is T3
    clock.advance(1.0)
    assert m.get_current_tier() is T1


def test_a_dependency_flapping_late_in_a_recovery_does_not_flap_the_tier(
    clock: FakeClock,
) -> None:
    m = manager(clock, dwell=10.0)
    changes: list[tuple[DegradationTier, DegradationTier]] = []
    m.on_tier_change(lambda old, new, reason: changes.append((old, new)))
    m.update_health("database", healthy=False)
    m.update_health("llm_api", healthy=False)
    m.update_health("database", healthy=True)  # the target is T2 from t=0
    for _ in range(5):  # the LLM is healthy for 1 s before each read, never 10 s
        clock.advance(9.0)
        m.update_health("llm_api", healthy=True)
        clock.advance(1.0)
        m.get_current_tier()
        m.update_health("llm_api", healthy=False)
    assert changes == [(T1, T4), (T4, T2)]


def test_getting_worse_during_a_pending_improvement_cancels_it(clock: FakeClock) -> None:
    m = manager(clock, dwell=5.0)
    m.update_health("factor_api", healthy=False)
    m.update_health("factor_api", healthy=True)
    clock.advance(4.0)
    m.update_health("factor_api", healthy=False)  # same tier again: the improvement resets
    m.update_health("factor_api", healthy=True)
    clock.advance(4.0)
    assert m.get_current_tier() is T3
    clock.advance(1.0)
    assert m.get_current_tier() is T1


def test_zero_dwell_recovers_at_once(clock: FakeClock) -> None:
    m = manager(clock, dwell=0.0)
    m.update_health("llm_api", healthy=False)
    m.update_health("llm_api", healthy=True)
    assert m.get_current_tier() is T1


def test_rules_are_configurable(clock: FakeClock) -> None:
    m = manager(clock, rules={ServiceCategory.LLM: T3})
    m.update_health("llm_api", healthy=False)
    assert m.get_current_tier() is T3
    assert DEFAULT_RULES[ServiceCategory.LLM] is T2  # the defaults are untouched
    m.set_rule(ServiceCategory.LLM, T4)
    assert m.get_current_tier() is T4


def test_registration_sets_category_and_custom_tiers(clock: FakeClock) -> None:
    m = manager(clock)
    m.register_service("embeddings", ServiceCategory.LLM)
    m.register_service("search", ServiceCategory.CUSTOM, unhealthy_tier=T2)
    m.register_service("ledger", unhealthy_tier=T4)  # own tier beats the category rule
    m.update_health("embeddings", healthy=False)
    assert m.get_current_tier() is T2
    m.set_rule(ServiceCategory.EXTERNAL_API, T2)
    m.update_health("ledger", healthy=False)
    assert m.get_current_tier() is T4
    with pytest.raises(ValueError, match="CUSTOM category needs unhealthy_tier"):
        m.register_service("x", ServiceCategory.CUSTOM)


def test_slow_reports_count_as_unhealthy(clock: FakeClock) -> None:
    m = manager(clock, dwell=0.0)
    m.register_service("factor_api", max_response_time_ms=500)
    m.update_health("factor_api", healthy=True, response_time_ms=200)
    assert m.get_current_tier() is T1
    m.update_health("factor_api", healthy=True, response_time_ms=900)
    assert m.get_current_tier() is T3
    assert m.services()["factor_api"].error == "response time 900 ms over 500 ms"


def test_force_tier_overrides_and_lifts_at_once(clock: FakeClock) -> None:
    m = manager(clock, dwell=60.0)
    m.force_tier(T4)
    m.update_health("llm_api", healthy=False)
    assert m.get_current_tier() is T4
    m.force_tier(None)
    assert m.get_current_tier() is T2  # back to what health says, without the dwell
    m.reset()
    assert m.get_current_tier() is T1
    assert m.services() == {}


def test_remove_service(clock: FakeClock) -> None:
    m = manager(clock, dwell=0.0)
    m.update_health("database", healthy=False)
    m.remove_service("database")
    m.remove_service("never-seen")
    assert m.get_current_tier() is T1


def test_tier_changes_emit_events_log_warnings_and_call_callbacks(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    m = manager(clock, dwell=1.0)
    seen: list[ev.Event] = []
    calls: list[tuple[DegradationTier, DegradationTier, str]] = []
    m.on_tier_change(lambda old, new, reason: calls.append((old, new, reason)))

    def broken(old: DegradationTier, new: DegradationTier, reason: str) -> None:
        raise RuntimeError("callback bug")

    m.on_tier_change(broken)
    ev.add_hook(seen.append)
    try:
        with caplog.at_level(logging.INFO, logger="buttress"):
            m.update_health("llm_api", healthy=False, error="Timeout")
            m.update_health("llm_api", healthy=False, error="Timeout")  # no flip, no event
            m.update_health("llm_api", healthy=True)
            clock.advance(1.0)
            m.get_current_tier()
    finally:
        ev.remove_hook(seen.append)
    assert calls == [(T1, T2, "llm_api unhealthy"), (T2, T1, "recovered")]
    kinds = [(type(e).__name__, getattr(e, "healthy", getattr(e, "new", None))) for e in seen]
    assert kinds == [
        ("ServiceHealthChanged", False),
        ("TierChanged", T2),
        ("ServiceHealthChanged", True),
        ("TierChanged", T1),
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings][:1] == [
        f"degradation {m.name!r}: tier TIER_1_FULL -> TIER_2_CORE (llm_api unhealthy)"
    ]
    assert warnings[0].event == "tier_changed"  # type: ignore[attr-defined]
    assert any("callback bug" in str(r.exc_info) for r in caplog.records if r.exc_info)


def test_handler_runs_within_its_tier_and_falls_back_beyond(mode: str, clock: FakeClock) -> None:
    m = manager(clock, dwell=0.0)
    calls: list[str] = []
    core = degradation_handler(min_tier=T2, fallback_value="fallback", manager=m)(
        make(mode, lambda x: calls.append(x) or f"ran {x}")
    )
    assert run(core("a")) == "ran a"  # tier 1
    m.update_health("llm_api", healthy=False)
    assert run(core("b")) == "ran b"  # tier 2
    m.update_health("factor_api", healthy=False)
    assert run(core("c")) == "fallback"  # tier 3
    m.update_health("database", healthy=False)
    assert run(core("d")) == "fallback"  # tier 4
    assert calls == ["a", "b"]


def test_handler_fallback_function_and_raise(mode: str, clock: FakeClock) -> None:
    m = manager(clock)
    m.force_tier(T3)
    computed = degradation_handler(
        min_tier=T1, fallback_function=make(mode, lambda x: f"cached {x}"), manager=m
    )(make(mode, lambda x: "live"))
    assert run(computed("q")) == "cached q"
    strict = degradation_handler(min_tier=T2, raise_on_degraded=True, manager=m)(
        make(mode, lambda: "live")
    )
    with pytest.raises(ServiceDegraded, match="needs TIER_2_CORE or better") as info:
        run(strict())
    assert isinstance(info.value, RejectedError)
    assert info.value.retry_after is None


def test_handler_on_an_async_callable_object_awaits_alike_in_every_tier(clock: FakeClock) -> None:
    class Model:
        async def __call__(self, prompt: str) -> str:
            return f"live {prompt}"

    m = manager(clock, dwell=0.0)
    guarded = degradation_handler(min_tier=T1, fallback_value="off", manager=m)(Model())

    async def call(fn: Any, *args: Any) -> Any:
        return await fn(*args)  # the caller awaits it, whatever the tier

    assert asyncio.run(call(guarded, "a")) == "live a"
    m.force_tier(T3)
    assert asyncio.run(call(guarded, "b")) == "off"
    computed = degradation_handler(min_tier=T1, fallback_function=str.upper, manager=m)(Model())
    assert asyncio.run(call(computed, "c")) == "C"
    strict = degradation_handler(min_tier=T1, raise_on_degraded=True, manager=m)(Model())
    with pytest.raises(ServiceDegraded):
        asyncio.run(call(strict, "d"))


def test_handler_sees_an_improvement_once_its_dwell_passed(clock: FakeClock) -> None:
    m = manager(clock, dwell=3.0)
    guarded = degradation_handler(min_tier=T1, fallback_value="off", manager=m)(lambda: "on")
    m.update_health("llm_api", healthy=False)
    m.update_health("llm_api", healthy=True)
    assert guarded() == "off"
    clock.advance(3.0)
    assert guarded() == "on"  # no other call needed to apply the improvement


def test_handler_uses_the_process_manager_by_default(clock: FakeClock) -> None:
    shared = get_degradation_manager()
    assert get_degradation_manager() is shared
    guarded = degradation_handler(min_tier=T2)(lambda: "ran")
    try:
        shared.force_tier(T3)
        assert guarded() is None  # the seed's default fallback value
    finally:
        shared.reset()
    assert guarded() == "ran"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"min_dwell": -1}, "min_dwell must be >= 0"),
        ({"min_dwell": float("nan")}, "min_dwell must be a number of seconds, got NaN"),
        ({"rules": {ServiceCategory.LLM: 7}}, r"rules\[LLM\] must be a DegradationTier"),
        ({"rules": {ServiceCategory.CUSTOM: T2}}, "rules keys must be"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_bad_settings_are_named(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        DegradationManager(**options)


def test_bad_inputs_are_named(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    m = manager(clock)
    with pytest.raises(TypeError, match="healthy must be True or False"):
        m.update_health("x", healthy="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="response_time_ms must be >= 0"):
        m.update_health("x", response_time_ms=-5)
    with pytest.raises(ValueError, match="service name must be a non-empty string"):
        m.update_health("")
    with pytest.raises(ValueError, match="min_tier must be a DegradationTier"):
        degradation_handler(min_tier=9)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        degradation_handler(min_tier=T2, fallback_function=len, raise_on_degraded=True)
    monkeypatch.setenv("BUTTRESS_DEGRADATION_MIN_DWELL", "soon")
    with pytest.raises(ValueError, match="BUTTRESS_DEGRADATION_MIN_DWELL must be a number"):
        DegradationManager()
    monkeypatch.setenv("BUTTRESS_DEGRADATION_MIN_DWELL", "2.5")
    assert DegradationManager().min_dwell == 2.5


def test_set_rule_names_its_own_arguments(clock: FakeClock) -> None:
    m = manager(clock)
    with pytest.raises(TypeError, match=r"set_rule: category must be a ServiceCategory.*\[1\]"):
        m.set_rule([1], T2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"set_rule: category must be a ServiceCategory.*'llm'"):
        m.set_rule("llm", T2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set_rule: category must be LLM, EXTERNAL_API or DATA"):
        m.set_rule(ServiceCategory.CUSTOM, T2)
    with pytest.raises(ValueError, match=r"set_rule: tier must be a DegradationTier.*'TIER_3'"):
        m.set_rule(ServiceCategory.LLM, "TIER_3")  # type: ignore[arg-type]
    assert m.rules == dict(DEFAULT_RULES)


def test_concurrent_reports_end_in_the_tier_the_last_reports_call_for(clock: FakeClock) -> None:
    m = manager(clock, dwell=0.0)
    changes: list[tuple[DegradationTier, DegradationTier]] = []
    m.on_tier_change(lambda old, new, reason: changes.append((old, new)))
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for n in range(300):
            m.update_health(f"svc{i}_db", healthy=n % 2 == 1)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.get_current_tier() is T1
    # every change continues from where the previous one ended: none lost or reordered
    assert all(a[1] == b[0] for a, b in itertools.pairwise(changes))
    assert changes[0][0] is T1
    assert changes[-1][1] is T1


def test_metrics(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    metrics = enable_prometheus(registry)
    m = manager(clock, dwell=0.0)
    try:
        m.update_health("llm_api", healthy=False)
        m.update_health("factor_api", healthy=True)
    finally:
        metrics.disable()

    def value(metric: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"buttress_{metric}", {"name": m.name, **labels})

    assert value("degradation_tier") == 2
    assert value("service_health", service="llm_api") == 0
    assert value("service_health", service="factor_api") == 1
    assert value("degradation_tier_changes_total", from_tier="1", to_tier="2") == 1


def test_managers_publish_their_tier_and_service_health_as_readings(clock: FakeClock) -> None:
    m = manager(clock, dwell=0.0)
    m.update_health("llm_api", healthy=False)
    m.update_health("factor_api", healthy=True)
    assert (m.name, 2.0) in ev.readings("degradation_tier")
    health = dict(ev.readings("service_health"))
    assert health[(m.name, "llm_api")] == 0.0
    assert health[(m.name, "factor_api")] == 1.0


def test_names_and_flags_are_checked() -> None:
    with pytest.raises(ValueError, match="name must be a non-empty string, not only whitespace"):
        DegradationManager(name="  ")
    with pytest.raises(TypeError, match="name must be a non-empty string, got 5"):
        DegradationManager(name=5)  # type: ignore[arg-type]
    manager = DegradationManager(name="team")
    with pytest.raises(ValueError, match="service name must be a non-empty string"):
        manager.update_health(" ", healthy=False)
    with pytest.raises(TypeError, match="raise_on_degraded must be True or False, got 'yes'"):
        degradation_handler(DegradationTier.TIER_2_CORE, raise_on_degraded="yes")  # type: ignore[arg-type]
