"""Probes against real dependencies: readiness follows a real PostgreSQL, probes never run checks,
secrets never reach an output, and the Prometheus exposition parses (one process and several)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from prometheus_client import parser as prometheus_parser

from buttress import ResilienceManager, Retry
from buttress.degradation import DegradationManager
from buttress.health.types import Reading, ResourceType
from buttress.server import create_app
from server_helpers import free_port, running


def team(name: str, interval: float) -> ResilienceManager:
    return ResilienceManager(
        name,
        {"check_interval": interval, "fail_threshold": 1, "success_threshold": 1},
        degradation=DegradationManager(name=name, min_dwell=0),
    )


def until(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(0.02)


def test_ready_follows_a_required_postgres_and_live_never_does(postgres: Any) -> None:
    pytest.importorskip("psycopg")
    interval, timeout = 0.5, 2.0
    manager = team("server-postgres", interval)
    manager.register_database_monitor("orders", postgres.dsn, required=True, timeout=timeout)
    app = create_app(manager, max_age=0.05)
    with running(app, manager=manager) as base, httpx.Client(base_url=base, timeout=5) as http:
        until(lambda: http.get("/ready").status_code == 200, 10 + timeout)
        postgres.stop()
        try:
            # Within one check interval (plus the check's own timeout) of the stop.
            until(lambda: http.get("/ready").status_code == 503, 2 * interval + timeout + 3)
            assert http.get("/live").status_code == 200
            ready = http.get("/ready").json()
            assert any("database:orders" in reason for reason in ready["reasons"])
            assert http.get("/health").status_code == 503  # a critical database is down
            state = http.get("/state").json()
            assert state["resources"]["database:orders"]["status"] == "unavailable"
            assert state["tier"]["level"] == 4
            for _ in range(20):
                assert http.get("/live").status_code == 200
        finally:
            postgres.start()
        until(lambda: http.get("/ready").status_code == 200, 2 * interval + timeout + 10)
        assert http.get("/live").status_code == 200
        body = "".join(http.get(p).text for p in ("/health", "/state", "/ready", "/metrics"))
        assert postgres.password not in body


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Reading:
        self.calls += 1
        return Reading(usage=42.0)


def test_a_thousand_probes_within_an_interval_run_no_check() -> None:
    manager = team("server-nocheck", 3600.0)
    checks = [Counting() for _ in range(3)]
    for index, check in enumerate(checks):
        manager.register_monitor(ResourceType.NETWORK, f"svc{index}", check, required=True)
    app = create_app(manager)
    with running(app, manager=manager) as base, httpx.Client(base_url=base, timeout=5) as http:
        until(lambda: all(c.calls == 1 for c in checks), 10)
        until(lambda: http.get("/ready").status_code == 200, 10)
        executions = manager.resources.executions
        paths = ["/health", "/ready", "/state", "/metrics", "/live"]
        for i in range(1000):
            path = paths[i % len(paths)]
            headers = {"Accept": "application/health+json"} if i % 10 == 0 else {}
            assert http.get(path, headers=headers).status_code == 200
        with http.stream("GET", "/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    break
        assert [c.calls for c in checks] == [1, 1, 1]
        assert manager.resources.executions == executions


class Failing:
    def __call__(self) -> Reading:
        raise PermissionError(
            "login failed for postgresql://svc:Err-pw-s3cret-1@db.internal/x "
            "(token=Err-tok-s3cret-2; Authorization: Bearer Err-bearer-s3cret-3; "
            "api_key=Err-key-s3cret-4)"
        )


def test_no_secret_reaches_any_endpoint_or_log(caplog: pytest.LogCaptureFixture) -> None:
    closed = free_port()
    manager = team("server-secrets", 0.2)
    manager.register_database_monitor(
        "orders", f"postgresql://app:Dsn-s3cret-pw-5@127.0.0.1:{closed}/orders", timeout=1
    )
    manager.register_network_monitor(
        "payments",
        f"http://ops:Url-s3cret-pw-6@127.0.0.1:{closed}/health",
        headers={"Authorization": "Bearer Hdr-s3cret-token-7", "X-Api-Key": "Hdr-key-s3cret-8"},
        timeout=1,
    )
    manager.register_monitor(ResourceType.API_QUOTA, "llm", Failing())
    token = "App-s3cret-token-9"
    app = create_app(manager, token=token, heartbeat=0.05, state_interval=0.05, max_age=0.05)
    secrets = [
        "Err-pw-s3cret-1",
        "Err-tok-s3cret-2",
        "Err-bearer-s3cret-3",
        "Err-key-s3cret-4",
        "Dsn-s3cret-pw-5",
        "Url-s3cret-pw-6",
        "Hdr-s3cret-token-7",
        "Hdr-key-s3cret-8",
        token,
        "Rty-s3cret-10",
    ]

    @Retry(max_retries=1, base_delay=0.001, name="server-secrets")
    def leaky() -> None:
        raise ValueError("upstream said: api_key=Rty-s3cret-10")

    caplog.set_level(logging.DEBUG)
    # uvicorn's own loggers do not propagate: listen to them directly.
    server_records: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = server_records.append  # type: ignore[method-assign]
    auth = {"Authorization": f"Bearer {token}"}
    outputs: list[str] = []
    with running(app, manager=manager, secrets=(token,), log_level="info") as base:
        for name in ("uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).addHandler(listener)
        with httpx.Client(base_url=base, timeout=5, headers=auth) as http:
            until(
                lambda: all(
                    r["status"] == "unavailable"
                    for r in http.get("/state").json()["resources"].values()
                ),
                15,
            )
            with http.stream("GET", "/events") as stream:
                with pytest.raises(ValueError, match="Rty"):
                    leaky()
                seen: list[str] = []
                lines = stream.iter_lines()
                for line in lines:
                    seen.append(line)
                    if line.startswith("event: AttemptFailed"):
                        seen.append(next(lines))
                        break
                outputs.append("\n".join(seen))
            for path in ("/health", "/state", "/ready", "/metrics", "/", "/live"):
                outputs.append(http.get(path).text)
                outputs.append(http.get(path, headers={"Accept": "application/health+json"}).text)
            outputs.append(
                http.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
            )
            errors = json.loads(outputs[1])["resources"]
            assert all(r["last_error"] for r in errors.values())  # the errors are shown...
        with httpx.Client(base_url=base, timeout=5, follow_redirects=False) as anonymous:
            login = anonymous.get(f"/?token={token}")
            assert login.status_code == 303
            outputs.append(login.text)
            outputs.append(anonymous.get("/state").text)  # refused
    everything = "\n".join(outputs)
    assert "AttemptFailed" in everything
    assert [s for s in secrets if s in everything] == []  # ...but never a secret in them
    # The server's and the monitors' logs (the retry's own log line shows its exception as the
    # application raised it: that one is the application's to word).
    logs = "\n".join(
        f"{r.name} {r.getMessage()} {r.__dict__}"
        for r in [*caplog.records, *server_records]
        if r.name.startswith(("uvicorn", "buttress.server", "buttress.health", "buttress.degr"))
    )
    assert "GET /?token=" in logs or "GET /state" in logs  # the access log was captured
    assert [s for s in secrets if s in logs] == []
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).removeHandler(listener)


def test_metrics_parse_and_show_the_resources() -> None:
    manager = team("server-metrics", 60.0)
    manager.register_monitor(ResourceType.API_QUOTA, "quota", Counting())
    app = create_app(manager, metrics_max_age=0.05)
    with running(app, manager=manager) as base, httpx.Client(base_url=base, timeout=5) as http:
        until(lambda: manager.resources.status(ResourceType.API_QUOTA, "quota") is not None, 10)

        def families() -> dict[str, Any]:
            text = http.get("/metrics").text
            return {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}

        parsed = until(lambda: (f := families()).get("buttress_resource_usage_percent") and f, 10)
        usage = [
            s
            for s in parsed["buttress_resource_usage_percent"].samples
            if s.labels.get("name") == "server-metrics"
        ]
        assert [(s.labels["resource"], s.value) for s in usage] == [("quota", 42.0)]
        assert "buttress_resource_status" in parsed
        assert "buttress_degradation_tier" in parsed


def test_metrics_under_several_worker_processes(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR: the counters of every process and this one's resource gauges."""
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    other = (
        "from prometheus_client import Counter\n"
        "Counter('other_worker_jobs', 'jobs of another worker').inc(3)\n"
    )
    subprocess.run([sys.executable, "-c", other], env=env, check=True, timeout=60)
    config = tmp_path / "team.json"
    config.write_text(
        json.dumps(
            {
                "team": "multi",
                "check_interval": 0.5,
                "monitors": [{"type": "network", "name": "loop", "host": "127.0.0.1", "port": 9}],
            }
        )
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "buttress.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            def scraped() -> dict[str, Any] | None:
                try:
                    text = http.get("/metrics").text
                except httpx.TransportError:
                    return None
                found = {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}
                return found if "buttress_resource_status" in found else None

            families = until(scraped, 30)
        status = [
            s for s in families["buttress_resource_status"].samples if s.labels["name"] == "multi"
        ]
        assert [(s.labels["resource"], s.value) for s in status] == [("loop", 3.0)]
        jobs = families["other_worker_jobs"].samples
        assert sum(s.value for s in jobs if s.name == "other_worker_jobs_total") == 3.0
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=20)
    assert server.returncode == 0, output
