"""The ``buttress`` command: ``buttress demo`` tells two stories, ``buttress config check`` checks
a service's configuration.

The policies story (``--story policies``):

The demo needs no services: the dependency is a local coroutine that goes through five phases
(healthy, flaky, slow, outage, recovery). Requests pass through, outermost first, a fallback
(cached answer, else a default), a retry (that does not retry an open breaker), a rate limit (that
waits a little for a slot), a circuit breaker, and a timeout. The breaker's state feeds a
degradation manager, whose tier follows the dependency's health (with a dwell before recovering).
Progress is printed once a second and a summary at the end.

The team story (``--story team``, :mod:`buttress._demo_team`): a team's LLM provider is
rate-limited, its calls switch to the next provider and come back, nothing surfaces to the
callers; ``--serve`` serves the team's dashboard meanwhile. Without ``--story`` both run, one after
the other (only the team story with ``--serve``).

``buttress config check [FILE]`` reads every environment variable with
:func:`buttress.config.load_settings` (and a team file with :func:`buttress.config.check_config`:
what passes builds with :func:`buttress.config.build_manager`), prints each value and where it
came from, and exits 1 with every problem listed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .clock import monotonic_time
from .degradation import DegradationManager
from .errors import CircuitOpenError
from .events import (
    CallRejected,
    CircuitStateChanged,
    Event,
    FallbackUsed,
    RetryScheduled,
    TierChanged,
    TimedOut,
    add_hook,
    remove_hook,
)
from .machines.breaker import CircuitState
from .policies.circuit import CircuitBreaker, CircuitBreakerConfig
from .policies.fallback import Fallback, FallbackStrategy
from .policies.pipeline import Pipeline
from .policies.ratelimit import RateLimit, RateLimitConfig, RateLimiter
from .policies.retry import Retry
from .policies.timeout import Timeout
from .queue.cli import add_parser as add_queue_parser
from .queue.cli import run as run_queue

PHASES = (
    # (name, share of the run, error rate, slow share)
    ("healthy", 0.2, 0.0, 0.0),
    ("flaky", 0.25, None, 0.0),  # None: the --failure-rate option
    ("slow", 0.15, 0.0, 0.5),
    ("outage", 0.25, 1.0, 0.0),
    ("recovery", 0.15, 0.0, 0.0),
)
TIMEOUT = 0.15
POLICIES_DURATION = 12.0
TEAM_DURATION = 10.0
LATENCY = 0.01
RATE = 250.0  # requests per second the dependency's quota allows


class DependencyDown(ConnectionError):
    """The simulated dependency failed."""


@dataclass
class Dependency:
    """A local stand-in for a remote service whose behaviour follows the phase of the run."""

    duration: float
    failure_rate: float
    rng: random.Random
    started: float = field(default_factory=monotonic_time)
    calls: int = 0

    def phase(self) -> tuple[str, float, float]:
        elapsed = (monotonic_time() - self.started) / self.duration
        edge = 0.0
        for name, share, errors, slow in PHASES:
            edge += share
            if elapsed < edge:
                return name, self.failure_rate if errors is None else errors, slow
        name, _, errors, slow = PHASES[-1]
        return name, errors or 0.0, slow

    async def fetch(self, item: str) -> str:
        self.calls += 1
        name, errors, slow = self.phase()
        if name == "outage":
            await asyncio.sleep(TIMEOUT * 3)  # a dead dependency hangs until the timeout
            raise DependencyDown("connection reset")
        await asyncio.sleep(LATENCY * (1 + self.rng.random()))
        if self.rng.random() < slow:
            await asyncio.sleep(TIMEOUT * 2)
        if self.rng.random() < errors:
            raise DependencyDown("503 Service Unavailable")
        return f"factor:{item}"


@dataclass
class Tally:
    requests: int = 0
    answered: int = 0
    failed: int = 0
    events: Counter[str] = field(default_factory=Counter)
    transitions: list[str] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)
    fallbacks: Counter[str] = field(default_factory=Counter)

    def hook(self, event: Event) -> None:
        if isinstance(event, RetryScheduled):
            self.events["retries"] += 1
        elif isinstance(event, TimedOut):
            self.events["timeouts"] += 1
        elif isinstance(event, FallbackUsed):
            self.fallbacks[event.strategy] += 1
        elif isinstance(event, CallRejected) and event.policy == "circuit":
            self.events["rejected"] += 1
        elif isinstance(event, CallRejected) and event.policy == "ratelimit":
            self.events["throttled"] += 1
        elif isinstance(event, CircuitStateChanged):
            self.transitions.append(f"{event.old} -> {event.new} ({event.reason})")
        elif isinstance(event, TierChanged):
            old, new = getattr(event.old, "name", event.old), getattr(event.new, "name", event.new)
            self.tiers.append(f"{old} -> {new} ({event.reason})")


async def run_demo(duration: float, failure_rate: float, concurrency: int, seed: int) -> Tally:
    rng = random.Random(seed)
    dependency = Dependency(duration=duration, failure_rate=failure_rate, rng=rng)
    tally = Tally()
    breaker = CircuitBreaker(
        CircuitBreakerConfig(
            name=None,
            fail_max=5,
            timeout_duration=max(0.5, duration / 12),
            failure_rate_threshold=0.5,
            window_size=20,
            minimum_calls=10,
        )
    )
    limiter = RateLimiter()
    limiter.configure("demo.api", RateLimitConfig(requests_per_second=RATE, burst_size=25))
    manager = DegradationManager(min_dwell=max(0.5, duration / 12), name="demo")
    manager.register_service("factor_api")

    def health(event: CircuitStateChanged) -> None:
        healthy = event.new is CircuitState.CLOSED
        error = None if healthy else event.reason
        manager.update_health("factor_api", healthy=healthy, error=error)

    breaker.add_listener(health)
    guarded = Pipeline(
        Fallback(
            strategy=[FallbackStrategy.CACHED, FallbackStrategy.DEFAULT],
            default_value="factor:estimated",
            name="demo.fallback",
        ),
        Retry(
            max_retries=2,
            base_delay=0.02,
            max_delay=0.1,
            fail_fast_on=CircuitOpenError,
            name="demo.retry",
        ),
        RateLimit("demo.api", limiter=limiter, wait=True, max_wait=0.02),
        breaker,
        Timeout(timeout_seconds=TIMEOUT, name="demo.timeout"),
    )(dependency.fetch)
    items = [f"item-{i}" for i in range(12)]
    add_hook(tally.hook)
    start = monotonic_time()
    stop_at = start + duration

    async def client() -> None:
        while monotonic_time() < stop_at:
            item = rng.choice(items)
            tally.requests += 1
            try:
                await guarded(item)
            except Exception:
                tally.failed += 1
            else:
                tally.answered += 1
            await asyncio.sleep(0.01)

    async def progress() -> None:
        while monotonic_time() < stop_at:
            await asyncio.sleep(1.0)
            phase = dependency.phase()[0]
            print(
                f"[{monotonic_time() - start:5.1f}s] phase={phase:<8} requests={tally.requests:<5}"
                f" answered={tally.answered:<5} retries={tally.events['retries']:<4}"
                f" fallbacks={sum(tally.fallbacks.values()):<4} breaker={breaker.state.value:<9}"
                f" tier={manager.get_current_tier().name}",
                flush=True,
            )

    try:
        await asyncio.gather(progress(), *(client() for _ in range(concurrency)))
    finally:
        remove_hook(tally.hook)
    tally.events["dependency_calls"] = dependency.calls
    return tally


def summary(tally: Tally, duration: float) -> str:
    rejected = tally.events["rejected"]
    lines = [
        "",
        "summary",
        f"  requests                 {tally.requests}",
        f"  answered                 {tally.answered} "
        f"({tally.answered / max(1, tally.requests):.1%}; "
        f"{tally.answered - sum(tally.fallbacks.values())} fresh from the dependency)",
        f"  failed                   {tally.failed}",
        f"  dependency calls         {tally.events['dependency_calls']}",
        f"  retries                  {tally.events['retries']}",
        f"  timeouts                 {tally.events['timeouts']}",
        "  fallbacks used           "
        + (", ".join(f"{k.lower()} {v}" for k, v in sorted(tally.fallbacks.items())) or "none"),
        f"  rejected by the breaker  {rejected}",
        f"  over the rate limit      {tally.events['throttled']} "
        f"(waited up to 20 ms for a slot first; then retried after the limiter's retry_after)",
        f"  time saved failing fast  ~{rejected * TIMEOUT:.1f}s of waiting on a dead dependency "
        f"({rejected} calls x {TIMEOUT:.2f}s timeout)",
        "  breaker transitions",
    ]
    lines += [f"    {t}" for t in tally.transitions] or ["    none"]
    lines.append("  degradation tiers (the breaker's state as the dependency's health)")
    lines += [f"    {t}" for t in tally.tiers] or ["    none"]
    return "\n".join(lines)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names; its exit status. A reader that stops reading the output
    (``buttress config check | head``) ends it quietly, as other command-line tools do."""
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # what is still buffered would raise again as the interpreter flushes it at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, as a shell reports a command its pipe's reader left
    return status


def _main(argv: Sequence[str] | None = None) -> int:
    # Help is plain text for a terminal: the module docstring's reStructuredText is for readers
    # of the source.
    parser = argparse.ArgumentParser(
        prog="buttress", description="Resilience policies for Python services."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a flaky dependency through stacked policies, and a team switching providers",
        description=(
            "policies: run a local dependency that turns flaky, slow, dead and healthy again"
            " through a fallback, a retry, a rate limit, a circuit breaker and a timeout, while a"
            " degradation manager follows its health. team: a team whose primary LLM provider"
            " (a local stand-in) is rate-limited and its quota exhausted; its calls switch to"
            " the next provider at once and return when the primary recovers. Prints progress"
            " once a second and a summary at the end."
        ),
    )
    demo.add_argument(
        "--story",
        choices=["policies", "team", "both"],
        help="which story to tell (default: both; team with --serve)",
    )
    demo.add_argument(
        "--duration",
        type=_positive,
        help=f"seconds per story (default {POLICIES_DURATION:.0f} for policies,"
        f" {TEAM_DURATION:.0f} for team)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="serve the team's dashboard and operator endpoints on 127.0.0.1 while it runs",
    )
    demo.add_argument(
        "--port", type=_port, default=8000, help="port for --serve (default 8000; 0: any free)"
    )
    demo.add_argument(
        "--failure-rate",
        type=_probability,
        default=0.3,
        help="error rate of the flaky phase, 0..1 (default 0.3)",
    )
    demo.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING"],
        help="also show buttress's own log records at this level",
    )
    add_queue_parser(commands)
    _add_serve_parser(commands)
    _add_config_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "queue":
        return run_queue(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "config":
        return _config_check(args)
    if args.concurrency < 1:
        parser.error(f"--concurrency must be >= 1, got {args.concurrency}")
    story = args.story or ("team" if args.serve else "both")
    if args.serve and story != "team":
        parser.error("--serve serves the team story's dashboard: use it with --story team")
    if args.log_level:
        logging.basicConfig(format="  log %(levelname)s %(name)s: %(message)s")
        logging.getLogger("buttress").setLevel(args.log_level)
    if story in ("policies", "both"):
        duration = args.duration or POLICIES_DURATION
        print(
            f"buttress demo: {args.concurrency} clients for {duration:.0f}s against a local "
            f"dependency (phases: {', '.join(p[0] for p in PHASES)})"
        )
        print(
            "policies, outermost first: fallback(cached, default) > retry > rate limit > breaker"
            " > timeout"
        )
        tally = asyncio.run(run_demo(duration, args.failure_rate, args.concurrency, args.seed))
        print(summary(tally, duration))
    if story in ("team", "both"):
        if story == "both":
            print()
        return _team_story(args.duration or TEAM_DURATION, args.serve, args.port)
    return 0


def _team_story(duration: float, serve: bool, port: int) -> int:
    from . import _demo_team

    print(_demo_team.describe(), flush=True)

    def announce(line: str) -> None:
        print(line, flush=True)

    try:
        tally, report = asyncio.run(
            _demo_team.run_story(duration, serve=serve, port=port, announce=announce)
        )
    except ImportError as exc:
        return _missing_extra("demo --serve", exc)
    except OSError as exc:
        print(f"buttress demo: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("buttress demo: interrupted", file=sys.stderr)
        return 130
    print(_demo_team.summary(tally, report))
    return 130 if tally.interrupted else 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def _add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the health, readiness, metrics and dashboard endpoints",
        description=(
            "Serve a team's operator endpoints (/health, /live, /ready, /metrics, /state,"
            " /events and the dashboard at /) with uvicorn, for a team described in a TOML,"
            " JSON or YAML file, or for a demo team that changes on its own. The bearer token,"
            " if any, comes from the environment (BUTTRESS_SERVER_TOKEN, or the variable"
            " --token-env or the file's token_env names), never from the command line."
        ),
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", metavar="FILE", help="a .toml, .json or .yaml team configuration"
    )
    source.add_argument("--demo", action="store_true", help="serve a demo team")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (8000)")
    serve.add_argument("--token-env", metavar="VAR", help="environment variable with the token")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server.serve import ConfigError, run, token_from_env
    except ImportError as exc:
        return _missing_extra("serve", exc)
    try:
        return run(
            host=args.host,
            port=args.port,
            config=args.config,
            demo=args.demo,
            token=token_from_env(args.token_env),
            log_level=args.log_level,
        )
    except ImportError as exc:  # the server's own packages, imported when the app is built
        return _missing_extra("serve", exc)
    except ConfigError as exc:
        print(f"buttress serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"buttress serve: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _missing_extra(command: str, exc: ImportError) -> int:
    """A package of the server extra is missing: say which, and how to install it (once)."""
    message = str(exc)
    if "pip install" not in message:
        message += "; install the server extra: pip install 'buttress[server]'"
    print(f"buttress {command}: {message}", file=sys.stderr)
    return 2


def _add_config_parser(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="check the environment's configuration and a team file",
        description="Check buttress's configuration before a service starts.",
    )
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="check the environment variables and, if given, a team configuration file",
        description=(
            "Read every environment variable buttress uses and print its value and where it"
            " came from (environment, profile default or default); with FILE, read the team"
            " configuration (.toml, .json, .yaml), check it as building the team would (without"
            " starting monitors or opening its storage) and summarise its team, monitors and"
            " protocols. Exits 1 listing every problem found."
        ),
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="a team configuration file")


def _config_check(args: argparse.Namespace) -> int:
    import os

    from . import _config
    from ._redact import redact
    from .config import VARIABLES, ConfigError, check_config, load_settings

    problems: list[str] = []
    try:
        settings = load_settings()
    except ConfigError as exc:
        problems.append(str(exc))
    else:
        profile = settings.environment
        print(f"environment ({profile} profile)")
        for var in VARIABLES:
            field_name = (
                "environment"
                if var.name == "BUTTRESS_ENV"
                else var.name.lower().removeprefix("resilience_").removeprefix("buttress_")
            )
            value = getattr(settings, field_name)
            if os.environ.get(var.name, "").strip():
                source = "environment"
            elif _config.PROFILE_DEFAULTS.get(profile, {}).get(var.name) is not None:
                source = f"{profile} profile default"
            else:
                source = "default"
            shown = "(unset)" if value is None else redact(str(value))  # a storage URL's password
            print(f"  {var.name:<32} {shown:<12} {source}")
        if settings.storage_path:
            problem = _state_file_problem()
            if problem:
                problems.append(problem)
    if args.file:
        try:
            team = check_config(args.file)
        except ConfigError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"cannot read {args.file}: {exc.strerror or exc}")
        else:
            print(f"team file {args.file}")
            print(f"  team           {team.team or '(not named: give team= in code)'}")
            if team.environment:
                print(f"  environment    {team.environment}")
            if team.storage:
                print(f"  storage        {redact(team.storage)}")
            settings_keys = {
                k: v
                for k, v in team.manager.items()
                if k not in ("fallback_strategies", "thresholds")
            }
            for key, value in settings_keys.items():
                if key == "timeouts":
                    value = ", ".join(f"{t.value} {s:g}s" for t, s in value.items())
                print(f"  {key:<14} {value}")
            print(f"  monitors       {len(team.monitors)}")
            for spec in team.monitors:
                print(f"    {spec.type.value}:{spec.name}")
            strategies = team.manager.get("fallback_strategies", {})
            print(f"  protocols      {len(strategies)}")
            for rtype, actions in strategies.items():
                steps = " -> ".join(_action_text(a) for a in actions)
                print(f"    {getattr(rtype, 'value', rtype)}: {steps}")
    if problems:
        for problem in problems:
            print(f"buttress config check: {redact(problem)}", file=sys.stderr)
        return 1
    print("configuration ok")
    return 0


def _state_file_problem() -> str | None:
    """What keeps ``sqlite://`` from using the file ``RESILIENCE_STORAGE_PATH`` names, if any."""
    from .backends import STORAGE_PATH_ENV, default_sqlite_path

    path = default_sqlite_path()
    print(f"  {'(its state file)':<32} {path}")
    import os

    named = f"{STORAGE_PATH_ENV}={os.environ.get(STORAGE_PATH_ENV, '').strip()!r}"
    if path.exists():
        return None if path.is_file() else f"{named}: {path} exists and is not a file"
    made = path.parent  # made at the first use, from its closest existing directory
    while not made.exists() and made != made.parent:
        made = made.parent
    if not made.is_dir():
        return f"{named}: {made} is not a directory, so {path} cannot be made"
    if not os.access(made, os.W_OK | os.X_OK):
        return f"{named}: {made} is not writable, so {path} cannot be made"
    return None


def _action_text(action: Any) -> str:
    strategy = getattr(action, "strategy", action)
    name = str(getattr(strategy, "value", strategy)).lower()
    target = getattr(action, "target", None)
    return f"{name}({target})" if target else name


if __name__ == "__main__":
    sys.exit(main())
