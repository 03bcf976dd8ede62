"""A throwaway ``redis-server`` for the tests: free port, 127.0.0.1 only, no persistence.

``start()`` returns a running :class:`RedisServer` (``.port``, ``.stop()``) or raises
``RedisUnavailable`` saying why (no binary, no redis-py, it did not answer within 5 s). Whether
that skips or fails is the fixture's decision (``BUTTRESS_REQUIRE_REDIS=1`` makes it fail).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

STARTUP_SECONDS = 5.0


class RedisUnavailable(RuntimeError):
    """No Redis server could be started for the tests."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="buttress-redis-")
        self._log = Path(self._dir.name) / "redis.log"
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", str(self._log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip

    def wait_ready(self) -> None:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + STARTUP_SECONDS
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisUnavailable(
                        f"redis-server exited with {self.process.returncode}: {self._tail()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RedisUnavailable(
                        f"redis-server on port {self.port} did not answer PING within "
                        f"{STARTUP_SECONDS:g} s: {self._tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _tail(self) -> str:
        stderr = b""
        if self.process.poll() is not None and self.process.stderr is not None:
            stderr = self.process.stderr.read() or b""
        log = self._log.read_text(errors="replace") if self._log.exists() else ""
        return (stderr.decode(errors="replace") + log)[-600:] or "no output"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self._dir.cleanup()


def start() -> RedisServer:
    try:
        import redis  # noqa: F401
    except ImportError:
        raise RedisUnavailable(
            "redis-py is not installed (pip install 'buttress[redis]')"
        ) from None
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailable("no redis-server binary on PATH")
    server = RedisServer(binary)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def record_sent_commands(monkeypatch: Any) -> list[str]:
    """From now on (until ``monkeypatch`` is undone), the name of every command any redis-py
    connection sends, in order: what the client sent, whichever path it took."""
    import redis

    sent: list[str] = []
    send = redis.connection.Connection.send_packed_command

    def counting(conn: Any, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes | str) else command
        packed = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        sent.append(packed.split(b"\r\n")[2].decode().upper())  # *N, $len, NAME
        send(conn, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    return sent
