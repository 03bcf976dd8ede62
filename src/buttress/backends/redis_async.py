"""Async Redis decisions on one pipelined connection per event loop.

Theory of operation
-------------------
redis-py's asyncio client gives every concurrent command its own pooled connection: 200 tasks
asking at once open 200 sockets, and each command pays the pool's bookkeeping. A rate-limit
decision is one short ``EVALSHA`` whose reply Redis sends back in order, so :class:`AsyncLane`
keeps ONE connection per event loop and pipelines: a caller writes its command and waits on a
future; one reader task parses replies (RESP2) and resolves the futures first in, first out.

* Cancellation: a cancelled caller's future is skipped when its reply arrives; the stream stays in
  step.
* Timeouts: a reply that does not come within ``socket_timeout`` means the server is slow or
  gone; the connection is closed and every pending caller gets ``redis.exceptions.TimeoutError``
  (the policies treat it as a store fault). The next call reconnects.
* ``NOSCRIPT`` (a restarted server): the script is loaded again and the call retried once.

Errors are redis-py's exception types, so callers handle both paths alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

from .redis import _pack_evalsha, _require_redis

__all__ = ["AsyncLane"]


class AsyncLane:
    """One event loop's pipelined connection to the Redis server at ``url``.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS).
        connect_timeout / socket_timeout: seconds to connect / to wait for a reply.
    """

    def __init__(self, url: str, *, connect_timeout: float, socket_timeout: float) -> None:
        _require_redis()
        parts = urlsplit(url)
        self.tls = parts.scheme == "rediss"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.lstrip("/") or 0)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._reading: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> asyncio.StreamWriter:
        import redis.exceptions as rx

        async with self._connecting:
            if self._writer is not None:
                return self._writer
            try:
                async with asyncio.timeout(self.connect_timeout):
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, ssl=True if self.tls else None
                    )
                    setup: list[list[str]] = []
                    if self.password is not None:
                        auth = [self.username, self.password] if self.username else [self.password]
                        setup.append(["AUTH", *auth])
                    if self.db:
                        setup.append(["SELECT", str(self.db)])
                    for command in setup:
                        writer.write(_pack(command))
                        reply = await _read_reply(reader)
                        if isinstance(reply, rx.ResponseError):
                            writer.close()
                            raise reply
            except (OSError, TimeoutError) as exc:
                raise rx.ConnectionError(
                    f"cannot connect to Redis at {self.host}:{self.port}: {exc!r}"
                ) from exc
            self._reader, self._writer = reader, writer
            self._reading = asyncio.get_running_loop().create_task(self._read_replies(reader))
            return writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        import redis.exceptions as rx

        try:
            while True:
                reply = await _read_reply(reader)
                if not self._pending:
                    raise rx.ConnectionError("Redis sent a reply nobody asked for")
                future = self._pending.popleft()
                if future.done():
                    continue  # its caller was cancelled or timed out
                if isinstance(reply, rx.ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc if isinstance(exc, rx.RedisError) else rx.ConnectionError(repr(exc))
            self._fail_all(error, reader)

    def _fail_all(self, error: BaseException, reader: asyncio.StreamReader | None) -> None:
        """Drop the connection read by ``reader`` (if still current) and fail its callers."""
        if reader is not self._reader:
            return
        task, self._reading = self._reading, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
        pending, self._pending = self._pending, deque()
        for future in pending:
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        """Close the connection (pending callers get a connection error)."""
        import redis.exceptions as rx

        task = self._reading
        self._fail_all(rx.ConnectionError("closed"), self._reader)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _call(self, packed: bytes) -> Any:
        import redis.exceptions as rx

        writer = self._writer or await self._connect()
        reader = self._reader
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        writer.write(packed)
        try:
            async with asyncio.timeout(self.socket_timeout):
                return await future
        except TimeoutError:
            error = rx.TimeoutError(f"Redis at {self.host}:{self.port} did not answer in time")
            self._fail_all(error, reader)
            raise error from None

    async def evalsha(self, script: Any, keys: list[str], args: list[str]) -> Any:
        """``EVALSHA`` of a registered redis-py ``Script`` (its ``sha`` and ``script``)."""
        import redis.exceptions as rx

        packed = _pack_evalsha(script.sha, keys, args)
        try:
            return await self._call(packed)
        except rx.NoScriptError:
            await self._call(_pack(["SCRIPT", "LOAD", script.script]))
            return await self._call(packed)


def _pack(command: list[str]) -> bytes:
    out = [b"*%d\r\n" % len(command)]
    for part in command:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    """One RESP2 reply; an error reply is returned (not raised) as redis-py's exception."""
    import redis.exceptions as rx

    line = await reader.readuntil(b"\r\n")
    kind, body = line[:1], line[1:-2]
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        return (await reader.readexactly(size + 2))[:-2]
    if kind == b":":
        return int(body)
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [await _read_reply(reader) for _ in range(count)]
    if kind == b"+":
        return body
    if kind == b"-":
        message = body.decode(errors="replace")
        if message.startswith("NOSCRIPT"):
            return rx.NoScriptError(message)
        return rx.ResponseError(message)
    raise rx.ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")
