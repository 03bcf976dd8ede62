"""The ``buttress`` command: ``buttress demo`` runs a flaky dependency through stacked policies.

The demo needs no services: the dependency is a local coroutine that goes through five phases
(healthy, flaky, slow, outage, recovery). Requests pass through, outermost first, a fallback
(cached answer, else a default), a retry (that does not retry an open breaker), a rate limit (that
waits a little for a slot), a circuit breaker, and a timeout. The breaker's state feeds a
degradation manager, whose tier follows the dependency's health (with a dwell before recovering).
Progress is printed once a second and a summary at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
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
    # Help is plain text for a terminal: the module docstring's reStructuredText is for readers
    # of the source.
    parser = argparse.ArgumentParser(
        prog="buttress", description="Resilience policies for Python services."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a flaky dependency through stacked policies",
        description=(
            "Run a local dependency that turns flaky, slow, dead and healthy again through a"
            " fallback, a retry, a rate limit, a circuit breaker and a timeout, while a"
            " degradation manager follows its health. Prints progress once a second and a"
            " summary at the end."
        ),
    )
    demo.add_argument("--duration", type=_positive, default=12.0, help="seconds (default 12)")
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
    args = parser.parse_args(argv)
    if args.command == "queue":
        return run_queue(args)
    if args.command == "serve":
        return _serve(args)
    if args.concurrency < 1:
        parser.error(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.log_level:
        logging.basicConfig(format="  log %(levelname)s %(name)s: %(message)s")
        logging.getLogger("buttress").setLevel(args.log_level)
    print(
        f"buttress demo: {args.concurrency} clients for {args.duration:.0f}s against a local "
        f"dependency (phases: {', '.join(p[0] for p in PHASES)})"
    )
    print(
        "policies, outermost first: fallback(cached, default) > retry > rate limit > breaker"
        " > timeout"
    )
    tally = asyncio.run(run_demo(args.duration, args.failure_rate, args.concurrency, args.seed))
    print(summary(tally, args.duration))
    return 0


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
            " /events and the dashboard at /) with uvicorn, for a team described in a JSON or"
            " TOML file, or for a demo team that changes on its own. The bearer token, if any,"
            " comes from the environment (BUTTRESS_SERVER_TOKEN, or the variable --token-env"
            " or the file's token_env names), never from the command line."
        ),
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="a .json or .toml team configuration")
    source.add_argument("--demo", action="store_true", help="serve a demo team")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (8000)")
    serve.add_argument("--token-env", metavar="VAR", help="environment variable with the token")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server.serve import ConfigError, run, token_from_env
    except ImportError as exc:
        print(
            f"buttress serve: {exc}; install the server extra: pip install 'buttress[server]'",
            file=sys.stderr,
        )
        return 2
    try:
        return run(
            host=args.host,
            port=args.port,
            config=args.config,
            demo=args.demo,
            token=token_from_env(args.token_env),
            log_level=args.log_level,
        )
    except ConfigError as exc:
        print(f"buttress serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"buttress serve: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
