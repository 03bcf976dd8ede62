"""Run an ASGI app under a real uvicorn on a free loopback port, in a thread of the test process.

``with running(app) as base:`` yields ``"http://127.0.0.1:<port>"`` once uvicorn has started and
stops it (streams ended first, as ``buttress serve`` does) when the block ends. Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from buttress.server.serve import bind, serve_app


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(
    app: Any,
    *,
    manager: Any = None,
    background: Callable[[], Any] | None = None,
    secrets: tuple[str, ...] = (),
    log_level: str = "warning",
) -> Iterator[str]:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    servers: list[Any] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(
                serve_app(
                    app,
                    sock,
                    manager=manager,
                    background=background,
                    log_level=log_level,
                    access_log=True,
                    secrets=secrets,
                    started=servers.append,
                )
            )
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    thread = threading.Thread(target=main, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    while not (servers and servers[0].started):
        if failure or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start: {failure!r}")
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start within 10 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        servers[0].should_exit = True
        thread.join(timeout=15.0)
        sock.close()
    if thread.is_alive():
        raise RuntimeError("uvicorn did not stop within 15 s")
    if failure:
        raise failure[0]
