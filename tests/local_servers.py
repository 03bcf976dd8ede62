"""Real local servers for the network, Docker and Kubernetes checks.

``serve(routes)`` runs a standard-library HTTP server on 127.0.0.1 (a free port), on a unix socket
(``unix_socket=``) or with TLS (``tls=``), in a daemon thread, until the context exits. ``routes``
maps a request path to a function of the :class:`Request` returning ``(status, body)`` or
``(status, body, headers)``; a dict or list body is sent as JSON. Every request is recorded in
``server.requests``.

``make_certificates(directory)`` creates a CA and a server certificate for 127.0.0.1 with the
``openssl`` command line (skips the test when it is missing).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names, the last of repeated ones
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], tuple[Any, ...]]


@dataclass
class Server:
    host: str = "127.0.0.1"
    port: int = 0
    unix_socket: str | None = None
    requests: list[Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _handler_class(routes: dict[str, Handler], server: Server) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            raw = list(self.headers.items())
            request = Request("GET", self.path, {k.lower(): v for k, v in raw}, raw)
            server.requests.append(request)
            route = routes.get(self.path.split("?", 1)[0])
            answer: tuple[Any, ...] = (404, {"message": "page not found"})
            if route is not None:
                answer = route(request)
            status, body = answer[0], answer[1]
            headers = answer[2] if len(answer) > 2 else {}
            if isinstance(body, dict | list):
                payload = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **headers}
            else:
                payload = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            with contextlib.suppress(OSError):  # the check may close before reading the body
                self.wfile.write(payload)
            self.close_connection = True

        def address_string(self) -> str:  # a unix socket's peer has no address
            return "local"

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, _ = self.socket.accept()
        return sock, ("local", 0)


class _TcpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client refusing the test certificate is what some tests want


@contextlib.contextmanager
def serve(
    routes: dict[str, Handler],
    *,
    unix_socket: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Server]:
    server = Server(unix_socket=unix_socket)
    handler = _handler_class(routes, server)
    httpd: socketserver.BaseServer
    if unix_socket is not None:
        httpd = _UnixServer(unix_socket, handler)
    else:
        tcp = _TcpServer(("127.0.0.1", 0), handler)
        if tls is not None:
            # the handshake happens on first read, in the request's thread, not in accept()
            tcp.socket = tls.wrap_socket(
                tcp.socket, server_side=True, do_handshake_on_connect=False
            )
        server.port = tcp.server_address[1]
        httpd = tcp
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_certificates(directory: Path) -> Certificates:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost it signed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        directory / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *curve, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=buttress test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    run("req", *curve, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(extensions))  # fmt: skip
    return Certificates(ca=ca, cert=cert, key=key)
