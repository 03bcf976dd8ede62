"""Kubernetes pod check: the pod's own view through the API server, from inside the cluster.

Theory of operation
-------------------
A pod reaches the API server at ``KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT`` over HTTPS,
verifying it with the cluster CA and authenticating with the service account token, both mounted
at ``/var/run/secrets/kubernetes.io/serviceaccount/`` (with the pod's ``namespace``). The check
asks ``GET /api/v1/namespaces/{namespace}/pods/{pod}`` (the pod defaults to ``HOSTNAME``, which
Kubernetes sets to the pod's name) and reads ``status``:

==========================================================  ===================================
pod                                                         check
==========================================================  ===================================
``Running`` and condition ``Ready`` is ``True``             a reading with no status (healthy)
``Running`` but not ``Ready``, ``Pending``, terminating     ``DEGRADED`` (with the reason)
a container waiting in ``CrashLoopBackOff``, an image       ``CRITICAL``
pull error or a bad container configuration
``Failed``, ``Succeeded`` (no longer serving), ``Unknown``  raises :class:`PodNotRunning`
(its node is unreachable)
token refused (401), not allowed (403), no such pod         raises :class:`KubernetesError`
an answer that is not the documented JSON (an HTML page     raises :class:`KubernetesError`
from a proxy, a body cut short, a field of another type)    naming what is wrong
==========================================================  ===================================

A rising sum of the containers' ``restartCount`` since the previous check means a container
crashed in between; that reading is at least ``DEGRADED``, once, with the last termination reason
(``OOMKilled``, an exit code). The service account needs ``get`` on ``pods`` in its namespace
(a Role and RoleBinding); a 403 says so.

The token is read again at every check, because the kubelet rotates projected tokens (about
hourly) by rewriting the file; it never appears in ``target``, messages or readings. The CA is
loaded once, when the check is built, so a missing or unreadable CA is an error at registration.
Everything missing from the environment (no ``KUBERNETES_SERVICE_HOST``: not running in a pod)
is a ``ValueError`` naming the variable or file, also at registration.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from typing import Any
from urllib.parse import quote

from . import _http
from .types import Reading, ResourceStatus, redact

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "KubernetesError",
    "PodCheck",
    "PodNotRunning",
    "pod_check",
]

#: Where Kubernetes mounts a pod's service account credentials.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_BROKEN_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
_MESSAGE_CHARS = 300


class KubernetesError(Exception):
    """The API server refused or failed the request."""


class PodNotRunning(KubernetesError):
    """The pod has finished (``Failed``, ``Succeeded``) or its state is ``Unknown``."""


def pod_check(
    *,
    pod: str | None = None,
    namespace: str | None = None,
    host: str | None = None,
    port: int | None = None,
    token_path: str | os.PathLike[str] = f"{SERVICE_ACCOUNT_DIR}/token",
    ca_path: str | os.PathLike[str] = f"{SERVICE_ACCOUNT_DIR}/ca.crt",
    namespace_path: str | os.PathLike[str] = f"{SERVICE_ACCOUNT_DIR}/namespace",
) -> PodCheck:
    """A check of a pod's phase, readiness and restarts (by default, the pod it runs in).

    Raises:
        ValueError: no API server (``KUBERNETES_SERVICE_HOST`` unset and no ``host=``), a bad
            ``KUBERNETES_SERVICE_PORT`` or ``port``, an unreadable token or CA, no namespace, a
            pod or namespace name Kubernetes would not accept.
    """
    return PodCheck(
        pod=pod,
        namespace=namespace,
        host=host,
        port=port,
        token_path=token_path,
        ca_path=ca_path,
        namespace_path=namespace_path,
    )


class PodCheck:
    """A Kubernetes pod check (made by :func:`pod_check`)."""

    __slots__ = ("_restarts", "_ssl", "host", "namespace", "pod", "port", "target", "token_path")

    def __init__(
        self,
        *,
        pod: str | None = None,
        namespace: str | None = None,
        host: str | None = None,
        port: int | None = None,
        token_path: str | os.PathLike[str] = f"{SERVICE_ACCOUNT_DIR}/token",
        ca_path: str | os.PathLike[str] = f"{SERVICE_ACCOUNT_DIR}/ca.crt",
        namespace_path: str | os.PathLike[str] = f"{SERVICE_ACCOUNT_DIR}/namespace",
    ) -> None:
        self.host = _api_host(host)
        self.port = _api_port(port)
        self.namespace = _namespace(namespace, namespace_path)
        self.pod = _pod(pod)
        for name, value in (("token_path", token_path), ("ca_path", ca_path)):
            if not isinstance(value, str | os.PathLike):
                raise TypeError(f"{name} must be a path, got {value!r}")
        self.token_path = os.fspath(token_path)
        _read_token(self.token_path, at_construction=True)
        self._ssl = _ca_context(os.fspath(ca_path))
        self._restarts: int | None = None
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.target = f"k8s pod {self.namespace}/{self.pod} (https://{shown}:{self.port})"

    def __repr__(self) -> str:
        return f"<PodCheck {self.target}>"

    async def __call__(self) -> Reading:
        token = _read_token(self.token_path)
        path = (
            f"/api/v1/namespaces/{quote(self.namespace, safe='')}/pods/{quote(self.pod, safe='')}"
        )
        response = await _http.request(
            host=self.host,
            port=self.port,
            path=path,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            ssl=self._ssl,
        )
        if response.status != 200:
            raise KubernetesError(self._refusal(response))
        try:
            pod = _http.json_object(response)
            status: dict[str, Any] = _http.member(pod, "status", dict, "status", required=True)
            phase: str = _http.member(status, "phase", str, "status.phase", required=True)
            return self._reading(pod, status, phase)
        except _http.Malformed as exc:
            raise KubernetesError(
                f"the API server's answer for pod {self.namespace}/{self.pod} {redact(str(exc))}"
            ) from None

    def _refusal(self, response: _http.Response) -> str:
        message = _api_message(response)
        where = f"pod {self.namespace}/{self.pod}"
        if response.status == 401:
            return f"the API server refused the service account token (401): {message}"
        if response.status == 403:
            return (
                f"not allowed to read {where} (403): {message}; the service account needs "
                "'get' on 'pods' in its namespace"
            )
        if response.status == 404:
            return f"no {where} (404)"
        return f"the API server answered {response.status} for {where}: {message}"

    def _reading(self, pod: dict[str, Any], status: dict[str, Any], phase: str) -> Reading:
        if phase in ("Failed", "Succeeded", "Unknown"):
            reason = _text(status.get("reason")) or _text(status.get("message"))
            because = f": {redact(reason)[:_MESSAGE_CHARS]}" if reason else ""
            raise PodNotRunning(f"pod {self.namespace}/{self.pod} is {phase}{because}")
        conditions: dict[str, dict[str, Any]] = {}
        for index, condition in enumerate(_objects(status, "conditions", "status.conditions")):
            kind = _http.member(condition, "type", str, f"status.conditions[{index}].type")
            if kind is not None:
                conditions[kind] = condition
        ready_condition = conditions.get("Ready") or {}
        ready = ready_condition.get("status") == "True"
        containers: dict[str, dict[str, object]] = {}
        restarts = 0
        broken: list[str] = []
        last_termination: list[str] = []
        statuses = _objects(status, "containerStatuses", "status.containerStatuses")
        for index, container in enumerate(statuses):
            where = f"status.containerStatuses[{index}]"
            name = _http.member(container, "name", str, f"{where}.name") or f"#{index}"
            count = _http.member(container, "restartCount", int, f"{where}.restartCount")
            restarts += count or 0
            state = _http.member(container, "state", dict, f"{where}.state") or {}
            state_name = next(iter(state), None)
            waiting = _http.member(state, "waiting", dict, f"{where}.state.waiting") or {}
            reason = _text(waiting.get("reason"))
            containers[name] = {
                "ready": container.get("ready") is True,
                "restarts": count,
                "state": state_name,
            }
            if reason in _BROKEN_WAITING:
                broken.append(f"{name}: {reason}")
            last = _http.member(container, "lastState", dict, f"{where}.lastState") or {}
            terminated = (
                _http.member(last, "terminated", dict, f"{where}.lastState.terminated") or {}
            )
            if terminated:
                code = terminated.get("exitCode")
                last_termination.append(
                    f"{name} {_text(terminated.get('reason')) or 'terminated'} "
                    f"(exit code {code if isinstance(code, int) else None})"
                )
        spec = _http.member(pod, "spec", dict, "spec") or {}
        metadata = _http.member(pod, "metadata", dict, "metadata") or {}
        detail: dict[str, object] = {
            "phase": phase,
            "ready": ready,
            "restarts": restarts,
            "node": _text(spec.get("nodeName")),
            "containers": containers,
        }
        level: ResourceStatus | None = None
        notes: list[str] = []
        if broken:
            level = ResourceStatus.CRITICAL
            notes.append("containers failing: " + ", ".join(broken))
        elif phase != "Running":
            level = ResourceStatus.DEGRADED
            notes.append(f"pod {phase}")
        elif not ready:
            level = ResourceStatus.DEGRADED
            why = _text(ready_condition.get("reason")) or _text(ready_condition.get("message"))
            notes.append("not ready" + (f": {redact(why)[:_MESSAGE_CHARS]}" if why else ""))
        if metadata.get("deletionTimestamp"):
            level = _worse(level, ResourceStatus.DEGRADED)
            notes.append("terminating")
        previous, self._restarts = self._restarts, restarts
        if previous is not None and restarts > previous:
            level = _worse(level, ResourceStatus.DEGRADED)
            note = f"{restarts - previous} container restart(s) since the previous check"
            if last_termination:
                note += " (last: " + ", ".join(last_termination) + ")"
            notes.append(note)
        return Reading(status=level, detail=detail, message="; ".join(notes) or None)


def _objects(obj: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    """The list ``obj[key]`` of JSON objects (empty when absent), each checked."""
    items: list[Any] = _http.member(obj, key, list, path) or []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _http.Malformed(
                f"has {path}[{index}] as {_http.json_type(item)}, where an object was expected"
            )
    return items


def _text(value: object) -> str | None:
    """A text the API documents as a string, single-lined; ``None`` when it is anything else."""
    return " ".join(value.split()) if isinstance(value, str) else None


def _worse(a: ResourceStatus | None, b: ResourceStatus) -> ResourceStatus:
    return b if a is None or b.rank > a.rank else a


def _api_host(host: object) -> str:
    if host is None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "").strip()
        if not host:
            raise ValueError(
                "pod_check needs the API server: KUBERNETES_SERVICE_HOST is not set "
                "(not running in a pod?); pass host="
            )
        source = "environment variable KUBERNETES_SERVICE_HOST"
    else:
        source = "host"
    if not isinstance(host, str) or not host or any(c.isspace() or c in "/@" for c in host):
        raise ValueError(f"{source} must be a host name or address, got {host!r}")
    return host.removeprefix("[").removesuffix("]")


def _api_port(port: object) -> int:
    if port is None:
        raw = os.environ.get("KUBERNETES_SERVICE_PORT", "").strip()
        if not raw:
            return 443
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(
                f"environment variable KUBERNETES_SERVICE_PORT must be a port number, got {raw!r}"
            ) from None
        if not 1 <= value <= 65535:
            raise ValueError(
                f"environment variable KUBERNETES_SERVICE_PORT must be 1-65535, got {raw!r}"
            )
        return value
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an integer, got {port!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port!r}")
    return port


def _namespace(namespace: object, namespace_path: object) -> str:
    source = "namespace"
    if namespace is None:
        if not isinstance(namespace_path, str | os.PathLike):
            raise TypeError(f"namespace_path must be a path, got {namespace_path!r}")
        path = os.fspath(namespace_path)
        try:
            with open(path, encoding="utf-8") as file:
                namespace = file.read().strip()
        except OSError as exc:
            raise ValueError(
                f"no namespace= given and the pod's namespace file {path} cannot be read "
                f"({exc.strerror or exc})"
            ) from None
        source = f"the namespace in {path}"
    if not isinstance(namespace, str) or len(namespace) > 63 or not _NAME.fullmatch(namespace):
        raise ValueError(f"{source} must be a Kubernetes namespace name, got {namespace!r}")
    return namespace


def _pod(pod: object) -> str:
    source = "pod"
    if pod is None:
        pod = os.environ.get("HOSTNAME", "").strip()
        source = "environment variable HOSTNAME"
        if not pod:
            pod, source = socket.gethostname(), "the host name"
    if not isinstance(pod, str) or len(pod) > 253 or not _NAME.fullmatch(pod):
        raise ValueError(f"{source} must be a Kubernetes pod name, got {pod!r}")
    return pod


def _read_token(path: str, *, at_construction: bool = False) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except OSError as exc:
        message = f"the service account token {path} cannot be read ({exc.strerror or exc})"
        if at_construction:
            raise ValueError(message) from None
        raise type(exc)(message) from None
    if not token or any(c in token for c in "\r\n"):
        message = f"the service account token {path} is empty or not a token"
        if at_construction:
            raise ValueError(message)
        raise KubernetesError(message)
    return token


def _ca_context(path: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ValueError(f"the cluster CA {path} cannot be loaded ({reason})") from None


def _api_message(response: _http.Response) -> str:
    return redact(_http.describe_body(response, _MESSAGE_CHARS))
