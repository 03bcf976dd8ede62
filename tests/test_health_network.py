"""TCP and HTTP(S) checks against real servers on 127.0.0.1 (standard-library ``http.server``)."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from pathlib import Path

import pytest

from buttress.health.network import HTTPStatusError, http_check, tcp_check
from buttress.health.types import ResourceStatus
from buttress.testing import FakeClock
from local_servers import Request, closed_port, make_certificates, serve


def run(check):
    return asyncio.run(check())


def ok(request: Request) -> tuple[int, str]:
    return 200, "ok"


def broken(request: Request) -> tuple[int, str]:
    return 500, "boom"


# -- TCP ----------------------------------------------------------------------------------------


def test_tcp_connects_to_a_listening_port() -> None:
    with serve({"/": ok}) as server:
        check = tcp_check("127.0.0.1", server.port)
        reading = run(check)
    assert reading.status is None
    assert reading.detail["address"] == f"127.0.0.1:{server.port}"
    assert check.target == f"tcp 127.0.0.1:{server.port}"


def test_tcp_to_a_closed_port_raises() -> None:
    port = closed_port()
    with pytest.raises(ConnectionRefusedError):
        run(tcp_check("127.0.0.1", port))


@pytest.mark.parametrize(
    ("host", "port", "error", "message"),
    [
        ("", 80, ValueError, "host must be a host name or address, got ''"),
        ("a b", 80, ValueError, "host must be"),
        (None, 80, TypeError, "host must be a host name or address, got None"),
        ("127.0.0.1", 0, ValueError, "port must be >= 1, got 0"),
        ("127.0.0.1", 70000, ValueError, "port must be <= 65535, got 70000"),
        ("127.0.0.1", "80", TypeError, "port must be an integer, got '80'"),
        ("127.0.0.1", True, TypeError, "port must be an integer"),
    ],
)
def test_tcp_bad_arguments(host, port, error, message) -> None:
    with pytest.raises(error, match=message):
        tcp_check(host, port)


# -- HTTP -----------------------------------------------------------------------------------------


def test_http_200_is_healthy() -> None:
    with serve({"/health": ok}) as server:
        check = http_check(f"{server.url}/health?verbose=1", latency_budget=30)
        reading = run(check)
    assert reading.status is None
    assert reading.detail["status_code"] == 200
    assert check.target == f"GET {server.url}/health?verbose=1"
    assert server.requests[0].path == "/health?verbose=1"
    assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"


def test_http_500_raises_with_status_and_url() -> None:
    with serve({"/health": broken}) as server, pytest.raises(HTTPStatusError) as caught:
        run(http_check(f"{server.url}/health"))
    assert caught.value.status == 500
    assert str(caught.value) == (
        f"HTTP 500 Internal Server Error from {server.url}/health (expected 200)"
    )


def test_expected_statuses_can_be_several() -> None:
    with serve({"/health": broken, "/ok": ok}) as server:
        assert run(http_check(f"{server.url}/health", expect_status={200, 500})).status is None
        assert run(http_check(f"{server.url}/nothing", expect_status=404)).status is None
        with pytest.raises(HTTPStatusError, match=r"\(expected 204 or 503\)"):
            run(http_check(f"{server.url}/ok", expect_status=[503, 204]))


def test_a_slow_answer_over_the_budget_is_degraded(clock: FakeClock) -> None:
    def slow(request: Request) -> tuple[int, str]:
        clock.advance(1.5)  # the server takes 1.5 s (virtual) to answer
        return 200, "ok"

    with serve({"/slow": slow, "/ok": ok}) as server:
        reading = run(http_check(f"{server.url}/slow", latency_budget=1.0))
        fast = run(http_check(f"{server.url}/ok", latency_budget=1.0))
    assert reading.status is ResourceStatus.DEGRADED
    assert reading.message == "answered in 1.500 s, over the 1 s budget"
    assert reading.detail["latency_ms"] == 1500.0
    assert fast.status is None


def test_a_hanging_server_does_not_hold_a_cancelled_check() -> None:
    arrived, release = threading.Event(), threading.Event()

    def hang(request: Request) -> tuple[int, str]:
        arrived.set()
        release.wait(10)
        return 200, "late"

    with serve({"/hang": hang}) as server:
        check = http_check(f"{server.url}/hang")

        async def main() -> None:
            task = asyncio.ensure_future(check())
            assert await asyncio.to_thread(arrived.wait, 10)  # the request reached the server
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        try:
            asyncio.run(main())
        finally:
            release.set()


def test_closed_port_raises_connection_refused() -> None:
    with pytest.raises(ConnectionRefusedError):
        run(http_check(f"http://127.0.0.1:{closed_port()}/health"))


def test_a_server_that_is_not_http_is_a_clear_error() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(ConnectionError, match=r"not an HTTP/1\.x status line: 'SSH-2\.0"):
            run(http_check(f"http://127.0.0.1:{port}/"))
    finally:
        thread.join(5)
        listener.close()


def test_custom_headers_and_basic_auth_from_the_url_reach_the_server() -> None:
    with serve({"/health": ok}) as server:
        url = f"http://monitor:s3cr%40t@127.0.0.1:{server.port}/health"
        check = http_check(url, headers={"X-Probe": "buttress", "accept": "text/plain"})
        run(check)
    sent = server.requests[0].headers
    assert sent["x-probe"] == "buttress"
    assert sent["user-agent"] == "buttress-health"
    accept = [value for name, value in server.requests[0].raw_headers if name.lower() == "accept"]
    assert accept == ["text/plain"]  # replaces the default, not added to it
    assert sent["authorization"] == "Basic " + base64.b64encode(b"monitor:s3cr@t").decode()
    assert "s3cr" not in check.target
    assert "s3cr" not in repr(check)
    assert check.target == f"GET http://monitor:***@127.0.0.1:{server.port}/health"


def test_a_password_never_appears_in_a_failure() -> None:
    with serve({"/health": broken}) as server:
        check = http_check(f"http://monitor:hunter2@127.0.0.1:{server.port}/health")
        with pytest.raises(HTTPStatusError) as caught:
            run(check)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="cannot be parsed") as bad:
        http_check("http://monitor:hunter2@127.0.0.1:port/health")
    assert "hunter2" not in str(bad.value)


def test_https_with_a_private_ca(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    with serve({"/health": ok}, tls=certs.server_context()) as server:
        url = f"https://127.0.0.1:{server.port}/health"
        reading = run(http_check(url, ssl_context=certs.client_context()))
        assert reading.detail["status_code"] == 200
        # the default context does not trust the private CA
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            run(http_check(url))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/", "url must start with http:// or https://, got 'ftp://example.com/'"),
        ("example.com/health", "url must start with http:// or https://"),
        ("http:///health", "url has no host: 'http:///health'"),
        ("http://example.com:99999/", r"url 'http://example.com:99999/' cannot be parsed"),
        ("http://example.com:abc/", "cannot be parsed"),
        ("http://exa mple.com/", "url contains whitespace"),
    ],
)
def test_bad_urls_are_refused_at_construction(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        http_check(url)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"expect_status": 99}, ValueError, r"HTTP status codes \(100-599\), got 99"),
        ({"expect_status": []}, ValueError, "at least one status code"),
        ({"expect_status": "200"}, TypeError, "expect_status must be a status code"),
        ({"expect_status": [200, True]}, TypeError, "expect_status must hold integers, got True"),
        ({"latency_budget": -1}, ValueError, "latency_budget must be >= 0, got -1"),
        ({"headers": {"X-A": "1\r\nX-B: 2"}}, ValueError, "contains a line break"),
        ({"headers": {"Bad Name": "1"}}, ValueError, "invalid header name 'Bad Name'"),
        ({"headers": [("a", "b")]}, TypeError, "headers must be a mapping"),
        ({"headers": {"Connection": "keep-alive"}}, ValueError, "may not set 'Connection'"),
        ({"ssl_context": "yes"}, TypeError, "ssl_context must be an ssl.SSLContext"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        http_check("https://example.com/health", **kwargs)


def test_ssl_context_for_plain_http_is_refused() -> None:
    import ssl

    with pytest.raises(ValueError, match="ssl_context is for https:// URLs"):
        http_check("http://example.com/", ssl_context=ssl.create_default_context())
