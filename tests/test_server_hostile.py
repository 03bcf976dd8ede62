"""The operator endpoints given bad and hostile requests, over raw sockets to a real uvicorn, on
their own and mounted under a prefix: each gets a clear 4xx (or the documented answer), never a
500, a hang, a traceback in the log or a secret."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from buttress import ResilienceManager
from buttress.degradation import DegradationManager
from buttress.server import _hub, create_app
from buttress.server._hub import Client, Hub
from server_helpers import running

TOKEN = "Hostile-s3cret-token-1"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


class Served:
    def __init__(self, base: str, prefix: str, hub: Hub, records: list[logging.LogRecord]):
        self.base = base
        self.port = int(base.rsplit(":", 1)[1])
        self.prefix = prefix
        self.hub = hub
        self.records = records

    def exchange(self, request: bytes) -> bytes:
        """Send ``request`` (``{p}`` is the prefix) and read the answer until the server closes
        the connection (bounded: a hang fails the test)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(request.replace(b"{p}", self.prefix.encode()))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer

    def log(self) -> str:
        return "\n".join(f"{r.levelname} {r.getMessage()} {r.exc_info}" for r in self.records)


def team(name: str) -> ResilienceManager:
    return ResilienceManager(
        name,
        {"check_interval": 60},
        degradation=DegradationManager(name=name, min_dwell=0),
        circuits=[],
    )


@pytest.fixture(params=["", "/resilience"], ids=["root", "mounted"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    prefix: str = request.param
    manager = team(f"server-hostile{prefix.replace('/', '-')}")
    app = create_app(manager, token=TOKEN, heartbeat=60, state_interval=0.01, max_age=0.01)
    hub: Hub = app.state.buttress_hub
    outer = Starlette(routes=[Mount(prefix, app)]) if prefix else app
    records: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = records.append  # type: ignore[method-assign]
    names = ("uvicorn.access", "uvicorn.error", "buttress.server")
    try:
        with running(outer, manager=manager, secrets=(TOKEN,), log_level="info") as base:
            # uvicorn sets its loggers up as it starts: listen to them after that.
            for name in names:
                logging.getLogger(name).addHandler(listener)
            yield Served(base, prefix, hub, records)
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(listener)
    assert [r.getMessage() for r in records if r.exc_info or r.levelno >= logging.ERROR] == []
    assert TOKEN not in "\n".join(r.getMessage() for r in records)


def head_and_body(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def get(path: str, *headers: bytes, method: bytes = b"GET") -> bytes:
    return (
        method
        + b" {p}"
        + path.encode()
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"".join(headers)
        + b"\r\n"
    )


@pytest.mark.parametrize("path", ["/live", "/health", "/ready", "/metrics", "/state", "/events"])
def test_head_answers_the_headers_and_ends(served: Served, path: str) -> None:
    status, headers, body = head_and_body(served.exchange(get(path, AUTH, method=b"HEAD")))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"]
    assert body in (b"", b"0\r\n\r\n")  # a stream's headers say chunked: at most its last chunk


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
def test_other_methods_get_405_with_allow(served: Served, method: bytes) -> None:
    for path in ("/live", "/health", "/ready", "/metrics", "/state", "/events", "/"):
        request = get(path, AUTH, b"Content-Length: 0\r\n", method=method)
        status, headers, body = head_and_body(served.exchange(request))
        assert status == "HTTP/1.1 405 Method Not Allowed", (method, path)
        assert set(headers["allow"].split(", ")) == {"GET", "HEAD"}
        assert body == b"Method Not Allowed"


@pytest.mark.parametrize(
    ("accept", "ietf"),
    [
        ("application/health+json", True),
        ("APPLICATION/Health+JSON", True),  # media types are case-insensitive
        ("application/health+json, application/json", True),
        ("application/health+json;q=0, application/json", False),  # q=0: not acceptable
        ("application/health+json;q=0", False),
        ("application/json, application/health+json;q=0.5", False),
        ("application/json;q=0.2, application/health+json;q=0.9", True),
        ("*/*;q=0.1, application/health+json", True),
        ("application/health+json;q=abc", False),
        ("application/health+json;q=7", False),
        ("text/html", False),
        (";;,,=,", False),
    ],
)
def test_health_follows_accept_and_its_q_values(served: Served, accept: str, ietf: bool) -> None:
    request = get("/health", AUTH, f"Accept: {accept}\r\n".encode())
    status, headers, body = head_and_body(served.exchange(request))
    assert status == "HTTP/1.1 200 OK"
    wanted = "application/health+json" if ietf else "application/json"
    assert headers["content-type"] == wanted
    assert (b'"checks"' in body) is ietf


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("application/openmetrics-text; version=abc", "text/plain; version=0.0.4"),
        ("text/plain; version=x.y", "text/plain; version=0.0.4"),
        ("application/openmetrics-text;q=0", "text/plain; version=0.0.4"),
        ("application/openmetrics-text;q=0, text/plain", "text/plain; version=0.0.4"),
        ("Application/OpenMetrics-Text; version=1.0.0", "application/openmetrics-text"),
        ("\u00ff\u00fe", "text/plain; version=0.0.4"),
    ],
)
def test_metrics_with_an_odd_accept_header_get_an_exposition(
    served: Served, accept: str, content_type: str
) -> None:
    request = get("/metrics", AUTH, b"Accept: " + accept.encode("latin-1") + b"\r\n")
    status, headers, body = head_and_body(served.exchange(request))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith(content_type)
    assert b"# TYPE" in body
    assert "ERROR" not in served.log()


def test_two_authorization_headers_are_refused_whichever_comes_first(served: Served) -> None:
    wrong = b"Authorization: Bearer nope\r\n"
    for pair in ((AUTH, wrong), (wrong, AUTH), (AUTH, AUTH)):
        for path in ("/state", "/health", "/events", "/"):
            status, _, body = head_and_body(served.exchange(get(path, *pair)))
            assert status == "HTTP/1.1 400 Bad Request", (path, pair)
            assert body == b'{"error":"bad request: more than one Authorization header"}'


@pytest.mark.parametrize("query", [f"token=nope&token={TOKEN}", f"token={TOKEN}&token=nope"])
def test_several_token_parameters_are_refused(served: Served, query: str) -> None:
    status, headers, body = head_and_body(served.exchange(get(f"/?{query}")))
    assert status == "HTTP/1.1 400 Bad Request"
    assert "set-cookie" not in headers
    assert body == b'{"error":"bad request: more than one token parameter"}'


@pytest.mark.parametrize(
    "query",
    ["token=%FF%FE", "token=%C3%A9", "token=", "token", "token=" + "a" * 12000, "x=1&" * 3000],
)
def test_a_bad_or_overlong_token_parameter_is_unauthorized(served: Served, query: str) -> None:
    status, headers, _ = head_and_body(served.exchange(get(f"/?{query}")))
    assert status == "HTTP/1.1 401 Unauthorized"
    assert "set-cookie" not in headers


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer\r\n",
        b"Authorization: Bearer \xff\xfe\r\n",
        b"Authorization: Basic dXNlcjpwYXNz\r\n",
        b"Authorization: Bearer " + b"a" * 12000 + b"\r\n",
        b"Cookie: buttress_token=\xff\xfe; x=1\r\n",
        b"Cookie: buttress_token=" + TOKEN.encode() + b"\r\n",  # the token is not the cookie
        b"Cookie: ;;==;buttress_token\r\n",
    ],
)
def test_a_malformed_credential_is_unauthorized(served: Served, header: bytes) -> None:
    status, headers, body = head_and_body(served.exchange(get("/state", header)))
    assert status == "HTTP/1.1 401 Unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    assert body.startswith(b'{"error":"unauthorized')


@pytest.mark.parametrize(
    "path",
    [
        "/static/../_app.py",
        "/static/%2e%2e/_app.py",
        "/static/..%2f_app.py",
        "/static/%2e%2e%2f%2e%2e%2f__init__.py",
        "/static/..%5c_app.py",
        "/static/%2e%2e%5c_app.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/index.html%00.png",
        "/static/%ff",
    ],
)
def test_static_paths_never_leave_the_static_directory(served: Served, path: str) -> None:
    status, _, body = head_and_body(served.exchange(get(path, AUTH)))
    assert status == "HTTP/1.1 404 Not Found"
    assert b"import" not in body
    assert b"root:" not in body


def test_an_overlong_path_is_logged_cut(served: Served) -> None:
    path = "/state?" + "&".join(f"k{i}=" + "v" * 40 for i in range(300))
    status, _, _ = head_and_body(served.exchange(get(path, AUTH)))
    assert status == "HTTP/1.1 200 OK"
    (line,) = [r.getMessage() for r in served.records if "GET" in r.getMessage()]
    assert len(line) < 700
    assert "more characters)" in line


def test_event_streams_are_capped(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hub, "MAX_STREAMS", 3)
    streams = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            streams.append(sock)
            sock.sendall(b"GET " + served.prefix.encode() + b"/events HTTP/1.1\r\nHost: x\r\n")
            sock.sendall(AUTH + b"\r\n")
            first = b""
            while b"event: state" not in first:  # subscribed: its first frame came
                first += sock.recv(65536)
        assert len(served.hub.clients) == 3
        status, headers, body = head_and_body(served.exchange(get("/events", AUTH)))
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert headers["retry-after"] == "5"
        assert b"poll /state" in body
        assert len(served.hub.clients) == 3
    finally:
        for sock in streams:
            sock.close()


def until(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
    return value


def test_a_client_gone_mid_stream_is_let_go_quietly(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(get("/events", AUTH).replace(b"{p}", served.prefix.encode()))
        first = b""
        while b"event: state" not in first:
            first += sock.recv(65536)
    until(lambda: not served.hub.clients)
    assert "ERROR" not in served.log()


def test_a_pending_state_frame_is_replaced_not_queued() -> None:
    # A client whose send waits (it does not read) holds one state frame, however often the
    # state changes meanwhile, besides its bounded buffer of events.
    client = Client()
    client.put(b"event: A\n\n")
    client.put_state(b"event: state\ndata: 1\n\n")
    client.put_state(b"event: state\ndata: 2\n\n")
    client.put(b"event: B\n\n")
    assert client.take() == [b"event: A\n\n", b"event: B\n\n", b"event: state\ndata: 2\n\n"]
    assert client.take() == []
