"""Docker check against a stand-in Engine API on a unix socket, answering the API's documented
JSON (``GET /_ping``, ``GET /containers/{id}/json``)."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from buttress.health.docker import ContainerNotRunning, DockerError, docker_check
from buttress.health.manager import ResourceManager
from buttress.health.types import ResourceStatus, ResourceType
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


# -- answers that are not the documented JSON ---------------------------------------------------


def _with_state(**changes: Any) -> dict[str, Any]:
    info = copy.deepcopy(RUNNING)
    for key, value in changes.items():
        if key in info["State"]:
            info["State"][key] = value
        else:
            info[key] = value
    return info


BAD_GATEWAY = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.27.3</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            (
                200,
                "<html><head><title>Sign in</title></head></html>",
                {"Content-Type": "text/html"},
            ),
            r"is not JSON \(\d+ bytes of text/html\): HTML page: Sign in$",
        ),
        ((200, ""), "is empty$"),
        ((200, [RUNNING]), "is a list where a JSON object was expected$"),
        ((200, _with_state(Health="healthy")), "has State.Health as a string, where an object"),
        ((200, _with_state(Health=[])), "has State.Health as a list, where an object"),
        ((200, _with_state(Status=None)), "has no State.Status$"),
        ((200, _with_state(Status={"running": True})), "has State.Status as an object, where a"),
        ((200, _with_state(RestartCount="2")), "has RestartCount as a string, where a number"),
        ((200, {"message": "ok"}), "has no State$"),
    ],
)
def test_an_answer_that_is_not_the_documented_json_names_what_is_wrong(
    socket_dir: str, answer: tuple[Any, ...], message: str
) -> None:
    path = os.path.join(socket_dir, "docker.sock")
    routes = {"/containers/web/json": lambda r: answer}
    with serve(routes, unix_socket=path), pytest.raises(DockerError, match=message) as caught:
        run(docker_check("web", socket=path))
    assert str(caught.value).startswith("Docker's answer for container 'web' ")
    assert not isinstance(caught.value, ContainerNotRunning)


def test_an_error_page_from_a_proxy_is_named_by_its_title(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "docker.sock")
    routes = {"/_ping": lambda r: (502, BAD_GATEWAY, {"Content-Type": "text/html"})}
    with serve(routes, unix_socket=path), pytest.raises(DockerError) as caught:
        run(docker_check(socket=path))
    assert str(caught.value) == "Docker /_ping answered 502: HTML page: 502 Bad Gateway"


def test_a_ping_answered_200_by_something_else_is_not_healthy(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "docker.sock")
    routes = {"/_ping": lambda r: (200, "<html><body>Welcome</body></html>")}
    with serve(routes, unix_socket=path), pytest.raises(DockerError) as caught:
        run(docker_check(socket=path))
    assert str(caught.value) == "Docker /_ping answered 200 without 'OK': HTML page: Welcome"


class RawDaemon:
    """A unix socket answering every connection with the same bytes, then closing."""

    def __init__(self, path: str, payload: bytes) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        self.payload = payload
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.payload)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n{"State": {"Status": "run',
            ConnectionError,
            "the connection closed in the middle of the response",
        ),
        (
            b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"State": {"Status": "run',
            DockerError,
            r"is cut short \(\d+ bytes; JSON ends early",
        ),
        (
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{"State"',
            ConnectionError,
            "the connection closed in the middle of the response",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",
            ConnectionError,
            "malformed Content-Length: '-1'",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
            ConnectionError,
            "malformed chunk size: '-2'",
        ),
        (
            "HTTP/1.1 \u00b200 OK\r\n\r\n".encode("latin-1"),
            ConnectionError,
            "not an HTTP/1.x status line",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n{",
            ConnectionError,
            "response body of 99999999999 bytes is over 4194304",
        ),
    ],
)
def test_a_cut_short_or_garbled_answer_is_a_clear_error(
    socket_dir: str, payload: bytes, error: type[Exception], message: str
) -> None:
    path = os.path.join(socket_dir, "raw.sock")
    daemon = RawDaemon(path, payload)
    try:
        with pytest.raises(error, match=message):
            run(docker_check("web", socket=path))
    finally:
        daemon.close()


def test_a_garbled_answer_makes_the_container_unavailable_and_checking_goes_on(
    socket_dir: str, clock
) -> None:
    path = os.path.join(socket_dir, "docker.sock")
    answers = [(200, _with_state(Health="healthy")), (200, copy.deepcopy(RUNNING))]
    routes = {"/containers/web/json": lambda r: answers[0]}

    async def scenario() -> list[tuple[ResourceStatus | None, str | None]]:
        manager = ResourceManager("team", check_interval=10, clock=clock)
        manager.register(
            ResourceType.DOCKER, "web", docker_check("web", socket=path), success_threshold=1
        )
        seen = []
        await manager.check_now()
        seen.append((manager.status("docker", "web"), manager.state("docker", "web").last_error))
        answers.pop(0)
        await manager.check_now()
        seen.append((manager.status("docker", "web"), manager.state("docker", "web").last_error))
        return seen

    with serve(routes, unix_socket=path):
        (first, second) = asyncio.run(scenario())
    assert first == (
        ResourceStatus.UNAVAILABLE,
        "DockerError: Docker's answer for container 'web' has State.Health as a string, "
        "where an object was expected",
    )
    assert second == (ResourceStatus.HEALTHY, None)
