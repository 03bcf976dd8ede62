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

Connections: one per thread (a connection is used by one thread at a time), shared by every
store opened on the same file in this process and counted: a thread's connection closes when the
thread ends, and the last store closed closes the rest, so a closed store leaves no file open.
After a fork, the child opens its own and never touches (not even closes) the parent's: SQLite
forbids using a connection across a fork, and closing one could checkpoint the parent's journal
away. Async callers run each step in a worker thread.

Errors: a locked database (after ``busy_timeout``), a file that cannot be opened or a full disk
raise :class:`StorageUnavailable`; any other SQLite error, :class:`StorageError`.

Several processes creating one file at once. The switch to the WAL journal is the one step
SQLite's busy handler does not cover: a connection that switches holds a read lock while it asks
for the write lock, so when two processes switch at once SQLite answers "database is locked" at
once rather than let them wait for each other forever. The switch is retried, with short real
sleeps (an operating-system lock, not the policies' clock), until ``busy_timeout``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..clock import wall_time
from ..machines.breaker import BreakerMachine, BreakerSettings
from ..machines.ratelimit import Params, fresh_at, reserve, state_problem
from .base import (
    AsyncFromSync,
    BreakerOp,
    BreakerReply,
    BreakerStep,
    Key,
    Now,
    StorageError,
    StorageUnavailable,
    apply_breaker,
    block_seconds,
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


_INHERITED: list[sqlite3.Connection] = []  # a fork's child keeps the parent's, never used


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` names now (device and inode), or ``None`` when there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class _ThreadConnection:
    """A thread's connection to one file; it closes when the thread ends."""

    __slots__ = ("__weakref__", "conn", "file", "pid")

    def __init__(self, conn: sqlite3.Connection, file: tuple[int, int] | None) -> None:
        self.conn = conn
        self.file = file  # the file it opened (see _identity)
        self.pid = os.getpid()

    def close(
        self,
        getpid: Callable[[], int] = os.getpid,  # (bound here: __del__ may run at interpreter
        inherited: list[sqlite3.Connection] = _INHERITED,  # exit, after the globals are gone)
    ) -> None:
        if self.pid == getpid():
            self.conn.close()
        else:
            inherited.append(self.conn)  # a fork's child must not even close it

    def __del__(self) -> None:
        self.close()


class _Database:
    """One file's connections in this process (one per thread), shared by its stores."""

    def __init__(self, path: Path, busy_timeout: float, key: tuple[str, float]) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.users = 0
        self._key = key
        self._local = threading.local()
        self._threads: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.checked = _identity(path)  # the file the stores checked (they check at opening)

    def connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so that the last close may close every thread's; each
        # connection is still used by its own thread alone
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return conn

    def conn(self, check: Callable[[], None]) -> sqlite3.Connection:
        """This thread's connection to the file at the path now. A file replaced or removed
        since the connection opened it (the connection would go on using the old one, which
        no other process sees) is opened anew, after ``check`` vets (or creates) it."""
        mine: _ThreadConnection | None = getattr(self._local, "conn", None)
        file = _identity(self.path)
        if mine is not None and mine.pid == os.getpid():
            if mine.file == file:
                return mine.conn
            mine.close()
        if file is None or file != self.checked:
            check()  # StorageError for a file that is not ours, left untouched
            file = self.checked = _identity(self.path)
        mine = self._local.conn = _ThreadConnection(self.connect(), file)
        with self._lock:
            self._threads.add(mine)
        return mine.conn

    def release(self) -> None:
        with _DATABASES_LOCK:
            self.users -= 1
            if self.users > 0:
                return
            if _DATABASES.get(self._key) is self:
                del _DATABASES[self._key]
        with self._lock:
            threads, self._threads = list(self._threads), weakref.WeakSet()
        for mine in threads:
            mine.close()


_DATABASES: dict[tuple[str, float], _Database] = {}
_DATABASES_LOCK = threading.Lock()


def _database(path: Path, busy_timeout: float) -> _Database:
    key = (os.path.realpath(path), busy_timeout)
    with _DATABASES_LOCK:
        database = _DATABASES.get(key)
        if database is None:
            database = _DATABASES[key] = _Database(path, busy_timeout, key)
        database.users += 1
        return database


class SQLiteStore(AsyncFromSync):
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
        self._decisions = 0
        self._check_and_create()
        self._db: _Database | None = _database(self.path, self.busy_timeout)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- connections -----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"{self.url}: the store was closed")
        return self._db.conn(self._check_and_create)

    def close(self) -> None:
        """Done with the store: the last store of the file closes its connections (idempotent)."""
        db, self._db = self._db, None
        if db is not None:
            db.release()

    def _check_and_create(self) -> None:
        if self.path.is_dir():
            raise StorageError(f"{self.path} is a directory, not a buttress state database")
        if self.path.parent and not self.path.parent.exists():
            raise StorageError(f"{self.path}: the directory {self.path.parent} does not exist")
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
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
                _to_wal(conn, self.busy_timeout)
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
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise StorageError(
                    f"{self.path} is not a usable SQLite database ({exc}); buttress will not "
                    "overwrite it"
                ) from None
            raise StorageUnavailable(
                f"{self.path}: another process held the file for longer than busy_timeout "
                f"({self.busy_timeout:g} s) while it was opened ({exc})"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"{self.path} is not a usable SQLite database ({exc}); buttress will not "
                "overwrite it"
            ) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with _translated(self.path):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
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
        self, name: str, key: Key, params: Params, cost: int, max_wait: float, now: Now = None
    ) -> tuple[bool, float]:
        """One rate-limit decision (see :class:`buttress.backends.base.Store`)."""
        now = wall_time() if now is None else now
        k = _key(key)
        with self._transaction() as conn:
            record = self._load(conn, "ratelimit", name, k)
            state, until = _rate_record(record, self.path, name, k, now)
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

    def block(self, name: str, key: Key, seconds: float, now: Now = None) -> None:
        """Refuse ``key`` of ``name`` for ``seconds`` (a later block already set wins)."""
        now = wall_time() if now is None else now
        seconds = block_seconds(seconds)
        k = _key(key)
        with self._transaction() as conn:
            record = self._load(conn, "ratelimit", name, k)
            state, until = _rate_record(record, self.path, name, k, now)
            until = max(until or 0.0, now + seconds)
            row = conn.execute(
                "SELECT expires FROM buttress_state WHERE kind = 'ratelimit' AND name = ? "
                "AND key = ?",
                (name, k),
            ).fetchone()
            expires = until if row is None or row[0] is None else max(until, row[0])
            record = {"s": list(state or ()), "b": until}
            self._save(conn, "ratelimit", name, k, record, expires)

    def reset(self, name: str, key: Key = None) -> None:
        """Forget the state and any block of ``key`` of ``name``."""
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM buttress_state WHERE kind = 'ratelimit' AND name = ? AND key = ?",
                (name, _key(key)),
            )

    # -- circuit breakers ------------------------------------------------------------------------

    def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: Now = None
    ) -> BreakerReply:
        """One breaker step on the stored state (see :func:`apply_breaker`)."""
        now = wall_time() if now is None else now
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

    # -- target pools ----------------------------------------------------------------------------

    def targets(self, pool: str) -> dict[str, str]:
        """Every target state of ``pool`` (see :class:`~buttress.backends.base.TargetStore`)."""
        with _translated(self.path):
            rows = self._conn().execute(
                "SELECT key, state FROM buttress_state WHERE kind = 'target' AND name = ?", (pool,)
            )
            return {str(key): str(state) for key, state in rows}

    def swap_target(
        self, pool: str, name: str, old: str | None, new: str
    ) -> tuple[bool, str | None]:
        """Store ``new`` as target ``name`` of ``pool`` if it is still ``old`` (compare-and-set)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT state FROM buttress_state WHERE kind = 'target' AND name = ? AND key = ?",
                (pool, name),
            ).fetchone()
            current = None if row is None else str(row[0])
            if current != old:
                return False, current
            conn.execute(
                "INSERT OR REPLACE INTO buttress_state (kind, name, key, state, expires) "
                "VALUES ('target', ?, ?, ?, NULL)",
                (pool, name, new),
            )
            return True, new

    # -- resource verdicts ----------------------------------------------------------------------

    def publish_verdicts(
        self, space: str, verdicts: dict[str, tuple[str, float, float]], now: Now = None
    ) -> None:
        """Store each verdict unless a newer one is stored and valid (see
        :class:`~buttress.backends.base.VerdictStore`); expired verdicts are swept meanwhile."""
        now = wall_time() if now is None else now
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM buttress_state WHERE kind = 'verdict' AND name = ? AND expires <= ?",
                (space, now),
            )
            for key, (record, at, ttl) in verdicts.items():
                row = conn.execute(
                    "SELECT state FROM buttress_state WHERE kind = 'verdict' AND name = ? "
                    "AND key = ?",
                    (space, key),
                ).fetchone()
                if row is not None and _verdict_at(row[0]) > at:
                    continue
                conn.execute(
                    "INSERT OR REPLACE INTO buttress_state (kind, name, key, state, expires) "
                    "VALUES ('verdict', ?, ?, ?, ?)",
                    (space, key, f"{at!r}|{record}", now + ttl),
                )

    def verdicts(self, space: str, now: Now = None) -> dict[str, tuple[str, float]]:
        """The unexpired verdicts of ``space``: ``key -> (record, seconds left)``."""
        now = wall_time() if now is None else now
        with _translated(self.path):
            rows = self._conn().execute(
                "SELECT key, state, expires FROM buttress_state WHERE kind = 'verdict' "
                "AND name = ? AND expires > ?",
                (space, now),
            )
            return {
                str(key): (str(state).partition("|")[2], float(expires) - now)
                for key, state, expires in rows
            }

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file (``"ok"`` when sound)."""
        with _translated(self.path):
            row = self._conn().execute("PRAGMA integrity_check").fetchone()
        return str(row[0])


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _to_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to the WAL journal, retrying the refusals of a concurrent switch (see the
    module notes) for up to ``busy_timeout`` seconds."""
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    """SQLite's exceptions as the store's: a busy, locked, unopenable or full file is an outage."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StorageUnavailable(f"{path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: {exc}") from exc


def _verdict_at(stored: object) -> float:
    """The reading time a stored verdict (``"<at>|<record>"``) carries (unreadable: the oldest)."""
    try:
        return float(str(stored).partition("|")[0])
    except ValueError:
        return -math.inf


def _rate_record(
    record: Any, path: Path, name: str, key: str, now: float
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
        values = [float(x) for x in state]
        block = None if until is None else float(until)
        problem = state_problem(values, block, now)
        if problem is not None:
            raise ValueError(problem)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise StorageError(
            f"{path}: the stored rate-limit state of {name!r} (key {key}) is malformed: {exc}"
        ) from None
    return (values or None), block
