"""The operator endpoints under a real uvicorn, over real HTTP (httpx), on a loopback port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from buttress import CircuitBreaker, ResilienceManager
from buttress.degradation import DegradationManager, DegradationTier
from buttress.health.types import Reading, ResourceType
from buttress.policies.circuit import CircuitBreakerConfig
from buttress.server import create_app
from server_helpers import running


class Switch:
    """A check whose outcome the test sets; counts its calls."""

    def __init__(self) -> None:
        self.up = True
        self.usage = 10.0
        self.calls = 0

    def __call__(self) -> Reading:
        self.calls += 1
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        return Reading(usage=self.usage)


def team(name: str, interval: float = 60.0) -> ResilienceManager:
    # Breakers are process-wide by name: the team shows only the ones these tests make, so that
    # a breaker another test left open does not degrade it.
    return ResilienceManager(
        name,
        {"check_interval": interval, "fail_threshold": 1, "success_threshold": 1},
        degradation=DegradationManager(name=name, min_dwell=0),
        circuits=["server-contract", "server-stream"],
    )


def until(predicate: Any, timeout: float = 10.0) -> Any:
    """Poll ``predicate`` until it returns something true (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def served() -> Iterator[tuple[str, ResilienceManager, Switch]]:
    manager = team("server-basic")
    switch = Switch()
    manager.register_monitor(ResourceType.NETWORK, "api", switch, required=True)
    app = create_app(manager, heartbeat=0.2, state_interval=0.05, max_age=0.05)
    with running(app, manager=manager) as base:
        until(lambda: manager.resources.status(ResourceType.NETWORK, "api") is not None)
        yield base, manager, switch


def test_each_endpoint_answers_with_its_status_and_content_type(
    served: tuple[str, ResilienceManager, Switch],
) -> None:
    base, _manager, _ = served
    with httpx.Client(base_url=base, timeout=5.0) as http:
        live = http.get("/live")
        assert (live.status_code, live.headers["content-type"]) == (200, "application/health+json")
        ready = http.get("/ready")
        assert ready.status_code == 200
        assert ready.headers["content-type"] == "application/json"
        assert ready.json()["status"] == "ready"
        health = http.get("/health")
        assert (health.status_code, health.headers["content-type"]) == (200, "application/json")
        report = health.json()
        assert report["team"] == "server-basic"
        assert report["overall_health"] == "healthy"
        assert report["resources"]["network:api"]["status"] == "healthy"
        assert report["resources"]["network:api"]["required"] is True
        ietf = http.get("/health", headers={"Accept": "application/health+json"})
        assert ietf.headers["content-type"] == "application/health+json"
        assert ietf.json()["status"] == "pass"
        assert ietf.json()["checks"]["network:api:usage"][0]["observedValue"] == 10.0
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        openmetrics = http.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.rstrip().endswith("# EOF")
        state = http.get("/state")
        assert (state.status_code, state.headers["content-type"]) == (200, "application/json")
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "<html" in page.text


def test_state_has_the_dashboard_contract(served: tuple[str, ResilienceManager, Switch]) -> None:
    base, _manager, _ = served
    breaker = CircuitBreaker(CircuitBreakerConfig(name="server-contract", fail_max=2))
    breaker.open()
    try:
        state = httpx.get(f"{base}/state", timeout=5.0).json()
    finally:
        breaker.close()
    assert set(state) >= {
        "team",
        "status",
        "generated_at",
        "tier",
        "circuits",
        "rate_limits",
        "resources",
        "queue",
        "protocol_steps",
    }
    assert state["team"] == "server-basic"
    assert state["status"] in ("healthy", "degraded", "unhealthy")
    assert abs(state["generated_at"] - time.time()) < 60
    assert set(state["tier"]) >= {"level", "name", "since", "timeline"}
    assert state["tier"]["level"] == 1
    assert state["tier"]["timeline"][0]["name"] == "TIER_1_FULL"
    circuit = state["circuits"]["server-contract"]
    assert circuit["state"] == "open"
    assert circuit["failure_rate"] == 1.0
    assert isinstance(circuit["failures"], int)
    assert circuit["half_open_in"] > 0
    resource = state["resources"]["network:api"]
    assert resource["type"] == "network"
    assert resource["name"] == "api"
    assert resource["status"] == "healthy"
    assert resource["usage"] == pytest.approx(0.10)
    assert "predicted_exhaustion" in resource
    assert isinstance(resource["message"], str)
    assert state["queue"] is None
    assert state["protocol_steps"] == []


def _frames(lines: Iterator[str], wanted: int) -> list[tuple[str, str]]:
    frames: list[tuple[str, str]] = []
    event, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event:
            frames.append((event, data))
            event, data = "", ""
            if len(frames) >= wanted:
                break
    return frames


def test_events_stream_state_then_each_event_and_the_changed_state(
    served: tuple[str, ResilienceManager, Switch],
) -> None:
    base, _manager, _switch = served
    breaker = CircuitBreaker(CircuitBreakerConfig(name="server-stream", fail_max=2))
    try:
        with (
            httpx.Client(base_url=base, timeout=10.0) as http,
            http.stream("GET", "/events") as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            first = _frames(lines, 1)
            assert first[0][0] == "state"
            assert json.loads(first[0][1])["circuits"]["server-stream"]["state"] == "closed"
            breaker.open()
            seen: list[tuple[str, str]] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                seen += _frames(lines, 1)
                names = [name for name, _ in seen]
                opened = [
                    json.loads(d)
                    for n, d in seen
                    if n == "state"
                    and json.loads(d)["circuits"].get("server-stream", {}).get("state") == "open"
                ]
                if "CircuitStateChanged" in names and opened:
                    break
            else:
                raise AssertionError(f"no open breaker in the stream: {seen}")
            changed = next(json.loads(d) for n, d in seen if n == "CircuitStateChanged")
            assert changed["name"] == "server-stream"
            assert changed["new"] == "open"
    finally:
        breaker.close()


def test_events_stream_sends_heartbeats() -> None:
    manager = team("server-heartbeat")
    app = create_app(manager, heartbeat=0.05)
    with (
        running(app, manager=manager) as base,
        httpx.Client(base_url=base, timeout=10.0) as http,
        http.stream("GET", "/events") as stream,
    ):
        beats = 0
        for line in stream.iter_lines():
            if line.startswith(": heartbeat"):
                beats += 1
                if beats == 2:
                    break
        assert beats == 2


def test_ready_turns_503_in_tier_4_and_back(served: tuple[str, ResilienceManager, Switch]) -> None:
    base, manager, _ = served
    with httpx.Client(base_url=base, timeout=5.0) as http:
        assert http.get("/ready").status_code == 200
        manager.degradation.force_tier(DegradationTier.TIER_4_MAINTENANCE)
        try:
            ready = http.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["tier"] == 4
            assert http.get("/live").status_code == 200
            state = http.get("/state").json()
            assert state["tier"]["level"] == 4
            assert state["tier"]["timeline"][-1]["name"] == "TIER_4_MAINTENANCE"
        finally:
            manager.degradation.force_tier(None)
        assert http.get("/ready").status_code == 200


def test_health_is_503_when_unhealthy(served: tuple[str, ResilienceManager, Switch]) -> None:
    base, manager, switch = served
    switch.up = False
    try:
        with httpx.Client(base_url=base, timeout=5.0) as http:

            async def now() -> None:
                await manager.resources.check_now()

            _on_loop(manager, now)
            health = http.get("/health")
            assert health.status_code == 503
            assert health.json()["overall_health"] == "unhealthy"
            ietf = http.get("/health", headers={"Accept": "application/health+json"})
            assert ietf.status_code == 503
            assert ietf.json()["status"] == "fail"
            assert http.get("/ready").status_code == 503
            assert http.get("/live").status_code == 200
    finally:
        switch.up = True


def _on_loop(manager: ResilienceManager, fn: Any) -> None:
    """Run ``fn()`` (a coroutine function) on the loop the manager runs on and wait for it."""
    import asyncio

    loop = manager.resources._loop
    assert loop is not None
    asyncio.run_coroutine_threadsafe(fn(), loop).result(timeout=10)


def test_token_guards_everything_but_live() -> None:
    manager = team("server-token")
    app = create_app(manager, token="tkn-0123456789")
    with running(app, manager=manager) as base, httpx.Client(base_url=base, timeout=5) as http:
        assert http.get("/live").status_code == 200
        for path in ("/health", "/ready", "/metrics", "/state", "/events", "/", "/static/x"):
            refused = http.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Bearer")
            wrong = http.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
        good = {"Authorization": "Bearer tkn-0123456789"}
        for path in ("/health", "/ready", "/metrics", "/state", "/"):
            assert http.get(path, headers=good).status_code == 200, path
        login = http.get("/?token=tkn-0123456789", follow_redirects=False)
        assert login.status_code == 303
        assert login.headers["location"] == "/"
        assert "HttpOnly" in login.headers["set-cookie"]
        assert "tkn-0123456789" not in login.headers["set-cookie"]  # a value derived from it
        assert http.get("/state").status_code == 200  # the cookie is sent now
        with httpx.Client(base_url=base, timeout=5) as other:  # the token is not the cookie
            other.cookies.set("buttress_token", "tkn-0123456789")
            assert other.get("/state").status_code == 401


def test_mounted_under_a_prefix() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    manager = team("server-mounted")

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("app")

    outer = Starlette(
        routes=[Route("/", home), Mount("/resilience", manager.asgi_app(token="tkn-mounted-1"))]
    )
    with running(outer, manager=manager) as base, httpx.Client(base_url=base, timeout=5) as http:
        assert http.get("/").text == "app"
        assert http.get("/resilience/live").status_code == 200
        assert http.get("/resilience/state").status_code == 401
        good = {"Authorization": "Bearer tkn-mounted-1"}
        assert http.get("/resilience/state", headers=good).json()["team"] == "server-mounted"
        login = http.get("/resilience/?token=tkn-mounted-1", follow_redirects=False)
        assert login.headers["location"] == "/resilience/"
        assert "Path=/resilience/" in login.headers["set-cookie"]


def test_bad_arguments_are_named() -> None:
    manager = team("server-args")
    with pytest.raises(TypeError, match="manager"):
        create_app(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_age"):
        create_app(manager, max_age=0)
    with pytest.raises(ValueError, match="token"):
        create_app(manager, token=" ")
    with pytest.raises(TypeError, match="secrets"):
        create_app(manager, secrets="abc")
    with pytest.raises(TypeError, match="queue"):
        create_app(manager, queue=object())
