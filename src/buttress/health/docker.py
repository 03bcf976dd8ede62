"""Docker check: the Engine API over its unix socket.

Theory of operation
-------------------
Without a container, ``docker_check()`` asks the daemon ``GET /_ping`` and expects ``OK``: the
daemon is up and answering (a 200 with another body is something else on the socket, an
error). With one (a name or ID), it asks ``GET /containers/{id}/json`` and reads ``State``
(``Status``, ``Health.Status``, ``ExitCode``, ``OOMKilled``) and ``RestartCount``. The
status follows what Docker itself says:

=====================================================  ========================================
container                                              check
=====================================================  ========================================
running, no health check or ``healthy``                a reading with no status (healthy)
running, health ``starting``                           ``DEGRADED``
running, health ``unhealthy``                          ``CRITICAL`` (with the last probe output)
``paused`` or ``restarting``                           ``CRITICAL``: it exists but cannot serve
``created``, ``exited``, ``dead``, ``removing``        raises :class:`ContainerNotRunning`
no such container, daemon error                        raises :class:`DockerError`
an answer that is not the documented JSON              raises :class:`DockerError` naming what
                                                       is wrong (not JSON, cut short, a field)
=====================================================  ========================================

A container that is not running raises rather than returning a status: like a stopped database
it cannot be used at all, and raising gives it the resource manager's treatment of every outage
(UNAVAILABLE after the failure threshold, the error kept as the last error, recovery by the
success threshold). ``RestartCount`` rising since the previous check means Docker restarted a
crashed container in between; that reading is at least ``DEGRADED``, once.

The request goes through the package's small asyncio HTTP client (no Docker SDK needed), so a
timeout cancels it at any point. Unversioned API paths are used: the daemon answers them with its
own API version, and the fields read here exist in every version since 1.24.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

from . import _http
from .types import Reading, ResourceStatus, redact

__all__ = ["ContainerNotRunning", "DockerCheck", "DockerError", "docker_check"]

_CONTAINER = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_OUTPUT_CHARS = 200


class DockerError(Exception):
    """The Docker daemon refused or failed the request."""


class ContainerNotRunning(DockerError):
    """The container exists but is not running (created, exited, dead, being removed)."""


def docker_check(
    container: str | None = None, *, socket: str = "/var/run/docker.sock"
) -> DockerCheck:
    """A check of the Docker daemon, or of one container's state and health.

    Raises:
        ValueError: a container name that Docker would not accept, an empty socket path.
        TypeError: arguments of the wrong type.
    """
    return DockerCheck(container, socket=socket)


class DockerCheck:
    """A Docker daemon or container check (made by :func:`docker_check`)."""

    __slots__ = ("_restarts", "container", "socket", "target")

    def __init__(
        self,
        container: str | None = None,
        *,
        socket: str | os.PathLike[str] = "/var/run/docker.sock",
    ) -> None:
        if container is not None:
            if not isinstance(container, str):
                raise TypeError(f"container must be a name or ID, got {container!r}")
            # a leading slash is how the API itself prints names
            if not _CONTAINER.fullmatch(container.removeprefix("/")):
                raise ValueError(
                    f"container must be a container name or ID ([a-zA-Z0-9][a-zA-Z0-9_.-]*), "
                    f"got {container!r}"
                )
            container = container.removeprefix("/")
        if not isinstance(socket, str | os.PathLike):
            raise TypeError(f"socket must be the path of the Docker socket, got {socket!r}")
        path = os.fspath(socket)
        if not path:
            raise ValueError("socket must be the path of the Docker socket, got ''")
        self.container = container
        self.socket = path
        self._restarts: int | None = None
        what = "daemon" if container is None else f"container {container}"
        self.target = f"docker {what} (unix:{path})"

    def __repr__(self) -> str:
        return f"<DockerCheck {self.target}>"

    async def __call__(self) -> Reading:
        if self.container is None:
            return await self._ping()
        return await self._inspect(self.container)

    async def _get(self, path: str) -> _http.Response:
        try:
            return await _http.request(host="docker", port=0, path=path, unix_socket=self.socket)
        except FileNotFoundError:
            raise FileNotFoundError(f"no Docker socket at {self.socket}") from None
        except PermissionError:
            raise PermissionError(
                f"no permission to use the Docker socket {self.socket} "
                "(run as a member of its group)"
            ) from None

    async def _ping(self) -> Reading:
        response = await self._get("/_ping")
        if response.status != 200:
            raise DockerError(f"Docker /_ping answered {response.status}: {_message(response)}")
        if response.body.strip() != b"OK":
            # a 200 from something else on the socket (a proxy's page) is not the daemon
            raise DockerError(f"Docker /_ping answered 200 without 'OK': {_message(response)}")
        detail: dict[str, object] = {}
        if "api-version" in response.headers:
            detail["api_version"] = response.headers["api-version"]
        return Reading(detail=detail)

    async def _inspect(self, container: str) -> Reading:
        response = await self._get(f"/containers/{quote(container, safe='')}/json")
        if response.status == 404:
            raise DockerError(f"no such container: {container!r}")
        if response.status != 200:
            raise DockerError(
                f"Docker answered {response.status} for container {container!r}: "
                f"{_message(response)}"
            )
        try:
            info = _http.json_object(response)
            state: dict[str, Any] = _http.member(info, "State", dict, "State", required=True)
            status: str = _http.member(state, "Status", str, "State.Status", required=True)
            health: dict[str, Any] = _http.member(state, "Health", dict, "State.Health") or {}
            health_status = _http.member(health, "Status", str, "State.Health.Status")
            restarts = _http.member(info, "RestartCount", int, "RestartCount")
        except _http.Malformed as exc:
            raise DockerError(
                f"Docker's answer for container {container!r} {redact(str(exc))}"
            ) from None
        detail: dict[str, object] = {
            "status": status,
            "health": health_status,
            "restart_count": restarts,
            "exit_code": _scalar(state.get("ExitCode"), int),
            "oom_killed": _scalar(state.get("OOMKilled"), bool),
            "started_at": _scalar(state.get("StartedAt"), str),
        }
        if health:
            detail["failing_streak"] = _scalar(health.get("FailingStreak"), int)
        if status not in ("running", "paused", "restarting"):
            raise ContainerNotRunning(_not_running(container, status, state))

        level: ResourceStatus | None = None
        notes: list[str] = []
        if status in ("paused", "restarting"):
            level = ResourceStatus.CRITICAL
            notes.append(f"container {status}")
        elif health_status == "unhealthy":
            level = ResourceStatus.CRITICAL
            output = _last_probe_output(health)
            notes.append("health check failing" + (f": {output}" if output else ""))
        elif health_status == "starting":
            level = ResourceStatus.DEGRADED
            notes.append("health check starting")
        previous, self._restarts = self._restarts, restarts
        if previous is not None and self._restarts is not None and self._restarts > previous:
            level = _worse(level, ResourceStatus.DEGRADED)
            notes.append(f"restarted {self._restarts - previous} time(s) since the previous check")
        return Reading(status=level, detail=detail, message="; ".join(notes) or None)


def _worse(a: ResourceStatus | None, b: ResourceStatus) -> ResourceStatus:
    return b if a is None or b.rank > a.rank else a


def _scalar(value: object, kind: type) -> Any:
    """A figure shown in the detail: kept when it has its documented type, else ``None``."""
    if isinstance(value, bool) and kind is not bool:
        return None
    return value if isinstance(value, kind) else None


def _not_running(container: str, status: str, state: dict[str, Any]) -> str:
    message = f"container {container!r} is {redact(status)[:_OUTPUT_CHARS]}"
    if status in ("exited", "dead"):
        message += f" (exit code {_scalar(state.get('ExitCode'), int)}"
        if state.get("OOMKilled") is True:
            message += ", killed for lack of memory"
        message += ")"
    error = _scalar(state.get("Error"), str)
    if error:
        message += f": {redact(' '.join(error.split()))[:_OUTPUT_CHARS]}"
    return message


def _last_probe_output(health: dict[str, Any]) -> str:
    log = health.get("Log")
    if not isinstance(log, list) or not log or not isinstance(log[-1], dict):
        return ""
    output = " ".join(str(log[-1].get("Output", "")).split())
    return redact(output)[:_OUTPUT_CHARS]


def _message(response: _http.Response) -> str:
    return redact(_http.describe_body(response, _OUTPUT_CHARS))
