"""Local stand-ins for the outside services the examples call, on 127.0.0.1 only.

``Service`` is a real HTTP server (standard library, a thread, a free loopback port) whose answers
follow a script: each route is given a list of answers (status, JSON body, headers) played in
order, the last one repeating. ``ServiceClient`` is the small synchronous client the examples'
``factor_api``, ``erp_api``... objects are made of; ``AsyncServiceClient`` is its asyncio twin.
A failed answer raises ``ServiceError`` (carrying ``retry_after`` from a ``Retry-After`` header,
which buttress's retry honours); a refused connection raises ``ConnectionError`` as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]


class ServiceError(ConnectionError):
    """The stand-in answered with an error status."""

    def __init__(self, status: int, body: Any, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.retry_after = retry_after


class Service:
    """An HTTP server on 127.0.0.1 answering each route from its script."""

    def __init__(self, **routes: list[Answer]) -> None:
        self.scripts = {f"/{name}": list(answers) for name, answers in routes.items()}
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def script(self, route: str, *answers: Answer) -> None:
        """Replace what ``route`` answers from now on."""
        with self._lock:
            self.scripts[f"/{route}"] = list(answers)

    def _next(self, path: str) -> Answer:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            script = self.scripts.get(path)
            if not script:
                return (404, {"error": f"no route {path}"})
            return script.pop(0) if len(script) > 1 else script[0]

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                answer = service._next(self.path.split("?", 1)[0])
                status, body = answer[0], answer[1]
                headers = answer[2] if len(answer) > 2 else {}  # type: ignore[misc]
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the examples print what matters

        return Handler

    def __enter__(self) -> Service:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _query(args: tuple[Any, ...]) -> str:
    return "?" + "&".join(urllib.parse.quote(str(a)) for a in args) if args else ""


def _raise_for(status: int, body: Any, headers: Any) -> None:
    if status >= 400:
        retry_after = headers.get("Retry-After")
        raise ServiceError(status, body, float(retry_after) if retry_after else None)


class ServiceClient:
    """A synchronous client of one route per method: ``client.get("steel")`` GETs ``/get``."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url, self.timeout = url, timeout

    def request(self, route: str, *args: Any) -> Any:
        query = _query(args)
        try:
            with urllib.request.urlopen(f"{self.url}/{route}{query}", timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as error:
            _raise_for(error.code, json.loads(error.read() or b"null"), error.headers)
            raise

    def __getattr__(self, route: str) -> Any:
        if route.startswith("_"):
            raise AttributeError(route)
        return lambda *args: self.request(route, *args)


class AsyncServiceClient:
    """The asyncio twin of :class:`ServiceClient` (a raw HTTP/1.1 request per call)."""

    def __init__(self, url: str) -> None:
        self.url = url
        host_port = url.removeprefix("http://")
        host, port = host_port.split(":")
        self.host, self.port = host, int(port)

    async def request(self, route: str, *args: Any) -> Any:
        query = _query(args)
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(
                f"GET /{route}{query} HTTP/1.1\r\nHost: {self.host}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:])
        parsed = json.loads(body or b"null")
        _raise_for(status, parsed, headers)
        return parsed

    def __getattr__(self, route: str) -> Any:
        if route.startswith("_"):
            raise AttributeError(route)

        async def call(*args: Any) -> Any:
            return await self.request(route, *args)

        return call


@contextlib.contextmanager
def service(**routes: list[Answer]) -> Iterator[Service]:
    with Service(**routes) as running:
        yield running
