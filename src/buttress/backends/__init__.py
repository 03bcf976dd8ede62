"""State stores: where breakers and rate limits keep their state.

``storage=`` on :class:`buttress.RateLimiter` and :class:`buttress.CircuitBreakerConfig` takes:

* ``None``: the process default, ``BUTTRESS_STORAGE_URL`` if set, else in memory;
* ``"memory://"``: this process's memory (the default; the fastest);
* ``"sqlite:///path/state.db"``: a durable file shared by the processes of one machine;
  ``"sqlite://"`` without a path uses ``RESILIENCE_STORAGE_PATH`` (a file, or a directory to
  hold ``state.db``), else ``$XDG_STATE_HOME/buttress/state.db``
  (``~/.local/state/buttress/state.db``);
* ``"redis://[[user]:password@]host:port/db"`` (``rediss://`` for TLS), or
  ``"unix:///path/to/redis.sock?db=0"``: shared by every process on every host;
* ``"redis+cluster://host:port[,host:port...]"``: a Redis Cluster, any of its nodes;
* ``"redis+sentinel://host:port[,host:port...]/service_name"``: the master that these
  Sentinels name for ``service_name`` (a failover is an outage that ends on the new master);
* a redis-py client you already have (``redis.Redis``, ``redis.cluster.RedisCluster``, a
  ``Sentinel``'s ``master_for(...)``, or their ``redis.asyncio`` twins);
* a store object: anything implementing both :class:`Store` and :class:`AsyncStore`.

:func:`open_storage` resolves each to a store in one step (``None`` for memory): the SQLite URL to
:class:`~buttress.backends.sqlite.SQLiteStore`, the Redis URLs and clients to
:class:`~buttress.backends.redis.RedisStore`. Every store it returns implements both protocols, so
one object serves sync and async callers; every store raises only :class:`StorageUnavailable` and
:class:`StorageError` (and ``ValueError``/``TypeError`` for bad arguments).

Closing
-------
``open_storage`` gives each caller its own store object. Stores opened on the same URL or file
share their connections within the process (one socket per thread and node for Redis, one
pipelined connection per event loop and node, one SQLite connection per thread), and those are
counted: ``store.close()`` (or ``await store.aclose()``) gives one store back, at most once, and
the last store given back closes the connections and files. A thread's connections close when the
thread ends. A policy closes the store it opened; it does not close a store object that was passed
in (``open_storage(spec)`` returned ``spec`` itself), and closing a store made around a client
never closes the client: what the application passed in, the application closes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .base import (
    AsyncStore,
    BreakerReply,
    MemoryStore,
    StorageError,
    StorageUnavailable,
    Store,
)

__all__ = [
    "STORAGE_PATH_ENV",
    "STORAGE_URL_ENV",
    "AsyncStore",
    "BreakerReply",
    "MemoryStore",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "default_sqlite_path",
    "open_storage",
]

STORAGE_URL_ENV = "BUTTRESS_STORAGE_URL"
STORAGE_PATH_ENV = "RESILIENCE_STORAGE_PATH"

_REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)


STATE_FILE = "state.db"  # the file's name in a directory RESILIENCE_STORAGE_PATH names


def default_sqlite_path() -> Path:
    """Where ``sqlite://`` without a path keeps its state.

    ``RESILIENCE_STORAGE_PATH`` names the file, or a directory to hold ``state.db``: a directory
    that exists, or a path yet to be made that ends in ``/`` or has no suffix
    (``/data/resilience``); a file that exists is used whatever its name.
    """
    configured = os.environ.get(STORAGE_PATH_ENV, "").strip()
    if configured:
        path = Path(configured).expanduser()
        if path.is_dir() or (
            not path.exists() and (configured.endswith(("/", os.sep)) or not path.suffix)
        ):
            return path / STATE_FILE
        return path
    base = os.environ.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
    return Path(base) / "buttress" / STATE_FILE


def _default_sqlite_file() -> Path:
    """:func:`default_sqlite_path`, its directory made if missing.

    Raises:
        StorageError: the directory cannot be made (naming the variable that chose it).
    """
    path = default_sqlite_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        configured = os.environ.get(STORAGE_PATH_ENV, "").strip()
        chosen = f"{STORAGE_PATH_ENV}={configured!r}" if configured else "the default state file"
        raise StorageError(
            f"{chosen}: cannot make the directory {path.parent} ({exc.strerror or exc})"
        ) from None
    return path


def open_storage(spec: object = None) -> Any:
    """The store for ``spec`` (see the module documentation), or ``None`` for in-memory state.

    A URL or a client gives a new store object, the caller's to close; a store object is
    returned as it is.

    Raises:
        ValueError: a malformed URL or an unknown scheme, naming it (password hidden).
        TypeError: something that is neither a URL, a redis-py client nor a store.
        StorageError: a store that cannot be used (a foreign SQLite file, say).
    """
    named = "storage"
    if spec is None:
        spec = os.environ.get(STORAGE_URL_ENV, "").strip() or None
        if spec is None:
            return None
        named = STORAGE_URL_ENV
    if not isinstance(spec, str):
        return _from_object(spec)
    scheme = spec.partition("://")[0].lower() if "://" in spec else ""
    source = f"{named}={spec!r}"
    if scheme == "memory":
        if spec.lower() != "memory://":
            raise ValueError(f"{source}: a memory store takes no address; use 'memory://'")
        return None
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(_sqlite_path(spec, source))
    if scheme in _REDIS_SCHEMES:
        from .redis import RedisStore

        if named == STORAGE_URL_ENV:  # say where the URL came from
            try:
                return RedisStore(spec)
            except ValueError as exc:
                raise ValueError(f"{STORAGE_URL_ENV}: {exc}") from None
        return RedisStore(spec)
    from .redis_wire import redact

    raise ValueError(
        f"{named}={redact(spec)!r}: unknown storage; use 'memory://', "
        "'sqlite:///path/state.db', 'redis://host:port/db', 'redis+cluster://host:port,...' or "
        "'redis+sentinel://host:port/service_name'"
    )


def _sqlite_path(url: str, source: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(
            f"{source}: an SQLite URL names a local file: 'sqlite:///relative/path.db' or "
            "'sqlite:////absolute/path.db'"
        )
    raw = unquote(parts.path)
    if not raw or raw == "/":
        return _default_sqlite_file()
    return Path(raw[1:]) if raw.startswith("/") else Path(raw)


def _from_object(obj: object) -> Any:
    if type(obj).__module__.startswith("redis."):
        from .redis import RedisStore

        return RedisStore(obj)
    if isinstance(obj, Store) and isinstance(obj, AsyncStore):
        return obj
    steps = ("reserve", "block", "reset", "breaker", "close")
    wanted = ["url", "timeout", *steps, *(f"a{step}" for step in steps)]
    missing = [name for name in wanted if not hasattr(obj, name)]
    raise TypeError(
        f"storage must be a URL, a redis-py client or a store, got {obj!r}: a store implements "
        f"Store and AsyncStore (buttress.backends.base); this one lacks {', '.join(missing)}"
    )
