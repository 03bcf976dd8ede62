"""Configuration in one loader: environment variables, profiles and team configuration files.

Theory of operation
-------------------
Three sources configure buttress, and each is read by one function here so that every bad value
fails in one place, with a message that names the variable or the key:

* **Environment variables** (:data:`VARIABLES`): the ones the design documents name
  (``RESILIENCE_CHECK_INTERVAL``, ``RESILIENCE_STORAGE_PATH``, ``CIRCUIT_FAILURE_THRESHOLD``,
  ``CIRCUIT_RECOVERY_TIMEOUT``, ``RETRY_MAX_ATTEMPTS``, ``RETRY_BASE_DELAY``, ``RETRY_MAX_DELAY``)
  and buttress's own (``BUTTRESS_ENV``, ``BUTTRESS_STORAGE_URL``,
  ``BUTTRESS_DEGRADATION_MIN_DWELL``). The policies read them when they are built, without a
  given value; :func:`load_settings` reads them all at once, so a service can check its environment
  at start-up (``buttress config check``) instead of at its first breaker. It collects every
  bad variable before it raises.
* **Profiles**: ``BUTTRESS_ENV=development`` or ``production`` (the default) picks the defaults
  the resilience-patterns design recommends for each environment (development: a breaker trips
  after 10 failures, 3 attempts from 0.5 s; production: 5 failures, 4 attempts from 1 s). An
  environment variable set explicitly always wins over the profile; an argument given in code
  wins over both.
* **Team configuration**: the per-team dict of the fallback-protocols design
  (``{"check_interval": 20, "fallback_strategies": {ResourceType.API_QUOTA: [...]}}``), or the
  same in a TOML, JSON or YAML file (an action as a table: ``{strategy = "switch_provider",
  target = "anthropic"}``), read by :func:`load_config`. A file may also name the team
  and list its monitors; :func:`build_manager` turns it into a started-ready
  :class:`~buttress.ResilienceManager`. Unknown keys, wrong types and impossible values raise
  :class:`ConfigError` naming the key's path (``monitors[1].interval``), never at first use.

YAML needs PyYAML (imported only for a ``.yaml`` file); TOML uses the standard library.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _config
from ._config import ConfigError
from .health.manager import resource_type, threshold_levels
from .health.types import ResourceType, redact
from .policies.fallback import FallbackStrategy
from .protocol.action import FallbackAction

if TYPE_CHECKING:
    from .manager import ResilienceManager

__all__ = [
    "VARIABLES",
    "ConfigError",
    "MonitorSpec",
    "Settings",
    "TeamConfig",
    "Variable",
    "build_manager",
    "check_config",
    "load_config",
    "load_settings",
]


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable buttress reads: its name, kind, default and meaning."""

    name: str
    kind: str  # "seconds", "check interval", "integer >= 1", "text", "environment"
    default: object
    meaning: str


#: The variables that configure the policies, the manager and its MCP monitors (production
#: defaults shown).
VARIABLES: tuple[Variable, ...] = (
    Variable("BUTTRESS_ENV", "environment", "production", "profile: development or production"),
    Variable(
        "RESILIENCE_CHECK_INTERVAL",
        "check interval",
        30.0,
        f"resource check interval (at least {_config.MIN_CHECK_INTERVAL:g} s)",
    ),
    Variable(
        "RESILIENCE_STORAGE_PATH",
        "text",
        None,
        "SQLite state file (or its directory) of sqlite:// stores and request queues",
    ),
    Variable("BUTTRESS_STORAGE_URL", "text", None, "default storage= of every policy"),
    Variable("CIRCUIT_FAILURE_THRESHOLD", "integer >= 1", 5, "failures that open a breaker"),
    Variable("CIRCUIT_RECOVERY_TIMEOUT", "seconds", 60.0, "open time before a probe"),
    Variable("RETRY_MAX_ATTEMPTS", "integer >= 1", 4, "attempts of a retry, the first included"),
    Variable("RETRY_BASE_DELAY", "seconds", 1.0, "first backoff delay"),
    Variable("RETRY_MAX_DELAY", "seconds", 60.0, "longest backoff delay"),
    Variable(
        "BUTTRESS_DEGRADATION_MIN_DWELL", "seconds", 30.0, "least time a degradation tier holds"
    ),
    Variable("MCP_CONFIG", "text", "./mcp.json", "the MCP server list of MCP monitors"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The environment's configuration, every variable parsed (defaults from the profile)."""

    environment: str
    check_interval: float
    storage_path: str | None
    storage_url: str | None
    circuit_failure_threshold: int
    circuit_recovery_timeout: float
    retry_max_attempts: int
    retry_base_delay: float
    retry_max_delay: float
    degradation_min_dwell: float
    mcp_config: str


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Every environment variable of :data:`VARIABLES`, parsed and checked together.

    Raises:
        ConfigError: listing each bad variable, its value and what it must be.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    try:
        profile = _config.environment(env)
    except ValueError as exc:
        problems += _problems(exc)
        profile = "production"
    values: dict[str, Any] = {"environment": profile}
    for var in VARIABLES[1:]:
        default = _config.profile_default(var.name, var.default, profile)
        key = var.name.lower().removeprefix("resilience_").removeprefix("buttress_")
        raw = env.get(var.name, "").strip()
        if not raw:
            values[key] = default
            continue
        try:
            values[key] = _parse(var, raw)
        except ValueError as exc:
            problems += _problems(exc)
    if values.get("storage_url"):  # its form: a store is opened at first use, not here
        problem = _storage_problem(values["storage_url"], "BUTTRESS_STORAGE_URL")
        if problem:
            problems.append(problem)
    if values.get("retry_max_delay", 1.0) < values.get("retry_base_delay", 0.0):
        problems.append(
            f"RETRY_MAX_DELAY ({values['retry_max_delay']}) is below RETRY_BASE_DELAY "
            f"({values['retry_base_delay']})"
        )
    if problems:
        raise ConfigError(problems, source="the environment")
    return Settings(**values)


def _problems(exc: ValueError) -> list[str]:
    """What ``exc`` says is wrong, without a :class:`ConfigError`'s own heading."""
    return list(exc.problems) if isinstance(exc, ConfigError) else [str(exc)]


def _parse(var: Variable, raw: str) -> object:
    if var.kind == "text":
        return raw
    if var.kind == "check interval":
        return _config.env_check_interval(var.name, raw)
    if var.kind == "integer >= 1":
        try:
            number = int(raw)
        except ValueError:
            number = 0
        if number < 1:
            raise ValueError(f"{var.name} must be an integer >= 1, got {raw!r}")
        return number
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{var.name} must be a number of seconds >= 0, got {raw!r}")
    return seconds


# ----------------------------------------------------------------------------- team configuration

_SECONDS_KEYS = ("check_interval", "check_timeout", "horizon")
_COUNT_KEYS = ("fail_threshold", "success_threshold")
_TEAM_KEYS = frozenset(
    {
        "team",
        "environment",
        "storage",
        "monitors",
        "circuits",
        "thresholds",
        "fallback_strategies",
        "timeouts",
        "token_env",
        *_SECONDS_KEYS,
        *_COUNT_KEYS,
    }
)
_MONITOR_TYPES = {rtype.value: rtype for rtype in ResourceType}


@dataclass(frozen=True, slots=True)
class MonitorSpec:
    """One monitor of a configuration file: its resource type, name and options."""

    type: ResourceType
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamConfig:
    """A checked team configuration.

    Attributes:
        team: the team's name, when the source gives one.
        manager: the ``config=`` of :class:`~buttress.ResilienceManager` (the per-team dict).
        monitors: the monitors to register, in order.
        storage: the storage URL the team's shared state lives in, if any.
        environment: the profile the source names, if any.
        token_env: the environment variable holding the operator endpoints' bearer token.
        source: the file it was read from, if any (for messages).
    """

    team: str | None
    manager: Mapping[str, Any]
    monitors: tuple[MonitorSpec, ...] = ()
    storage: str | None = None
    environment: str | None = None
    token_env: str | None = None
    source: str | None = None


def load_config(source: Mapping[str, Any] | str | os.PathLike[str]) -> TeamConfig:
    """A team configuration from a dict or a ``.toml``, ``.json``, ``.yaml``/``.yml`` file.

    Raises:
        ConfigError: every unknown key, wrong type and impossible value, named by its path; or
            a file that cannot be read or parsed.
    """
    where: str | None = None
    if isinstance(source, Mapping):
        data: object = source
    elif isinstance(source, str | os.PathLike):
        path = Path(os.fspath(source)).expanduser()
        where = str(path)
        data = _read_file(path)
    else:
        raise TypeError(f"config must be a mapping or a file path, got {source!r}")
    problems: list[str] = []
    config = _team(data, problems)
    if problems:
        raise ConfigError(problems, source=where)
    assert config is not None
    return dataclasses.replace(config, source=where)


def _read_file(path: Path) -> object:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError([f"cannot read the configuration: {reason}"], source=str(path)) from None
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                yaml = importlib.import_module("yaml")
            except ImportError:
                raise ConfigError(
                    ["a YAML file needs PyYAML: pip install pyyaml (or use TOML or JSON)"],
                    source=str(path),
                ) from None
            return yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError([f"not valid {suffix[1:].upper()}: {exc}"], source=str(path)) from None
    except Exception as exc:  # yaml.YAMLError has no common base with the others
        raise ConfigError([f"not valid YAML: {exc}"], source=str(path)) from None
    raise ConfigError(
        [f"unknown file type {suffix or '(none)'!r}; use .toml, .json, .yaml or .yml"],
        source=str(path),
    )


def _team(data: object, problems: list[str]) -> TeamConfig | None:
    if not isinstance(data, Mapping):
        problems.append(f"the configuration must be a table of keys, got {_kind(data)}")
        return None
    unknown = sorted(str(k) for k in data if k not in _TEAM_KEYS)
    if unknown:
        problems.append(
            f"unknown key(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{', '.join(sorted(_TEAM_KEYS))}"
        )
    manager: dict[str, Any] = {}
    for key in _SECONDS_KEYS:
        if key in data:
            check = _config.check_interval if key == "check_interval" else _seconds
            _check(problems, key, lambda v, k=key, c=check: c(k, v), data)
            manager[key] = data[key]
    for key in _COUNT_KEYS:
        if key in data:
            _check(problems, key, lambda v, k=key: _config.integer(k, v, minimum=1), data)
            manager[key] = data[key]
    if "circuits" in data:
        circuits = data["circuits"]
        if isinstance(circuits, str) or not isinstance(circuits, Sequence):
            problems.append(f"circuits must be a list of breaker names, got {_kind(circuits)}")
        elif not all(isinstance(c, str) and c for c in circuits):
            problems.append(f"circuits must hold non-empty names, got {list(circuits)!r}")
        else:
            manager["circuits"] = list(circuits)
    if "thresholds" in data:
        thresholds = _thresholds(data["thresholds"], problems)
        if thresholds is not None:
            manager["thresholds"] = thresholds
    if "fallback_strategies" in data:
        strategies = _strategies(data["fallback_strategies"], problems)
        if strategies is not None:
            manager["fallback_strategies"] = strategies
    if "timeouts" in data:
        timeouts = _timeouts(data["timeouts"], problems)
        if timeouts is not None:
            manager["timeouts"] = timeouts
    team = _text(data, "team", problems)
    storage = _text(data, "storage", problems)
    token_env = _text(data, "token_env", problems)
    environment = None
    if "environment" in data:
        try:
            environment = _config.environment({"BUTTRESS_ENV": str(data["environment"])})
        except ValueError:
            problems.append(
                f"environment must be development or production, got {data['environment']!r}"
            )
    monitors = _monitors(data.get("monitors", ()), problems)
    return TeamConfig(
        team=team,
        manager=manager,
        monitors=monitors,
        storage=storage,
        environment=environment,
        token_env=token_env,
    )


def _seconds(key: str, value: object) -> float:
    return _config.seconds(key, value, allow_zero=False)


def _check(problems: list[str], key: str, parse: Any, data: Mapping[str, Any]) -> None:
    try:
        parse(data[key])
    except (TypeError, ValueError) as exc:
        problems.append(str(exc))


def _text(data: Mapping[str, Any], key: str, problems: list[str]) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{key} must be a non-empty string, got {_kind(value)}")
        return None
    return value


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _rtype(key: object, where: str, problems: list[str]) -> ResourceType | None:
    try:
        return resource_type(key)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _thresholds(value: object, problems: list[str]) -> dict[ResourceType, dict[str, float]] | None:
    if not isinstance(value, Mapping):
        problems.append(f"thresholds must map resource types to levels, got {_kind(value)}")
        return None
    out: dict[ResourceType, dict[str, float]] = {}
    for key, levels in value.items():
        rtype = _rtype(key, f"thresholds key {key!r}", problems)
        try:
            checked = threshold_levels(f"thresholds.{key}", levels)
        except (TypeError, ValueError) as exc:
            problems.append(str(exc))
            continue
        if rtype is not None:
            out[rtype] = checked
    return out


def _timeouts(value: object, problems: list[str]) -> dict[ResourceType, float] | None:
    """Seconds per resource type for the full stack (``with_resilience``)."""
    if not isinstance(value, Mapping):
        problems.append(f"timeouts must map resource types to seconds, got {_kind(value)}")
        return None
    out: dict[ResourceType, float] = {}
    for key, seconds in value.items():
        rtype = _rtype(key, f"timeouts key {key!r}", problems)
        where = f"timeouts.{getattr(rtype, 'value', key)}"
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            problems.append(f"{where} must be a number of seconds > 0, got {_kind(seconds)}")
        elif not (math.isfinite(seconds) and seconds > 0):
            problems.append(f"{where} must be a number of seconds > 0, got {seconds!r}")
        elif rtype is not None:
            out[rtype] = float(seconds)
    return out


def _strategies(value: object, problems: list[str]) -> dict[ResourceType, list[Any]] | None:
    if not isinstance(value, Mapping):
        problems.append(
            f"fallback_strategies must map resource types to lists of actions, got {_kind(value)}"
        )
        return None
    out: dict[ResourceType, list[Any]] = {}
    for key, actions in value.items():
        rtype = _rtype(key, f"fallback_strategies key {key!r}", problems)
        where = f"fallback_strategies.{getattr(rtype, 'value', key)}"
        if isinstance(actions, str | bytes) or not isinstance(actions, Sequence):
            problems.append(f"{where} must be a list of actions, got {_kind(actions)}")
            continue
        checked = [_action(a, f"{where}[{i}]", problems) for i, a in enumerate(actions)]
        if rtype is not None and all(a is not None for a in checked):
            out[rtype] = checked
    return out


def _action(value: object, where: str, problems: list[str]) -> Any:
    """An action of a protocol: a :class:`FallbackAction` as given, or one built from a table
    (``{strategy = "switch_provider", target = "anthropic", priority = 1, ...parameters}``)."""
    if isinstance(value, FallbackAction | FallbackStrategy):
        return value
    if not isinstance(value, Mapping):
        problems.append(f"{where} must be an action or a table with a strategy, got {value!r}")
        return None
    params = dict(value)
    raw = params.pop("strategy", None)
    strategy = _strategy(raw)
    if strategy is None:
        known = ", ".join(name.lower() for name in FallbackStrategy.__members__)
        problems.append(f"{where}.strategy must be one of {known}, got {raw!r}")
        return None
    try:
        return FallbackAction(strategy, **params)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        return None


def _strategy(raw: object) -> FallbackStrategy | None:
    if isinstance(raw, FallbackStrategy):
        return raw
    if isinstance(raw, str):
        key = raw.strip()
        by_name = FallbackStrategy.__members__.get(key.upper())  # aliases too (USE_CACHE)
        if by_name is not None:
            return by_name
        for member in FallbackStrategy:
            if key.lower() == member.value:
                return member
    return None


#: Options every monitor takes (the schedule and status rules of ``register_monitor``).
_MONITOR_COMMON = frozenset(
    {
        "interval",
        "timeout",
        "required",
        "critical",
        "fail_threshold",
        "success_threshold",
        "degraded_at",
        "critical_at",
        "horizon",
    }
)
#: Per type: the keys it needs, the keys it may have, and its default name.
_MONITOR_KEYS: Mapping[ResourceType, tuple[frozenset[str], frozenset[str], str | None]] = {
    ResourceType.DATABASE: (frozenset({"target"}), frozenset({"query"}), None),
    ResourceType.NETWORK: (
        frozenset(),
        frozenset({"target", "host", "port", "expect_status", "latency_budget", "headers"}),
        None,
    ),
    ResourceType.MEMORY: (frozenset(), frozenset({"scope", "cgroup_root", "proc_root"}), "system"),
    ResourceType.CPU: (frozenset(), frozenset({"scope", "cgroup_root", "proc_root"}), "system"),
    ResourceType.MCP_SERVER: (
        frozenset(),
        frozenset({"command", "args", "env", "url", "config"}),
        None,
    ),
    ResourceType.DOCKER: (frozenset(), frozenset({"container", "socket"}), "docker"),
    ResourceType.K8S_POD: (
        frozenset(),
        frozenset({"pod", "namespace", "host", "port", "token_path", "ca_path", "namespace_path"}),
        "pod",
    ),
    # A quota tracker fed by the application's responses (a quota function needs code).
    ResourceType.API_QUOTA: (frozenset(), frozenset(), None),
}


def _monitors(value: object, problems: list[str]) -> tuple[MonitorSpec, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        problems.append(f"monitors must be a list of tables, got {_kind(value)}")
        return ()
    specs = []
    for i, entry in enumerate(value):
        spec = _monitor(entry, f"monitors[{i}]", problems)
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


def _monitor(entry: object, where: str, problems: list[str]) -> MonitorSpec | None:
    if not isinstance(entry, Mapping):
        problems.append(f"{where} must be a table with type and name, got {_kind(entry)}")
        return None
    options = dict(entry)
    raw_type = options.pop("type", None)
    rtype = _MONITOR_TYPES.get(str(raw_type).strip().lower()) if raw_type else None
    if rtype is None:
        problems.append(
            f"{where}.type must be one of {', '.join(_MONITOR_TYPES)}, got {raw_type!r}"
        )
        return None
    needed, optional, default_name = _MONITOR_KEYS[rtype]
    name = options.pop("name", default_name)
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name must be a non-empty string, got {name!r}")
        return None
    label = f"{where} ({rtype.value} {name!r})"
    allowed = needed | optional | _MONITOR_COMMON
    unknown = sorted(set(options) - allowed)
    if unknown:
        problems.append(
            f"{label}: unknown key(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{', '.join(sorted(allowed))}"
        )
        return None
    missing = sorted(needed - set(options))
    if missing:
        problems.append(f"{label}: missing {', '.join(map(repr, missing))}")
        return None
    for flag in ("required", "critical"):
        if flag in options and not isinstance(options[flag], bool):
            problems.append(f"{where}.{flag} must be true or false, got {options[flag]!r}")
            return None
    if isinstance(options.get("args"), list):
        options["args"] = tuple(options["args"])
    return MonitorSpec(rtype, name, options)


def build_manager(
    source: Mapping[str, Any] | str | os.PathLike[str] | TeamConfig,
    *,
    team: str | None = None,
    **manager_options: Any,
) -> ResilienceManager:
    """A :class:`~buttress.ResilienceManager` with the configuration's settings and monitors.

    ``team`` overrides the configuration's ``team``; ``manager_options`` go to the manager
    (``clock=``, ``degradation=`` ...). A storage URL of the wrong form, or a monitor whose
    options its ``register_*`` method refuses, is a :class:`ConfigError` naming it.
    """
    from .manager import ResilienceManager

    config = source if isinstance(source, TeamConfig) else load_config(source)
    name = team or config.team
    if not name:
        raise ConfigError(["team is missing: give team= or a 'team' key"], source=config.source)
    if config.storage is not None:
        problem = _storage_problem(config.storage)
        if problem:
            raise ConfigError([problem], source=config.source)
        manager_options.setdefault("storage", config.storage)
    manager = ResilienceManager(name, config.manager, **manager_options)
    problems = _register_monitors(manager, config)
    if problems:
        manager.close()
        raise ConfigError(problems, source=config.source)
    return manager


def check_config(source: Mapping[str, Any] | str | os.PathLike[str] | TeamConfig) -> TeamConfig:
    """The checked configuration, refused for everything :func:`build_manager` would refuse.

    Runs the same checks as :func:`build_manager`: the manager's settings and every monitor's
    ``register_*`` method, on a manager that is never started, and the storage URL's form. Nothing
    is opened or connected: no store, no monitor check. A missing ``team`` is no error here (code
    may give ``team=``).

    Raises:
        ConfigError: every problem found, named by its key or monitor.
    """
    from .manager import ResilienceManager

    config = source if isinstance(source, TeamConfig) else load_config(source)
    problems = []
    if config.storage is not None:
        problem = _storage_problem(config.storage)
        if problem:
            problems.append(problem)
    try:
        manager = ResilienceManager(config.team or "check", config.manager)
    except (TypeError, ValueError) as exc:
        problems.append(redact(str(exc)))
    else:
        problems += _register_monitors(manager, config)
        manager.close()
    if problems:
        raise ConfigError(problems, source=config.source)
    return config


def _storage_problem(url: str, named: str = "storage") -> str | None:
    """What is wrong with the form of storage URL ``url`` (``None``: nothing), found without
    opening the store: what :func:`buttress.backends.open_storage` refuses before it opens one.
    ``named``: what gave the URL (the key, or the environment variable)."""
    from .backends import _REDIS_SCHEMES, _sqlite_path, open_storage
    from .backends.redis_wire import parse_url

    scheme = url.partition("://")[0].lower() if "://" in url else ""
    try:
        if scheme == "sqlite":
            if url.partition("://")[2].strip("/"):  # without a path: the default state file
                path = _sqlite_path(url, f"{named}={url!r}")
                if path.is_dir():
                    return f"{named}={url!r}: {path} is a directory, not a state file"
                if not path.parent.is_dir():
                    return f"{named}={url!r}: the directory {path.parent} does not exist"
        elif scheme in _REDIS_SCHEMES:
            parse_url(url)
        else:
            open_storage(url)  # memory:// or an unknown scheme: opens nothing
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if message.startswith("storage="):  # open_storage's own naming
            message = message.replace("storage=", f"{named}=", 1)
        return redact(message if message.startswith(named) else f"{named}: {message}")
    return None


def _register_monitors(manager: ResilienceManager, config: TeamConfig) -> list[str]:
    """Register the configuration's monitors on ``manager``; the problems, one per refused one."""
    problems = []
    for i, spec in enumerate(config.monitors):
        register = getattr(manager, _REGISTER[spec.type])
        try:
            register(spec.name, **spec.options)
        except (TypeError, ValueError, LookupError, OSError) as exc:
            # a DSN's password must not reach a log through the error that quotes the DSN
            problems.append(f"monitors[{i}] ({spec.type.value} {spec.name!r}): {redact(str(exc))}")
    return problems


_REGISTER: Mapping[ResourceType, str] = {
    ResourceType.API_QUOTA: "register_api_quota_monitor",
    ResourceType.MEMORY: "register_memory_monitor",
    ResourceType.CPU: "register_cpu_monitor",
    ResourceType.DATABASE: "register_database_monitor",
    ResourceType.MCP_SERVER: "register_mcp_monitor",
    ResourceType.NETWORK: "register_network_monitor",
    ResourceType.DOCKER: "register_docker_monitor",
    ResourceType.K8S_POD: "register_k8s_monitor",
}
