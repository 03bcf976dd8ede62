"""Kubernetes pod check against a stand-in API server: HTTPS with a CA made for the test, a
service account token it checks, and the API's documented Pod JSON."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from buttress.health.kubernetes import KubernetesError, PodNotRunning, pod_check
from buttress.health.manager import ResourceManager
from buttress.health.types import ResourceStatus, ResourceType
from buttress.testing import FakeClock
from local_servers import Certificates, Request, Server, make_certificates, serve

TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.c2VjcmV0LXRva2VuLWJvZHk.c2lnbmF0dXJl"
POD_PATH = "/api/v1/namespaces/shop/pods/web-7d4b9c6f5-x2x9z"

# the shape of GET /api/v1/namespaces/{ns}/pods/{name} (core/v1 Pod), trimmed
POD: dict[str, Any] = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {
        "name": "web-7d4b9c6f5-x2x9z",
        "namespace": "shop",
        "uid": "6b2d3c1e-0f4a-4f6e-9a51-2d8f0c7b1e9a",
        "labels": {"app": "web"},
    },
    "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "shop/web:1.4"}]},
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "PodScheduled", "status": "True"},
        ],
        "hostIP": "10.0.0.5",
        "podIP": "10.244.1.7",
        "startTime": "2025-01-06T15:47:30Z",
        "containerStatuses": [
            {
                "name": "web",
                "state": {"running": {"startedAt": "2025-01-06T15:47:32Z"}},
                "lastState": {},
                "ready": True,
                "restartCount": 0,
                "image": "shop/web:1.4",
                "imageID": "docker.io/shop/web@sha256:4f6c0e9b",
                "containerID": "containerd://8dfafdbc3a40",
                "started": True,
            }
        ],
        "qosClass": "Burstable",
    },
}

FORBIDDEN = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'pods "web-7d4b9c6f5-x2x9z" is forbidden: User '
    '"system:serviceaccount:shop:default" cannot get resource "pods" in API group "" '
    'in the namespace "shop"',
    "reason": "Forbidden",
    "details": {"name": "web-7d4b9c6f5-x2x9z", "kind": "pods"},
    "code": 403,
}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("k8s-ca"))


@dataclass
class Cluster:
    server: Server
    pod: dict[str, Any]
    account: Path  # the service account directory (token, ca.crt, namespace)
    forbidden: bool = False
    answer: tuple[Any, ...] | None = None  # sent instead of the pod, when set

    def check(self, **kwargs: Any):
        return pod_check(
            **{
                "pod": "web-7d4b9c6f5-x2x9z",
                "host": "127.0.0.1",
                "port": self.server.port,
                "token_path": self.account / "token",
                "ca_path": self.account / "ca.crt",
                "namespace_path": self.account / "namespace",
                **kwargs,
            },
        )

    @property
    def status(self) -> dict[str, Any]:
        return self.pod["status"]


@pytest.fixture
def cluster(tmp_path: Path, certificates: Certificates) -> Iterator[Cluster]:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN)
    (account / "ca.crt").write_bytes(certificates.ca.read_bytes())
    (account / "namespace").write_text("shop")
    state: dict[str, Any] = {}

    def get_pod(request: Request) -> tuple[int, Any]:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"kind": "Status", "message": "Unauthorized", "code": 401}
        if state["cluster"].forbidden:
            return 403, FORBIDDEN
        if state["cluster"].answer is not None:
            return state["cluster"].answer
        return 200, state["cluster"].pod

    with serve({POD_PATH: get_pod}, tls=certificates.server_context()) as server:
        state["cluster"] = Cluster(server, copy.deepcopy(POD), account)
        yield state["cluster"]


def run(check):
    return asyncio.run(check())


def test_running_and_ready_is_healthy(cluster: Cluster) -> None:
    check = cluster.check()
    reading = run(check)
    assert reading.status is None
    assert reading.message is None
    assert reading.detail["phase"] == "Running"
    assert reading.detail["ready"] is True
    assert reading.detail["restarts"] == 0
    assert reading.detail["node"] == "node-1"
    assert reading.detail["containers"] == {
        "web": {"ready": True, "restarts": 0, "state": "running"}
    }
    request = cluster.server.requests[-1]
    assert request.path == POD_PATH
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert (
        check.target
        == f"k8s pod shop/web-7d4b9c6f5-x2x9z (https://127.0.0.1:{cluster.server.port})"
    )


def test_not_ready_is_degraded_with_the_reason(cluster: Cluster) -> None:
    cluster.status["conditions"][2].update(
        status="False", reason="ContainersNotReady", message="containers with unready status: [web]"
    )
    reading = run(cluster.check())
    assert reading.status is ResourceStatus.DEGRADED
    assert reading.message == "not ready: ContainersNotReady"


def test_pending_is_degraded(cluster: Cluster) -> None:
    cluster.status["phase"] = "Pending"
    reading = run(cluster.check())
    assert reading.status is ResourceStatus.DEGRADED
    assert reading.message == "pod Pending"


def test_crash_loop_is_critical(cluster: Cluster) -> None:
    container = cluster.status["containerStatuses"][0]
    container.update(
        ready=False,
        restartCount=5,
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
        lastState={"terminated": {"reason": "Error", "exitCode": 1}},
    )
    reading = run(cluster.check())
    assert reading.status is ResourceStatus.CRITICAL
    assert reading.message is not None
    assert reading.message.startswith("containers failing: web: CrashLoopBackOff")


def test_restarts_between_checks_degrade_once_with_the_last_reason(cluster: Cluster) -> None:
    check = cluster.check()
    assert run(check).status is None
    container = cluster.status["containerStatuses"][0]
    container.update(
        restartCount=1, lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    )
    reading = run(check)
    assert reading.status is ResourceStatus.DEGRADED
    assert reading.message == (
        "1 container restart(s) since the previous check (last: web OOMKilled (exit code 137))"
    )
    assert run(check).status is None


def test_terminating_is_degraded(cluster: Cluster) -> None:
    cluster.pod["metadata"]["deletionTimestamp"] = "2025-01-06T16:00:00Z"
    reading = run(cluster.check())
    assert reading.status is ResourceStatus.DEGRADED
    assert reading.message == "terminating"


@pytest.mark.parametrize("phase", ["Failed", "Succeeded", "Unknown"])
def test_finished_or_unknown_pods_raise(cluster: Cluster, phase: str) -> None:
    cluster.status["phase"] = phase
    cluster.status["reason"] = "Evicted" if phase == "Failed" else None
    with pytest.raises(PodNotRunning, match=f"pod shop/web-7d4b9c6f5-x2x9z is {phase}"):
        run(cluster.check())


def test_the_token_is_read_again_at_every_check(cluster: Cluster) -> None:
    check = cluster.check()
    assert run(check).status is None
    (cluster.account / "token").write_text("rotated-but-wrong")
    with pytest.raises(KubernetesError, match=r"refused the service account token \(401\)"):
        run(check)
    (cluster.account / "token").write_text(TOKEN + "\n")
    assert run(check).status is None


def test_forbidden_says_what_the_account_needs(cluster: Cluster) -> None:
    cluster.forbidden = True
    with pytest.raises(KubernetesError) as caught:
        run(cluster.check())
    message = str(caught.value)
    assert message.startswith("not allowed to read pod shop/web-7d4b9c6f5-x2x9z (403): pods ")
    assert message.endswith("the service account needs 'get' on 'pods' in its namespace")


def test_unknown_pod_raises(cluster: Cluster) -> None:
    with pytest.raises(KubernetesError, match=r"no pod shop/other \(404\)"):
        run(cluster.check(pod="other"))


def test_a_server_with_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    other = make_certificates(tmp_path / "other")  # a CA that did not sign the server
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        run(cluster.check(ca_path=other.ca))


def test_the_token_never_shows(cluster: Cluster) -> None:
    check = cluster.check()
    seen = [check.target, repr(check), repr(run(check))]
    cluster.status["phase"] = "Failed"
    cluster.status["message"] = f"token={TOKEN}"
    with pytest.raises(PodNotRunning) as caught:
        run(check)
    seen.append(str(caught.value))
    cluster.forbidden = True
    with pytest.raises(KubernetesError) as refused:
        run(check)
    seen.append(str(refused.value))
    assert all(TOKEN not in text for text in seen)


# -- answers that are not the documented JSON ---------------------------------------------------


def _pod_with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    pod = copy.deepcopy(POD)
    change(pod)
    return pod


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            (
                503,
                "<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
                "<body><h1>upstream connect error</h1></body></html>",
                {"Content-Type": "text/html"},
            ),
            "the API server answered 503 for pod shop/web-7d4b9c6f5-x2x9z: "
            "HTML page: 503 Service Unavailable",
        ),
        (
            (
                200,
                "<html><head><title>Sign in</title></head></html>",
                {"Content-Type": "text/html"},
            ),
            "is not JSON (48 bytes of text/html): HTML page: Sign in",
        ),
        ((200, '{"kind": "Pod", "status": {"phase": "Runn'), "is cut short (41 bytes;"),
        ((200, [POD]), "is a list where a JSON object was expected"),
        (
            (200, _pod_with(lambda p: p["status"].update(phase=None))),
            "has no status.phase",
        ),
        (
            (200, _pod_with(lambda p: p["status"].update(phase=["Running"]))),
            "has status.phase as a list, where a string was expected",
        ),
        (
            (200, _pod_with(lambda p: p["status"].update(conditions={"Ready": "True"}))),
            "has status.conditions as an object, where a list was expected",
        ),
        (
            (200, _pod_with(lambda p: p["status"].update(containerStatuses=["web"]))),
            "has status.containerStatuses[0] as a string, where an object was expected",
        ),
        (
            (200, _pod_with(lambda p: _container(p).update(state="running"))),
            "has status.containerStatuses[0].state as a string, where an object was expected",
        ),
        (
            (200, _pod_with(lambda p: _container(p).update(lastState={"terminated": "OOM"}))),
            "has status.containerStatuses[0].lastState.terminated as a string",
        ),
        (
            (200, _pod_with(lambda p: _container(p).update(restartCount="3"))),
            "has status.containerStatuses[0].restartCount as a string, where a number",
        ),
        (
            (200, _pod_with(lambda p: p.update(metadata="web"))),
            "has metadata as a string, where an object was expected",
        ),
    ],
)
def test_an_answer_that_is_not_the_documented_json_names_what_is_wrong(
    cluster: Cluster, answer: tuple[Any, ...], message: str
) -> None:
    cluster.answer = answer
    with pytest.raises(KubernetesError) as caught:
        run(cluster.check())
    assert message in str(caught.value)
    assert not isinstance(caught.value, PodNotRunning)


def test_a_garbled_answer_makes_the_pod_unavailable_and_checking_goes_on(
    cluster: Cluster, clock: FakeClock
) -> None:
    cluster.answer = (200, _pod_with(lambda p: p["status"].update(containerStatuses=5)))

    async def scenario() -> list[tuple[ResourceStatus | None, str | None]]:
        manager = ResourceManager("team", check_interval=10, clock=clock)
        manager.register(ResourceType.K8S_POD, "web", cluster.check(), success_threshold=1)
        seen = []
        for _ in range(2):
            await manager.check_now()
            state = manager.state("k8s_pod", "web")
            seen.append((state.status, state.last_error))
            cluster.answer = None
        return seen

    first, second = asyncio.run(scenario())
    assert first == (
        ResourceStatus.UNAVAILABLE,
        "KubernetesError: the API server's answer for pod shop/web-7d4b9c6f5-x2x9z has "
        "status.containerStatuses as a number, where a list was expected",
    )
    assert second == (ResourceStatus.HEALTHY, None)


# -- the in-cluster environment ----------------------------------------------------------------


def test_defaults_come_from_the_pods_environment(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(cluster.server.port))
    monkeypatch.setenv("HOSTNAME", "web-7d4b9c6f5-x2x9z")
    check = pod_check(
        token_path=cluster.account / "token",
        ca_path=cluster.account / "ca.crt",
        namespace_path=cluster.account / "namespace",
    )
    assert (check.namespace, check.pod) == ("shop", "web-7d4b9c6f5-x2x9z")
    assert run(check).status is None


def test_outside_a_pod_the_missing_variable_is_named(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="KUBERNETES_SERVICE_HOST is not set"):
        cluster.check(host=None)


def test_a_bad_port_variable_is_named(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "https")
    with pytest.raises(
        ValueError,
        match="environment variable KUBERNETES_SERVICE_PORT must be a port number, got 'https'",
    ):
        cluster.check(port=None)


def test_a_bad_hostname_variable_is_named(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTNAME", "Web_1")
    with pytest.raises(
        ValueError, match="environment variable HOSTNAME must be a Kubernetes pod name"
    ):
        cluster.check(pod=None)


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("token", "the service account token .*token cannot be read"),
        ("ca.crt", r"the cluster CA .*ca\.crt cannot be loaded"),
        (
            "namespace",
            "no namespace= given and the pod's namespace file .*namespace cannot be read",
        ),
    ],
)
def test_missing_credentials_are_named_at_construction(
    cluster: Cluster, file: str, message: str
) -> None:
    (cluster.account / file).unlink()
    with pytest.raises(ValueError, match=message):
        cluster.check()


def test_a_ca_file_that_is_not_a_certificate_is_refused(cluster: Cluster) -> None:
    (cluster.account / "ca.crt").write_text("not a certificate")
    with pytest.raises(ValueError, match=r"the cluster CA .* cannot be loaded"):
        cluster.check()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"namespace": "Shop"}, ValueError, "namespace must be a Kubernetes namespace name"),
        ({"pod": "a/b"}, ValueError, "pod must be a Kubernetes pod name, got 'a/b'"),
        ({"port": 0}, ValueError, "port must be 1-65535, got 0"),
        ({"port": "443"}, TypeError, "port must be an integer"),
        ({"host": "user@host"}, ValueError, "host must be a host name or address"),
    ],
)
def test_bad_arguments(cluster: Cluster, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        cluster.check(**kwargs)
