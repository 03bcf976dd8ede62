"""Queued requests in an SQLite file, shared by the processes of one machine.

Theory of operation
-------------------
The queue's tables live beside buttress's state tables (``buttress_meta`` records their schema
version under ``queue_schema_version``): the default file is the one ``sqlite://`` names. Every
step is one ``BEGIN IMMEDIATE`` transaction, so producers and consumers in several processes
serialise on SQLite's write lock; ``busy_timeout`` makes one wait for another (bounded) instead
of failing at once, and the WAL journal keeps readers out of the writers' way.

Durability: ``synchronous=NORMAL`` by default, chosen deliberately. In WAL mode a transaction
is durable against the death of the process (SIGKILL, a crash, an exception anywhere) as soon as
it commits: a put that returned is queued, an acknowledgement that committed is done. What
NORMAL risks is a power loss or an OS crash: the commits since the last checkpoint's fsync may be
lost (a put reported done that is then not queued, a handled request that runs again under its
idempotency key). The database is never corrupted. ``synchronous="full"`` makes every commit wait
for the disk and survive power loss too, at the price of an fsync per put and per claim.

Checkpoints. A checkpoint copies the WAL's pages into the database file; under NORMAL it is
where SQLite fsyncs (the WAL, then the file). Left to SQLite, the commit that takes the WAL past
1000 pages runs it, copying every page since the last one, and that put waits for it. Here every
``CHECKPOINT_EVERY`` commits of a store wake a thread of its own that runs a passive checkpoint
on its own connection while writers go on (a passive checkpoint takes no lock a writer waits
for). The writers keep SQLite's automatic checkpoint at ``BACKSTOP_PAGES`` (1000): a passive
checkpoint beside a busy writer never finds the WAL fully copied, and only a complete one lets
the next writer start the WAL over, so the writer's own checkpoint still bounds the WAL's size,
but it finds most pages already copied and synced. The WAL is synced at least as often as
before, so what a power loss may take is unchanged.

What each step writes. A put is one statement (one implicit transaction) that writes two pages:
the row and its key's entry in the unique ``(queue, key)`` index, the least an idempotent queue
can write (the bare-INSERT floor writes the row and the AUTOINCREMENT counter). So the depth is
not counted by triggers: each queue numbers its items in a range of rowids of its own (see
``RANGE_BITS``): the largest id's distance from the range's start (one probe of the rowid)
bounds the queue's depth from above, and past ``max_depth`` so does the span of ids in the range
(``MAX(id) - MIN(id) + 1``, one more probe); only a queue whose span reaches ``max_depth`` counts
its rows exactly. An item's id is one past the largest in its range: an id freed by an item
handled may be given again, so steps that could meet a reused id check the owner (renew, fail)
or go by key (acknowledgement). A claim walks its queue's range in id order, so the items of
other queues in the same file cost it nothing.

Done keys. A handled request's row stays, moved to the upper half of its queue's range with its
arguments dropped and ``done_until`` set (``done_for`` ahead): its key stays in the unique index,
so a put of a done key is refused by the same index probe as a put of a queued one, with no
table of done keys to check, and an acknowledgement rewrites the row's index entry in place
instead of deleting it there and inserting the key in another B-tree at another random page.
The done half is in the order of acknowledgement, so keys past their time are swept from its
front, a bounded slice at a time. A put whose key is done but past its time deletes that row and
is queued.

A claim takes up to ``limit`` items in one transaction (one commit for a batch). A consumer does
not commit each acknowledgement on its own: :class:`~buttress.queue.RequestQueue` keeps the
``(id, key)`` of the requests it handled and commits them with its next claim, in the same
transaction (:meth:`SQLiteQueueStore.ack_and_claim`), or on their own (:meth:`ack_many`) when it
stops consuming or at the next heartbeat. An acknowledgement turns the item into its done key in
one step, so a request is never both gone and not done. What a crash may
re-run: the requests handled since the last such commit, at most one claimed batch (16 by
default) and at most one heartbeat interval's worth, each under its key with its attempt raised;
a handler that makes its effect idempotent by the key repeats no effect.

Opening checks the file first and never touches one that is not buttress's: a file that is not an
SQLite database, one with tables buttress does not know, or the queue tables at another schema
version raise :class:`StorageError` naming the path. A file of an older version is upgraded in
one transaction when a newer buttress opens it; processes of the older version that still hold
it open then fail their steps (``StorageUnavailable``), so the processes sharing a file are
upgraded together.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..backends.base import StorageError, StorageUnavailable
from ..backends.sqlite import SQLiteStore, _busy
from ..clock import get_clock
from .store import LEASE_RAN_OUT, Claimed, Item, Row, Stats, settle_failure

__all__ = ["QUEUE_SCHEMA_VERSION", "SQLiteQueueStore"]

QUEUE_SCHEMA_VERSION = 3
# version 1 kept the depth in buttress_queue_counts by triggers and numbered items with
# AUTOINCREMENT (two more pages written by every put) and deleted a handled item by a trigger.
# Its tables read as version 2's once the triggers are gone. Version 2 numbered the items of
# every queue in one sequence and kept done keys in buttress_queue_done; version 3 gives each
# queue a range of rowids (see _range), with its done keys in the range's upper half. Opening an
# older file renumbers its items into their queues' ranges, in their order, and moves its done
# keys into the done halves (a queued item whose key is done goes: it would never run).
_MIGRATE_1 = (
    "DROP TRIGGER IF EXISTS buttress_queue_added; DROP TRIGGER IF EXISTS buttress_queue_removed; "
    "DROP TRIGGER IF EXISTS buttress_queue_handled;"
)
_STATE_TABLES = {"buttress_meta", "buttress_state"}
_QUEUE_TABLES = {
    "buttress_queue",
    "buttress_queue_dead",
    "buttress_queue_done",
    "buttress_queue_counts",
}
_KNOWN = _STATE_TABLES | _QUEUE_TABLES | {"sqlite_sequence"}
_COLUMNS = (
    "id, key, handler, args, resource, enqueued, expires, attempts, visible, owner, "
    "first_error, first_error_at, last_error, last_error_at"
)
# The types buttress writes in a queued row's fields (the NOT NULL ones never NULL), as Python
# reads them. A row another program wrote may hold text where a time or a count goes: such a row
# is claimed like any other (a text ``visible`` too, which ``visible <= now`` never matches) and
# goes to the dead letters, naming its field, instead of failing every claim of its queue. (The
# claim checks the types in Python: the same test in the claim's SQL cost 2.9 µs per row.)
_NONE = type(None)
_TYPES: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "handler": (str,),
    "args": (str,),
    "resource": (_NONE, str),
    "enqueued": (int, float),
    "expires": (_NONE, int, float),
    "attempts": (int,),
    "visible": (int, float),
    "owner": (_NONE, str),
    "first_error": (_NONE, str),
    "first_error_at": (_NONE, int, float),
    "last_error": (_NONE, str),
    "last_error_at": (_NONE, int, float),
}
_NUMBER = frozenset((int, float))
_NUMBER_OR_NONE = frozenset((int, float, _NONE))
_TEXT_OR_NONE = frozenset((str, _NONE))


def _unsound(row: Any) -> bool:
    """Whether a claimed row (``_COLUMNS``) holds a field of another type than buttress writes."""
    return (
        type(row[7]) is not int
        or type(row[8]) not in _NUMBER
        or type(row[5]) not in _NUMBER
        or type(row[1]) is not str
        or type(row[2]) is not str
        or type(row[3]) is not str
        or type(row[4]) not in _TEXT_OR_NONE
        or type(row[6]) not in _NUMBER_OR_NONE
        or type(row[9]) not in _TEXT_OR_NONE
        or type(row[10]) not in _TEXT_OR_NONE
        or type(row[11]) not in _NUMBER_OR_NONE
        or type(row[12]) not in _TEXT_OR_NONE
        or type(row[13]) not in _NUMBER_OR_NONE
    )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS buttress_queue (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    handler TEXT NOT NULL,
    args TEXT NOT NULL,
    resource TEXT,
    enqueued REAL NOT NULL,
    expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible REAL NOT NULL,
    owner TEXT,
    first_error TEXT,
    first_error_at REAL,
    last_error TEXT,
    last_error_at REAL,
    done_until REAL,
    UNIQUE (queue, key)
);
CREATE INDEX IF NOT EXISTS buttress_queue_resource ON buttress_queue (queue, resource, id)
    WHERE resource IS NOT NULL;
CREATE INDEX IF NOT EXISTS buttress_queue_expires ON buttress_queue (queue, expires)
    WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS buttress_queue_dead (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    handler TEXT NOT NULL,
    args TEXT NOT NULL,
    resource TEXT,
    enqueued REAL NOT NULL,
    expires REAL,
    attempts INTEGER NOT NULL,
    visible REAL NOT NULL,
    owner TEXT,
    first_error TEXT,
    first_error_at REAL,
    last_error TEXT,
    last_error_at REAL,
    died REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS buttress_queue_counts (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (queue, name)
) WITHOUT ROWID;
"""
_SYNCHRONOUS = ("off", "normal", "full", "extra")
# acknowledgements between sweeps of the queue's done keys past their time. A sweep looks at the
# SWEEP_SPAN oldest done keys (the front of the done half, in acknowledgement order) and deletes
# those past their time: bounded work under the write lock, however many keys are done (7 days
# of them by default). A key past its time may stay until a sweep reaches it; its time is checked
# wherever it is read.
SWEEP_EVERY = 1000
SWEEP_SPAN = 2000
# commits of a store between its background checkpoints (a put writes two pages, a claim a few)
CHECKPOINT_EVERY = 100
BACKSTOP_PAGES = 1000  # wal_autocheckpoint of the store's own connections (SQLite's default)
# this process's id, kept by a fork hook: a connection must not cross a fork, and os.getpid() is
# a system call per step
_PID = [os.getpid()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
_CHUNK = 300  # rows per statement (three parameters each, well below SQLite's limit)
# Item ids. Each queue numbers its items in a range of rowids of its own, chosen by a hash of its
# name: RANGE_BITS low bits count, the bits above them name the range (2**16 ranges, the first
# left unused). So the items of one queue sit together in the table's rowid order, and a claim
# walks its own queue's range instead of every queue's rows (several queues share the default
# file). The lower half of a range holds queued items, the upper half done keys. A new item (a
# done key) takes one past the largest id in its half; two queues whose names share a range
# share its numbers (every step also checks the queue's name). The ids a store hands out count
# from 1 within the range. A half holds 2**45 ids. The queued half numbers from its start again
# whenever the queue is empty, and a put into a queue that used it all up without ever emptying
# is refused; a done half used up is renumbered from its start (_compact_done).
RANGE_BITS = 46
_RANGE_SLOTS = 1 << 16


def _range(queue: str) -> int:
    """The first rowid of ``queue``'s range (its items are numbered from one past it)."""
    digest = hashlib.blake2b(queue.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (1 + int.from_bytes(digest, "big") % (_RANGE_SLOTS - 1)) << RANGE_BITS


_QUEUED_LAST = (1 << (RANGE_BITS - 1)) - 1  # the last id of the queued half, from the start
_DONE_FIRST = 1 << (RANGE_BITS - 1)  # the first id of the done half, from the range's start
_LAST = (1 << RANGE_BITS) - 1  # the last id of a range, counted from its start
# ?9 and ?10 are the queued half's first and last rowids, ?11 the depth bound. The new id is one
# past the largest in the half (a half used up gives its last id again). A put past the depth
# bound gives the largest id itself. Either is taken, so INSERT OR IGNORE skips the row, as it
# does for a taken key (queued or done). The ids are above the half's start, so while the
# largest is less than max_depth past it the depth is below the bound with no further probe
# (SQLite evaluates a subquery only where its OR reaches it). Past that, the span of the half's
# ids bounds the depth from above in one more probe of the rowid; the exact count runs only when
# that bound reaches the limit.
# The largest id is read once, in a FROM subquery. (A VALUES row rather than INSERT ... SELECT:
# a SELECT that reads the table it fills is first copied to a temporary table, every put.)
_HALF = "id BETWEEN ?9 AND ?10"
_INSERT = (
    "INSERT OR IGNORE INTO buttress_queue (id, queue, key, handler, args, resource, enqueued, "
    "expires, visible) VALUES "
)
_PUT = (
    f"{_INSERT}((SELECT CASE WHEN top IS NULL THEN ?9 + 1 WHEN top - ?9 < ?11 OR top - (SELECT "
    f"MIN(id) FROM buttress_queue WHERE {_HALF}) < ?11 - 1 OR (SELECT COUNT(*) FROM "
    f"buttress_queue WHERE {_HALF} AND +queue = ?1) < ?11 THEN min(top + 1, ?10) "
    f"ELSE top END FROM (SELECT MAX(id) AS top FROM buttress_queue WHERE {_HALF})), "
    "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
)
# the same for a queue without a depth limit
_PUT_UNBOUNDED = (
    f"{_INSERT}(min(COALESCE((SELECT MAX(id) FROM buttress_queue WHERE {_HALF}), ?9) + 1, "
    "?10), ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
)


class _Checkpointer:
    """Passive checkpoints of one database file, run by a daemon thread each time it is poked.

    The thread starts at the first poke (again in a forked child: threads do not cross a fork)
    and ends at :meth:`stop`. A checkpoint that fails (the file busy or gone) is counted and
    left to the next one or to the writers' automatic checkpoint.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self.runs = 0  # checkpoints run
        self.failures = 0
        self._wake = threading.Event()
        self._ran = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopped = False
        self._lock = threading.Lock()

    def poke(self) -> None:
        if self._pid != _PID[0]:
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == _PID[0] or self._stopped:
                return
            self._wake = threading.Event()
            self._pid = _PID[0]
            self._thread = threading.Thread(
                target=self._run, args=(self._wake,), name="buttress-queue-checkpoint", daemon=True
            )
            self._thread.start()

    def _run(self, wake: threading.Event) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error:
            self.failures += 1
            return
        try:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            while True:
                wake.wait()
                wake.clear()
                if self._stopped:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    self.failures += 1
                with self._ran:
                    self.runs += 1
                    self._ran.notify_all()
        except sqlite3.Error:
            self.failures += 1
        finally:
            conn.close()

    def wait_for(self, runs: int, timeout: float) -> bool:
        """Wait until ``runs`` checkpoints have run (at most ``timeout`` seconds)."""
        with self._ran:
            return self._ran.wait_for(lambda: self.runs >= runs, timeout)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and self._pid == _PID[0] and thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and self._pid == _PID[0] and thread is not threading.current_thread():
            thread.join(timeout)


class SQLiteQueueStore:
    """Queues in the SQLite file at ``path`` (created if missing).

    Args:
        path: the database file (may be the state file of ``sqlite://`` stores).
        busy_timeout: seconds a step waits for another process's transaction before raising
            :class:`StorageUnavailable`.
        synchronous: SQLite's ``synchronous`` setting: ``"normal"`` (default, see the module
            notes) or ``"full"`` (each commit survives power loss); ``"off"`` for throwaway work.

    Raises:
        StorageError: the file is not buttress's (it is left untouched).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        synchronous: str = "normal",
    ) -> None:
        self.path = Path(path)
        if not isinstance(busy_timeout, int | float) or not 0 < busy_timeout < 1e9:
            raise ValueError(
                f"busy_timeout must be a positive number of seconds, got {busy_timeout!r}"
            )
        if not isinstance(synchronous, str) or synchronous.lower() not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            )
        self.busy_timeout = float(busy_timeout)
        self.synchronous = synchronous.lower()
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._acks = 0
        self._closed = False
        self._commits = 0
        self._starts: dict[str, int] = {}  # queue: the first rowid of its range
        self.checkpointer = _Checkpointer(self.path, self.synchronous)
        self._check_and_create()
        self._commits = 0  # the queue's own commits from here

    def __repr__(self) -> str:
        return f"SQLiteQueueStore({str(self.path)!r})"

    # -- the file ---------------------------------------------------------------------------------

    def _check_and_create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
                try:
                    tables = {
                        row[0]
                        for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                    }
                    version = None
                    if "buttress_meta" in tables:
                        row = conn.execute(
                            "SELECT value FROM buttress_meta WHERE name = 'queue_schema_version'"
                        ).fetchone()
                        version = None if row is None else row[0]
                finally:
                    conn.close()
            except sqlite3.OperationalError as exc:
                if _busy(exc):
                    raise StorageUnavailable(
                        f"{self.path}: another process held the file for longer than "
                        f"busy_timeout ({self.busy_timeout:g} s) while it was opened ({exc})"
                    ) from exc
                raise StorageError(
                    f"{self.path} is not a usable SQLite database ({exc}); buttress will not "
                    "overwrite it"
                ) from None
            except sqlite3.DatabaseError as exc:
                raise StorageError(
                    f"{self.path} is not a usable SQLite database ({exc}); buttress will not "
                    "overwrite it"
                ) from None
            foreign = tables - _KNOWN
            if foreign or (tables and not tables >= _STATE_TABLES):
                raise StorageError(
                    f"{self.path} is an SQLite database of something else (tables: "
                    f"{', '.join(sorted(tables))}); buttress will not write to it"
                )
            if tables & _QUEUE_TABLES and version not in ("1", "2", str(QUEUE_SCHEMA_VERSION)):
                raise StorageError(
                    f"{self.path} holds buttress queues of schema version {version!r}; this "
                    f"version of buttress reads version {QUEUE_SCHEMA_VERSION}"
                )
        SQLiteStore(self.path, busy_timeout=self.busy_timeout).close()  # its checks, its tables
        # one transaction: two processes creating or upgrading the file at once both succeed
        with self._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM buttress_meta WHERE name = 'queue_schema_version'"
            ).fetchone()
            if row is not None and row[0] not in ("1", "2", str(QUEUE_SCHEMA_VERSION)):
                raise StorageError(  # written by a newer buttress since the check above
                    f"{self.path} holds buttress queues of schema version {row[0]!r}; this "
                    f"version of buttress reads version {QUEUE_SCHEMA_VERSION}"
                )
            if row is not None and row[0] in ("1", "2"):
                _upgrade(conn, get_clock().wall())
            conn.execute(
                "INSERT INTO buttress_meta (name, value) VALUES ('queue_schema_version', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (str(QUEUE_SCHEMA_VERSION),),
            )

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError(f"{self.url}: the queue store was closed")
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == _PID[0]:
            return conn
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,  # only so that close() may close every thread's
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
        # a put reuses one cursor of its thread's connection instead of making one per put
        local.conn, local.cursor, local.pid = conn, conn.cursor(), os.getpid()
        with self._lock:
            self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close this store's connections (idempotent); the file stays."""
        self._closed = True
        self.checkpointer.stop()
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
                self._committed()
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"{self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    @contextmanager
    def _mapped(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn()
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"{self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    def _start(self, queue: str) -> int:
        start = self._starts.get(queue)
        if start is None:
            start = self._starts[queue] = _range(queue)
        return start

    def _committed(self) -> None:
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY:
            self._commits = 0
            self.checkpointer.poke()

    # -- steps ------------------------------------------------------------------------------------

    def put(self, queue: str, item: Item, max_depth: int | None, now: float) -> tuple[int, bool]:
        row = (
            item.key,
            item.handler,
            item.args,
            item.resource,
            item.enqueued,
            item.expires,
            item.visible,
        )
        return self.put_row(queue, row, max_depth, now)

    def put_row(self, queue: str, row: Row, max_depth: int | None, now: float) -> tuple[int, bool]:
        """:meth:`put` of the item ``row`` describes (a :data:`~buttress.queue.store.Row`): what
        a queue calls, without building an :class:`Item`."""
        # One statement, so one implicit transaction that writes two pages (the row, its key's
        # index entry), as few as a bare INSERT with a unique key can. The item is added only
        # when its key is not in the unique index (neither queued nor done) and the queue is
        # below its depth (see _PUT): one or two probes of the rowid, the exact count only near
        # the limit.
        start = self._starts.get(queue)
        if start is None:  # (the lookup of _start, inlined: a put is the hot path)
            start = self._start(queue)
        params: tuple[object, ...]
        if max_depth is None:
            sql, params = _PUT_UNBOUNDED, (queue, *row, start, start + _QUEUED_LAST)
        else:
            sql, params = _PUT, (queue, *row, start, start + _QUEUED_LAST, max_depth)
        try:
            local = self._local  # (the lookup of _conn, inlined)
            cursor = getattr(local, "cursor", None)
            if cursor is None or local.pid != _PID[0] or self._closed:
                self._conn()  # (opening one may fail as a step does)
                cursor = local.cursor
            for _ in range(2):
                cursor.execute(sql, params)
                if cursor.rowcount:
                    self._commits += 1
                    if self._commits >= CHECKPOINT_EVERY:
                        self._commits = 0
                        self.checkpointer.poke()
                    return cursor.lastrowid - start, True
                found = cursor.execute(
                    "SELECT id, done_until FROM buttress_queue WHERE queue = ? AND key = ?",
                    (queue, row[0]),
                ).fetchone()
                if found is None:
                    return -1, False  # the depth bound refused it
                if found[1] is None:
                    return int(found[0]) - start, False  # queued already
                if found[1] > now:
                    return 0, False  # done
                # done, but remembered past its time (not swept yet): forget it, queue again
                cursor.execute(
                    "DELETE FROM buttress_queue WHERE id = ? AND done_until <= ?",
                    (found[0], now),
                )
            return -1, False
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"{self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    def claim(
        self, queue: str, owner: str, now: float, lease: float, limit: int, max_attempts: int
    ) -> Claimed:
        with self._transaction() as conn:
            return self._claim(conn, queue, owner, now, lease, limit, max_attempts)

    def ack_and_claim(
        self,
        queue: str,
        handled: list[tuple[int, str]],
        done_until: float,
        owner: str,
        now: float,
        lease: float,
        limit: int,
        max_attempts: int,
    ) -> Claimed:
        """Acknowledge ``handled`` (``(id, key)`` pairs) and claim, in one transaction."""
        with self._transaction() as conn:
            self._ack(conn, queue, handled, now, done_until)
            return self._claim(conn, queue, owner, now, lease, limit, max_attempts)

    def _claim(
        self,
        conn: sqlite3.Connection,
        queue: str,
        owner: str,
        now: float,
        lease: float,
        limit: int,
        max_attempts: int,
    ) -> Claimed:
        out = Claimed()
        cursor = conn.execute(
            "DELETE FROM buttress_queue WHERE queue = ? AND expires IS NOT NULL AND expires <= ?",
            (queue, now),
        )
        out.expired = cursor.rowcount
        if out.expired:
            _count(conn, queue, "expired", out.expired)
        # a resource's items go one at a time, oldest first: only its head may be claimed.
        # (+queue: walk the queue's range in id order rather than sort the queue's rows by id)
        start = self._start(queue)
        # (a queued item's key is never done: both are one row, one key in the unique index)
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM buttress_queue q WHERE id BETWEEN ? AND ? AND +queue = ? "
            "AND (visible <= ? OR typeof(visible) = 'text' OR typeof(visible) = 'blob') AND "
            "(resource IS NULL OR id = (SELECT MIN(id) FROM buttress_queue h WHERE h.queue = "
            "q.queue AND h.resource = q.resource AND h.resource IS NOT NULL)) ORDER BY id LIMIT ?",
            (start, start + _QUEUED_LAST, queue, now, limit),
        ).fetchall()
        for row in rows:
            item = _item(row)
            if _unsound(row):  # a field of another type than buttress writes (see _TYPES)
                item.malformed = _flaw(item)
                item.attempts = item.attempts + 1 if type(item.attempts) is int else 1
                item.owner, item.visible = owner, now + lease
                out.items.append(item)  # delivered to run nothing: to the dead letters
            elif item.owner is not None and item.attempts >= max_attempts:
                # a delivery that failed by its worker's death, with no attempt left
                settle_failure(item, item.owner, LEASE_RAN_OUT, now, None)
                _bury(conn, item, now)
                out.dead += 1
            else:
                # its lease ran out: its worker died holding it, and perhaps because of it
                suspect = item.owner is not None
                if suspect and out.items:
                    break  # delivered alone, by a later claim
                item.attempts += 1
                item.owner = owner
                item.visible = now + lease
                out.items.append(item)
                if suspect:
                    break
        for chunk in range(0, len(out.items), _CHUNK):
            ids = [item.id for item in out.items[chunk : chunk + _CHUNK]]
            conn.execute(
                "UPDATE buttress_queue SET attempts = attempts + 1, owner = ?, visible = ? "
                f"WHERE id IN ({', '.join('?' * len(ids))})",
                (owner, now + lease, *ids),
            )
        for item in out.items:
            item.id -= start
        return out

    def renew(self, queue: str, owner: str, ids: list[int], until: float) -> list[int]:
        if not ids:
            return []
        held = []
        start = self._start(queue)
        with self._transaction() as conn:
            for item_id in ids:
                cursor = conn.execute(
                    "UPDATE buttress_queue SET visible = ? WHERE id = ? AND owner = ?",
                    (until, start + item_id, owner),
                )
                if cursor.rowcount:
                    held.append(item_id)
        return held

    def ack(self, queue: str, item_id: int, key: str, now: float, done_until: float) -> None:
        with self._transaction() as conn:
            self._ack(conn, queue, [(item_id, key)], now, done_until)

    def ack_many(
        self, queue: str, handled: list[tuple[int, str]], now: float, done_until: float
    ) -> None:
        """Acknowledge ``handled`` (``(id, key)`` pairs) in one transaction."""
        with self._transaction() as conn:
            self._ack(conn, queue, handled, now, done_until)

    def _ack(
        self,
        conn: sqlite3.Connection,
        queue: str,
        handled: list[tuple[int, str]],
        now: float,
        done_until: float,
    ) -> None:
        # by key, not id: an id may name another item by now (a lease that ran out, an item
        # handled elsewhere, its id reused), a key cannot (it is done, so not queued again).
        # Each row moves to the end of the done half, in the order handled.
        start = self._start(queue)
        first, last = start + _DONE_FIRST, start + _LAST
        keys = [key for _, key in handled]
        (top,) = conn.execute(
            "SELECT MAX(id) FROM buttress_queue WHERE id BETWEEN ? AND ?", (first, last)
        ).fetchone()
        next_id = first if top is None else top + 1
        if next_id + 2 * len(keys) > last:
            next_id = _compact_done(conn, first, last)
        cursor = conn.executemany(
            "UPDATE buttress_queue SET id = ?, done_until = ?, args = '', resource = NULL, "
            "expires = NULL, owner = NULL WHERE queue = ? AND key = ?",
            [(next_id + i, done_until, queue, key) for i, key in enumerate(keys)],
        )
        if cursor.rowcount < len(keys):
            # rows gone meanwhile (buried by another consumer, expired): their requests ran,
            # so their keys are done all the same
            self._remember(conn, queue, keys, next_id + len(keys), done_until)
        before, self._acks = self._acks, self._acks + len(handled)
        if before // SWEEP_EVERY != self._acks // SWEEP_EVERY:
            self._sweep(conn, queue, now)

    def _remember(
        self, conn: sqlite3.Connection, queue: str, keys: list[str], next_id: int, until: float
    ) -> None:
        """Record as done those of ``keys`` that have no row in ``queue``."""
        present: set[str] = set()
        for chunk in range(0, len(keys), _CHUNK):
            part = keys[chunk : chunk + _CHUNK]
            present.update(
                key
                for (key,) in conn.execute(
                    "SELECT key FROM buttress_queue WHERE queue = ? AND key IN "
                    f"({', '.join('?' * len(part))})",
                    (queue, *part),
                )
            )
        missing = [key for key in dict.fromkeys(keys) if key not in present]
        conn.executemany(
            "INSERT OR IGNORE INTO buttress_queue (id, queue, key, handler, args, enqueued, "
            "visible, done_until) VALUES (?, ?, ?, '', '', ?, ?, ?)",
            [(next_id + i, queue, key, until, until, until) for i, key in enumerate(missing)],
        )

    def _sweep(self, conn: sqlite3.Connection, queue: str, now: float) -> None:
        """Delete the done keys past their time among the ``SWEEP_SPAN`` oldest of ``queue``'s
        range (the front of its done half)."""
        start = self._start(queue)
        conn.execute(
            "DELETE FROM buttress_queue WHERE id IN (SELECT id FROM buttress_queue WHERE id "
            "BETWEEN ? AND ? ORDER BY id LIMIT ?) AND done_until <= ?",
            (start + _DONE_FIRST, start + _LAST, SWEEP_SPAN, now),
        )

    def fail(
        self,
        queue: str,
        item_id: int,
        owner: str,
        error: str,
        now: float,
        retry_at: float | None,
    ) -> str:
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM buttress_queue WHERE id = ? AND queue = ?",
                (self._start(queue) + item_id, queue),
            ).fetchone()
            item = None if row is None else _item(row)
            outcome = settle_failure(item, owner, error, now, retry_at)
            if outcome == "dead" and item is not None:
                _bury(conn, item, now)
            elif outcome == "retry" and item is not None:
                conn.execute(
                    "UPDATE buttress_queue SET owner = NULL, visible = ?, first_error = ?, "
                    "first_error_at = ?, last_error = ?, last_error_at = ? WHERE id = ?",
                    (
                        retry_at,
                        item.first_error,
                        item.first_error_at,
                        item.last_error,
                        item.last_error_at,
                        item.id,
                    ),
                )
            return outcome

    def is_done(self, queue: str, key: str, now: float) -> bool:
        with self._mapped() as conn:
            row = conn.execute(
                "SELECT 1 FROM buttress_queue WHERE queue = ? AND key = ? AND done_until > ?",
                (queue, key, now),
            ).fetchone()
        return row is not None

    def backlog(self, queue: str, now: float) -> tuple[int, int]:
        """The depth and the dead letters of ``queue`` (:meth:`stats` without the done keys)."""
        start = self._start(queue)
        with self._mapped() as conn:
            (depth,) = conn.execute(
                "SELECT COUNT(*) FROM buttress_queue WHERE id BETWEEN ? AND ? AND +queue = ?",
                (start, start + _QUEUED_LAST, queue),
            ).fetchone()
            (dead,) = conn.execute(
                "SELECT COUNT(*) FROM buttress_queue_dead WHERE queue = ?", (queue,)
            ).fetchone()
        return int(depth), int(dead)

    def stats(self, queue: str, now: float) -> Stats:
        start = self._start(queue)
        with self._mapped() as conn:
            # the queue's range in rowid order: five times faster than its rows by the key index
            waiting, in_flight, delayed = conn.execute(
                "SELECT COALESCE(SUM(visible <= ?), 0), "
                "COALESCE(SUM(visible > ? AND owner IS NOT NULL), 0), "
                "COALESCE(SUM(visible > ? AND owner IS NULL), 0) FROM buttress_queue "
                "WHERE id BETWEEN ? AND ? AND +queue = ?",
                (now, now, now, start, start + _QUEUED_LAST, queue),
            ).fetchone()
            (dead,) = conn.execute(
                "SELECT COUNT(*) FROM buttress_queue_dead WHERE queue = ?", (queue,)
            ).fetchone()
            (done,) = conn.execute(
                "SELECT COUNT(*) FROM buttress_queue WHERE id BETWEEN ? AND ? AND +queue = ? "
                "AND done_until > ?",
                (start + _DONE_FIRST, start + _LAST, queue, now),
            ).fetchone()
            row = conn.execute(
                "SELECT value FROM buttress_queue_counts WHERE queue = ? AND name = 'expired'",
                (queue,),
            ).fetchone()
        return Stats(queue, waiting, in_flight, delayed, dead, 0 if row is None else row[0], done)

    def items(self, queue: str, limit: int, dead: bool = False) -> list[Item]:
        with self._mapped() as conn:
            if dead:
                rows = conn.execute(
                    f"SELECT {_COLUMNS}, died FROM buttress_queue_dead WHERE queue = ? "
                    "ORDER BY id LIMIT ?",
                    (queue, limit),
                ).fetchall()
                return [_item(row, True) for row in rows]
            start = self._start(queue)
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM buttress_queue WHERE id BETWEEN ? AND ? AND +queue = ? "
                "ORDER BY id LIMIT ?",
                (start, start + _QUEUED_LAST, queue, limit),
            ).fetchall()
        return [_item(row, False, start) for row in rows]

    def get(self, queue: str, item_id: int, dead: bool = False) -> Item | None:
        table = "buttress_queue_dead" if dead else "buttress_queue"
        extra = ", died" if dead else ""
        start = 0 if dead else self._start(queue)
        if not dead and not 0 < item_id <= _QUEUED_LAST:
            return None
        with self._mapped() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS}{extra} FROM {table} WHERE queue = ? AND id = ?",
                (queue, start + item_id),
            ).fetchone()
        return None if row is None else _item(row, dead, start)

    def replay(self, queue: str, now: float) -> int:
        start = self._start(queue)
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE buttress_queue SET visible = ? WHERE id BETWEEN ? AND ? AND +queue = ? "
                "AND owner IS NULL AND visible > ?",
                (now, start, start + _QUEUED_LAST, queue, now),
            ).rowcount

    def requeue_dead(self, queue: str, ids: list[int] | None, now: float) -> int:
        where, params = _chosen(queue, ids)
        numbered, _ = _chosen(queue, ids, 4)
        start = self._start(queue)
        with self._transaction() as conn:
            # a key done but past its time (not swept yet) would refuse its request: forget it
            keys = [
                k
                for (k,) in conn.execute(
                    f"SELECT key FROM buttress_queue_dead WHERE {where}", params
                )
            ]
            for chunk in range(0, len(keys), _CHUNK):
                part = keys[chunk : chunk + _CHUNK]
                conn.execute(
                    "DELETE FROM buttress_queue WHERE queue = ? AND done_until <= ? AND key IN "
                    f"({', '.join('?' * len(part))})",
                    (queue, now, *part),
                )
            # numbered after the queue's last item, in the order they died
            conn.execute(
                "INSERT OR IGNORE INTO buttress_queue (id, queue, key, handler, args, resource, "
                "enqueued, expires, attempts, visible, owner, first_error, first_error_at, "
                "last_error, last_error_at) SELECT COALESCE((SELECT MAX(id) FROM buttress_queue "
                "WHERE id BETWEEN ?1 AND ?2), ?1) + ROW_NUMBER() OVER (ORDER BY id), queue, key, "
                "handler, args, resource, enqueued, expires, 0, ?3, NULL, first_error, "
                "first_error_at, last_error, last_error_at FROM buttress_queue_dead "
                f"WHERE {numbered} ORDER BY id",
                (start, start + _QUEUED_LAST, now, *params),
            )
            return conn.execute(f"DELETE FROM buttress_queue_dead WHERE {where}", params).rowcount

    def purge_dead(self, queue: str, ids: list[int] | None) -> int:
        where, params = _chosen(queue, ids)
        with self._transaction() as conn:
            return conn.execute(f"DELETE FROM buttress_queue_dead WHERE {where}", params).rowcount

    def queues(self) -> list[str]:
        with self._mapped() as conn:
            rows = conn.execute(
                "SELECT queue FROM buttress_queue UNION SELECT queue FROM buttress_queue_dead "
                "ORDER BY 1"
            ).fetchall()
        return [row[0] for row in rows]


def _upgrade(conn: sqlite3.Connection, now: float) -> None:
    """Bring the queue tables of a file of version 1 or 2 to version 3: each item in its queue's
    range, in order; each done key in the done half of its queue's range, in the order of its
    time; the done keys' table dropped."""
    for statement in _MIGRATE_1.split(";"):
        if statement.strip():
            conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(buttress_queue)")}
    if "done_until" not in columns:
        conn.execute("ALTER TABLE buttress_queue ADD COLUMN done_until REAL")
    rows = conn.execute("SELECT id, queue FROM buttress_queue ORDER BY id").fetchall()
    conn.execute("UPDATE buttress_queue SET id = -id")  # out of every range's way
    last: dict[int, int] = {}  # range: its last id given (queues may share a range)
    moves = []
    for old, queue in rows:
        start = _range(queue)
        new = last[start] = last.get(start, start) + 1
        moves.append((new, -old))
    conn.executemany("UPDATE buttress_queue SET id = ? WHERE id = ?", moves)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "buttress_queue_done" not in tables:
        return
    done = conn.execute(
        "SELECT queue, key, until FROM buttress_queue_done WHERE until > ? ORDER BY until", (now,)
    ).fetchall()
    # a queued item whose key is done would only have been skipped by a claim
    conn.executemany(
        "DELETE FROM buttress_queue WHERE queue = ? AND key = ?", [(q, k) for q, k, _ in done]
    )
    last = {}
    added = []
    for queue, key, until in done:
        start = _range(queue) + _DONE_FIRST
        new = last[start] = last.get(start, start - 1) + 1
        added.append((new, queue, key, until, until, until))
    conn.executemany(
        "INSERT INTO buttress_queue (id, queue, key, handler, args, enqueued, visible, "
        "done_until) VALUES (?, ?, ?, '', '', ?, ?, ?)",
        added,
    )
    conn.execute("DROP TABLE buttress_queue_done")


def _compact_done(conn: sqlite3.Connection, first: int, last: int) -> int:
    """Renumber the done keys between rowids ``first`` and ``last`` from ``first``, in order
    (their half used up); the next id free."""
    rows = conn.execute(
        "SELECT id FROM buttress_queue WHERE id BETWEEN ? AND ? ORDER BY id", (first, last)
    ).fetchall()
    conn.execute("UPDATE buttress_queue SET id = -id WHERE id BETWEEN ? AND ?", (first, last))
    conn.executemany(
        "UPDATE buttress_queue SET id = ? WHERE id = ?",
        [(first + i, -old) for i, (old,) in enumerate(rows)],
    )
    return first + len(rows)


def _chosen(queue: str, ids: list[int] | None, first: int = 1) -> tuple[str, tuple[Any, ...]]:
    """The dead letters of ``queue`` (those of ``ids``, if given): a condition whose parameters
    are numbered from ``first``, and their values."""
    if ids is None:
        return f"queue = ?{first}", (queue,)
    marks = ", ".join(f"?{first + 1 + i}" for i in range(len(ids))) or "NULL"
    return f"queue = ?{first} AND id IN ({marks})", (queue, *ids)


def _item(row: Any, dead: bool = False, start: int = 0) -> Item:
    item = Item(*row[:14])
    item.id -= start
    if dead:
        item.died = row[14]
    return item


def _flaw(item: Item) -> str:
    """What is wrong with the fields of a claimed row that :func:`_unsound` found."""
    names = {_NONE: "NULL", str: "text", int: "integer", float: "real", bytes: "a blob"}
    for name, kinds in _TYPES.items():
        value = getattr(item, name)
        if type(value) not in kinds:
            shown = repr(value)
            shown = shown if len(shown) <= 100 else f"{shown[:100]}..."
            wanted = " or ".join(dict.fromkeys(names[k] for k in kinds))
            return f"its stored field {name!r} is {shown}, not {wanted}"
    return "its stored fields are not of the types buttress writes"


def _count(conn: sqlite3.Connection, queue: str, name: str, n: int) -> None:
    conn.execute(
        "INSERT INTO buttress_queue_counts (queue, name, value) VALUES (?, ?, ?) "
        "ON CONFLICT (queue, name) DO UPDATE SET value = value + excluded.value",
        (queue, name, n),
    )


def _bury(conn: sqlite3.Connection, item: Item, now: float) -> None:
    conn.execute(
        "INSERT INTO buttress_queue_dead (queue, key, handler, args, resource, "
        "enqueued, expires, attempts, visible, owner, first_error, first_error_at, last_error, "
        "last_error_at, died) SELECT queue, key, handler, args, resource, enqueued, expires, "
        "attempts, visible, NULL, ?, ?, ?, ?, ? FROM buttress_queue WHERE id = ?",
        (item.first_error, item.first_error_at, item.last_error, item.last_error_at, now, item.id),
    )
    conn.execute("DELETE FROM buttress_queue WHERE id = ?", (item.id,))
