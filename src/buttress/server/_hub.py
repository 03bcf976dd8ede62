"""What the operator endpoints read: rendered snapshots, cached, and the event hand-off.

Theory of operation
-------------------
A :class:`Hub` belongs to one app (one :class:`buttress.ResilienceManager`). It installs one
event hook (:func:`buttress.events.add_hook`) that runs on whatever thread emitted the event and
therefore does only constant-time, non-blocking work: it ignores per-call ``CallCompleted``
events at once, bumps a version number, records what the snapshots keep a history of (the tier
timeline, rate-limit rejections, protocol steps: bounded deques and counters) and, while stream
clients are connected, appends the event to a bounded outbox and asks the event loop, at most
once until it has drained the outbox, to do the rest (``call_soon_threadsafe``). Serialising and
fanning out to clients happen on the loop; a policy decision never waits for a client.

Each rendering (the seed health report, its IETF ``application/health+json`` twin, the
dashboard's ``/state``, the Prometheus text) is a :class:`Cached`: bytes kept with the version
they were built at and when. A request gets the cached bytes while the version is unchanged and
they are younger than ``max_age``; otherwise one rebuild runs in a worker thread (single flight:
concurrent requests share it) so that nothing a rebuild reads (a stored breaker's store, a queue
in SQLite) can stall the loop. After an event the next request waits for the rebuild (a probe
sees a transition at once); when only ``max_age`` has passed, the stale bytes are served and
refreshed in the background. Nothing here runs a resource check: every rendering reads the
monitors' last results.

Every string that reaches an output goes through :func:`scrub` (DSN passwords, ``token=`` style
parameters, bearer tokens, and the secrets the app was told about are replaced by ``***``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import itertools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import events as _events
from ..degradation import DegradationTier
from ..health.manager import CRITICAL, UNAVAILABLE, OverallHealth
from ..health.types import redact
from ..machines.ratelimit import RateLimitAlgorithm
from ..policies.circuit import CircuitState, circuit_breakers
from ..policies.ratelimit import RateLimiter, get_rate_limiter

if TYPE_CHECKING:
    from ..manager import ResilienceManager

__all__ = ["Cached", "Hub", "scrub"]

_log = logging.getLogger("buttress.server")

_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{4,}")
_KEYLIKE = re.compile(r"\b(sk|pk|rk|xox[abprs]|ghp|gho|glpat)[-_][A-Za-z0-9_-]{8,}")
#: Outbox and per-client buffer bounds: a burst beyond them drops the oldest events (the next
#: ``state`` event carries the whole picture anyway).
OUTBOX = 4096
CLIENT_BUFFER = 512
#: Event streams open at once at most; one more is refused with 503 (the dashboard then polls
#: ``/state``), so clients that connect and never read hold a bounded amount of memory.
MAX_STREAMS = 100
#: Per-call events (retries, rejections, time-outs, fallbacks) streamed per second at most; the
#: rest are counted (``events_dropped`` in ``/state``) so that an outage's storm of rejections
#: costs the loop a bounded amount.
PER_CALL_BUDGET = 200
_PER_CALL = frozenset(
    {
        _events.CallRejected,
        _events.AttemptFailed,
        _events.RetryScheduled,
        _events.GaveUp,
        _events.TimedOut,
        _events.FallbackUsed,
    }
)
TIMELINE = 100
STEPS = 50


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced by ``***``: DSN passwords and ``password=``-style
    values (:func:`buttress.health.types.redact`), bearer/basic credentials, API-key shaped
    tokens and every string in ``secrets``."""
    text = redact(text)
    text = _BEARER.sub(lambda m: f"{m[1]}{m[2]}***", text)
    text = _KEYLIKE.sub("***", text)
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


_SCRUBBED: dict[tuple[str, tuple[str, ...]], str] = {}


def _scrub_data(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        # Renderings repeat the same names, states and messages: each distinct string is
        # scrubbed once (a bounded memo), not on every rendering.
        key = (value, secrets)
        done = _SCRUBBED.get(key)
        if done is None:
            if len(_SCRUBBED) >= 8192:
                _SCRUBBED.clear()
            done = _SCRUBBED[key] = scrub(value, secrets)
        return done
    if isinstance(value, dict):
        return {_scrub_data(str(k), secrets): _scrub_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_data(v, secrets) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf or nan
    return value


def _plain(value: object) -> object:
    """An event field as JSON-able data."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, BaseException):
        detail = str(value)
        return f"{type(value).__name__}: {detail}" if detail else type(value).__name__
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str | int | float) else value.name
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


class Cached:
    """One rendering kept as bytes (see the module documentation)."""

    __slots__ = (
        "_building",
        "_building_version",
        "built_at",
        "max_age",
        "payload",
        "render",
        "version",
    )

    def __init__(self, render: Callable[[], Any], max_age: float) -> None:
        self.render = render
        self.max_age = max_age
        self.payload: Any = None
        self.version = -1
        self.built_at = -math.inf
        self._building: asyncio.Future[Any] | None = None
        self._building_version = -1

    def fresh(self, version: int) -> Any:
        """The payload when it can be served as it is (``None``: call :meth:`get`)."""
        if self.version == version and time.monotonic() - self.built_at < self.max_age:
            return self.payload
        return None

    async def get(self, version: int) -> Any:
        if self.version == version:
            if time.monotonic() - self.built_at < self.max_age:
                return self.payload
            self._rebuild(version)  # stale by age only: serve it, refresh meanwhile
            return self.payload
        return await self._rebuild(version)

    def _rebuild(self, version: int) -> Awaitable[Any]:
        building = self._building
        if building is not None and not building.done() and self._building_version >= version:
            return asyncio.shield(building)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        future = loop.run_in_executor(None, self.render)
        self._building, self._building_version = future, version

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                _log.error("rendering an operator endpoint failed: %s", type(exc).__name__)
                return
            if self.built_at <= started:
                self.payload, self.version, self.built_at = fut.result(), version, started

        future.add_done_callback(done)
        return asyncio.shield(future)


class Client:
    """One stream client: a bounded buffer of event frames, the newest ``state`` frame not yet
    sent (a newer one replaces it: it is the whole picture) and a wake-up."""

    __slots__ = ("buffer", "dropped", "state", "wake")

    def __init__(self) -> None:
        self.buffer: collections.deque[bytes] = collections.deque(maxlen=CLIENT_BUFFER)
        self.state: bytes | None = None
        self.wake = asyncio.Event()
        self.dropped = 0

    def put(self, frame: bytes) -> None:
        if len(self.buffer) == CLIENT_BUFFER:
            self.dropped += 1
        self.buffer.append(frame)
        self.wake.set()

    def put_state(self, frame: bytes) -> None:
        self.state = frame
        self.wake.set()

    def take(self) -> list[bytes]:
        """The frames to send now, oldest first, the pending ``state`` frame last."""
        frames = list(self.buffer)
        self.buffer.clear()
        if self.state is not None:
            frames.append(self.state)
            self.state = None
        return frames


def _frame(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class Hub:
    """The snapshots and the event hand-off of one app (module documentation)."""

    def __init__(
        self,
        manager: ResilienceManager,
        *,
        queue: Any = None,
        rate_limiters: Iterable[RateLimiter] = (),
        secrets: Iterable[str] = (),
        max_age: float = 0.5,
        state_interval: float = 0.25,
    ) -> None:
        self.manager = manager
        self.queue = queue
        self.rate_limiters = tuple(rate_limiters)
        self.secrets = tuple(s for s in secrets if s)
        self.state_interval = state_interval
        self._versions = itertools.count(1)
        self.version = 0
        self._lock = threading.Lock()
        self.rejections: collections.Counter[str] = collections.Counter()
        now = time.time()
        degradation = manager.degradation
        tier = degradation.get_current_tier()
        self.tier_since = now
        changed = degradation._changed_at  # on the degradation manager's monotonic clock
        if changed is not None:
            clock = degradation._clock or _clock()
            self.tier_since = min(now, now - (clock.now() - changed))
        self.timeline: collections.deque[dict[str, object]] = collections.deque(maxlen=TIMELINE)
        self.timeline.append(
            {"at": self.tier_since, "level": int(tier), "name": tier.name, "reason": "current"}
        )
        self.steps: collections.deque[dict[str, object]] = collections.deque(maxlen=STEPS)
        self.outbox: collections.deque[tuple[str, _events.Event, float]] = collections.deque(
            maxlen=OUTBOX
        )
        self.clients: set[Client] = set()
        self.dropped = 0  # events not streamed (per-call ones over the budget, a full outbox)
        self._budget_second = 0
        self._budget = PER_CALL_BUDGET
        self.loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._installed = False
        self.closing = False
        self._pusher: asyncio.Task[None] | None = None
        self._required_monitors: tuple[Any, ...] = ()
        self._required_until = -math.inf
        self._ready_answers: dict[
            tuple[int, tuple[str, ...], tuple[str, ...]], tuple[bool, bytes]
        ] = {}
        self.health = Cached(self._render_health, max_age)
        self.state = Cached(self._render_state, max_age)

    # -- lifecycle -------------------------------------------------------------------------------

    def install(self) -> None:
        """Start listening to events (idempotent)."""
        with self._lock:
            if self._installed:
                return
            self._installed = True
        _events.add_hook(self.hook)

    def uninstall(self) -> None:
        _events.remove_hook(self.hook)
        with self._lock:
            self._installed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that serves the app (stream fan-out runs on it)."""
        if self.loop is not loop:
            self.loop = loop
            self.closing = False

    def close_streams(self) -> None:
        """End every event stream (server shutdown); safe from any thread."""
        self.closing = True
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_all()
        else:
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for client in tuple(self.clients):
            client.wake.set()

    # -- the hook (any thread) -------------------------------------------------------------------

    def hook(self, event: _events.Event) -> None:
        cls = type(event)
        if cls is _events.CallCompleted:
            return  # per call, for metrics: nothing an operator view shows changes
        kind = cls.__name__
        now = time.time()
        per_call = cls in _PER_CALL
        if not per_call:
            # A change of state: the next request renders again at once. Per-call events (a
            # storm of them in an outage) only move counters, which max_age refreshes.
            self.version = next(self._versions)
        if isinstance(event, _events.TierChanged):
            if event.name == self.manager.degradation.name:
                new = event.new
                level = int(new) if isinstance(new, int) else 0
                name = getattr(new, "name", str(new))
                self.tier_since = now
                self.timeline.append(
                    {"at": now, "level": level, "name": name, "reason": scrub(event.reason)}
                )
        elif isinstance(event, _events.CallRejected):
            if event.policy == "ratelimit":
                with self._lock:
                    self.rejections[event.name] += 1
        elif kind == "ProtocolStep":
            target = getattr(event, "target", None)
            self.steps.append(
                {
                    "at": now,
                    "resource": str(getattr(event, "resource", "")),
                    "strategy": str(_plain(getattr(event, "strategy", ""))),
                    "target": None if target is None else str(_plain(target)),
                    "outcome": str(_plain(getattr(event, "outcome", ""))),
                }
            )
        if not self.clients:
            return
        if per_call:
            second = int(now)
            if second != self._budget_second:
                self._budget_second, self._budget = second, PER_CALL_BUDGET
            if self._budget <= 0:
                self.dropped += 1
                return
            self._budget -= 1
        if len(self.outbox) == OUTBOX:
            self.dropped += 1  # the loop is behind: the oldest is let go
        self.outbox.append((kind, event, now))
        loop = self.loop
        if loop is not None and not self._draining:
            self._draining = True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed
                self._draining = False

    # -- on the loop -----------------------------------------------------------------------------

    def _drain(self) -> None:
        self._draining = False
        outbox = self.outbox
        frames: list[bytes] = []
        while outbox:
            try:
                kind, event, wall = outbox.popleft()
            except IndexError:
                break
            try:
                frames.append(_frame(kind, self.event_json(event, wall)))
            except Exception:
                _log.exception("serialising a %s event for the stream failed", kind)
        if frames:
            for client in tuple(self.clients):
                for frame in frames:
                    client.put(frame)

    def event_json(self, event: _events.Event, wall: float) -> bytes:
        data: dict[str, object] = {}
        for f in dataclasses.fields(event):
            data[f.name] = _plain(getattr(event, f.name))
        data["kind"] = event.kind
        data["wall"] = wall
        return dumps(_scrub_data(data, self.secrets))

    def subscribe(self) -> Client | None:
        """A new stream client, or ``None`` when :data:`MAX_STREAMS` are open."""
        if len(self.clients) >= MAX_STREAMS:
            return None
        client = Client()
        self.clients.add(client)
        if self._pusher is None or self._pusher.done():
            self._pusher = asyncio.get_running_loop().create_task(self._push_states())
        return client

    def unsubscribe(self, client: Client) -> None:
        self.clients.discard(client)

    async def _push_states(self) -> None:
        """While clients are connected: a ``state`` frame whenever the state changed, at most
        one per ``state_interval``."""
        last: bytes | None = None
        while self.clients and not self.closing:
            try:
                body = await self.state.get(self.version)
            except Exception:
                _log.exception("rendering the state for the stream failed")
                body = None
            if body is not None:
                # generated_at always differs: compare the rest, which follows it.
                head, _, tail = body.partition(b',"generated_at":')
                core = head + tail.partition(b",")[2]
                if core != last:
                    last = core
                    frame = _frame("state", body)
                    for client in tuple(self.clients):
                        client.put_state(frame)
            await asyncio.sleep(self.state_interval)

    # -- renderings (worker threads) -------------------------------------------------------------

    def _render_health(self) -> tuple[bytes, bytes, str]:
        report = _scrub_data(self.manager.health_report(), self.secrets)
        overall = str(report.get("overall_health", "unhealthy"))
        return dumps(report), dumps(ietf_health(report)), overall

    def _render_state(self) -> bytes:
        return dumps(_scrub_data(self.state_data(), self.secrets))

    def state_data(self) -> dict[str, Any]:
        """The dashboard's snapshot (the documented ``/state`` shape)."""
        manager = self.manager
        states = manager.resources.states()
        components = manager.health.components()
        circuits = self._circuits()
        overall = manager._overall(states.values(), components.values(), circuits)
        tier = manager.degradation.get_current_tier()
        resources: dict[str, dict[str, object]] = {}
        for key, s in states.items():
            resources[key] = {
                "type": s.type.value,
                "name": s.name,
                "status": "unknown" if s.status is None else s.status.value,
                "usage": None if s.usage is None else round(min(s.usage, 100.0) / 100.0, 4),
                "predicted_exhaustion": None
                if s.predicted_exhaustion is None
                else round(s.predicted_exhaustion, 1),
                "message": s.last_error
                if s.last_error and s.status is not None and s.status.rank >= CRITICAL.rank
                else (s.message or s.reason or ""),
                "required": s.required,
                "critical": s.critical,
                "latency_ms": None if s.latency is None else round(s.latency * 1000.0, 3),
                "checked_at": s.checked_at,
                "since": s.since,
                "last_error": s.last_error,
            }
        return {
            "team": manager.team,
            "status": overall.value,
            "generated_at": time.time(),
            "tier": {
                "level": int(tier),
                "name": tier.name,
                "since": self.tier_since,
                "timeline": list(self.timeline),
            },
            "circuits": circuits,
            "rate_limits": self._rate_limits(),
            "resources": resources,
            "components": {name: c.as_dict() for name, c in components.items()},
            "queue": self._queue(),
            "protocol_steps": list(self.steps),
            "ready": self.readiness()[0],
            "events_dropped": self.dropped,
        }

    def _circuits(self) -> dict[str, dict[str, object]]:
        breakers = circuit_breakers()
        wanted = self.manager._circuits
        names = sorted(breakers) if wanted is None else wanted
        out: dict[str, dict[str, object]] = {}
        for name in names:
            breaker = breakers.get(name)
            if breaker is None:
                continue
            core = breaker._core
            # The last state this process knows: a stored breaker's store is never asked here.
            snap = core.state.snapshot(core.now())
            state = snap.state
            rate = 1.0 if state is CircuitState.OPEN else snap.failure_rate
            out[name] = {
                "state": state.value,
                "failure_rate": round(rate, 4),
                "success_rate": round(1.0 - rate, 4),
                "failures": snap.failures,
                "half_open_in": round(snap.retry_after, 3) if state is CircuitState.OPEN else None,
            }
        return out

    def _rate_limits(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        limiters = (get_rate_limiter(), *self.rate_limiters)
        with self._lock:
            rejections = dict(self.rejections)
        for limiter in limiters:
            for name, limit in list(limiter._limits.items()):
                params = limit.params
                now = (limiter._clock or _clock()).now()
                used = 0.0
                with limit.lock:
                    states = list(itertools.islice(limit.states.values(), 1000))
                for state in states:
                    used = max(used, _used(state, now, params))
                capacity = float(params.capacity)
                out[name] = {
                    "used": round(min(used, capacity), 3),
                    "limit": capacity,
                    "rejections": rejections.get(name, 0),
                    "rate": float(limit.config.requests_per_second),
                    "algorithm": params.algorithm.value,
                }
        return out

    def _queue(self) -> dict[str, int] | None:
        queue = self.queue
        if queue is None:
            return None
        try:
            backlog = getattr(queue, "backlog", None)
            if callable(backlog):  # a RequestQueue: without counting its done keys
                depth, dead = backlog()
            else:
                stats = queue.stats()
                depth, dead = stats.depth, stats.dead
        except Exception as exc:
            _log.warning("reading the queue's figures failed: %s", scrub(str(exc)))
            return None
        return {"depth": int(depth), "dead_letters": int(dead)}

    def _required(self) -> tuple[Any, ...]:
        """The monitors registered as required (re-read at most every ``max_age``)."""
        now = time.monotonic()
        if now >= self._required_until:
            resources = self.manager.resources
            self._required_monitors = tuple(m for m in resources.monitors() if m.required)
            self._required_until = now + self.health.max_age
        return self._required_monitors

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Whether the service should receive traffic, and why (never runs a check)."""
        ready, body = self.ready_answer()
        detail: dict[str, object] = json.loads(body)
        return ready, detail

    def ready_answer(self) -> tuple[bool, bytes]:
        """:meth:`readiness` as the response body, rendered once per distinct answer."""
        tier = self.manager.degradation.get_current_tier()
        unavailable: list[str] = []
        unchecked: list[str] = []
        for monitor in self._required():
            status = monitor._state.status
            if status is None:
                unchecked.append(monitor.key)
            elif status is UNAVAILABLE:
                unavailable.append(monitor.key)
        key = (int(tier), tuple(unavailable), tuple(unchecked))
        answer = self._ready_answers.get(key)
        if answer is None:
            reasons: list[str] = []
            if tier >= DegradationTier.TIER_4_MAINTENANCE:
                reasons.append(f"degradation tier {int(tier)} ({tier.name})")
            reasons += [f"required resource {k} is unavailable" for k in unavailable]
            reasons += [f"required resource {k} not checked yet" for k in unchecked]
            ready = not reasons
            body = dumps(
                {
                    "status": "ready" if ready else "not_ready",
                    "tier": int(tier),
                    "reasons": [scrub(r, self.secrets) for r in reasons],
                }
            )
            if len(self._ready_answers) > 64:
                self._ready_answers.clear()
            answer = self._ready_answers[key] = (ready, body)
        return answer


def _clock() -> Any:
    from ..clock import get_clock

    return get_clock()


def _used(state: Any, now: float, params: Any) -> float:
    """Units of a rate limit's key in use at ``now`` (how far from refusing it is)."""
    algorithm = params.algorithm
    if algorithm in (RateLimitAlgorithm.TOKEN_BUCKET, RateLimitAlgorithm.LEAKY_BUCKET):
        return max(0.0, float(state[0]) - now) / params.interval if state else 0.0
    if algorithm is RateLimitAlgorithm.FIXED_WINDOW:
        return float(state[1]) if state and state[0] + params.window > now else 0.0
    return float(sum(1 for t in tuple(state) if now - params.window < t <= now))


_STATUS_IETF = {
    "healthy": "pass",
    "degraded": "warn",
    "critical": "fail",
    "unavailable": "fail",
    "unknown": "warn",
}
_OVERALL_IETF = {
    OverallHealth.HEALTHY.value: "pass",
    OverallHealth.DEGRADED.value: "warn",
    OverallHealth.UNHEALTHY.value: "fail",
}
_CIRCUIT_IETF = {"closed": "pass", "half_open": "warn", "open": "fail"}


def _iso(wall: object) -> str | None:
    if not isinstance(wall, int | float):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def ietf_health(report: dict[str, Any]) -> dict[str, Any]:
    """The seed report in the shape of the IETF health-check draft
    (``draft-inadarei-api-health-check``): ``status`` pass/warn/fail and ``checks`` keyed
    ``"<component>:<measurement>"``."""
    checks: dict[str, list[dict[str, object]]] = {}
    for key, r in report.get("resources", {}).items():
        entry: dict[str, object] = {
            "componentId": r.get("name"),
            "componentType": r.get("type"),
            "status": _STATUS_IETF.get(str(r.get("status")), "warn"),
            "time": _iso(r.get("checked_at")),
        }
        if r.get("usage") is not None:
            entry["observedValue"] = r["usage"]
            entry["observedUnit"] = "percent"
        output = r.get("last_error") or (r.get("reason") if entry["status"] != "pass" else None)
        if output:
            entry["output"] = output
        checks[f"{key}:usage" if r.get("usage") is not None else f"{key}:status"] = [entry]
        if r.get("latency_ms") is not None:
            checks[f"{key}:responseTime"] = [
                {
                    "componentId": r.get("name"),
                    "componentType": r.get("type"),
                    "observedValue": r["latency_ms"],
                    "observedUnit": "ms",
                    "status": entry["status"],
                    "time": entry["time"],
                }
            ]
    for name, c in report.get("components", {}).items():
        checks[f"component:{name}:errorRate"] = [
            {
                "componentId": name,
                "componentType": "component",
                "observedValue": c.get("error_rate"),
                "observedUnit": "ratio",
                "status": _STATUS_IETF.get(str(c.get("status")), "warn"),
            }
        ]
    for name, c in report.get("circuits", {}).items():
        checks[f"circuit:{name}:state"] = [
            {
                "componentId": name,
                "componentType": "circuit_breaker",
                "observedValue": c.get("state"),
                "status": _CIRCUIT_IETF.get(str(c.get("state")), "warn"),
            }
        ]
    status = _OVERALL_IETF.get(str(report.get("overall_health")), "fail")
    out: dict[str, Any] = {
        "status": status,
        "serviceId": report.get("team"),
        "description": f"health of team {report.get('team')}",
        "checks": checks,
        "notes": [
            f"degradation tier {report.get('degradation_tier')} "
            f"({report.get('degradation_tier_name')})"
        ],
    }
    unhealthy = report.get("unhealthy_resources")
    if unhealthy:
        out["output"] = "unhealthy: " + ", ".join(map(str, unhealthy))
    return out
