"""A real HTTP dependency with a capacity, for the adaptive concurrency tests and benchmark.

``capacity_server(capacity, service)`` starts this file as a subprocess: an asyncio HTTP/1.1 server
on 127.0.0.1 (a free port, keep-alive) where ``GET /work`` takes ``service`` seconds while at most
``capacity`` requests are inside, and proportionally longer beyond (``service * inside /
capacity``: the requests over the capacity queue in the server and everyone's latency grows with
the queue, as in a saturated thread pool or database). ``GET /capacity/<k>`` changes the capacity at
run time. ``Client`` is a keep-alive connection speaking just enough HTTP to call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Dependency:
    port: int

    async def set_capacity(self, capacity: int) -> None:
        client = await Client.open(self.port)
        try:
            await client.get(f"/capacity/{capacity}")
        finally:
            client.close()


@contextlib.contextmanager
def capacity_server(capacity: int, service: float) -> Iterator[Dependency]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, __file__, str(port), str(capacity), str(service)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"capacity server did not start: {line!r}")
        yield Dependency(port)
    finally:
        process.terminate()
        process.wait(10)


class Client:
    """One keep-alive connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, path: str = "/work") -> bytes:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        return await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _serve(port: int, capacity: int, service: float) -> None:
    state = {"capacity": capacity, "inside": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if path.startswith("/capacity/"):
                    state["capacity"] = int(path.rsplit("/", 1)[1])
                else:
                    state["inside"] += 1
                    try:
                        await asyncio.sleep(service * max(1.0, state["inside"] / state["capacity"]))
                    finally:
                        state["inside"] -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
