"""Docker check against a stand-in Engine API on a unix socket, answering the API's documented
JSON (``GET /_ping``, ``GET /containers/{id}/json``)."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from buttress.health.docker import ContainerNotRunning, DockerError, docker_check
from buttress.health.types import ResourceStatus
from local_servers import Server, serve

# the shape of GET /containers/{id}/json (Engine API, ContainerInspectResponse), trimmed
RUNNING: dict[str, Any] = {
    "Id": "8dfafdbc3a40e4e1b8bd7b09a4a4b28d3a0b0ba4f1c6b1a3c8a6d3e3f1a2b3c4",
    "Created": "2025-01-06T15:47:31.485331387Z",
    "Path": "/docker-entrypoint.sh",
    "Args": ["nginx", "-g", "daemon off;"],
    "State": {
        "Status": "running",
        "Running": True,
        "Paused": False,
        "Restarting": False,
        "OOMKilled": False,
        "Dead": False,
        "Pid": 4242,
        "ExitCode": 0,
        "Error": "",
        "StartedAt": "2025-01-06T15:47:32.072697474Z",
        "FinishedAt": "0001-01-01T00:00:00Z",
        "Health": {
            "Status": "healthy",
            "FailingStreak": 0,
            "Log": [
                {
                    "Start": "2025-01-06T15:48:02.1Z",
                    "End": "2025-01-06T15:48:02.2Z",
                    "ExitCode": 0,
                    "Output": "ok",
                }
            ],
        },
    },
    "Image": "sha256:4f6c0e9b4a1d",
    "Name": "/web",
    "RestartCount": 0,
    "Driver": "overlay2",
    "Config": {"Image": "nginx:1.27", "Hostname": "8dfafdbc3a40"},
}


class FakeDaemon:
    """The containers the stand-in daemon knows, editable between checks."""

    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {"web": copy.deepcopy(RUNNING)}

    def routes(self) -> dict[str, Any]:
        routes: dict[str, Any] = {
            "/_ping": lambda r: (200, "OK", {"Api-Version": "1.47", "Content-Type": "text/plain"})
        }
        for name, info in self.containers.items():
            routes[f"/containers/{name}/json"] = lambda r, info=info: (200, info)
        return routes

    def state(self, name: str = "web") -> dict[str, Any]:
        return self.containers[name]["State"]


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer
    directory = tempfile.mkdtemp(prefix="buttress-docker-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def daemon(socket_dir: str) -> Iterator[tuple[FakeDaemon, Server]]:
    fake = FakeDaemon()
    routes: dict[str, Any] = {}
    path = os.path.join(socket_dir, "docker.sock")
    with serve(routes, unix_socket=path) as server:
        routes.update(fake.routes())
        yield fake, server


def run(check):
    return asyncio.run(check())


def test_ping(daemon) -> None:
    _fake, server = daemon
    check = docker_check(socket=server.unix_socket)
    reading = run(check)
    assert reading.status is None
    assert reading.detail == {"api_version": "1.47"}
    assert server.requests[-1].path == "/_ping"
    assert check.target == f"docker daemon (unix:{server.unix_socket})"


def test_running_and_healthy(daemon) -> None:
    _fake, server = daemon
    check = docker_check("web", socket=server.unix_socket)
    reading = run(check)
    assert reading.status is None
    assert reading.message is None
    assert reading.detail["status"] == "running"
    assert reading.detail["health"] == "healthy"
    assert reading.detail["restart_count"] == 0
    assert server.requests[-1].path == "/containers/web/json"
    assert check.target == f"docker container web (unix:{server.unix_socket})"


def test_running_without_a_health_check_is_healthy(daemon) -> None:
    fake, server = daemon
    del fake.state()["Health"]
    reading = run(docker_check("web", socket=server.unix_socket))
    assert reading.status is None
    assert reading.detail["health"] is None


def test_unhealthy_is_critical_with_the_probe_output(daemon) -> None:
    fake, server = daemon
    fake.state()["Health"].update(Status="unhealthy", FailingStreak=3)
    fake.state()["Health"]["Log"][-1].update(
        ExitCode=1, Output="curl: (7) Failed to connect to localhost port 80\n"
    )
    reading = run(docker_check("web", socket=server.unix_socket))
    assert reading.status is ResourceStatus.CRITICAL
    assert reading.message == (
        "health check failing: curl: (7) Failed to connect to localhost port 80"
    )
    assert reading.detail["failing_streak"] == 3


def test_starting_is_degraded(daemon) -> None:
    fake, server = daemon
    fake.state()["Health"]["Status"] = "starting"
    reading = run(docker_check("web", socket=server.unix_socket))
    assert reading.status is ResourceStatus.DEGRADED


@pytest.mark.parametrize("status", ["paused", "restarting"])
def test_paused_or_restarting_is_critical(daemon, status: str) -> None:
    fake, server = daemon
    fake.state()["Status"] = status
    reading = run(docker_check("web", socket=server.unix_socket))
    assert reading.status is ResourceStatus.CRITICAL
    assert reading.message == f"container {status}"


def test_exited_raises_with_exit_code_and_oom(daemon) -> None:
    fake, server = daemon
    fake.state().update(Status="exited", Running=False, ExitCode=137, OOMKilled=True)
    with pytest.raises(ContainerNotRunning) as caught:
        run(docker_check("web", socket=server.unix_socket))
    assert str(caught.value) == (
        "container 'web' is exited (exit code 137, killed for lack of memory)"
    )


@pytest.mark.parametrize("status", ["created", "dead", "removing"])
def test_other_not_running_states_raise(daemon, status: str) -> None:
    fake, server = daemon
    fake.state()["Status"] = status
    with pytest.raises(ContainerNotRunning, match=f"container 'web' is {status}"):
        run(docker_check("web", socket=server.unix_socket))


def test_a_restart_between_checks_degrades_once(daemon) -> None:
    fake, server = daemon
    check = docker_check("web", socket=server.unix_socket)
    assert run(check).status is None
    fake.containers["web"]["RestartCount"] = 2
    reading = run(check)
    assert reading.status is ResourceStatus.DEGRADED
    assert reading.message == "restarted 2 time(s) since the previous check"
    assert run(check).status is None


def test_unknown_container_raises(daemon) -> None:
    _fake, server = daemon
    with pytest.raises(DockerError, match="no such container: 'db'"):
        run(docker_check("db", socket=server.unix_socket))


def test_a_daemon_error_carries_its_message(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "docker.sock")
    routes = {"/_ping": lambda r: (500, {"message": "layer store is broken"})}
    with serve(routes, unix_socket=path), pytest.raises(DockerError) as caught:
        run(docker_check(socket=path))
    assert str(caught.value) == "Docker /_ping answered 500: layer store is broken"


def test_missing_socket_says_where_it_looked(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "absent.sock")
    with pytest.raises(FileNotFoundError, match=f"no Docker socket at {path}"):
        run(docker_check(socket=path))


def test_secrets_in_container_errors_are_redacted(daemon) -> None:
    fake, server = daemon
    fake.state().update(
        Status="exited", ExitCode=1, Error="cannot reach postgresql://app:pa55word@db:5432/app"
    )
    with pytest.raises(ContainerNotRunning) as caught:
        run(docker_check("web", socket=server.unix_socket))
    assert "pa55word" not in str(caught.value)
    assert "postgresql://app:***@db:5432/app" in str(caught.value)


@pytest.mark.parametrize(
    ("container", "error", "message"),
    [
        ("", ValueError, "container must be a container name or ID"),
        ("../../images", ValueError, r"got '\.\./\.\./images'"),
        ("web/json?x", ValueError, "container must be"),
        (42, TypeError, "container must be a name or ID, got 42"),
    ],
)
def test_bad_container_names_are_refused(container, error, message) -> None:
    with pytest.raises(error, match=message):
        docker_check(container)


def test_bad_socket_is_refused() -> None:
    with pytest.raises(ValueError, match="socket must be the path of the Docker socket, got ''"):
        docker_check(socket="")
    with pytest.raises(TypeError, match="socket must be the path"):
        docker_check(socket=3)  # type: ignore[arg-type]


def test_a_name_with_the_apis_leading_slash_is_accepted(daemon) -> None:
    _fake, server = daemon
    assert run(docker_check("/web", socket=server.unix_socket)).status is None
