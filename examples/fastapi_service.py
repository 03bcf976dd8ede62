"""A FastAPI service using buttress end to end, served by uvicorn on 127.0.0.1.

``GET /factors/{category}`` reads an emission factor from an upstream API (a local stand-in on
127.0.0.1) through stacked policies, outermost first:

* a per-tenant rate limit (``X-Tenant`` header): past it, HTTP 429 with ``Retry-After``;
* ``@fallback(CACHED)``: while the upstream is down, the last good answer for the category;
* ``@retry``: three attempts with short exponential backoff, never retrying an open breaker;
* ``@circuit_breaker("factor_api")``: after three failures in a row calls are refused at once,
  and a category with nothing cached gets HTTP 503 with ``Retry-After``;
* ``@timeout``: two seconds per attempt.

``/metrics`` serves the Prometheus metrics (``enable_prometheus``), ``/health`` the team's health
report (a ``ResilienceManager`` watching the upstream), with 503 while it is unhealthy.

Run it: ``python examples/fastapi_service.py`` starts the stand-in upstream and the service on
free loopback ports, drives a scenario through it with httpx (normal traffic, an upstream outage,
a tenant over its limit), prints what a client sees, and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import httpx
import uvicorn
from _standins import service
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, make_asgi_app

from buttress import (
    CircuitOpenError,
    FallbackStrategy,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    ResilienceManager,
    circuit_breaker,
    enable_prometheus,
    fallback,
    retry,
    timeout,
)


def create_app(upstream_url: str) -> FastAPI:
    registry = CollectorRegistry()
    enable_prometheus(registry)
    team = ResilienceManager("factors-service", check_interval=5.0)
    team.register_network_monitor("factor_api", f"{upstream_url}/health")
    limiter = RateLimiter()
    limiter.configure("per_tenant", RateLimitConfig(requests_per_second=1.0, burst_size=5))
    client = httpx.AsyncClient(base_url=upstream_url)

    @fallback(strategy=FallbackStrategy.CACHED)
    @retry(max_attempts=3, base_delay=0.05, fail_fast_on=CircuitOpenError)
    @circuit_breaker("factor_api", failure_threshold=3, recovery_timeout=30)
    @timeout(timeout_seconds=2.0)
    async def fetch_factor(category: str) -> float:
        response = await client.get("/factor", params={"category": category})
        response.raise_for_status()
        return float(response.json())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await team.start()
        yield
        await team.stop()
        await client.aclose()

    app = FastAPI(title="factors", lifespan=lifespan)
    app.mount("/metrics", make_asgi_app(registry))

    @app.exception_handler(RateLimitExceeded)
    async def too_many(request: Request, error: RateLimitExceeded) -> JSONResponse:
        return _refusal(429, error)

    @app.exception_handler(CircuitOpenError)
    async def unavailable(request: Request, error: CircuitOpenError) -> JSONResponse:
        return _refusal(503, error)

    @app.exception_handler(httpx.HTTPError)
    async def upstream_failed(request: Request, error: httpx.HTTPError) -> JSONResponse:
        return JSONResponse({"error": f"upstream failed: {error}"}, status_code=502)

    @app.get("/factors/{category}")
    async def factor(category: str, x_tenant: str = Header("anonymous")) -> dict[str, object]:
        await limiter.acheck_limit("per_tenant", key=x_tenant)
        return {"category": category, "factor": await fetch_factor(category)}

    @app.get("/health")
    async def health() -> JSONResponse:
        report = await team.get_health_report()
        status = 503 if report["overall_health"] == "unhealthy" else 200
        return JSONResponse(report, status_code=status)

    return app


def _refusal(status: int, error: RateLimitExceeded | CircuitOpenError) -> JSONResponse:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return JSONResponse({"error": str(error)}, status_code=status, headers=headers)


class Served:
    """The app under uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(1000):  # bounded: uvicorn reports when it listens
            if self.server.started or not self.thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")
        (socket,) = [s for server in self.server.servers for s in server.sockets]
        host, port = socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def scenario(url: str, upstream: object) -> None:
    async with httpx.AsyncClient(base_url=url) as http:

        async def show(path: str, tenant: str = "acme") -> httpx.Response:
            response = await http.get(path, headers={"X-Tenant": tenant})
            after = response.headers.get("Retry-After")
            extra = f" Retry-After: {after}" if after else ""
            print(f"GET {path} [{tenant}] -> {response.status_code} {response.json()}{extra}")
            return response

        await show("/factors/steel")
        upstream.script("factor", (503, "maintenance"))  # type: ignore[attr-defined]
        print("-- the upstream goes down")
        await show("/factors/steel", "globex")  # cached: retries fail, the breaker opens
        await show("/factors/glass", "globex")  # nothing cached, breaker open: 503
        print("-- tenant acme sends a burst")
        statuses = [(await http.get("/factors/steel", headers={"X-Tenant": "acme"})).status_code
                    for _ in range(5)]
        print("acme burst:", statuses)
        metrics = (await http.get("/metrics/")).text
        for line in metrics.splitlines():
            if line.startswith(
                ('buttress_circuit_breaker_state{name="factor_api"}', "buttress_rejections_total")
            ):
                print("metric:", line)
        health = await http.get("/health")
        report = health.json()
        resource = report["resources"]["network:factor_api"]
        breaker = report["circuits"]["factor_api"]["state"]
        print(f"GET /health -> {health.status_code} overall={report['overall_health']}",
              f"factor_api={resource['status']} breaker={breaker}")


def main() -> None:
    with service(factor=[(200, 1.85)], health=[(200, "ok")]) as upstream:
        app = create_app(upstream.url)
        with Served(app) as url:
            print("serving on", url.rsplit(":", 1)[0] + ":<port>")
            asyncio.run(scenario(url, upstream))
        print("upstream requests:", upstream.hits.get("/factor", 0))


if __name__ == "__main__":
    main()
