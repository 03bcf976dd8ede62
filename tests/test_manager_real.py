"""ResilienceManager against real servers on the real clock: outages seen within their bounds.

Each test runs a team's manager with short intervals against a real resource (a PostgreSQL
cluster, a local HTTP server, the SDK-built MCP server over stdio and over streamable HTTP), takes
the resource away during the run and brings it back. Status is read only from the health report,
polled in a loop bounded by the promised delay (the report never runs a check):

* down: ``UNAVAILABLE`` within ``fail_threshold`` intervals plus the check timeout (the third
  failed check starts at most three intervals after the outage began and ends within its
  timeout), the error in the report;
* back: ``HEALTHY`` within ``success_threshold`` intervals plus the duration of the check that
  completes the count (at most its timeout).

Every bound carries a slack of :data:`SLACK` intervals for a loaded machine; the bounds are in
intervals, so a failure message says how many intervals it took.

The last part runs the design document's "Basic Team Integration" example with a real MCP server
and the report's shape, and the bad input the manager must refuse at registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buttress import (
    CircuitBreaker,
    FallbackAction,
    FallbackStrategy,
    Reading,
    ResilienceManager,
    ResourceManager,
    ResourceStatus,
    ResourceType,
    with_fallback,
)
from buttress.testing import FakeClock
from mcp_server import SCRIPT, HttpServer, Notifications, free_port

#: Intervals of slack on every bound (scheduling on a loaded two-core machine).
SLACK = 2
#: Seconds a first check may take to come back (a cold interpreter, imports, a busy machine).
FIRST_CHECK = 60.0


def aio(test: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(test(*args, **kwargs))

    return run


async def reported(
    rm: ResilienceManager, key: str, status: str, *, within: float, interval: float
) -> dict[str, Any]:
    """The report's entry for ``key`` once its status is ``status``, polling the report for at
    most ``within`` intervals; an ``AssertionError`` saying how long it took otherwise."""
    started = time.monotonic()
    limit = within * interval
    while True:
        report = await rm.get_health_report()
        entry: dict[str, Any] = report["resources"][key]
        if entry["status"] == status:
            return entry
        elapsed = time.monotonic() - started
        if elapsed > limit:
            raise AssertionError(
                f"{key} is still {entry['status']!r}, not {status!r}, after "
                f"{elapsed / interval:.1f} intervals (bound {within:g}): {entry}"
            )
        await asyncio.sleep(interval / 20)


async def gone(rm: ResilienceManager, key: str) -> dict[str, Any]:
    """The entry once UNAVAILABLE, within ``fail_threshold`` intervals plus the check timeout
    (plus the slack)."""
    monitor = rm.resources.monitor(*key.split(":", 1))
    within = monitor.fail_threshold + monitor.timeout / monitor.interval + SLACK
    return await reported(rm, key, "unavailable", within=within, interval=monitor.interval)


async def back(rm: ResilienceManager, key: str) -> dict[str, Any]:
    """The entry once HEALTHY, within ``success_threshold`` intervals plus one check's duration
    (at most its timeout; plus the slack)."""
    monitor = rm.resources.monitor(*key.split(":", 1))
    within = monitor.success_threshold + monitor.timeout / monitor.interval + SLACK
    return await reported(rm, key, "healthy", within=within, interval=monitor.interval)


async def first_status(rm: ResilienceManager, key: str, status: str, interval: float) -> None:
    await reported(rm, key, status, within=FIRST_CHECK / interval, interval=interval)


# -- PostgreSQL ----------------------------------------------------------------------------------


def test_postgres_stopped_and_started_during_a_run(postgres: Any) -> None:
    interval, timeout = 0.2, 0.5
    key = "database:orders"

    async def main() -> None:
        rm = ResilienceManager("pg-team", check_interval=interval, circuits=[])
        rm.register_database_monitor("orders", postgres.dsn, timeout=timeout)
        async with rm:
            await first_status(rm, key, "healthy", interval)
            await asyncio.to_thread(postgres.stop)
            try:
                entry = await gone(rm, key)
                report = await rm.get_health_report()
            finally:
                if not postgres.running():
                    await asyncio.to_thread(postgres.start)
            entry_up = await back(rm, key)
        assert entry["consecutive_failures"] >= rm.resources.fail_threshold
        assert entry["last_error"].startswith("OperationalError: ")
        assert postgres.password not in json.dumps(report)
        assert report["overall_health"] == "unhealthy"
        assert report["degradation_tier"] == 4
        assert report["unhealthy_resources"] == [key]
        assert entry_up["last_error"] is None
        assert entry_up["consecutive_failures"] == 0

    asyncio.run(main())


# -- an HTTP endpoint ----------------------------------------------------------------------------


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Endpoint:
    """A plain HTTP server on 127.0.0.1 that stops and starts again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/health"
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _Ok)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_http_endpoint_stopped_and_restarted_on_its_port(endpoint: Endpoint) -> None:
    interval, timeout = 0.2, 0.5
    key = "network:erp"

    async def main() -> None:
        rm = ResilienceManager("web-team", check_interval=interval, circuits=[])
        rm.register_network_monitor("erp", endpoint.url, timeout=timeout)
        async with rm:
            await first_status(rm, key, "healthy", interval)
            await asyncio.to_thread(endpoint.stop)
            try:
                entry = await gone(rm, key)
                tier = (await rm.get_health_report())["degradation_tier"]
            finally:
                endpoint.start()
            entry_up = await back(rm, key)
        assert entry["consecutive_failures"] >= rm.resources.fail_threshold
        assert "refused" in entry["last_error"].lower(), entry["last_error"]
        assert tier == 3
        assert entry_up["last_error"] is None

    asyncio.run(main())


# -- an MCP server -------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A unix socket path must stay under ~100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="bmgr-") as name:
        yield Path(name)


def test_mcp_stdio_server_killed_and_restarted(short_dir: Path) -> None:
    """Over stdio every check starts the server, so "down" is a server the test kills inside
    the liveness call (it hangs in ``ping`` while the fault file exists and reports the moment
    it got there); "back" is the fault gone. An interval holds one server start-up."""
    pytest.importorskip("mcp", reason="the MCP SDK is the mcp extra")
    interval, timeout = 4.0, 4.0
    key = "mcp_server:tools"
    fault = short_dir / "fault"

    async def main() -> None:
        async with Notifications(short_dir) as notes:
            killed: list[int] = []

            async def kill_in_ping() -> None:
                while True:
                    pid = await notes.next("ping", within=3600)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

            killer = asyncio.create_task(kill_in_ping())
            rm = ResilienceManager("mcp-team", check_interval=interval, circuits=[])
            monitor = rm.register_mcp_monitor(
                "tools",
                command=sys.executable,
                args=[SCRIPT, "stdio"],
                env={
                    "MCP_TEST_ON_PING": "hang",
                    "MCP_TEST_FAULT_FILE": str(fault),
                    "MCP_TEST_NOTIFY": notes.path,
                },
                timeout=timeout,
            )
            try:
                async with rm:
                    await first_status(rm, key, "healthy", interval)
                    fault.touch()
                    entry = await gone(rm, key)
                    fault.unlink()
                    entry_up = await back(rm, key)
            finally:
                killer.cancel()
                await monitor.check.aclose()
        assert len(killed) >= rm.resources.fail_threshold
        assert entry["consecutive_failures"] >= rm.resources.fail_threshold
        assert entry["last_error"].startswith("ConnectionError: MCP server 'tools'"), entry
        assert entry_up["last_error"] is None
        assert entry_up["detail"]["liveness"] == "ping"

    asyncio.run(main())


def test_mcp_http_server_killed_and_restarted(short_dir: Path) -> None:
    pytest.importorskip("mcp", reason="the MCP SDK is the mcp extra")
    interval, timeout = 0.5, 1.0
    key = "mcp_server:web"

    async def main() -> None:
        async with Notifications(short_dir) as notes:
            server = HttpServer({"MCP_TEST_NOTIFY": notes.path})
            server.start()
            rm = ResilienceManager("mcp-team", check_interval=interval, circuits=[])
            monitor = rm.register_mcp_monitor("web", url=server.url, timeout=timeout)
            try:
                await notes.next("started", within=FIRST_CHECK)
                async with rm:
                    await first_status(rm, key, "healthy", interval)
                    await asyncio.to_thread(server.kill)
                    entry = await gone(rm, key)
                    server.start()
                    # Back from the moment the new process serves (its start-up is not the
                    # monitor's delay: the port accepts connections throughout).
                    await notes.next("started", within=FIRST_CHECK)
                    entry_up = await back(rm, key)
            finally:
                await asyncio.to_thread(server.kill)
                await monitor.check.aclose()
        assert entry["consecutive_failures"] >= rm.resources.fail_threshold
        assert "Connection refused" in entry["last_error"], entry
        assert entry_up["last_error"] is None
        assert entry_up["detail"]["transport"] == "streamable-http"

    asyncio.run(main())


# -- bad checks delay nothing ----------------------------------------------------------------------


@aio
async def test_hanging_and_raising_checks_leave_the_others_on_schedule(clock: FakeClock) -> None:
    gate = threading.Event()
    times: list[float] = []

    async def good() -> float:
        times.append(clock.now())
        return 10.0

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def raises() -> None:
        raise ConnectionError("refused")

    def blocks() -> None:
        gate.wait(30)  # a blocking client that never answers, in its worker thread

    rm = ResilienceManager("team", check_interval=10, circuits=[])
    rm.register_monitor(ResourceType.NETWORK, "hangs", hangs, timeout=5)
    rm.register_monitor(ResourceType.NETWORK, "raises", raises)
    rm.register_monitor(ResourceType.DATABASE, "blocks", blocks, timeout=5)
    rm.register_monitor(ResourceType.CPU, "good", good)
    start = clock.now()
    try:
        async with rm:
            for _ in range(200_000):
                if len(times) >= 10:
                    break
                await asyncio.sleep(0)
            report = await rm.get_health_report()
    finally:
        gate.set()
    assert [t - start for t in times[:10]] == [10.0 * i for i in range(10)]
    resources = report["resources"]
    assert resources["network:hangs"]["last_error"] == "timeout after 5s"
    assert resources["network:raises"]["last_error"] == "ConnectionError: refused"
    assert resources["database:blocks"]["status"] == "unavailable"
    assert resources["cpu:good"]["status"] == "healthy"


# -- the design document's Basic Team Integration example ------------------------------------------


def test_the_basic_team_integration_example_with_a_real_mcp_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example as written but for its import line: ``supabase`` is found in the MCP
    configuration file ``MCP_CONFIG`` names, a real server over stdio; ``self.llm`` is a local
    stand-in given to the team after it is made, and the first model call fails with a 503, so
    ``@with_fallback`` walks the API quota protocol (one retry) to the answer."""
    pytest.importorskip("mcp", reason="the MCP SDK is the mcp extra")
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {"mcpServers": {"supabase": {"command": sys.executable, "args": [SCRIPT, "stdio"]}}}
        )
    )
    monkeypatch.setenv("MCP_CONFIG", str(config))
    monkeypatch.delenv("RESILIENCE_CHECK_INTERVAL", raising=False)

    class MarketingTeam:
        def __init__(self) -> None:
            self.resilience = ResilienceManager("marketing-team")

        async def start(self) -> None:
            # Start resilience monitoring
            await self.resilience.start()

            # Register custom monitors
            self.resilience.register_mcp_monitor("supabase")
            self.resilience.register_api_quota_monitor("openai", self.check_openai_quota)

        @with_fallback(ResourceType.API_QUOTA)
        async def generate_content(self, prompt: str):  # type: ignore[no-untyped-def]
            # Automatically handles API quota failures
            return await self.llm.invoke(prompt)

        async def check_openai_quota(self) -> tuple[int, int]:
            return (855, 1000)

    breaker = CircuitBreaker(name="database_query", fail_max=50)
    for _ in range(49):
        breaker.call(lambda: 1)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)

    class Overloaded(Exception):
        status_code = 503

    class LocalModel:
        """Answers like a model; its first call fails as an overloaded provider does."""

        def __init__(self) -> None:
            self.calls = 0

        async def invoke(self, prompt: str) -> str:
            self.calls += 1
            if self.calls == 1:
                raise Overloaded("model overloaded")
            return f"content for {prompt}"

    async def main() -> dict[str, Any]:
        team = MarketingTeam()
        team.llm = LocalModel()  # type: ignore[attr-defined]
        team.resilience.set_protocol(
            ResourceType.API_QUOTA,
            [FallbackAction(FallbackStrategy.RETRY, attempts=2, base_delay=0.01)],
        )
        team.resilience.register_component("system")
        await team.start()
        rm = team.resilience
        try:
            for _ in range(99):
                rm.record_success("system")
            assert await team.generate_content("launch") == "content for launch"
            assert team.llm.calls == 2  # type: ignore[attr-defined]
            await first_status(rm, "mcp_server:supabase", "healthy", 1.0)
            return await rm.get_health_report()
        finally:
            await rm.stop()
            await rm.resources.monitor("mcp_server", "supabase").check.aclose()

    try:
        report = asyncio.run(main())
    finally:
        breaker.reset()
    assert json.loads(json.dumps(report)) == report
    # The documented shape: its keys, with their types.
    assert report["team"] == "marketing-team"
    assert report["overall_health"] in {"healthy", "degraded", "unhealthy"}
    assert report["overall_health"] == "degraded"  # the quota is past 80%
    for name, component in report["components"].items():
        assert isinstance(name, str)
        assert isinstance(component["status"], str)
        assert isinstance(component["uptime"], int | float)
        assert isinstance(component["error_rate"], float)
    assert report["components"]["system"]["status"] == "healthy"
    assert report["components"]["system"]["error_rate"] == 0.0
    assert set(report["resources"]) == {"mcp_server:supabase", "api_quota:openai"}
    for entry in report["resources"].values():
        assert isinstance(entry["status"], str)
        assert entry["usage"] is None or isinstance(entry["usage"], float)
    assert report["resources"]["api_quota:openai"]["status"] == "degraded"
    assert report["resources"]["api_quota:openai"]["usage"] == 85.5
    supabase = report["resources"]["mcp_server:supabase"]
    assert (supabase["status"], supabase["usage"]) == ("healthy", None)
    assert supabase["detail"]["server_name"] == "buttress-test"
    for circuit in report["circuits"].values():
        assert isinstance(circuit["state"], str)
        assert isinstance(circuit["success_rate"], float)
    assert report["circuits"]["database_query"]["state"] == "closed"
    assert report["circuits"]["database_query"]["success_rate"] == 0.98
    assert report["protocols"]["counts"]["api_quota"]["RETRY"] == {"succeeded": 1}


# -- bad input: an error naming the problem at registration or construction --------------------


@pytest.fixture
def mcp_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"supabase": {"command": "supabase-mcp"}}}))
    monkeypatch.setenv("MCP_CONFIG", str(config))
    return config


@pytest.mark.parametrize(
    ("register", "error", "match"),
    [
        (lambda rm: rm.register_monitor("gpu", "x", lambda: True), ValueError, "'gpu'"),
        (
            lambda rm: rm.register_database_monitor("db", "postgresql://app:pw@db:notaport/app"),
            ValueError,
            r"cannot parse the database DSN 'postgresql://app:\*\*\*@db:notaport/app'",
        ),
        (
            lambda rm: rm.register_database_monitor("db", "host=db port"),
            ValueError,
            "cannot parse the database DSN",
        ),
        (
            lambda rm: rm.register_network_monitor("api", "http://exa mple.com/"),
            ValueError,
            "url contains whitespace",
        ),
        (
            lambda rm: rm.register_network_monitor("api", "http://example.com:99999/"),
            ValueError,
            "cannot be parsed",
        ),
        (
            lambda rm: rm.register_network_monitor("api", "http:///health"),
            ValueError,
            "url has no host",
        ),
        (
            lambda rm: rm.register_mcp_monitor("missing"),
            ValueError,
            r"'missing'.*mcp\.json",
        ),
        (
            lambda rm: rm.register_mcp_monitor("web", url="ftp://tools.example.com/mcp"),
            ValueError,
            "ftp://tools.example.com/mcp",
        ),
        (
            lambda rm: rm.register_monitor("cpu", "c", lambda: 1, interval=-1),
            ValueError,
            "cpu:c interval",
        ),
        (
            lambda rm: rm.register_network_monitor("api", "tcp://127.0.0.1:80", interval=-5),
            ValueError,
            "network:api interval",
        ),
        (
            lambda rm: rm.register_database_monitor("db", "sqlite:///x.db", timeout=-1),
            ValueError,
            "database:db timeout",
        ),
    ],
)
def test_bad_input_fails_at_registration_naming_it(
    mcp_config: Path,
    register: Callable[[ResilienceManager], object],
    error: type[Exception],
    match: str,
) -> None:
    rm = ResilienceManager("team", check_interval=10)
    with pytest.raises(error, match=match):
        register(rm)
    assert rm.resources.monitors() == []


def test_a_missing_mcp_server_name_lists_the_file_and_the_variable(mcp_config: Path) -> None:
    rm = ResilienceManager("team", check_interval=10)
    with pytest.raises(ValueError, match="'supabse'") as caught:
        rm.register_mcp_monitor("supabse")
    message = str(caught.value)
    assert str(mcp_config) in message
    assert "MCP_CONFIG" in message
    assert "supabase" in message  # the servers the file does have


def test_an_mcp_server_named_without_a_configuration_file_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    rm = ResilienceManager("team", check_interval=10)
    with pytest.raises(ValueError, match="'supabase': no MCP configuration file") as caught:
        rm.register_mcp_monitor("supabase")
    assert str(tmp_path / "mcp.json") in str(caught.value)
    assert "MCP_CONFIG" in str(caught.value)
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        rm.register_mcp_monitor("")
    assert rm.resources.monitors() == []


@pytest.mark.parametrize("interval", [-1, 0, float("nan")])
def test_a_bad_check_interval_fails_at_construction(interval: float) -> None:
    with pytest.raises(ValueError, match="check_interval"):
        ResilienceManager("team", check_interval=interval)


@pytest.mark.parametrize("raw", ["abc", "-5", "0"])
def test_a_bad_check_interval_variable_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("RESILIENCE_CHECK_INTERVAL", raw)
    with pytest.raises(ValueError, match=rf"RESILIENCE_CHECK_INTERVAL .*{raw!r}"):
        ResilienceManager("team")


def test_a_check_returning_garbage_is_a_failure_not_a_default(clock: FakeClock) -> None:
    async def main() -> dict[str, Any]:
        rm = ResilienceManager("team", check_interval=10, circuits=[])
        rm.register_monitor("network", "api", lambda: "fine")
        rm.register_monitor("network", "ok", lambda: Reading())
        await rm.resources.check_now()
        return await rm.get_health_report()

    report = asyncio.run(main())
    assert report["resources"]["network:api"]["status"] == "unavailable"
    assert "a check must return a Reading" in report["resources"]["network:api"]["last_error"]
    assert report["resources"]["network:ok"]["status"] == "healthy"


# -- check_now -------------------------------------------------------------------------------------


def test_check_now_times_out_each_check_at_its_own_timeout() -> None:
    """A check that hangs is recorded as timed out at its own timeout, while a slower check with
    a longer timeout is still running: here the slow one ends only once it has seen that."""

    async def main() -> None:
        manager = ResourceManager("test", check_interval=3600)

        async def hangs() -> None:
            await asyncio.Event().wait()

        hung = manager.register(ResourceType.NETWORK, "hangs", hangs, timeout=0.05)

        async def waits_for_the_timeout() -> bool:
            for _ in range(500):  # at most about 5 s
                if hung.state.last_error is not None:
                    return True
                await asyncio.sleep(0.01)
            return False

        manager.register(ResourceType.NETWORK, "slow", waits_for_the_timeout, timeout=30)
        states = await manager.check_now()
        assert states["network:hangs"].last_error == "timeout after 0.05s"
        assert states["network:slow"].status is ResourceStatus.HEALTHY

    asyncio.run(main())
