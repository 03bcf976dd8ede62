"""One loader for environment variables, profiles and team configuration (dicts and files)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

import buttress
from buttress import (
    CircuitBreakerConfig,
    ConfigError,
    FallbackAction,
    FallbackStrategy,
    ResourceType,
    build_manager,
    load_config,
    load_settings,
    preset,
    retry,
)
from buttress.config import VARIABLES, check_config

SEED_ENV = {
    "RESILIENCE_CHECK_INTERVAL": "30",
    "RESILIENCE_STORAGE_PATH": "/data/resilience",
    "CIRCUIT_FAILURE_THRESHOLD": "5",
    "CIRCUIT_RECOVERY_TIMEOUT": "60",
    "RETRY_MAX_ATTEMPTS": "3",
    "RETRY_BASE_DELAY": "1.0",
    "RETRY_MAX_DELAY": "60.0",
}


def test_the_seed_environment_is_read_whole() -> None:
    s = load_settings(SEED_ENV)
    assert (s.check_interval, s.storage_path) == (30.0, "/data/resilience")
    assert (s.circuit_failure_threshold, s.circuit_recovery_timeout) == (5, 60.0)
    assert (s.retry_max_attempts, s.retry_base_delay, s.retry_max_delay) == (3, 1.0, 60.0)
    assert s.environment == "production"


def test_every_bad_variable_is_named_at_once() -> None:
    env = {**SEED_ENV, "RESILIENCE_CHECK_INTERVAL": "abc", "CIRCUIT_FAILURE_THRESHOLD": "0"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    for part in ("RESILIENCE_CHECK_INTERVAL", "'abc'", "CIRCUIT_FAILURE_THRESHOLD", "'0'"):
        assert part in message
    assert len(caught.value.problems) == 2


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("RESILIENCE_CHECK_INTERVAL", "0"),
        ("CIRCUIT_RECOVERY_TIMEOUT", "-1"),
        ("RETRY_BASE_DELAY", "nan"),
        ("RETRY_MAX_ATTEMPTS", "2.5"),
        ("BUTTRESS_ENV", "staging"),
    ],
)
def test_an_impossible_value_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: raw})


@pytest.mark.parametrize(
    ("name", "raw", "build"),
    [
        ("RETRY_MAX_ATTEMPTS", "zero", lambda: buttress.Retry()),
        ("CIRCUIT_FAILURE_THRESHOLD", "-2", lambda: buttress.CircuitBreaker()),
        ("BUTTRESS_ENV", "qa", lambda: buttress.Retry()),
        ("RESILIENCE_CHECK_INTERVAL", "0", lambda: buttress.ResilienceManager("t")),
        ("BUTTRESS_DEGRADATION_MIN_DWELL", "-3", lambda: buttress.DegradationManager()),
    ],
)
def test_a_policy_built_from_a_bad_variable_raises_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, build: Any
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigError, match=f"bad configuration: environment variable {name} "):
        build()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://x", "BUTTRESS_STORAGE_URL='ftp://x': unknown storage"),
        ("redis://:pw@127.0.0.1:notaport/0", "BUTTRESS_STORAGE_URL: malformed Redis URL"),
        ("memory://here", "BUTTRESS_STORAGE_URL='memory://here': a memory store takes no"),
    ],
)
def test_a_malformed_storage_url_in_the_environment_is_named_before_first_use(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        load_settings({"BUTTRESS_STORAGE_URL": url})
    assert ":pw@" not in str(caught.value)
    monkeypatch.setenv("BUTTRESS_STORAGE_URL", url)  # and at first use, as the limiter reads it
    limiter = buttress.RateLimiter()
    limiter.configure("api", buttress.RateLimitConfig(requests_per_second=1.0))
    with pytest.raises(ValueError, match=re.escape(says)):
        limiter.check_limit("api")


def test_max_delay_below_base_delay_is_refused() -> None:
    with pytest.raises(ConfigError, match="RETRY_MAX_DELAY"):
        load_settings({"RETRY_BASE_DELAY": "5", "RETRY_MAX_DELAY": "1"})


def test_every_variable_is_listed_with_its_meaning() -> None:
    names = {v.name for v in VARIABLES}
    assert set(SEED_ENV) <= names
    assert all(v.meaning for v in VARIABLES)


def test_the_development_profile_changes_defaults_but_not_explicit_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings({}).circuit_failure_threshold == 5
    dev = load_settings({"BUTTRESS_ENV": "dev"})
    assert (dev.environment, dev.circuit_failure_threshold) == ("development", 10)
    assert (dev.retry_max_attempts, dev.retry_base_delay) == (3, 0.5)
    explicit = load_settings({"BUTTRESS_ENV": "development", "CIRCUIT_FAILURE_THRESHOLD": "7"})
    assert explicit.circuit_failure_threshold == 7
    # the policies follow the same profile when built without values
    monkeypatch.setenv("BUTTRESS_ENV", "development")
    assert CircuitBreakerConfig().fail_max == 10
    assert retry().max_attempts == 3
    assert CircuitBreakerConfig(fail_max=4).fail_max == 4  # code wins over the profile
    assert preset("factor_lookup").environment == "development"
    monkeypatch.setenv("CIRCUIT_FAILURE_THRESHOLD", "6")
    assert CircuitBreakerConfig().fail_max == 6  # an explicit variable wins over the profile
    monkeypatch.setenv("BUTTRESS_ENV", "qa")
    with pytest.raises(ValueError, match="BUTTRESS_ENV"):
        CircuitBreakerConfig()


def test_the_seed_team_dict_is_accepted() -> None:
    action = FallbackAction(FallbackStrategy.SWITCH_PROVIDER, target="anthropic")
    config = load_config(
        {
            "check_interval": 20,
            "fallback_strategies": {
                ResourceType.API_QUOTA: [
                    action,
                    {"strategy": "use_cache", "priority": 1},
                ]
            },
        }
    )
    assert config.manager["check_interval"] == 20
    actions = config.manager["fallback_strategies"][ResourceType.API_QUOTA]
    assert actions[0] is action
    assert actions[1].strategy is FallbackStrategy.USE_CACHE
    assert actions[1].priority == 1


TOML = """
team = "marketing-team"
check_interval = 20
fail_threshold = 3
circuits = ["openai"]

[thresholds.memory]
degraded = 70
critical = 90

[fallback_strategies]
api_quota = [
  { strategy = "switch_provider", target = "anthropic" },
  { strategy = "use_cache", priority = 1 },
]

[[monitors]]
type = "network"
name = "billing"
target = "http://127.0.0.1:9/health"
interval = 5
"""


def test_a_toml_file_builds_the_team(tmp_path: Path) -> None:
    path = tmp_path / "team.toml"
    path.write_text(TOML)
    config = load_config(path)
    assert config.team == "marketing-team"
    assert config.manager["thresholds"] == {ResourceType.MEMORY: {"degraded": 70, "critical": 90}}
    manager = build_manager(path)
    assert manager.team == "marketing-team"
    assert manager.resources.check_interval == 20
    assert [m.name for m in manager.resources.monitors()] == ["billing"]
    assert ResourceType.API_QUOTA in manager.fallback_strategies


def test_json_and_yaml_files_say_the_same(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    data = {"team": "t", "check_interval": 5, "monitors": [{"type": "memory", "name": "box"}]}
    (tmp_path / "t.json").write_text(json.dumps(data))
    (tmp_path / "t.yaml").write_text(
        "team: t\ncheck_interval: 5\nmonitors:\n  - {type: memory, name: box}\n"
    )
    from_json, from_yaml = load_config(tmp_path / "t.json"), load_config(tmp_path / "t.yaml")
    assert from_json.source != from_yaml.source
    assert dataclasses.replace(from_json, source=None) == dataclasses.replace(
        from_yaml, source=None
    )


def test_a_team_file_sets_the_full_stacks_timeouts(tmp_path: Path) -> None:
    # The dict's ``timeouts`` key, in a file: seconds per resource type for with_resilience.
    path = tmp_path / "team.toml"
    path.write_text('team = "t"\n[timeouts]\napi_quota = 5\ndatabase = 2.5\n')
    config = load_config(path)
    assert config.manager["timeouts"] == {ResourceType.API_QUOTA: 5.0, ResourceType.DATABASE: 2.5}
    assert check_config(path) == config
    manager = build_manager(path)
    with buttress.testing.FakeClock() as clock:

        async def slow() -> str:
            await clock.asleep(10.0)
            return "late"

        with pytest.raises(buttress.OperationTimeout):
            asyncio.run(manager.with_resilience(slow, ResourceType.API_QUOTA))
        assert clock.now() == pytest.approx(5.0)
    assert load_config({"timeouts": {ResourceType.NETWORK: 1}}).manager["timeouts"] == {
        ResourceType.NETWORK: 1.0
    }


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"check_intervall": 20}, "'check_intervall'"),
        ({"check_interval": -1}, "check_interval"),
        ({"check_interval": "20"}, "check_interval"),
        ({"fail_threshold": 0}, "fail_threshold"),
        ({"thresholds": {"memory": {"degraded": 95, "critical": 90}}}, "thresholds.memory"),
        ({"thresholds": {"memory": {"warn": 1}}}, "thresholds.memory"),
        ({"thresholds": {"disk": {"critical": 90}}}, "thresholds key 'disk'"),
        ({"thresholds": {"memory": {"critical": 101}}}, "thresholds.memory.critical"),
        ({"check_interval": 0.001}, "check_interval must be at least 0.01"),
        ({"fallback_strategies": {"api_quota": [{"strategy": "pray"}]}}, "api_quota[0].strategy"),
        (
            {"fallback_strategies": {"api_quota": [{"strategy": "retry", "priority": "hi"}]}},
            "api_quota[0]: priority",
        ),
        (
            {"fallback_strategies": {"api_quota": [{"strategy": "retry", "colour": 1}]}},
            "colour",
        ),
        ({"fallback_strategies": {"api_quota": "retry"}}, "fallback_strategies.api_quota"),
        ({"monitors": [{"type": "disk", "name": "x"}]}, "monitors[0].type"),
        ({"monitors": [{"type": "network"}]}, "monitors[0].name"),
        ({"circuits": "openai"}, "circuits"),
        ({"environment": "staging"}, "environment"),
        ({"team": ""}, "team"),
        ({"timeouts": 5}, "timeouts must map"),
        ({"timeouts": {"disk": 5}}, "timeouts key 'disk'"),
        ({"timeouts": {"api_quota": 0}}, "timeouts.api_quota"),
        ({"timeouts": {"api_quota": "5"}}, "timeouts.api_quota"),
        ({"timeouts": {"api_quota": True}}, "timeouts.api_quota"),
    ],
)
def test_a_bad_key_is_named(data: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(data)
    assert named in str(caught.value)


def test_several_bad_keys_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "team.toml"
    path.write_text('check_interval = -1\n[[monitors]]\ntype = "disk"\nname = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 2
    assert str(path) in str(caught.value)


def test_a_broken_file_is_a_config_error(tmp_path: Path) -> None:
    for name, text in [("a.toml", "team = "), ("a.json", "{"), ("a.ini", "[x]")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=name):
            load_config(tmp_path / name)


def test_a_monitor_its_method_refuses_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"monitors\[0\] \(network 'x'\)"):
        build_manager({"team": "t", "monitors": [{"type": "network", "name": "x", "colour": 1}]})
    with pytest.raises(ConfigError, match="team is missing"):
        build_manager({"check_interval": 5})


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"interval": 1e-9}, "cpu:system interval must be at least 0.01 seconds"),
        ({"critical_at": 150}, "cpu:system critical_at must be <= 100"),
    ],
)
def test_a_monitor_setting_that_can_never_work_is_refused_by_check_and_build(
    options: dict[str, object], named: str
) -> None:
    data = {"team": "t", "monitors": [{"type": "cpu", "scope": "process", **options}]}
    for step in (check_config, build_manager):
        with pytest.raises(ConfigError) as caught:
            step(data)
        assert f"monitors[0] (cpu 'system'): {named}" in str(caught.value)


def test_the_loader_is_exported() -> None:
    assert buttress.load_config is load_config


def test_a_monitor_error_never_shows_a_dsn_password() -> None:
    dsn = "postgresql://app:s3cret-pw@127.0.0.1:notaport/db"
    with pytest.raises(ConfigError) as caught:
        build_manager({"team": "t", "monitors": [{"type": "database", "name": "x", "target": dsn}]})
    assert "monitors[0] (database 'x')" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
