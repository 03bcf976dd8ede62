"""Durable state in an SQLite file: breakers and rate limits that survive a restart.

Theory of operation
-------------------
One table holds every state as JSON (never pickle) under ``(kind, name, key)``; a second holds
the schema version. Each step is one ``BEGIN IMMEDIATE`` transaction: read the state, run the
Python machine, write the state back. SQLite serialises writers across processes, the WAL journal
lets readers proceed, and ``busy_timeout`` makes a writer wait (bounded) for another instead of
failing at once. A process killed mid-transaction leaves the previous state: SQLite rolls the
unfinished transaction back when the file is next opened.

Opening checks the file before using it: a file that is not an SQLite database, or a database
that holds tables but not buttress's, or buttress's tables at another schema version, raises
:class:`StorageError` naming the path, and the file is left untouched. A stored record that does
not parse raises :class:`StorageError` naming the record; it is not overwritten either.

Connections are per thread (``sqlite3`` connections must stay in their thread). Async callers
run the step in a worker thread (:meth:`SQLiteStore.areserve`, :meth:`SQLiteStore.abreaker_step`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..machines.breaker import BreakerMachine, BreakerSettings
from ..machines.ratelimit import Params, fresh_at, reserve
from .base import (
    BreakerOp,
    BreakerReply,
    BreakerStep,
    StorageError,
    StorageUnavailable,
    apply_breaker,
    shared_settings,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 1
SWEEP_EVERY = 1000  # admitted decisions between sweeps of idle rate-limit states
_TABLES = {"buttress_meta", "buttress_state"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS buttress_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS buttress_state (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    expires REAL,
    PRIMARY KEY (kind, name, key)
);
CREATE INDEX IF NOT EXISTS buttress_state_expires ON buttress_state (kind, expires);
"""


def _key(key: str | None) -> str:
    # JSON keeps None ("null") apart from the string "null" ("\"null\"").
    return json.dumps(key)


class SQLiteStore:
    """State in the SQLite file at ``path`` (created if missing).

    Args:
        path: the database file.
        busy_timeout: seconds a step waits for another process's transaction before raising
            :class:`StorageUnavailable`.

    Raises:
        StorageError: the file is not a buttress state database (it is left untouched).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        if not isinstance(busy_timeout, int | float) or not 0 < busy_timeout < math.inf:
            raise ValueError(
                f"busy_timeout must be a positive number of seconds, got {busy_timeout!r}"
            )
        self.busy_timeout = float(busy_timeout)
        self.url = f"sqlite:///{self.path}"
        # a locked database waits busy_timeout; deadlines shorter than that still ask (SQLite
        # answers in microseconds when not locked), so no timeout is advertised
        self.timeout: float | None = None
        self._local = threading.local()
        self._decisions = 0
        self._check_and_create()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- connections -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=True
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread, and never one inherited across a fork (SQLite forbids it).
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._local.conn = self._connect()
            self._local.pid = os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _check_and_create(self) -> None:
        if self.path.is_dir():
            raise StorageError(f"{self.path} is a directory, not a buttress state database")
        if self.path.parent and not self.path.parent.exists():
            raise StorageError(f"{self.path}: the directory {self.path.parent} does not exist")
        try:
            conn = self._connect()
            try:
                tables = {
                    row[0]
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if tables and not tables >= _TABLES:
                    raise StorageError(
                        f"{self.path} is an SQLite database of something else (tables: "
                        f"{', '.join(sorted(tables))}); buttress will not write to it"
                    )
                if tables:
                    row = conn.execute(
                        "SELECT value FROM buttress_meta WHERE name = 'schema_version'"
                    ).fetchone()
                    if row is None or row[0] != str(SCHEMA_VERSION):
                        found = None if row is None else row[0]
                        raise StorageError(
                            f"{self.path} holds buttress state of schema version {found!r}; this "
                            f"version of buttress reads version {SCHEMA_VERSION}"
                        )
                    return
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT OR IGNORE INTO buttress_meta (name, value) VALUES (?, ?)",
                        ("schema_version", str(SCHEMA_VERSION)),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"{self.path} is not a usable SQLite database ({exc}); buttress will not "
                "overwrite it"
            ) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"{self.path}: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StorageUnavailable(f"{self.path}: {exc}") from exc
            raise

    def _load(self, conn: sqlite3.Connection, kind: str, name: str, key: str) -> Any:
        row = conn.execute(
            "SELECT state FROM buttress_state WHERE kind = ? AND name = ? AND key = ?",
            (kind, name, key),
        ).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            raise StorageError(
                f"{self.path}: the stored {kind} state of {name!r} (key {key}) is not JSON: "
                f"{row[0][:80]!r}"
            ) from None

    @staticmethod
    def _save(
        conn: sqlite3.Connection,
        kind: str,
        name: str,
        key: str,
        state: Any,
        expires: float | None = None,
    ) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO buttress_state (kind, name, key, state, expires) "
            "VALUES (?, ?, ?, ?, ?)",
            (kind, name, key, json.dumps(state), expires),
        )

    # -- rate limits -----------------------------------------------------------------------------

    def reserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        """One rate-limit decision (see :class:`buttress.backends.base.Store`)."""
        now = time.time() if now is None else now
        k = _key(key)
        with self._transaction() as conn:
            record = self._load(conn, "ratelimit", name, k)
            state, until = _rate_record(record, self.path, name, k)
            if until is not None:
                if now < until:
                    return False, until - now
                until = None
            new_state, wait = reserve(state, now, cost, max_wait, params)
            if new_state is None:
                return False, wait
            expires = fresh_at(new_state, params)
            self._save(conn, "ratelimit", name, k, {"s": list(new_state), "b": until}, expires)
            self._decisions += 1
            if self._decisions % SWEEP_EVERY == 0:
                # States that say nothing a fresh one would not are dropped, so one-off keys do
                # not pile up in the file.
                conn.execute(
                    "DELETE FROM buttress_state WHERE kind = 'ratelimit' AND expires < ?", (now,)
                )
            return True, wait

    async def areserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        """:meth:`reserve` in a worker thread."""
        return await asyncio.to_thread(self.reserve, name, key, params, cost, max_wait, now)

    def block(self, name: str, key: str | None, seconds: float, now: float | None = None) -> None:
        """Refuse ``key`` of ``name`` for ``seconds`` (a later block already set wins)."""
        now = time.time() if now is None else now
        k = _key(key)
        with self._transaction() as conn:
            state, until = _rate_record(self._load(conn, "ratelimit", name, k), self.path, name, k)
            until = max(until or 0.0, now + seconds)
            row = conn.execute(
                "SELECT expires FROM buttress_state WHERE kind = 'ratelimit' AND name = ? "
                "AND key = ?",
                (name, k),
            ).fetchone()
            expires = until if row is None or row[0] is None else max(until, row[0])
            record = {"s": list(state or ()), "b": until}
            self._save(conn, "ratelimit", name, k, record, expires)

    def reset(self, name: str, key: str | None = None) -> None:
        """Forget the state and any block of ``key`` of ``name``."""
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM buttress_state WHERE kind = 'ratelimit' AND name = ? AND key = ?",
                (name, _key(key)),
            )

    # -- circuit breakers ------------------------------------------------------------------------

    def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        """One breaker step on the stored state (see :func:`apply_breaker`)."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            data = self._load(conn, "breaker", name, "")
            try:
                machine = BreakerMachine.from_state(shared_settings(settings), data)
            except ValueError as exc:
                raise StorageError(f"{self.path}: the stored breaker {name!r}: {exc}") from None
            reply = apply_breaker(machine, step, now)
            if step.op is not BreakerOp.READ:
                self._save(conn, "breaker", name, "", machine.to_state())
            return reply

    async def abreaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        """:meth:`breaker` in a worker thread."""
        return await asyncio.to_thread(self.breaker, name, settings, step, now)

    async def ablock(
        self, name: str, key: str | None, seconds: float, now: float | None = None
    ) -> None:
        """:meth:`block` in a worker thread."""
        await asyncio.to_thread(self.block, name, key, seconds, now)

    async def areset(self, name: str, key: str | None = None) -> None:
        """:meth:`reset` in a worker thread."""
        await asyncio.to_thread(self.reset, name, key)

    async def aclose(self) -> None:
        """:meth:`close` (closing a connection does not wait on others)."""
        self.close()

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file (``"ok"`` when sound)."""
        row = self._conn().execute("PRAGMA integrity_check").fetchone()
        return str(row[0])


def _rate_record(
    record: Any, path: Path, name: str, key: str
) -> tuple[list[float] | None, float | None]:
    if record is None:
        return None, None
    try:
        state = record["s"]
        until = record["b"]
        if not isinstance(state, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in state
        ):
            raise ValueError(f"state must be a list of numbers, got {state!r}")
        if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
            raise ValueError(f"block must be a number or null, got {until!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(
            f"{path}: the stored rate-limit state of {name!r} (key {key}) is malformed: {exc}"
        ) from None
    return ([float(x) for x in state] or None), (None if until is None else float(until))
