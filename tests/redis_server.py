"""A throwaway ``redis-server`` for the tests: free port, 127.0.0.1 only, no persistence.

``start()`` returns a running :class:`RedisServer` (``.port``, ``.dir``, ``.stop()``) or raises
``RedisUnavailable`` saying why (no binary, no redis-py, it did not answer within 5 s). Whether
that skips or fails is the fixture's decision (``BUTTRESS_REQUIRE_REDIS=1`` makes it fail).
``commands_sent(port)`` records what the server runs meanwhile, whoever sends it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STARTUP_SECONDS = 5.0


class RedisUnavailable(RuntimeError):
    """No Redis server could be started for the tests."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, binary: str, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="buttress-redis-")
        self.dir = Path(self._dir.name)
        self._log = self.dir / "redis.log"
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", str(self._log),
                *extra,
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


def start(*extra: str, port: int | None = None) -> RedisServer:
    """A running redis-server (on ``port``, else a free one); ``extra`` are more options."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise RedisUnavailable(
            "redis-py is not installed (pip install 'buttress[redis]')"
        ) from None
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailable("no redis-server binary on PATH")
    server = RedisServer(binary, *extra, port=port)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def commands_sent(port: int) -> Iterator[list[tuple[str, str]]]:
    """``(sender, NAME)`` of every command the server on ``port`` runs inside the block, in order:
    ``sender`` is ``"lua"`` for a command a script issued, else the client's address (MONITOR)."""
    import redis

    control = redis.Redis(port=port)
    stopper = redis.Redis(port=port)
    stopper.ping()  # connected (and introduced) before the recording starts
    ready = threading.Event()
    seen: list[tuple[str, str]] = []
    stopper_address = stopper.client_info()["addr"]

    def watch() -> None:
        with control.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if event["command"] == "ECHO commands-sent-stop":
                    return
                sender = event["client_type"]
                if sender != "lua":
                    sender = f"{event['client_address']}:{event['client_port']}"
                seen.append((sender, event["command"].split(" ", 1)[0].upper()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    ready.wait(5)
    deadline = time.monotonic() + 5  # MONITOR is on once it reports the stopper's PING
    while not seen and time.monotonic() < deadline:
        stopper.ping()
        time.sleep(0.01)
    seen.clear()
    try:
        yield seen
    finally:
        stopper.echo("commands-sent-stop")
        watcher.join(10)
        control.close()
        stopper.close()
        seen[:] = [(who, cmd) for who, cmd in seen if who != stopper_address]
