"""A real MCP server built with the MCP Python SDK, and the harness the MCP monitor tests use.

Run as a program it serves one tool (``add``) over stdio (``python mcp_server.py stdio``) or
streamable HTTP on a listening socket it inherits (``python mcp_server.py http --fd N``; the test
binds the port first, so the server is reachable the moment it starts and a restart reuses the
port). Its behaviour comes from the environment:

- ``MCP_TEST_NAME``: the name it reports (default ``buttress-test``); version ``1.2.3``.
- ``MCP_TEST_ON_PING``: ``hang`` (never answer a ping) or ``exit`` (exit with code 3 inside it);
  with ``MCP_TEST_FAULT_FILE``, only while that file exists (a fault that goes away).
- ``MCP_TEST_MODERN_ONLY=1``: refuse the ``initialize`` handshake the way a server that speaks
  only protocol 2026-07-28 does (error -32022 naming the versions it supports).
- ``MCP_TEST_LINGER=1``: keep running for a minute after stdin closed (a server slow to exit).
- ``MCP_TEST_FAIL_START=1``: print ``startup failed: token <API_TOKEN> refused`` to stderr (the
  value of ``API_TOKEN``, as a careless server might) and exit 1 at once.
- ``MCP_TEST_NOTIFY``: a unix socket path; the server sends ``started <pid>`` there when it starts
  and ``ping <pid>`` when a ping reaches it, so a test waits for those moments instead of sleeping.

The harness part (``HttpServer``, ``Notifications``) imports only the standard library.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPT = str(Path(__file__).resolve())
STOP_SECONDS = 5.0


def _notify(event: str) -> None:
    path = os.environ.get("MCP_TEST_NOTIFY")
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(f"{event} {os.getpid()}\n".encode())


def _build_server() -> Any:
    from mcp.server.mcpserver import MCPServer
    from mcp.shared.exceptions import MCPError
    from mcp_types import UNSUPPORTED_PROTOCOL_VERSION

    on_ping = os.environ.get("MCP_TEST_ON_PING", "")
    fault_file = os.environ.get("MCP_TEST_FAULT_FILE")
    modern_only = os.environ.get("MCP_TEST_MODERN_ONLY") == "1"

    def faulty() -> bool:
        return fault_file is None or os.path.exists(fault_file)

    async def behaviour(ctx: Any, call_next: Any) -> Any:
        if ctx.method == "initialize" and modern_only:
            raise MCPError(
                UNSUPPORTED_PROTOCOL_VERSION,
                "this server speaks only 2026-07-28",
                data={"supported": ["2026-07-28"], "requested": "handshake"},
            )
        if ctx.method == "ping" and on_ping and faulty():
            _notify("ping")
            if on_ping == "exit":
                os._exit(3)
            if on_ping == "hang":
                await asyncio.Event().wait()
        return await call_next(ctx)

    server = MCPServer(
        os.environ.get("MCP_TEST_NAME", "buttress-test"), version="1.2.3", middleware=[behaviour]
    )

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server


def main(argv: list[str]) -> None:
    if os.environ.get("MCP_TEST_FAIL_START") == "1":
        token = os.environ.get("API_TOKEN")
        print(f"startup failed: token {token} refused", file=sys.stderr, flush=True)
        raise SystemExit(1)
    server = _build_server()
    _notify("started")
    if argv[:1] == ["stdio"]:
        server.run("stdio")
        if os.environ.get("MCP_TEST_LINGER") == "1":
            time.sleep(60)
    elif argv[:2] == ["http", "--fd"] and len(argv) == 3:
        import anyio
        import uvicorn

        listener = socket.socket(fileno=int(argv[2]))
        app = server.streamable_http_app(host="127.0.0.1")
        web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        anyio.run(web.serve, [listener])
    else:
        raise SystemExit("usage: mcp_server.py stdio | http --fd N")


# --- the harness -------------------------------------------------------------------------------


class Notifications:
    """A unix socket servers report ``started``/``ping`` to; ``await next(event)`` -> its pid."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self._events: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Notifications:
        self._server = await asyncio.start_unix_server(self._accept, path=self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().split()
        writer.close()
        if len(line) == 2:
            self._events.put_nowait((line[0], int(line[1])))

    async def next(self, event: str, *, within: float = 30.0) -> int:
        """The pid of the next server that reports ``event`` (others are skipped)."""

        async def wait() -> int:
            while True:
                name, pid = await self._events.get()
                if name == event:
                    return pid

        return await asyncio.wait_for(wait(), within)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HttpServer:
    """The test server over streamable HTTP on 127.0.0.1, killable, pausable and restartable.

    ``start()`` binds the port in this process and hands the listening socket to the child, so
    the URL accepts connections as soon as ``start()`` returns; this process keeps no copy, so a
    killed server refuses connections until ``start()`` binds the same port again.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            fd = listener.fileno()
            self.process = subprocess.Popen(
                [sys.executable, SCRIPT, "http", "--fd", str(fd)],
                pass_fds=[fd],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            listener.close()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and reap (a stopped server dies too)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(STOP_SECONDS)

    def __enter__(self) -> HttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


if __name__ == "__main__":
    main(sys.argv[1:])
