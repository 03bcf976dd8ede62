"""State stores: where breakers and rate limits keep their state.

``storage=`` on :class:`buttress.RateLimiter` and :class:`buttress.CircuitBreakerConfig` takes:

* ``None``: the process default, ``BUTTRESS_STORAGE_URL`` if set, else in memory;
* ``"memory://"``: this process's memory (the default; the fastest);
* ``"sqlite:///path/state.db"``: a durable file shared by the processes of one machine;
  ``"sqlite://"`` without a path uses ``RESILIENCE_STORAGE_PATH``, else
  ``$XDG_STATE_HOME/buttress/state.db`` (``~/.local/state/buttress/state.db``);
* ``"redis://host:port/db"`` (or ``rediss://``): shared by every process on every host;
* a ``redis.Redis`` or ``redis.asyncio.Redis`` client you already have;
* a store object (:class:`buttress.backends.base.Store`).

Stores opened from the same URL are shared within the process (one connection pool per URL).
"""

from __future__ import annotations

import os
import threading
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
    "BreakerReply",
    "MemoryStore",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "open_storage",
]

STORAGE_URL_ENV = "BUTTRESS_STORAGE_URL"
STORAGE_PATH_ENV = "RESILIENCE_STORAGE_PATH"

_OPENED: dict[str, Any] = {}
_LOCK = threading.Lock()


def default_sqlite_path() -> Path:
    """Where ``sqlite://`` without a path keeps its state."""
    configured = os.environ.get(STORAGE_PATH_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
    return Path(base) / "buttress" / "state.db"


def open_storage(spec: object = None) -> Any:
    """The store for ``spec`` (see the module documentation), or ``None`` for in-memory state.

    Raises:
        ValueError: a malformed URL or an unknown scheme, naming it.
        StorageError: a store that cannot be used (a foreign SQLite file, say).
    """
    if spec is None:
        spec = os.environ.get(STORAGE_URL_ENV, "").strip() or None
        if spec is None:
            return None
        source = f"{STORAGE_URL_ENV}={spec!r}"
    else:
        source = f"storage={spec!r}"
    if not isinstance(spec, str):
        return _from_object(spec)
    scheme = spec.partition("://")[0].lower() if "://" in spec else ""
    if scheme == "memory":
        if spec.lower() != "memory://":
            raise ValueError(f"{source}: a memory store takes no address; use 'memory://'")
        return None
    if scheme == "sqlite":
        return _cached(spec, lambda: _open_sqlite(spec, source))
    if scheme in ("redis", "rediss", "unix"):
        return _cached(spec, lambda: _open_redis(spec))
    raise ValueError(
        f"{source}: unknown storage; use 'memory://', 'sqlite:///path/state.db' or "
        "'redis://host:port/db'"
    )


def _cached(url: str, make: Any) -> Any:
    with _LOCK:
        store = _OPENED.get(url)
        if store is None:
            store = _OPENED[url] = make()
        return store


def _open_sqlite(url: str, source: str) -> Any:
    from .sqlite import SQLiteStore

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(
            f"{source}: an SQLite URL names a local file: 'sqlite:///relative/path.db' or "
            "'sqlite:////absolute/path.db'"
        )
    raw = unquote(parts.path)
    path = Path(raw[1:]) if raw.startswith("/") else Path(raw)
    if not raw or raw == "/":
        path = default_sqlite_path()
        path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(path)


def _open_redis(url: str) -> Any:
    from .redis import from_url
    from .redis_store import RedisStore

    return RedisStore(from_url(url), url=url)


def _from_object(obj: object) -> Any:
    module = type(obj).__module__
    if module.startswith("redis.asyncio"):
        from .redis_store import AsyncRedisStore

        return AsyncRedisStore(obj)
    if module.startswith("redis."):
        from .redis_store import RedisStore

        return RedisStore(obj)
    if isinstance(obj, Store | AsyncStore):
        return obj
    raise TypeError(
        f"storage must be a URL, a redis client or a store, got {obj!r} "
        "(a store has reserve, block, reset, breaker and close, or their async twins)"
    )


__all__ += ["default_sqlite_path"]
