"""A durable request queue: requests that must run later survive the process that made them.

Theory of operation
-------------------
A request is a handler *name* and JSON arguments (never pickle: a queue outlives the code that
wrote it, and unpickling runs code), an idempotency key, an enqueue time, a count of attempts, an
optional TTL and an optional resource it waits for. Handlers are registered by name
(``@queue.handler("charge")``); a request for a name with no handler, or with arguments JSON
cannot hold, is refused at enqueue, where the caller can still act on it.

Delivery is at least once; effects are exactly once by the idempotency key. A worker *claims*
items: each claim counts an attempt and leases the item for ``visibility_timeout`` seconds, and a
heartbeat renews the leases of the items the worker holds while their handlers run. A worker that
dies stops renewing; its items become visible again when their leases run out and another worker
(or the same one, restarted) takes them: nothing needs unlocking. Each such item is claimed
alone: the worker died holding a batch, perhaps because of one request in it, and only that one
should use up its attempts (``max_attempts`` deaths send it to the dead letters). A handled
request is acknowledged in one step that deletes the item and records its key as *done* (kept for
``done_for`` seconds); an item whose key is done is acknowledged without running, and an enqueue
of a done or queued key adds nothing. On a store where a commit per acknowledgement is the main
cost (SQLite: :class:`~buttress.queue.store.GroupedAcks`), the acknowledgements of a batch are
committed together with the next claim, or when the worker stops consuming, or at the next
heartbeat, whichever comes first; until then their items stay leased, and a crash runs them again
under their keys. A handler receives the key (:func:`current_request`) so that
its own effect can be made idempotent (a unique key in the table it writes): then a worker killed
between the effect and the acknowledgement causes no second effect either.

A failing handler's item is retried after ``retry_delay`` (doubling per attempt, at most
``max_retry_delay``); after ``max_attempts`` attempts (default 5) it moves to the dead letters with
its attempts and its first and last errors and their times, while the rest of the queue flows.
An item whose worker died ``max_attempts`` times goes there too. Items past their TTL are dropped
at the next claim and counted. Items of one resource are handled one at a time in enqueue order.

Replay: :meth:`RequestQueue.replay` handles what is queued now, paced by ``replay_rate`` (a
:class:`buttress.RateLimiter`), so that a dependency that has just recovered is not flooded;
:meth:`RequestQueue.replay_when` does it when a named breaker closes, a resource turns healthy or
a service becomes healthy (hooked on the events the policies already emit).

Storage is chosen like the rest of buttress (``storage=``): SQLite by default (the file
``sqlite://`` names, see :func:`buttress.backends.default_sqlite_path`), ``"memory://"`` for tests,
or a :class:`~buttress.queue.store.QueueStore`. Stores raise only :class:`StorageUnavailable` and
:class:`StorageError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import importlib
import inspect
import itertools
import json
import logging
import math
import os
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from .._config import nonblank
from ..clock import Clock, get_clock
from ..errors import RejectedError, StorageError, StorageUnavailable
from ..events import (
    CircuitStateChanged,
    Event,
    ResourceStatusChanged,
    ServiceHealthChanged,
    add_hook,
    add_reading,
    remove_hook,
)
from ..policies.ratelimit import RateLimitConfig, RateLimiter
from .store import GroupedAcks, Item, MemoryQueueStore, QueueStore, Row, Stats

__all__ = [
    "Item",
    "MemoryQueueStore",
    "QueueFull",
    "QueueStore",
    "QueuedRequest",
    "Request",
    "RequestQueue",
    "Stats",
    "UnknownHandler",
    "current_request",
    "idempotency_key",
    "open_queue_store",
]

F = TypeVar("F", bound=Callable[..., Any])


class QueueFull(RejectedError):
    """The queue holds ``max_depth`` requests; ``retry_after`` is unknown (``None``)."""


class UnknownHandler(ValueError):
    """A request names a handler that is not registered."""


@dataclass(frozen=True, slots=True)
class Request:
    """The request a handler is running (see :func:`current_request`)."""

    id: int
    key: str
    handler: str
    attempt: int
    resource: str | None
    enqueued: float
    queue: str


class QueuedRequest(NamedTuple):
    """What an enqueue did: the item's ``id`` and ``key``; ``added`` is False when the key was
    already queued (``id`` is that item's) or already done (``id`` is 0). A named tuple: every put
    returns one, and it is built in a quarter of the time a frozen dataclass takes."""

    id: int
    key: str
    added: bool


_queued = tuple.__new__  # QueuedRequest without its Python __new__: (cls, (id, key, added))


_log = logging.getLogger("buttress.queue")

# -- readings (metrics) ------------------------------------------------------------------------
# Every open RequestQueue publishes, when metrics are read, what its queue holds ("queue_depth",
# "queue_dead_letters", labelled by the queue's name) and what this process did with its requests
# ("queue_requests", labelled (name, outcome): a count that never goes down, as the counts of a
# queue closed or collected are kept in _FOLDED). Queues of one name share their labels: their
# backlog is read once, their counts are summed.
_LIVE: weakref.WeakSet[RequestQueue] = weakref.WeakSet()
_COUNTS: dict[int, tuple[str, dict[str, int]]] = {}  # the counts of the open queues
_FOLDED: dict[tuple[str, str], int] = {}  # the counts of the queues closed or collected
_COUNTS_LOCK = threading.RLock()  # (a queue may be collected, and unlisted, while it is held)
_TOKENS = itertools.count()


def _unlist(token: int) -> None:
    """Move a queue's counts from the open ones to the folded totals, in one step."""
    with _COUNTS_LOCK:
        entry = _COUNTS.pop(token, None)
        if entry is not None:
            name, counts = entry
            for outcome, count in counts.items():
                _FOLDED[name, outcome] = _FOLDED.get((name, outcome), 0) + count


# A scrape reads the depth and the dead letters one after the other, in one thread, and one
# backlog() of a queue answers both: the first of the two to be read reads every queue's backlog
# and leaves the other part here, under its thread, for the second, which takes it if it is
# fresh. So each scrape reads a backlog once, its two figures come from one read, and scrapes in
# other threads neither take nor leave each other's.
_LEFT: dict[tuple[int, int], tuple[float, list[tuple[Hashable, float]]]] = {}
_LEFT_FOR = 1.0  # seconds a part left for the other reading stays usable
_LEFT_LOCK = threading.Lock()


def _backlog_readings(part: int) -> list[tuple[Hashable, float]]:
    """The depth (``part`` 0) or the dead letters (1) of each open queue, by name."""
    thread = threading.get_ident()
    with _LEFT_LOCK:
        left = _LEFT.pop((thread, part), None)
    now = time.monotonic()
    if left is not None and now - left[0] < _LEFT_FOR:
        return left[1]
    parts: tuple[list[tuple[Hashable, float]], list[tuple[Hashable, float]]] = ([], [])
    read: set[str] = set()
    for queue in list(_LIVE):
        if queue.name in read:
            continue
        read.add(queue.name)
        try:
            backlog = queue.backlog()
        except Exception as exc:  # one store down does not hide the other queues
            _log.warning("reading the backlog of queue %r failed: %s", queue.name, exc)
            continue
        parts[0].append((queue.name, float(backlog[0])))
        parts[1].append((queue.name, float(backlog[1])))
    with _LEFT_LOCK:
        for key in [k for k, (at, _) in _LEFT.items() if now - at >= _LEFT_FOR]:
            del _LEFT[key]  # left by a thread that never read the other part
        _LEFT[thread, 1 - part] = (time.monotonic(), parts[1 - part])
    return parts[part]


def _count_readings() -> list[tuple[Hashable, float]]:
    with _COUNTS_LOCK:
        totals = dict(_FOLDED)
        for name, counts in _COUNTS.values():
            for outcome, count in list(counts.items()):
                totals[name, outcome] = totals.get((name, outcome), 0) + count
    return [(labels, float(count)) for labels, count in totals.items()]


add_reading("queue_depth", lambda: _backlog_readings(0))
add_reading("queue_dead_letters", lambda: _backlog_readings(1))
add_reading("queue_requests", _count_readings)


_CURRENT: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "buttress_queue_request", default=None
)


def current_request() -> Request:
    """The request the calling handler is running (its ``key`` makes effects idempotent).

    Raises:
        LookupError: called outside a queue handler.
    """
    request = _CURRENT.get()
    if request is None:
        raise LookupError("current_request() is only available inside a queue handler")
    return request


# one encoder for every request: json.dumps with options builds a new one per call
_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
).encode


_DECODE = json.JSONDecoder().decode


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The same encoding without JSONEncoder.encode's set-up per call (about a tenth of a put): the C
# encoder, made once. It keeps no markers (a marker left by a failed call would refuse a later
# object at the same address), so a circular structure ends in RecursionError instead.
def _c_encoder() -> Callable[[Any, int], Any] | None:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:  # the private signature of CPython's; anything unexpected: the public encoder
        encode = make(
            None, _not_json, json.encoder.encode_basestring, None, ":", ",", True, False, False
        )
        sample = {"args": [1, 2.5, "é", None, True], "kwargs": {"b": {"y": 1, "x": []}, "a": 0}}
        if "".join(encode(sample, 0)) != _ENCODE(sample):
            return None
    except Exception:
        return None
    return encode  # type: ignore[no-any-return]


_ENCODE_C = _c_encoder()
_NO_KWARGS: dict[str, Any] = {}  # read only


def _own_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (``_sha2`` from 3.12, ``_sha256`` before), else OpenSSL's: the same
    digest, and 0.8 µs less CPU per put between two SQLite commits than OpenSSL's context setup."""
    for name in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256  # pragma: no cover - an interpreter without them


_sha256: Callable[[bytes], hashlib._Hash] = _own_sha256()


def _as_item(row: Row) -> Item:
    # id, key, handler, args, resource, enqueued, expires, attempts, visible (by position)
    return Item(0, row[0], row[1], row[2], row[3], row[4], row[5], 0, row[6])


def _canonical(handler: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
    listed = args if type(args) is list else list(args)
    try:
        if _ENCODE_C is not None:  # the same text as the dict's, without building the dict
            encoded = "".join(_ENCODE_C(listed, 0))
            named = "".join(_ENCODE_C(kwargs, 0)) if kwargs else "{}"
            text = f'{{"args":{encoded},"kwargs":{named}}}'
        else:
            encoded = text = _ENCODE({"args": listed, "kwargs": kwargs})
        # JSON writes a number, bool or None dict key as a string: the handler would receive
        # another dict than the one queued. Only arguments whose text holds an object are walked.
        if "{" in encoded:
            _string_keys(listed)
        if kwargs:
            _string_keys(kwargs)
        return text
    except RecursionError:
        raise TypeError(
            f"the arguments of a request for {handler!r} must be JSON: they are circular or "
            "nested too deeply"
        ) from None
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the arguments of a request for {handler!r} must be JSON (str, numbers, bool, None, "
            f"lists, dicts with str keys; no NaN): {exc}"
        ) from None


def _string_keys(value: Any) -> None:
    """Raise TypeError at a dict key in ``value`` (already encoded, so JSON) that is not a str."""
    if type(value) is dict:
        for key, inner in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"dict key {key!r} is not a string (JSON would make it {str(key)!r})"
                )
            if isinstance(inner, dict | list | tuple):
                _string_keys(inner)
    else:  # a list or tuple
        for inner in value:
            if isinstance(inner, dict | list | tuple):
                _string_keys(inner)


def idempotency_key(handler: str, *args: Any, **kwargs: Any) -> str:
    """The key a request gets when none is given: a hash of the handler and canonical JSON args."""
    body = _canonical(handler, args, kwargs)
    return _sha256(f"{handler}\0{body}".encode()).hexdigest()[:32]


def open_queue_store(spec: object = None) -> QueueStore:
    """The queue store for ``storage=``: None (the default SQLite file), ``"memory://"``,
    ``"sqlite:///path"``, ``"redis://..."`` or a store object.

    Raises:
        ValueError: an unknown or malformed URL.
        TypeError: an object that is not a queue store.
        StorageError: a file that is not buttress's.
    """
    if spec is None:
        spec = "sqlite://"
    if isinstance(spec, str):
        scheme = spec.partition("://")[0].lower() if "://" in spec else ""
        if scheme == "memory":
            if spec.lower() != "memory://":
                raise ValueError(f"storage={spec!r}: a memory store takes no address")
            return MemoryQueueStore()
        if scheme == "sqlite":
            from ..backends import _default_sqlite_file, _sqlite_path
            from .sqlite import SQLiteQueueStore

            if spec.lower() in ("sqlite://", "sqlite:///"):
                path = _default_sqlite_file()
            else:
                path = _sqlite_path(spec, f"storage={spec!r}")
            return SQLiteQueueStore(path)
        if scheme in ("redis", "rediss", "unix") or scheme.startswith(("redis+", "rediss+")):
            from .redis import RedisQueueStore

            return RedisQueueStore(spec)
        raise ValueError(
            f"storage={spec!r}: a queue is stored in 'memory://', 'sqlite:///path/queue.db' or "
            "'redis://host:port/db'"
        )
    if type(spec).__module__.startswith("redis."):
        from .redis import RedisQueueStore

        return RedisQueueStore(spec)
    wanted = ("put", "claim", "renew", "ack", "fail", "stats", "close")
    missing = [name for name in wanted if not callable(getattr(spec, name, None))]
    if missing:
        raise TypeError(
            f"storage must be a URL or a queue store, got {spec!r}: it lacks {', '.join(missing)}"
        )
    return spec  # type: ignore[return-value]


def _positive(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _count(name: str, value: object, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _ids(ids: object) -> list[int] | None:
    """Item ids as given to a dead-letter step: ``None`` (all) or a list of integers."""
    if ids is None:
        return None
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise TypeError(f"ids must be a list of item ids or None, got {ids!r}")
    listed = list(ids)
    for item_id in listed:
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            raise TypeError(f"ids must be integers (item ids), got {item_id!r}")
    return listed


class _Heartbeat:
    """Renews the leases a worker holds, every third of the visibility timeout."""

    def __init__(self, queue: RequestQueue) -> None:
        self._queue = queue
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, ids: list[int]) -> None:
        with self._lock:
            self._held.update(ids)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"buttress-queue-heartbeat-{self._queue.name}",
                    daemon=True,
                )
                self._thread.start()

    def release(self, item_id: int) -> None:
        with self._lock:
            self._held.discard(item_id)

    def release_all(self, ids: list[int]) -> None:
        with self._lock:
            self._held.difference_update(ids)

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def beat(self) -> None:
        q = self._queue
        # acknowledgements waiting for the next claim wait one beat at most
        with contextlib.suppress(StorageUnavailable):
            q._flush_acks()
        with self._lock:
            ids = sorted(self._held)
        if ids:
            # a failed beat is tried again at the next; the lease has two more beats of slack
            with contextlib.suppress(StorageUnavailable):
                q._store.renew(q.name, q.owner, ids, q._wall() + q.visibility_timeout)

    def _run(self) -> None:
        interval = self._queue.visibility_timeout / 3
        while not self._stop.wait(interval):
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
            self.beat()


class RequestQueue:
    """A named durable queue of requests for registered handlers.

    Args:
        name: the queue's name (several queues share one store).
        storage: where it lives (see :func:`open_queue_store`; default: the SQLite state file).
        max_depth: requests it may hold; past it, enqueue raises :class:`QueueFull`.
        visibility_timeout: seconds a claimed item stays leased without a heartbeat.
        max_attempts: deliveries before an item goes to the dead letters.
        ttl: default seconds a request may wait before it is dropped (None: forever).
        retry_delay: seconds before a failed item is tried again (doubling per attempt).
        max_retry_delay: the longest such delay (default 300 s, or ``retry_delay`` if longer).
        done_for: seconds a handled key is remembered (a re-enqueue of it within that adds nothing).
        batch: items one claim takes (one transaction for all).
        replay_rate: requests per second :meth:`replay` runs (None: as fast as they go).
        clock: the clock (default: the process default at the time of use).
    """

    def __init__(
        self,
        name: str = "default",
        *,
        storage: object = None,
        max_depth: int | None = 100_000,
        visibility_timeout: float = 30.0,
        max_attempts: int = 5,
        ttl: float | None = None,
        retry_delay: float = 1.0,
        max_retry_delay: float | None = None,
        done_for: float = 7 * 86400.0,
        batch: int = 16,
        replay_rate: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = nonblank("name", name)
        self.max_depth = _count("max_depth", max_depth, allow_none=True)
        self.visibility_timeout = float(_positive("visibility_timeout", visibility_timeout) or 0)
        self.max_attempts = int(_count("max_attempts", max_attempts) or 0)
        self.ttl = _positive("ttl", ttl, allow_none=True)
        self.retry_delay = float(_positive("retry_delay", retry_delay) or 0)
        if max_retry_delay is None:  # five minutes, or the first delay when that is longer
            self.max_retry_delay = max(300.0, self.retry_delay)
        else:
            self.max_retry_delay = float(_positive("max_retry_delay", max_retry_delay) or 0)
        if self.max_retry_delay < self.retry_delay:
            raise ValueError(
                f"max_retry_delay ({max_retry_delay!r}) is below retry_delay ({retry_delay!r})"
            )
        self.done_for = float(_positive("done_for", done_for) or 0)
        self.batch = int(_count("batch", batch) or 0)
        self.replay_rate = _positive("replay_rate", replay_rate, allow_none=True)
        self._clock = clock
        self._owns_store = (
            not hasattr(storage, "claim") and type(storage).__module__.split(".")[0] != "redis"
        )
        self._store: QueueStore = open_queue_store(storage)
        set_lease = getattr(self._store, "set_lease", None)
        if set_lease is not None:  # a store that measures leases itself (Redis)
            set_lease(name, self.visibility_timeout)
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._with_request: set[str] = set()
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._heartbeat = _Heartbeat(self)
        # handled requests whose acknowledgement waits to share a commit (see _flush_acks)
        self._grouped: GroupedAcks | None = (
            self._store  # type: ignore[assignment]
            if callable(getattr(self._store, "ack_and_claim", None))
            and callable(getattr(self._store, "ack_many", None))
            else None
        )
        # a store that takes a put as a row (SQLite, see RowPuts): no Item is built for it
        put_row = getattr(self._store, "put_row", None)
        self._put_row: Callable[[str, Row, int | None, float], tuple[int, bool]] | None = (
            put_row if callable(put_row) else None
        )
        self._handled: list[tuple[int, str]] = []
        self._handled_lock = threading.Lock()
        self._hooks: list[Callable[[Event], None]] = []
        self._stoppers: list[Callable[[], None]] = []
        self._replaying = threading.Lock()
        #: counts since this object was made: handled, skipped (done), retried, dead, expired
        self.counts = {"handled": 0, "skipped": 0, "retried": 0, "dead": 0, "expired": 0}
        # published as readings until closed or collected; then its counts join the totals
        token = next(_TOKENS)
        with _COUNTS_LOCK:
            _COUNTS[token] = (name, self.counts)
        self._unlist = weakref.finalize(self, _unlist, token)
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"RequestQueue({self.name!r}, storage={self._store.url!r})"

    @property
    def store(self) -> QueueStore:
        return self._store

    def _wall(self) -> float:
        return (self._clock or get_clock()).wall()

    # -- handlers ---------------------------------------------------------------------------------

    def handler(
        self, name: str | Callable[..., Any] | None = None, *, with_request: bool = False
    ) -> Any:
        """Register a handler: ``@queue.handler``, ``@queue.handler("name")``.

        ``with_request=True`` passes the :class:`Request` as the first argument.
        """

        def register(fn: F, registered: str | None = None) -> F:
            key = registered or getattr(fn, "__name__", None)
            if not key or not isinstance(key, str):
                raise ValueError(f"a handler needs a name; {fn!r} has none")
            if key in self._handlers and self._handlers[key] is not fn:
                raise ValueError(f"queue {self.name!r} already has a handler named {key!r}")
            self._handlers[key] = fn
            if with_request:
                self._with_request.add(key)
            return fn

        if callable(name):
            return register(name)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"handler name must be a string, got {name!r}")
        return lambda fn: register(fn, name)

    @property
    def handlers(self) -> list[str]:
        return sorted(self._handlers)

    # -- enqueue ----------------------------------------------------------------------------------

    def _row(
        self,
        handler: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        key: str | None,
        resource: str | None,
        ttl: float | None,
        delay: float | None,
    ) -> Row:
        """The checked request as a :data:`Row`: ``(key, handler, args, resource, enqueued,
        expires, visible)``."""
        if handler not in self._handlers:
            known = ", ".join(self.handlers) or "none"
            raise UnknownHandler(
                f"queue {self.name!r} has no handler named {handler!r} (registered: {known})"
            )
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"args must be a tuple or list, got {type(args).__name__}")
        if kwargs is None:
            kwargs = _NO_KWARGS
        elif not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, got {type(kwargs).__name__}")
        if _ENCODE_C is not None and not kwargs and type(args) is list:
            try:  # (the common case of _canonical, inlined: a put is the hot path)
                encoded = "".join(_ENCODE_C(args, 0))
            except (TypeError, ValueError, RecursionError):
                body = _canonical(handler, args, kwargs)  # raises, naming what is wrong
            else:
                if "{" in encoded:
                    _canonical(handler, args, kwargs)  # checks the dict keys
                body = f'{{"args":{encoded},"kwargs":{{}}}}'
        else:
            body = _canonical(handler, args, kwargs)
        if key is None:
            key = _sha256(f"{handler}\0{body}".encode()).hexdigest()[:32]
        elif not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        if resource is not None and not isinstance(resource, str):
            raise TypeError(f"resource must be a string or None, got {resource!r}")
        ttl = self.ttl if ttl is None else _positive("ttl", ttl)
        now = (self._clock or get_clock()).wall()
        if delay is None:
            return key, handler, body, resource, now, None if ttl is None else now + ttl, now
        visible = now + float(_positive("delay", delay) or 0)
        return key, handler, body, resource, now, None if ttl is None else now + ttl, visible

    def put(
        self,
        handler: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        resource: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
    ) -> QueuedRequest:
        """Queue a request for ``handler(*args, **kwargs)``.

        Raises:
            UnknownHandler: no handler of that name is registered.
            TypeError: arguments that are not JSON.
            QueueFull: the queue holds ``max_depth`` requests.
            StorageUnavailable: the store did not answer (nothing was queued).
        """
        return self._put(self._row(handler, args, kwargs, key, resource, ttl, delay))

    def _put(self, row: Row) -> QueuedRequest:
        if self._put_row is not None:
            item_id, added = self._put_row(self.name, row, self.max_depth, row[4])
        else:
            item_id, added = self._store.put(self.name, _as_item(row), self.max_depth, row[4])
        if item_id < 0:
            raise self._full(row[1])
        return _queued(QueuedRequest, (item_id, row[0], added))

    def _full(self, handler: str) -> QueueFull:
        room = (
            "its store has no ids left until it empties"
            if self.max_depth is None
            else f"{self.max_depth} requests"
        )
        return QueueFull(
            f"queue {self.name!r} is full ({room}); {handler!r} was not queued", name=self.name
        )

    async def aput(
        self,
        handler: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        resource: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
    ) -> QueuedRequest:
        """Async twin of :meth:`put` (the store step runs in a worker thread)."""
        row = self._row(handler, args, kwargs, key, resource, ttl, delay)
        if isinstance(self._store, MemoryQueueStore):
            return self._put(row)
        return await asyncio.to_thread(self._put, row)

    # -- consuming --------------------------------------------------------------------------------

    def _take_handled(self) -> list[tuple[int, str]]:
        with self._handled_lock:
            handled, self._handled = self._handled, []
        return handled

    def _settled(self, handled: list[tuple[int, str]], ok: bool) -> None:
        if ok:
            self._heartbeat.release_all([item_id for item_id, _ in handled])
        else:  # still to acknowledge, ahead of what was handled meanwhile
            with self._handled_lock:
                self._handled[:0] = handled

    def _flush_acks(self) -> None:
        """Commit the acknowledgements that wait for the next claim, on their own."""
        if self._grouped is None:
            return
        handled = self._take_handled()
        if not handled:
            return
        now = self._wall()
        ok = False
        try:
            self._grouped.ack_many(self.name, handled, now, now + self.done_for)
            ok = True
        finally:
            self._settled(handled, ok)

    def _claim(self, limit: int | None = None) -> list[Item]:
        """Claim what is due; a claim that only settled items (done, expired, dead) is followed
        by another, so that "nothing claimed" means nothing is due."""
        while True:
            items, settled = self._claim_once(limit)
            if items or not settled:
                return items

    def _claim_once(self, limit: int | None) -> tuple[list[Item], int]:
        now = self._wall()
        batch = self.batch if limit is None else min(self.batch, limit)
        handled = self._take_handled() if self._grouped is not None else []
        if handled and self._grouped is not None:
            ok = False
            try:
                got = self._grouped.ack_and_claim(
                    self.name,
                    handled,
                    now + self.done_for,
                    self.owner,
                    now,
                    self.visibility_timeout,
                    batch,
                    self.max_attempts,
                )
                ok = True
            finally:
                self._settled(handled, ok)
        else:
            got = self._store.claim(
                self.name, self.owner, now, self.visibility_timeout, batch, self.max_attempts
            )
        self.counts["skipped"] += got.skipped
        self.counts["expired"] += got.expired
        self.counts["dead"] += got.dead
        if got.items:
            self._heartbeat.hold([item.id for item in got.items])
        return got.items, got.skipped + got.expired + got.dead

    def _delivering(self, item: Item) -> _Delivery:
        return _Delivery(self, item)

    def _failed(self, item: Item, exc: Exception, *, dead: bool = False) -> None:
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]
        now = self._wall()
        if dead or item.attempts >= self.max_attempts:
            retry_at = None
        else:
            delay = min(self.retry_delay * 2 ** (item.attempts - 1), self.max_retry_delay)
            retry_at = now + delay
        outcome = self._store.fail(self.name, item.id, self.owner, error, now, retry_at)
        if outcome == "dead":
            self.counts["dead"] += 1
        elif outcome == "retry":
            self.counts["retried"] += 1

    def _run_sync(self, item: Item) -> None:
        with self._delivering(item) as (fn, args, kwargs):
            result = fn(*args, **kwargs)
            if result is not None and inspect.isawaitable(result):
                asyncio.run(_awaited(result))

    async def _run_async(self, item: Item) -> None:
        with self._delivering(item) as (fn, args, kwargs):
            if inspect.iscoroutinefunction(fn):
                await fn(*args, **kwargs)
            else:
                ctx = contextvars.copy_context()
                result = await asyncio.to_thread(ctx.run, fn, *args, **kwargs)
                if inspect.isawaitable(result):
                    await result

    def process(self, limit: int | None = None) -> int:
        """Handle what is due now, up to ``limit`` items; returns how many were delivered.

        Returns when a claim finds nothing (items in flight elsewhere or backing off stay).
        """
        _count("limit", limit, allow_none=True)
        delivered = 0
        with self._acks_flushed():
            while limit is None or delivered < limit:
                items = self._claim(None if limit is None else limit - delivered)
                if not items:
                    break
                for item in items:
                    self._run_sync(item)
                    delivered += 1
        return delivered

    @contextmanager
    def _acks_flushed(self) -> Iterator[None]:
        """Leave nothing handled unacknowledged behind (a claim that found nothing committed
        them already, in the common case)."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self._flush_acks()
            raise
        self._flush_acks()

    async def aprocess(self, limit: int | None = None) -> int:
        """Async twin of :meth:`process`; async handlers run on the caller's loop."""
        _count("limit", limit, allow_none=True)
        delivered = 0
        try:
            while limit is None or delivered < limit:
                if isinstance(self._store, MemoryQueueStore):
                    items = self._claim(None if limit is None else limit - delivered)
                else:
                    items = await asyncio.to_thread(
                        self._claim, None if limit is None else limit - delivered
                    )
                if not items:
                    break
                for item in items:
                    await self._run_async(item)
                    delivered += 1
        except BaseException:
            if self._handled:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._flush_acks)
            raise
        if self._handled:
            await asyncio.to_thread(self._flush_acks)
        return delivered

    def run(self, stop: threading.Event, *, poll: float = 0.5) -> int:
        """Handle requests until ``stop`` is set, waiting ``poll`` seconds when none is due.

        A store that does not answer (:class:`StorageUnavailable`) is asked again after ``poll``:
        what it holds is not lost, and a worker outlives the outage.
        """
        total = 0
        while not stop.is_set():
            try:
                n = self.process()
            except StorageUnavailable:
                n = 0
            total += n
            if n == 0:
                stop.wait(poll)
        return total

    # -- replay -----------------------------------------------------------------------------------

    def replay(self, limit: int | None = None) -> int:
        """Handle what is queued now (backoff delays ended), at ``replay_rate`` per second."""
        _count("limit", limit, allow_none=True)
        with self._replaying:
            self._store.replay(self.name, self._wall())
            if self.replay_rate is None:
                return self.process(limit)
            limiter = RateLimiter(clock=self._clock, storage="memory://")
            limiter.configure(
                "replay", RateLimitConfig(requests_per_second=self.replay_rate, burst_size=1)
            )
            delivered = 0
            with self._acks_flushed():
                while limit is None or delivered < limit:
                    items = self._claim(1)  # claimed first: no wait is spent on an empty queue
                    if not items:
                        break
                    limiter.acquire("replay")
                    self._run_sync(items[0])
                    delivered += 1
            return delivered

    def replay_every(self, seconds: float) -> Callable[[], None]:
        """Replay every ``seconds`` in a thread of its own; returns a function that stops it."""
        interval = float(_positive("seconds", seconds) or 0)
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                with contextlib.suppress(StorageUnavailable):
                    self.replay()

        thread = threading.Thread(
            target=loop, name=f"buttress-queue-every-{self.name}", daemon=True
        )
        thread.start()

        def cancel() -> None:
            stop.set()
            if thread is not threading.current_thread():
                thread.join()

        self._stoppers.append(cancel)
        return cancel

    def replay_when(
        self,
        *,
        breaker: str | None = None,
        resource: str | None = None,
        service: str | None = None,
        background: bool = True,
    ) -> Callable[[], None]:
        """Replay when the named breaker closes, resource turns healthy or service recovers.

        The replay runs in a thread of its own (``background=False``: in the thread that emitted
        the event). Returns a function that removes the hook.
        """
        if breaker is None and resource is None and service is None:
            raise ValueError("replay_when needs a breaker, a resource or a service to watch")

        def recovered(event: Event) -> bool:
            if isinstance(event, CircuitStateChanged) and breaker is not None:
                return event.name == breaker and getattr(event.new, "name", event.new) == "CLOSED"
            if isinstance(event, ResourceStatusChanged) and resource is not None:
                return event.resource == resource and event.new == "healthy"
            if isinstance(event, ServiceHealthChanged) and service is not None:
                return event.service == service and event.healthy
            return False

        def hook(event: Event) -> None:
            if not recovered(event):
                return
            if background:
                threading.Thread(
                    target=self.replay, name=f"buttress-queue-replay-{self.name}", daemon=True
                ).start()
            else:
                self.replay()

        add_hook(hook)
        self._hooks.append(hook)

        def remove() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)
                remove_hook(hook)

        return remove

    # -- inspection -------------------------------------------------------------------------------

    def stats(self) -> Stats:
        return self._store.stats(self.name, self._wall())

    def backlog(self) -> tuple[int, int]:
        """``(depth, dead letters)`` as :meth:`stats` gives them, without counting the done keys
        it also reports: on SQLite that count grows with every request handled within
        ``done_for`` (a week by default). What a dashboard or a replay loop polls."""
        backlog = getattr(self._store, "backlog", None)
        if callable(backlog):
            depth, dead = backlog(self.name, self._wall())
            return int(depth), int(dead)
        stats = self.stats()
        return stats.depth, stats.dead

    def items(self, limit: int = 100) -> list[Item]:
        return self._store.items(self.name, int(_count("limit", limit) or 0))

    def dead_letters(self, limit: int = 100) -> list[Item]:
        return self._store.items(self.name, int(_count("limit", limit) or 0), dead=True)

    def requeue_dead(self, ids: list[int] | None = None) -> int:
        return self._store.requeue_dead(self.name, _ids(ids), self._wall())

    def purge_dead(self, ids: list[int] | None = None) -> int:
        return self._store.purge_dead(self.name, _ids(ids))

    def is_done(self, key: str) -> bool:
        return self._store.is_done(self.name, key, self._wall())

    def close(self) -> None:
        """Stop the heartbeat and replay hooks; close the store if this queue opened it."""
        _LIVE.discard(self)
        self._unlist()  # (once)
        for hook in list(self._hooks):
            remove_hook(hook)
        self._hooks.clear()
        for stop in self._stoppers:
            stop()
        self._stoppers.clear()
        self._heartbeat.stop()
        with contextlib.suppress(Exception):
            self._flush_acks()
        if self._owns_store:
            self._store.close()

    def __enter__(self) -> RequestQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Delivery:
    """One delivery: the handler's call, then its outcome recorded (a class, not a generator:
    this runs once per request)."""

    __slots__ = ("_item", "_malformed", "_queue", "_token")

    def __init__(self, queue: RequestQueue, item: Item) -> None:
        self._queue, self._item, self._malformed = queue, item, False

    def __enter__(self) -> tuple[Callable[..., Any], list[Any], dict[str, Any]]:
        q, item = self._queue, self._item
        request = Request(
            item.id, item.key, item.handler, item.attempts, item.resource, item.enqueued, q.name
        )
        self._token = _CURRENT.set(request)
        try:
            body = _DECODE(item.args)  # fresh lists and dicts: the handler may keep them
            args, kwargs = body.get("args", []), body.get("kwargs", {})
        except (TypeError, ValueError, AttributeError, RecursionError):
            args = kwargs = None
        if type(args) is not list or type(kwargs) is not dict or item.malformed is not None:
            # a stored record this code cannot have written: nothing runs, and the item goes to
            # the dead letters (see __exit__), not round the retries
            self._malformed = True
            return _refuse(q.name, item), [], {}
        if item.handler in q._with_request:
            args.insert(0, request)
        fn = q._handlers.get(item.handler)
        return _missing(item.handler) if fn is None else fn, args, kwargs

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        q, item = self._queue, self._item
        held = True
        try:
            if exc is None:
                q.counts["handled"] += 1
                if q._grouped is not None:
                    # acknowledged with the next claim, or on its own when the consumer stops or
                    # at the next heartbeat; its lease is renewed until then
                    with q._handled_lock:
                        q._handled.append((item.id, item.key))
                    held = False
                else:
                    now = q._wall()
                    q._store.ack(q.name, item.id, item.key, now, now + q.done_for)
                return False
            if isinstance(exc, Exception):
                q._failed(item, exc, dead=self._malformed)
                return True  # a failed request is recorded, not raised
            return False
        finally:
            _CURRENT.reset(self._token)
            if held:
                q._heartbeat.release(item.id)


def _refuse(queue: str, item: Item) -> Callable[..., Any]:
    """What runs in place of a handler for a stored request that does not decode."""
    problem = item.malformed
    if problem is None:
        try:
            body = json.loads(item.args)
        except RecursionError:
            problem = "its arguments are JSON nested too deeply to read"
        except (TypeError, ValueError):
            problem = f"its arguments are not JSON: {_shown(item.args)}"
        else:
            problem = (
                f"its arguments are not an object with an 'args' list and a 'kwargs' object: "
                f"{_shown(body)}"
            )

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise StorageError(f"queue {queue!r} item #{item.id} cannot be delivered: {problem}")

    return refuse


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"


def _missing(name: str) -> Callable[..., Any]:
    def missing(*args: Any, **kwargs: Any) -> None:
        raise UnknownHandler(f"no handler named {name!r} in this process")

    return missing


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
