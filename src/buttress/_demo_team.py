"""``buttress demo --story team``: a team whose LLM provider is rate-limited, switched away from
and taken back, with nothing surfacing to its callers.

Theory of operation
-------------------
The team is a :class:`~buttress.ResilienceManager` named ``marketing-team``. Its one operation,
``generate``, is guarded by ``@with_fallback(ResourceType.API_QUOTA)`` over three named targets in
order of preference, ``openai``, ``anthropic`` and ``local``. They are local stand-ins (coroutines,
no network) whose behaviour follows the phase of the run:

==============  ======================================================================
phase           what happens
==============  ======================================================================
steady          ``openai`` answers; its quota drains towards the DEGRADED threshold
rate-limited    ``openai`` answers 429 with ``Retry-After`` and its quota reads 100%
                (CRITICAL); ``anthropic`` is briefly overloaded (503) in the middle, so
                ``local`` answers for a moment; the ``crm-api`` check fails for a while
recovered       the quota refills; ``openai`` answers again
==============  ======================================================================

Nothing in the story is scripted beyond the stand-ins: the first 429s cool ``openai`` in the
team's target pool and the protocol switches those calls to ``anthropic`` at once (its retry step
is skipped while an untried target is left); the quota monitor then reads CRITICAL, so later calls
skip ``openai`` without trying it. When the quota refills, the monitor reads HEALTHY, the pool's
cooldown ends, ``openai`` answers its probes and the traffic returns to it.

Clients call ``generate`` in a loop. A hook counts the protocol's steps and the targets' state
changes; progress is printed once a second and a summary at the end. With ``serve=True`` the
team's operator app is served on 127.0.0.1 while the story runs, through the same
:func:`buttress.server.serve.serve_app` as ``buttress serve``, and shut down when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .clock import monotonic_time
from .degradation import DegradationManager
from .events import (
    Event,
    ProtocolStep,
    ResourceStatusChanged,
    TargetStateChanged,
    TierChanged,
    add_hook,
    remove_hook,
)
from .health.types import ResourceType
from .manager import ResilienceManager
from .protocol.decorators import with_fallback

TEAM = "marketing-team"
TARGETS = ("openai", "anthropic", "local")
#: (name, start as a share of the run)
PHASES = (("steady", 0.0), ("rate-limited", 0.3), ("recovered", 0.6))
ANTHROPIC_BUSY = (0.42, 0.5)  # anthropic overloaded: the call goes on to local
CRM_DOWN = (0.35, 0.55)  # the team's CRM endpoint refuses connections
QUOTA_LIMIT = 10_000
QUOTA_LAG = 0.04  # share of the run the quota figures trail the provider's first 429
STEADY = 5  # calls in a row a target serves before the route counts it as a switch


class ProviderError(Exception):
    """An HTTP error from a (simulated) provider, with its status and headers."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str]) -> None:
        super().__init__(f"{status_code} {message}")
        self.status_code = status_code
        self.headers = headers


@dataclass
class Story:
    """The clock of the run and the stand-ins' behaviour, phase by phase."""

    duration: float
    started: float = field(default_factory=monotonic_time)

    def elapsed(self) -> float:
        return monotonic_time() - self.started

    def share(self) -> float:
        return self.elapsed() / self.duration

    def phase(self) -> str:
        share = self.share()
        name = PHASES[0][0]
        for phase, start in PHASES:
            if share >= start:
                name = phase
        return name

    def quota_used(self) -> tuple[int, int]:
        """``(used, limit)`` of openai's quota: drains, runs out, refills."""
        phase, share = self.phase(), self.share()
        if phase == "steady":
            used = 0.4 + 0.45 * share / PHASES[1][1]  # 40% -> 85%: DEGRADED before the end
        elif share < PHASES[1][1] + QUOTA_LAG:
            used = 0.92  # the provider refuses before its usage figures catch up
        elif phase == "rate-limited":
            used = 1.0
        else:
            used = 0.05 + 0.1 * (share - PHASES[2][1])
        return round(used * QUOTA_LIMIT), QUOTA_LIMIT

    def crm(self) -> None:
        if CRM_DOWN[0] <= self.share() < CRM_DOWN[1]:
            raise ConnectionRefusedError("connection refused by crm-api (simulated)")

    def retry_after(self) -> str:
        return f"{max(0.1, self.duration * 0.1):.1f}"

    async def complete(self, target: str, prompt: str) -> str:
        await asyncio.sleep(0.002)  # a provider takes a moment
        share = self.share()
        if target == "openai" and self.phase() == "rate-limited":
            raise ProviderError(
                429, "Too Many Requests: rate limit reached", {"Retry-After": self.retry_after()}
            )
        if target == "anthropic" and ANTHROPIC_BUSY[0] <= share < ANTHROPIC_BUSY[1]:
            raise ProviderError(503, "Overloaded", {})
        return f"{target}: copy for {prompt}"


@dataclass
class Tally:
    calls: int = 0
    errors: int = 0
    served: Counter[str] = field(default_factory=Counter)
    steps: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    recent: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    route: list[tuple[float, str]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    streak: tuple[str, int, float] = ("", 0, 0.0)
    resources: dict[str, list[str]] = field(default_factory=dict)
    tiers: list[str] = field(default_factory=list)
    interrupted: bool = False

    def hook(self, event: Event) -> None:
        if isinstance(event, ProtocolStep):
            key = (event.strategy, event.target or "-", event.outcome)
            self.steps[key] += 1
            self.recent[key] += 1
        elif isinstance(event, TargetStateChanged):
            why = f" ({event.reason})" if event.reason else ""
            self.targets.append(f"{event.target}: {event.old} -> {event.new}{why}")
        elif isinstance(event, ResourceStatusChanged) and event.name == TEAM:
            self.resources.setdefault(event.resource, [event.old]).append(event.new)
        elif isinstance(event, TierChanged) and event.name == TEAM:
            if not self.tiers:
                self.tiers.append(getattr(event.old, "name", str(event.old)))
            self.tiers.append(getattr(event.new, "name", str(event.new)))

    def served_by(self, target: str, at: float) -> None:
        # The route records a target once it serves STEADY calls in a row: a probe answered by
        # the recovering primary between calls still served by the backup is not a switch.
        self.served[target] += 1
        name, count, since = self.streak
        self.streak = (target, count + 1, since) if name == target else (target, 1, at)
        name, count, since = self.streak
        if count == STEADY and (not self.route or self.route[-1][1] != name):
            self.route.append((since, name))

    @property
    def switches(self) -> int:
        return max(0, len(self.route) - 1)

    def primary_returned(self) -> bool:
        names = [name for _, name in self.route]
        return len(names) > 1 and names[0] == TARGETS[0] and names[-1] == TARGETS[0]


class MarketingTeam:
    """The team: its resilience manager, monitors and guarded operation."""

    def __init__(self, story: Story, tally: Tally) -> None:
        interval = max(0.1, story.duration / 30)
        self.story, self.tally = story, tally
        self.resilience = ResilienceManager(
            TEAM,
            {
                "check_interval": interval,
                "fail_threshold": 1,
                "success_threshold": 1,
                # only the team's own breaker counts for its health, not others in the process
                "circuits": [f"{TEAM}.{ResourceType.API_QUOTA.value}"],
            },
            degradation=DegradationManager(name=TEAM, min_dwell=max(0.2, story.duration / 20)),
        )
        self.resilience.register_api_quota_monitor("openai", story.quota_used)
        self.resilience.register_monitor(ResourceType.NETWORK, "crm-api", story.crm, critical=False)
        cooldown = max(0.1, story.duration * 0.05)
        self.resilience.register_targets(
            ResourceType.API_QUOTA,
            {name: name for name in TARGETS},  # a name is its own target: passed as target=
            cooldown=cooldown,
            max_cooldown=cooldown * 2,
            probes=2,
        )

    @with_fallback(ResourceType.API_QUOTA)
    async def generate(self, prompt: str, target: str = TARGETS[0]) -> str:
        answer = await self.story.complete(target, prompt)
        self.tally.served_by(target, self.story.elapsed())
        return answer


def describe() -> str:
    return (
        f"buttress demo (team): {TEAM!r} calls its LLM through"
        f" @with_fallback(ResourceType.API_QUOTA) over {' -> '.join(TARGETS)}"
        f" (local stand-ins; phases: {', '.join(p for p, _ in PHASES)})"
    )


async def run_story(
    duration: float,
    *,
    concurrency: int = 4,
    serve: bool = False,
    port: int = 8000,
    announce: Callable[[str], None] = print,
) -> tuple[Tally, dict[str, Any]]:
    """Run the story for ``duration`` seconds; the tally and the final health report."""
    story = Story(duration)
    tally = Tally()
    team = MarketingTeam(story, tally)
    manager = team.resilience
    add_hook(tally.hook)
    server: list[Any] = []
    serving: asyncio.Task[None] | None = None
    try:
        await manager.start()
        if serve:
            serving = await _serve(manager, port, server, announce)
        story.started = monotonic_time()  # the story begins once the dashboard can watch it
        stop_at = story.started + duration

        def going() -> bool:
            # Ctrl+C while serving: uvicorn takes the signal and stops; the story ends with it.
            if serving is not None and serving.done():
                tally.interrupted = True
                return False
            return monotonic_time() < stop_at

        async def client(index: int) -> None:
            number = 0
            while going():
                number += 1
                tally.calls += 1
                try:
                    await team.generate(f"campaign {index}-{number}")
                except Exception:  # what the team's callers would see
                    tally.errors += 1
                await asyncio.sleep(0.02)

        async def progress() -> None:
            while going():
                pause = min(1.0, max(0.0, stop_at - monotonic_time()))
                if serving is None:
                    await asyncio.sleep(pause)
                else:  # a second, or less if the server stops
                    await asyncio.wait({serving}, timeout=pause)
                announce(_progress_line(story, tally, manager))

        await asyncio.gather(progress(), *(client(i) for i in range(concurrency)))
        report = manager.health_report()
    finally:
        remove_hook(tally.hook)
        if serving is not None:
            if server:
                server[0].should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serving  # stops the manager too
        await manager.stop()
    return tally, report


async def _serve(
    manager: ResilienceManager, port: int, server: list[Any], announce: Callable[[str], None]
) -> asyncio.Task[None]:
    """Serve the team's operator app on 127.0.0.1 while the story runs (as ``buttress serve``)."""
    from .server.serve import TOKEN_ENV, bind, serve_app, token_from_env

    token = token_from_env(None)  # as for buttress serve: guarded when the variable is set
    sock = bind("127.0.0.1", port)
    app = manager.asgi_app(token=token)
    task = asyncio.get_running_loop().create_task(
        serve_app(
            app,
            sock,
            manager=manager,
            log_level="warning",
            access_log=False,
            secrets=(token,) if token else (),
            started=server.append,
        )
    )
    # the dashboard URL is printed once uvicorn is listening, so a browser opened on it answers
    for _ in range(500):
        if (server and server[0].started) or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # raises what stopped it
    guarded = f"; a bearer token from {TOKEN_ENV}" if token else ""
    announce(f"dashboard: http://127.0.0.1:{sock.getsockname()[1]}/ (while the demo runs{guarded})")
    return task


def _progress_line(story: Story, tally: Tally, manager: ResilienceManager) -> str:
    recent = ", ".join(
        f"{strategy} {target} {outcome} x{n}"
        for (strategy, target, outcome), n in sorted(tally.recent.items())
    )
    tally.recent.clear()
    quota = manager.resource_state(ResourceType.API_QUOTA, "openai")
    crm = manager.get_resource_status(ResourceType.NETWORK, "crm-api")
    serving = tally.route[-1][1] if tally.route else "-"
    served = " ".join(f"{t}={tally.served[t]}" for t in TARGETS)
    usage = "?" if quota.usage is None else f"{quota.usage:.0f}%"
    return (
        f"[{story.elapsed():5.1f}s] phase={story.phase():<12} serving={serving:<9} {served}"
        f" | quota(openai)={usage} {_status(quota.status)} crm-api={_status(crm)}"
        f" | tier={manager.degradation.get_current_tier().name}"
        f" | steps: {recent or 'none'}"
    )


def _status(status: Any) -> str:
    return "unknown" if status is None else str(getattr(status, "value", status))


def summary(tally: Tally, report: dict[str, Any]) -> str:
    route = " -> ".join(f"{name} (at {at:.1f}s)" for at, name in tally.route) or "none"
    lines = [
        "",
        "summary (team)" + (" -- interrupted" if tally.interrupted else ""),
        f"  calls                    {tally.calls}",
        "  served by                " + ", ".join(f"{t} {tally.served[t]}" for t in TARGETS),
        f"  route                    {route}",
        f"  switches                 {tally.switches}",
        f"  primary returned         {'yes' if tally.primary_returned() else 'no'}",
        f"  errors surfaced          {tally.errors}",
        f"  overall health           {report['overall_health']}"
        f" (tier {report['degradation_tier_name']})",
        "  resource statuses",
    ]
    lines += [
        f"    {resource:<22} {' -> '.join(statuses)}"
        for resource, statuses in sorted(tally.resources.items())
    ] or ["    none"]
    lines.append(f"  degradation tiers        {' -> '.join(tally.tiers) or 'no change'}")
    lines.append("  protocol steps")
    lines += [
        f"    {strategy} {target} {outcome}: {n}"
        for (strategy, target, outcome), n in sorted(tally.steps.items())
    ] or ["    none"]
    lines.append("  target state changes")
    lines += [f"    {change}" for change in tally.targets] or ["    none"]
    return "\n".join(lines)
