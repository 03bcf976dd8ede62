"""A redis-py client given as ``storage=``: the Redis store's other transport.

Theory of operation
-------------------
:class:`ClientWire` offers what :class:`~buttress.backends.redis_wire.Wire` offers (``call`` and
``acall`` of one command on one key, ``release``) over a client the application already has, so
that the client's own settings apply: its address and credentials, its TLS, its Sentinel, its
cluster routing and retries, its timeouts. It is never closed here: the client belongs to whoever
passed it in.

* ``redis.Redis`` (a Sentinel's ``master_for`` too) serves sync callers on a connection each
  thread borrows from the client's pool, sending the packed ``EVALSHA`` itself: redis-py's general
  command path costs about twice the round trip. The connection goes back to the pool when the
  thread ends or the store is closed; one that failed mid-exchange is disconnected first.
* ``redis.cluster.RedisCluster`` serves sync callers through ``execute_command`` (redis-py routes
  by slot and follows ``MOVED`` and ``ASK``).
* Both serve async callers from a worker thread: the event loop never blocks on them.
* The ``redis.asyncio`` clients serve async callers only; a sync step raises ``TypeError``.

redis-py's exceptions are translated as the wire translates replies: a connection refused, a
timeout, a failover (``ReadOnlyError``, no master found, a cluster down) is
:class:`StorageUnavailable`; a plain client pointed at a cluster node (``MOVED``) and every other
error is :class:`StorageError` naming what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .base import StorageUnavailable
from .redis_wire import Command, forks, refusal

__all__ = ["ClientWire"]


class _Borrowed:
    """A connection a thread took from a client's pool; it goes back when the thread ends."""

    __slots__ = ("__weakref__", "conn", "forks", "pool")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.forks = forks()
        self.conn: Any = None  # (set before taking one: __del__ runs even if that fails)
        self.conn = pool.get_connection()

    def give_back(self, broken: bool = False, now: Callable[[], int] = forks) -> None:
        # (``now`` is bound here: __del__ may run at interpreter exit, after the globals)
        conn, self.conn = self.conn, None
        if conn is not None and self.forks == now():
            if broken:
                conn.disconnect()
            self.pool.release(conn)

    def __del__(self) -> None:
        self.give_back()


class ClientWire:
    """A redis-py client as the Redis store's transport (see the module documentation)."""

    def __init__(self, client: object) -> None:
        module = type(client).__module__
        if not module.startswith("redis.") or not hasattr(client, "execute_command"):
            raise TypeError(f"expected a redis-py client, got {client!r}")
        self.client: Any = client
        self.is_async = module.startswith("redis.asyncio")
        self.url = _describe(client)
        self.timeout: float | None = _client_timeout(client)
        pool = getattr(client, "connection_pool", None)
        self._pool = None if self.is_async or not hasattr(pool, "get_connection") else pool
        self._local = threading.local()
        self._borrowed: weakref.WeakSet[_Borrowed] = weakref.WeakSet()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ClientWire({self.url!r})"

    def call(self, key: str, op: Command, args: list[str]) -> Any:
        if self.is_async:
            raise TypeError(
                f"storage {self.url} wraps a redis.asyncio client, which async callers only can "
                "use; give storage= a redis.Redis client or a redis:// URL for sync callers"
            )
        with self._translated(key):
            if self._pool is not None:
                return self._on_borrowed(op.pack(key, args), op)
            try:
                return self.client.execute_command(*op.parts(key, args))
            except _no_script_error():
                self.client.script_load(op.text)
                return self.client.execute_command(*op.parts(key, args))

    def _on_borrowed(self, data: bytes, op: Command) -> Any:
        """One exchange on this thread's connection of the client's pool."""
        borrowed: _Borrowed | None = getattr(self._local, "borrowed", None)
        if borrowed is None or borrowed.conn is None or borrowed.forks != forks():
            borrowed = self._local.borrowed = _Borrowed(self._pool)
            with self._lock:
                self._borrowed.add(borrowed)
        conn = borrowed.conn
        try:
            conn.send_packed_command([data], check_health=False)
            try:
                return conn.read_response()
            except _no_script_error():
                if op.load is None:
                    raise
            conn.send_packed_command([op.load], check_health=False)  # (a restarted server)
            conn.read_response()
            conn.send_packed_command([data], check_health=False)
            return conn.read_response()
        except _response_error():
            raise  # an answer: the connection is in step
        except BaseException:
            borrowed.give_back(broken=True)  # a failed or interrupted exchange is out of step
            raise

    async def acall(self, key: str, op: Command, args: list[str]) -> Any:
        if not self.is_async:
            return await asyncio.to_thread(self.call, key, op, args)
        with self._translated(key):
            try:
                return await self.client.execute_command(*op.parts(key, args))
            except _no_script_error():
                await self.client.script_load(op.text)
                return await self.client.execute_command(*op.parts(key, args))

    @contextlib.contextmanager
    def _translated(self, key: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            translated = _translate(exc, self.url, key)
            if translated is exc:
                raise
            raise translated from exc

    def release(self) -> None:
        """Give the borrowed connections back to the pool; the client stays its owner's."""
        with self._lock:
            borrowed, self._borrowed = list(self._borrowed), weakref.WeakSet()
        for each in borrowed:
            each.give_back()

    async def arelease(self) -> None:
        self.release()


def _no_script_error() -> type[Exception]:
    from redis.exceptions import NoScriptError

    return NoScriptError


def _response_error() -> type[Exception]:
    from redis.exceptions import ResponseError

    return ResponseError


def _translate(exc: Exception, where: str, key: str) -> Exception:
    """The store's exception for one a redis-py client raised (``exc`` itself if not its own)."""
    import redis.exceptions as rx

    unavailable = (
        rx.ConnectionError,  # also BusyLoadingError, AuthenticationError, MasterNotFoundError
        rx.TimeoutError,
        rx.ClusterDownError,  # also MasterDownError
        rx.TryAgainError,
        rx.ReadOnlyError,
        OSError,
    )
    if isinstance(exc, unavailable):
        return StorageUnavailable(f"{where}: {exc}")
    if isinstance(exc, rx.AskError):  # also MovedError: a plain client on a cluster node
        return refusal(where, key, "MOVED", str(exc))
    if isinstance(exc, rx.ResponseError):
        message = str(exc)
        return refusal(where, key, message.partition(" ")[0], message)
    if isinstance(exc, rx.RedisError):
        return StorageUnavailable(f"{where}: {exc}")  # (a cluster without slots, ...)
    return exc


def _describe(client: Any) -> str:
    """A URL-like description of a client (no password), for messages."""
    module = type(client).__module__
    if module.endswith("cluster"):
        node = client.get_default_node()
        return f"redis+cluster://{node.host}:{node.port}" if node else "redis+cluster://?"
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if service:
        return f"redis+sentinel:///{service}"
    kwargs = getattr(pool, "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def _client_timeout(client: Any) -> float | None:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:  # a cluster client keeps them on its nodes manager
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", {})
    timeout = kwargs.get("socket_timeout")
    return float(timeout) if isinstance(timeout, int | float) else None
