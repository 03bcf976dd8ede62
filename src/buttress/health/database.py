"""Database check: a ping through what the application already has, and its pool's figures.

Theory of operation
-------------------
``database_check(target)`` accepts the object the application talks to its database with:

- a SQLAlchemy ``Engine`` (pinged in a worker thread) or ``AsyncEngine``;
- a psycopg 3 ``Connection`` / ``AsyncConnection``, or a psycopg_pool ``ConnectionPool`` /
  ``AsyncConnectionPool``;
- an asyncpg ``Pool`` or ``Connection``;
- a PostgreSQL DSN (``postgresql://...`` or libpq's ``host=... dbname=...``): one short connection
  per check, through psycopg when installed, else asyncpg, with ``connect_timeout``;
- a SQLite database: a path, or a ``sqlite:///...`` URL (opened read-write, never created, in a
  worker thread; the schema version is read first, because ``SELECT 1`` alone never touches the
  file).

Each check runs ``query`` (default ``SELECT 1``) and, for a pool, reads its figures into one
schema, ``detail["pool"]``:

=========  ==================================================================================
``size``   the most connections the pool will hold (SQLAlchemy: ``pool_size + max_overflow``;
           psycopg_pool: ``max_size``; asyncpg: ``max_size``); ``None`` when unbounded
``open``   connections open now
``in_use`` connections checked out by the application
``idle``   open connections waiting in the pool
``waiting`` requests waiting for a connection (psycopg_pool only; ``None`` elsewhere)
=========  ==================================================================================

and ``usage = in_use / size * 100`` when ``size`` is known. The figures are read before the ping,
so the check's own connection is not counted.

A pool can hand out a connection that died with the server; when the ping through a pool fails,
the check tries once more (SQLAlchemy and asyncpg have discarded the broken connections by then;
a psycopg_pool is first asked to ``check()`` its idle ones), so a restarted database reads
healthy at the first check after it is back, and a database that is down still fails, on the
second attempt's error. A ping through a single connection runs in its own
transaction block (``BEGIN``/``COMMIT``, or a savepoint inside the application's open
transaction), so it leaves the connection as it found it.

A blocking client runs in a worker thread (``asyncio.to_thread``). A thread cannot be cancelled:
when the resource manager's timeout abandons a check, its thread runs on until the driver gives
up (the pool's or ``connect_timeout``), and until it does, further checks fail at once ("still
waiting") rather than piling more threads onto a wedged database.

Nothing is imported until a target needs it: a SQLAlchemy engine can only exist if SQLAlchemy
was imported, so targets are recognised through ``sys.modules``. A DSN needs psycopg or asyncpg
(``pip install 'buttress[postgres]'``). A DSN that cannot be parsed is a ``ValueError`` when the
check is built, naming the DSN with its password hidden; the password never appears in
``target``, messages or readings. So is a URL whose password holds an unencoded ``@``, ``/``,
``?`` or ``#``: libpq would cut it there and take the rest for the host, port or database (and
quote it in its errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from .._config import seconds
from .types import Reading, redact

__all__ = ["DatabaseCheck", "database_check"]

T = TypeVar("T")

_POSTGRES_SCHEMES = ("postgresql", "postgres")
_KEYWORD_DSN = re.compile(r"^\s*[A-Za-z_]+\s*=")
_APPLICATION_NAME = "buttress-health"
_NEEDS_DRIVER = (
    "checking a PostgreSQL DSN needs psycopg or asyncpg: pip install 'buttress[postgres]'"
)


def database_check(
    target: object, *, query: str = "SELECT 1", connect_timeout: float = 10.0
) -> DatabaseCheck:
    """A check that pings ``target`` with ``query`` and reports its pool's usage.

    Args:
        target: see the module documentation for what is accepted.
        query: the statement each check runs.
        connect_timeout: seconds a DSN or SQLite check waits to connect, and a pool check waits
            for a free connection.

    Raises:
        ValueError: a DSN or URL that cannot be parsed (shown redacted), an unsupported URL
            scheme, an in-memory SQLite database, an empty query.
        TypeError: a target of a kind this check does not know.
        ImportError: a PostgreSQL DSN without psycopg or asyncpg installed.
    """
    return DatabaseCheck(target, query=query, connect_timeout=connect_timeout)


def _class(module: str, name: str) -> type | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _is(target: object, module: str, name: str) -> bool:
    cls = _class(module, name)
    return cls is not None and isinstance(target, cls)


class DatabaseCheck:
    """A database check (made by :func:`database_check`)."""

    def __init__(
        self, target: object, *, query: str = "SELECT 1", connect_timeout: float = 10.0
    ) -> None:
        if not isinstance(query, str):
            raise TypeError(f"query must be a string of SQL, got {query!r}")
        if not query.strip():
            raise ValueError("query must be a statement, got an empty string")
        self.query = query
        self.connect_timeout = seconds("connect_timeout", connect_timeout, allow_zero=False)
        self.kind = ""
        self._in_flight = 0
        self._lock = threading.Lock()
        self._ping: Callable[[], Awaitable[dict[str, object]]]
        self._pool: Callable[[], dict[str, object] | None] = lambda: None
        self.target = self._bind(target)

    def __repr__(self) -> str:
        return f"<DatabaseCheck {self.kind}: {self.target}>"

    async def __call__(self) -> Reading:
        pool = self._pool()
        detail = await self._ping()
        if pool is not None:
            detail["pool"] = pool
            size, in_use = pool.get("size"), pool.get("in_use")
            if isinstance(size, int) and size > 0 and isinstance(in_use, int):
                return Reading(usage=min(100.0, in_use / size * 100.0), detail=detail)
        return Reading(detail=detail)

    # -- recognising the target -----------------------------------------------------------------

    def _bind(self, target: object) -> str:
        if isinstance(target, str | os.PathLike):
            return self._bind_string(target)
        if _is(target, "sqlalchemy.ext.asyncio", "AsyncEngine"):
            return self._bind_async_engine(target)
        if _is(target, "sqlalchemy.engine", "Engine"):
            return self._bind_engine(target)
        if _is(target, "psycopg_pool", "AsyncConnectionPool"):
            return self._bind_psycopg_async_pool(target)
        if _is(target, "psycopg_pool", "ConnectionPool"):
            return self._bind_psycopg_pool(target)
        if _is(target, "psycopg", "AsyncConnection"):
            return self._bind_psycopg_async_connection(target)
        if _is(target, "psycopg", "Connection"):
            return self._bind_psycopg_connection(target)
        if _is(target, "asyncpg", "Pool"):
            return self._bind_asyncpg_pool(target)
        if _is(target, "asyncpg", "Connection"):
            return self._bind_asyncpg_connection(target)
        raise TypeError(
            "database_check target must be a SQLAlchemy Engine or AsyncEngine, a psycopg "
            "Connection or pool, an asyncpg Pool or Connection, a PostgreSQL DSN or a SQLite "
            f"path or sqlite:/// URL; got {type(target).__module__}.{type(target).__qualname__}"
        )

    def _bind_string(self, target: str | os.PathLike[str]) -> str:
        if isinstance(target, os.PathLike):
            return self._bind_sqlite(os.fspath(target))
        text = target.strip()
        shown = redact(text)
        if not text:
            raise ValueError("database_check target is an empty string")
        if "://" in text:
            scheme = text.split("://", 1)[0].lower()
            base = scheme.split("+", 1)[0]  # SQLAlchemy spellings: postgresql+psycopg://...
            if base == "sqlite":
                return self._bind_sqlite(_sqlite_path(text, shown))
            if base in _POSTGRES_SCHEMES:
                shown = _shown_url(text)
                _check_userinfo(text, shown)
                return self._bind_dsn("postgresql://" + text.split("://", 1)[1], shown)
            raise ValueError(
                f"database URL scheme {scheme!r} is not supported (postgresql:// or sqlite:///): "
                f"{shown!r}"
            )
        if _KEYWORD_DSN.match(text):
            return self._bind_dsn(text, shown)
        return self._bind_sqlite(text)

    # -- DSN: one short connection per check ----------------------------------------------------

    def _bind_dsn(self, dsn: str, shown: str) -> str:
        params = _parse_dsn(dsn, shown)
        self.kind = "postgresql"
        timeout = self.connect_timeout
        query = self.query
        if _importable("psycopg"):
            import psycopg

            extra: dict[str, Any] = {"autocommit": True}
            if "connect_timeout" not in params:
                # libpq takes whole seconds, at least 2
                extra["connect_timeout"] = max(2, round(timeout))
            if "application_name" not in params:
                extra["application_name"] = _APPLICATION_NAME

            async def ping() -> dict[str, object]:
                conn = await psycopg.AsyncConnection.connect(dsn, **extra)
                try:
                    cursor = await conn.execute(query)
                    if cursor.description is not None:
                        await cursor.fetchall()
                    return {"server_version": conn.info.server_version}
                finally:
                    await conn.close()

        elif _importable("asyncpg"):
            import asyncpg

            if "://" not in dsn:
                raise ImportError(
                    "a key=value PostgreSQL DSN needs psycopg (asyncpg reads only URLs): "
                    "pip install 'buttress[postgres]'"
                )

            async def ping() -> dict[str, object]:
                conn = await asyncpg.connect(
                    dsn,
                    timeout=timeout,
                    server_settings={"application_name": _APPLICATION_NAME},
                )
                try:
                    await conn.execute(query)
                    version = conn.get_server_version()
                    return {"server_version": f"{version.major}.{version.minor}"}
                finally:
                    await conn.close(timeout=timeout)

        else:
            raise ImportError(_NEEDS_DRIVER)
        self._ping = ping
        return shown

    # -- SQLAlchemy -----------------------------------------------------------------------------

    def _bind_engine(self, engine: Any) -> str:
        self.kind = f"sqlalchemy {engine.dialect.name}"
        query = self.query

        def ping() -> dict[str, object]:
            with engine.connect() as conn:
                result = conn.exec_driver_sql(query)
                if result.returns_rows:
                    result.fetchall()
            return {}

        self._ping = self._retrying(lambda: self._threaded(ping))
        self._pool = lambda: _sqlalchemy_pool(engine.pool)
        return _sqlalchemy_url(engine)

    def _bind_async_engine(self, engine: Any) -> str:
        self.kind = f"sqlalchemy {engine.dialect.name} (async)"
        query = self.query

        async def ping() -> dict[str, object]:
            async with engine.connect() as conn:
                result = await conn.exec_driver_sql(query)
                if result.returns_rows:
                    result.fetchall()
            return {}

        self._ping = self._retrying(ping)
        self._pool = lambda: _sqlalchemy_pool(engine.sync_engine.pool)
        return _sqlalchemy_url(engine)

    # -- psycopg ----------------------------------------------------------------------------------

    def _bind_psycopg_connection(self, conn: Any) -> str:
        self.kind = "psycopg connection"
        query = self.query

        def ping() -> dict[str, object]:
            with conn.transaction():
                cursor = conn.execute(query)
                if cursor.description is not None:
                    cursor.fetchall()
            return {}

        self._ping = lambda: self._threaded(ping)
        return _psycopg_url(conn.info)

    def _bind_psycopg_async_connection(self, conn: Any) -> str:
        self.kind = "psycopg connection (async)"
        query = self.query

        async def ping() -> dict[str, object]:
            async with conn.transaction():
                cursor = await conn.execute(query)
                if cursor.description is not None:
                    await cursor.fetchall()
            return {}

        self._ping = ping
        return _psycopg_url(conn.info)

    def _bind_psycopg_pool(self, pool: Any) -> str:
        self.kind = "psycopg pool"
        query, timeout = self.query, self.connect_timeout

        def ping() -> dict[str, object]:
            with pool.connection(timeout=timeout) as conn:
                cursor = conn.execute(query)
                if cursor.description is not None:
                    cursor.fetchall()
            return {}

        def recover() -> Awaitable[None]:
            return self._threaded(pool.check)

        self._ping = self._retrying(lambda: self._threaded(ping), recover)
        self._pool = lambda: _psycopg_pool_figures(pool)
        return f"psycopg pool {pool.name!r}: {_conninfo(pool.conninfo)}"

    def _bind_psycopg_async_pool(self, pool: Any) -> str:
        self.kind = "psycopg pool (async)"
        query, timeout = self.query, self.connect_timeout

        async def ping() -> dict[str, object]:
            async with pool.connection(timeout=timeout) as conn:
                cursor = await conn.execute(query)
                if cursor.description is not None:
                    await cursor.fetchall()
            return {}

        self._ping = self._retrying(ping, pool.check)
        self._pool = lambda: _psycopg_pool_figures(pool)
        return f"psycopg pool {pool.name!r}: {_conninfo(pool.conninfo)}"

    # -- asyncpg ----------------------------------------------------------------------------------

    def _bind_asyncpg_pool(self, pool: Any) -> str:
        self.kind = "asyncpg pool"
        query, timeout = self.query, self.connect_timeout

        async def ping() -> dict[str, object]:
            async with pool.acquire(timeout=timeout) as conn:
                await conn.execute(query)
            return {}

        def figures() -> dict[str, object]:
            open_, idle = pool.get_size(), pool.get_idle_size()
            return {
                "size": pool.get_max_size(),
                "open": open_,
                "in_use": max(0, open_ - idle),
                "idle": idle,
                "waiting": None,
            }

        self._ping = self._retrying(ping)
        self._pool = figures
        return f"asyncpg pool {_asyncpg_address(pool)}"

    def _bind_asyncpg_connection(self, conn: Any) -> str:
        self.kind = "asyncpg connection"
        query = self.query

        async def ping() -> dict[str, object]:
            await conn.execute(query)
            return {}

        self._ping = ping
        return f"asyncpg connection {_asyncpg_address(conn)}"

    # -- SQLite -----------------------------------------------------------------------------------

    def _bind_sqlite(self, path: str) -> str:
        if not path or path == ":memory:":
            raise ValueError(
                "an in-memory SQLite database exists only inside its own connection and cannot "
                f"be checked from another; got {path!r}"
            )
        self.kind = "sqlite"
        query, timeout = self.query, self.connect_timeout
        absolute = os.path.abspath(path)
        uri = f"file:{quote(absolute)}?mode=rw"

        def ping() -> dict[str, object]:
            # mode=rw: a check must never create the database it is looking for
            if not os.path.exists(absolute):
                raise FileNotFoundError(f"no SQLite database at {absolute}")
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
            try:
                # "SELECT 1" never reads the file; the schema version is on its first page, so a
                # file that is not a database or is locked fails here
                conn.execute("PRAGMA schema_version").fetchall()
                conn.execute(query).fetchall()
            finally:
                conn.close()
            return {"sqlite_version": sqlite3.sqlite_version}

        self._ping = lambda: self._threaded(ping)
        return f"sqlite:///{absolute}"

    # -- running --------------------------------------------------------------------------------

    async def _threaded(self, fn: Callable[[], T]) -> T:
        """``fn`` in a worker thread, unless an abandoned earlier one is still stuck."""
        with self._lock:
            if self._in_flight:
                raise TimeoutError(
                    f"still waiting for the database from an earlier check ({self.target})"
                )

        def run() -> T:
            with self._lock:
                self._in_flight += 1
            try:
                return fn()
            finally:
                with self._lock:
                    self._in_flight -= 1

        return await asyncio.to_thread(run)

    def _retrying(
        self,
        ping: Callable[[], Awaitable[dict[str, object]]],
        recover: Callable[[], Awaitable[None]] | None = None,
    ) -> Callable[[], Awaitable[dict[str, object]]]:
        async def once_more() -> dict[str, object]:
            try:
                return await ping()
            except TimeoutError:
                raise
            except Exception:
                # the pool discards the dead connection it handed out (psycopg_pool only when
                # asked: its check() tests the idle ones); a second attempt tells a restarted
                # server from one that is down
                if recover is not None:
                    with contextlib.suppress(Exception):  # the second ping reports the cause
                        await recover()
                return await ping()

        return once_more


def _importable(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _parse_dsn(dsn: str, shown: str) -> dict[str, str]:
    """The DSN's parameters; a ``ValueError`` naming the (redacted) DSN when it cannot be parsed."""
    params: dict[str, str]
    if _importable("psycopg"):
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
        except Exception as exc:
            reason = redact(str(exc).strip())
            raise ValueError(f"cannot parse the database DSN {shown!r}: {reason}") from None
    elif "://" in dsn:
        parts = urlsplit(dsn)
        hosts = parts.netloc.rpartition("@")[2]
        params = {"host": hosts, "dbname": unquote(parts.path.lstrip("/"))}
        if "," not in hosts:
            try:
                port = parts.port
            except ValueError as exc:
                raise ValueError(f"cannot parse the database DSN {shown!r}: {exc}") from None
            if port is not None:
                params["port"] = str(port)
        for pair in filter(None, parts.query.split("&")):
            key, _, value = pair.partition("=")
            params[unquote(key)] = unquote(value)
    else:
        raise ImportError(_NEEDS_DRIVER)
    for each in filter(None, params.get("port", "").split(",")):
        if not each.isdigit() or not 0 < int(each) < 65536:
            raise ValueError(
                f"cannot parse the database DSN {shown!r}: port must be 1-65535, got {each!r}"
            )
    timeout = params.get("connect_timeout")
    if timeout is not None and not timeout.lstrip("-").isdigit():
        raise ValueError(
            f"cannot parse the database DSN {shown!r}: connect_timeout must be whole seconds, "
            f"got {timeout!r}"
        )
    return params


def _shown_url(url: str) -> str:
    """``url`` with its password hidden, whole even when it holds an unencoded ``@``, ``/``,
    ``?`` or ``#`` (which stop :func:`redact`, and every URL parser, early)."""
    scheme, _, rest = url.partition("://")
    authority, tail = _authority(rest)
    if "@" in authority:
        userinfo, _, hosts = authority.rpartition("@")
        hosts += tail
    elif _cut_password(authority, rest):
        userinfo, _, hosts = rest.rpartition("@")
    else:
        return redact(url)
    if ":" not in userinfo:
        return redact(url)
    return redact(f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hosts}")


def _authority(rest: str) -> tuple[str, str]:
    """What follows ``scheme://``, split where a URL parser ends the authority."""
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    return rest[:end], rest[end:]


def _cut_password(authority: str, rest: str) -> bool:
    """Whether the authority looks cut off inside a password (``user:pa/ss@host``): no ``@`` in
    it, one later, and what would be the port is not a number."""
    if "@" in authority or "@" not in rest or ":" not in authority or authority.endswith("]"):
        return False
    port = authority.rpartition(":")[2]
    return not all(part.isdigit() for part in port.split(","))


def _check_userinfo(url: str, shown: str) -> None:
    """Refuse a URL whose password holds a character that must be percent-encoded.

    libpq ends the password at the first ``@`` and the host part at the first ``/``, so such a
    password would be cut in two: part of it taken for the host, the port or the database, and
    quoted in the driver's errors.
    """
    rest = url.split("://", 1)[1]
    authority, tail = _authority(rest)
    if authority.count("@") > 1:
        found = "'@'"
    elif _cut_password(authority, rest):
        found = repr(tail[0])
    else:
        return
    raise ValueError(
        f"cannot parse the database DSN {shown!r}: its password holds an unencoded {found}; "
        "percent-encode it (@ is %40, / is %2F, ? is %3F, # is %23)"
    )


def _sqlite_path(url: str, shown: str) -> str:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        raise ValueError(f"a SQLite URL is sqlite:///path (three slashes), got {shown!r}")
    path = unquote(rest[1:].split("?", 1)[0])
    return path


def _sqlalchemy_url(engine: Any) -> str:
    return redact(str(engine.url.render_as_string(hide_password=True)))


def _sqlalchemy_pool(pool: Any) -> dict[str, object] | None:
    size = getattr(pool, "size", None)
    if not callable(size) or not callable(getattr(pool, "checkedout", None)):
        return None  # NullPool, StaticPool...: nothing pooled to count
    in_use, idle = int(pool.checkedout()), int(pool.checkedin())
    overflow = getattr(pool, "_max_overflow", None)
    capacity = int(size()) + overflow if isinstance(overflow, int) and overflow >= 0 else None
    return {
        "size": capacity,
        "open": in_use + idle,
        "in_use": in_use,
        "idle": idle,
        "waiting": None,
    }


def _psycopg_pool_figures(pool: Any) -> dict[str, object]:
    stats = pool.get_stats()
    open_ = int(stats.get("pool_size", 0))
    idle = int(stats.get("pool_available", 0))
    return {
        "size": stats.get("pool_max"),
        "open": open_,
        "in_use": max(0, open_ - idle),
        "idle": idle,
        "waiting": int(stats.get("requests_waiting", 0)),
    }


def _psycopg_url(info: Any) -> str:
    host = info.host or "localhost"
    host = f"[{host}]" if ":" in host else host
    return f"postgresql://{quote(str(info.user))}@{host}:{info.port}/{quote(str(info.dbname))}"


def _conninfo(conninfo: object) -> str:
    return redact(str(conninfo)) if conninfo else "(default connection parameters)"


def _asyncpg_address(target: Any) -> str:
    # asyncpg keeps where it connects privately; show it when it can be found, never the password
    kwargs = getattr(target, "_connect_kwargs", None) or {}
    args = getattr(target, "_connect_args", None) or ()
    dsn = kwargs.get("dsn") or (args[0] if args and isinstance(args[0], str) else None)
    if isinstance(dsn, str):
        return redact(dsn)
    addr = getattr(target, "_addr", None)
    if isinstance(addr, tuple) and len(addr) == 2:
        return f"{addr[0]}:{addr[1]}"
    return f"at 0x{id(target):x}"
