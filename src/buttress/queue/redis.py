"""Queued requests in a Redis stream with a consumer group, shared by every host.

Theory of operation
-------------------
A queue ``name`` is a stream read by the consumer group ``workers``; each worker is a consumer of
the group, named by its owner id. Every key of a queue carries the hash tag ``{name}``, so one
queue lives in one Redis Cluster slot and each step is one Lua script on it, run atomically:

``buttress:queue:{name}:stream``  the entries (fields: key, handler, JSON args, resource, times)
``...:keys``      idempotency key -> id of its queued entry (a put of a queued key adds nothing)
``...:done``      sorted set: key -> until when it counts as handled (a put of it adds nothing)
``...:attempts``  id -> deliveries; ``...:errors``: first and last failure of an id
``...:dead``      dead letters; ``...:counts``: entries dropped past their TTL
``...:later``     sorted set: id -> when it is due (a retry backing off, a delayed put)
``...:lines``     sorted set: each resource's entries in order (its first is its head)

The scripts are package data (``queue/lua/*.lua``, each after ``prelude.lua``) and
are sent like the rate-limit store's: through :mod:`buttress.backends.redis_wire` for a URL
(``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``, ``redis+sentinel://``: the
connections are shared with the other Redis stores of that URL in the process, ``NOSCRIPT``
after a restart loads the script again), or through :mod:`buttress.backends.redis_client` for a
redis-py client the application gives (never closed here).

Leases. An entry a worker holds is in the group's pending list under that worker, and its *idle
time* there is the lease, measured by the server's clock (so hosts with skewed clocks agree, and a
test clock does not move it). A claim (``claim.lua``) first takes the entries idle for at
least the visibility timeout with ``XAUTOCLAIM``, paging through the pending list with its cursor
(kept per queue between claims, so a long list is swept a part per claim; on Redis 7 the ids it
reports deleted are cleaned up, on 6.2 the entries with no fields), one at a time: an entry whose
lease ran out is delivered alone (its worker died holding it, perhaps because of it), and a retry
found there before it is due is set aside again without counting; then new entries with
``XREADGROUP``, and counts each delivery, all in one script: an entry changes hands only there,
and only once its idle time reached the lease. The heartbeat (``renew.lua``) resets the idle
time with ``XCLAIM ... IDLE 0 JUSTID``, only for entries its worker still holds (checked with
``XPENDING`` in the same script): so while a worker beats, its entries are never idle long enough
to be claimed by another, and a worker that stopped loses them one lease after its last beat.
Two workers can hold one entry at once only after the first one's lease ran out unrenewed.

Retries and delays keep the caller's clock, like the other stores: a failed entry stays pending
under its worker with its due time in ``...:later``, and a claim takes the entries due there
first (``XCLAIM``: a failed entry is nobody's lease any more), whatever their idle time. One that
``XAUTOCLAIM`` or ``XREADGROUP`` brings before it is due (a delayed put) is set aside again, idle
for up to a lease. :meth:`replay` makes every such entry due at once.

Resources. Items of one resource go one at a time, oldest first, as in the other stores: a claim
delivers an entry of a resource only if it is the first in ``...:lines`` for that resource; any
other it sets aside (due at ``+inf`` in ``...:later``, pending under the claimer with a fresh
idle time), and the step that removes a resource's head (acknowledged, dead, expired) makes the
next one due at once.

Differences from the SQLite store, by the nature of streams: a lease that runs out is measured by
Redis, not by the queue's clock; a dead letter requeued gets a new id; ``put``'s ``max_depth``
counts the stream's entries (waiting, in flight and backing off).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from ..backends.base import StorageError
from ..backends.redis_client import ClientWire
from ..backends.redis_wire import Command, Script, Wire, open_wire
from .store import Claimed, Item, Stats

__all__ = ["RedisQueueStore"]

PAGES = 10  # XAUTOCLAIM pages one claim reads at most
REGISTRY = "buttress:queues"  # the names of the queues (a set; for listing them)
_SUFFIXES = ("stream", "keys", "done", "attempts", "errors", "dead", "counts", "later", "lines")
_STOPPED = "the lease ran out (its worker stopped)"


class _QueueScript(Script):
    """A queue script: routed by the queue's key prefix, given every key of the queue."""

    __slots__ = ()

    def parts(self, key: str, args: list[str]) -> list[str]:
        return ["EVALSHA", self.sha, str(len(_SUFFIXES)), *(key + s for s in _SUFFIXES), *args]

    def pack(self, key: str, args: list[str]) -> bytes:
        return _head(self.sha, key, len(args)) + b"".join(map(_bulk, args))


@functools.lru_cache(maxsize=256)
def _head(sha: str, key: str, nargs: int) -> bytes:
    # EVALSHA, the script, the key count and the keys: the same for every step on one queue
    parts = ["EVALSHA", sha, str(len(_SUFFIXES)), *(key + s for s in _SUFFIXES)]
    return b"*%d\r\n" % (len(parts) + nargs) + b"".join(map(_bulk, parts))


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _script(name: str) -> _QueueScript:
    lua = files(__package__).joinpath("lua")
    prelude = lua.joinpath("prelude.lua").read_text(encoding="utf-8")
    body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _QueueScript(f"queue_{name}", prelude + "\n" + body)


PUT = _script("put")
CLAIM = _script("claim")
RENEW = _script("renew")
ACK = _script("ack")
FAIL = _script("fail")
PEEK = _script("peek")
STATS = _script("stats")
REPLAY = _script("replay")
_HGETALL = Command("HGETALL")
_HDEL = Command("HDEL")
_HGET = Command("HGET")
_ZSCORE = Command("ZSCORE")
_SADD = Command("SADD")
_SMEMBERS = Command("SMEMBERS")
_GETDEL_HASH = Script(
    "hash_purge", "local n = redis.call('HLEN', KEYS[1])\nredis.call('DEL', KEYS[1])\nreturn n"
)


def _int_id(stream_id: str | bytes) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms) << 20 | int(seq)


def _stream_id(item_id: int) -> str:
    return f"{item_id >> 20}-{item_id & 0xFFFFF}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _prefix(queue: str) -> str:
    # percent-escaped so that the hash tag always ends where the name does
    escaped = queue.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"buttress:queue:{{{escaped}}}:"


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """A hash's fields and values, from the wire (a flat list) or a redis-py client (a dict)."""
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(reply[::2], reply[1::2], strict=True))


def _error(error: str, at: float) -> str:
    return json.dumps([error, at])


def _item(raw: Sequence[Any]) -> Item:
    """An :class:`Item` from a script's ``{id, fields, attempts, first error, last error}``."""
    sid, flat, attempts, first, last = raw
    f = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
    first_error, first_at = _error_of(first)
    last_error, last_at = _error_of(last)
    return _decoded(
        f,
        id=_int_id(sid),
        attempts=int(attempts),
        first_error=first_error,
        first_error_at=first_at,
        last_error=last_error,
        last_error_at=last_at,
    )


def _dead(record: Any) -> Item:
    try:
        d = json.loads(record)
        if not isinstance(d, dict):
            raise TypeError(type(d).__name__)
    except (TypeError, ValueError):
        d = {"a": _text(record), "why": "the dead letter is not a JSON object"}
    first_error, first_at = _error_of(d.get("f"))
    last_error, last_at = _error_of(d.get("l"))
    try:
        died: float | None = float(d["d"])
    except (KeyError, TypeError, ValueError):
        died = None
    try:
        attempts = int(d["n"])
    except (KeyError, TypeError, ValueError):
        attempts = 0
    return _decoded(
        d,
        id=_int_id(d["id"]) if isinstance(d.get("id"), str) else 0,
        attempts=attempts,
        first_error=first_error,
        first_error_at=first_at,
        last_error=last_error,
        last_error_at=last_at,
        died=died,
    )


def _decoded(fields: dict[str, Any], **known: Any) -> Item:
    """The item the stored ``fields`` describe; one that lacks a field or holds one that does not
    decode is marked :attr:`~buttress.queue.store.Item.malformed` (with what is wrong) instead."""
    problem: str | None = fields.get("why")
    text = {name: fields.get(name) for name in ("k", "h", "a", "r", "e", "x")}
    for name in ("k", "h", "a", "e"):
        if problem is None and not isinstance(text[name], str):
            problem = f"the stored entry has no field {name!r}"
    numbers: dict[str, float | None] = {"e": 0.0, "x": None}
    for name in ("e", "x"):
        value = text[name]
        if isinstance(value, str) and value:
            try:
                numbers[name] = float(value)
            except ValueError:
                problem = problem or f"its field {name!r} is not a number: {value[:100]!r}"
    resource = text["r"]
    return Item(
        key=text["k"] if isinstance(text["k"], str) else "",
        handler=text["h"] if isinstance(text["h"], str) else "",
        args=text["a"] if isinstance(text["a"], str) else "",
        resource=resource if isinstance(resource, str) and resource else None,
        enqueued=numbers["e"] or 0.0,
        expires=numbers["x"],
        malformed=problem,
        **known,
    )


def _error_of(stored: Any) -> tuple[str | None, float | None]:
    """A stored ``[error, at]`` (JSON), or what it holds as the error when it is not that."""
    if not stored:
        return None, None
    try:
        error, at = json.loads(stored)
        return (None if error is None else str(error)), (None if at is None else float(at))
    except (TypeError, ValueError):
        return _text(stored), None


class RedisQueueStore:
    """Queues in Redis streams (Redis >= 6.2 for ``XAUTOCLAIM``; 7 reports deleted entries).

    Args:
        source: a Redis URL (see :func:`buttress.backends.redis_wire.parse_url`), or a redis-py
            client (``redis.Redis``, ``redis.cluster.RedisCluster``, a Sentinel's ``master_for``),
            used through its own connections and never closed by :meth:`close`.
    """

    def __init__(self, source: object) -> None:
        self._wire: Wire | ClientWire = (
            open_wire(source) if isinstance(source, str) else ClientWire(source)
        )
        #: Where the queues live, for messages (password redacted).
        self.url = self._wire.url
        self._cursors: dict[str, str] = {}
        self._lease: dict[str, float] = {}
        self._known: set[str] = set()

    def __repr__(self) -> str:
        return f"RedisQueueStore({self.url!r})"

    def _key(self, queue: str) -> str:
        if queue not in self._known:
            self._wire.call(REGISTRY, _SADD, [queue])
            self._known.add(queue)
        return _prefix(queue)

    def _lease_ms(self, queue: str, lease: float | None = None) -> str:
        lease = self._lease.get(queue, 30.0) if lease is None else lease
        return str(max(1, round(lease * 1000)))

    # -- steps ------------------------------------------------------------------------------------

    def put(self, queue: str, item: Item, max_depth: int | None, now: float) -> tuple[int, bool]:
        fields = [
            "k", item.key, "h", item.handler, "a", item.args, "r", item.resource or "",
            "e", repr(item.enqueued), "x", "" if item.expires is None else repr(item.expires),
        ]  # fmt: skip
        args = [item.key, repr(now), str(max_depth or 0), repr(item.visible), *fields]
        raw_id, added = self._wire.call(self._key(queue), PUT, args)
        text = _text(raw_id)
        if text in ("0", "-1"):
            return int(text), False
        return _int_id(text), bool(added)

    def claim(
        self, queue: str, owner: str, now: float, lease: float, limit: int, max_attempts: int
    ) -> Claimed:
        args = [
            owner, self._lease_ms(queue, lease), str(limit), str(max_attempts), repr(now),
            self._cursors.get(queue, "0-0"), str(PAGES), _error(_STOPPED, now),
        ]  # fmt: skip
        cursor, skipped, expired, dead, raw = self._wire.call(self._key(queue), CLAIM, args)
        self._cursors[queue] = _text(cursor)
        out = Claimed(skipped=int(skipped), expired=int(expired), dead=int(dead))
        for entry in raw:
            item = _item(entry)
            item.owner = owner
            item.visible = now + lease
            out.items.append(item)
        return out

    def renew(self, queue: str, owner: str, ids: list[int], until: float) -> list[int]:
        if not ids:
            return []
        held = self._wire.call(self._key(queue), RENEW, [owner, *map(_stream_id, ids)])
        return [_int_id(h) for h in held]

    def ack(self, queue: str, item_id: int, key: str, now: float, done_until: float) -> None:
        args = [_stream_id(item_id), key, repr(done_until), repr(now)]
        self._wire.call(self._key(queue), ACK, args)

    def fail(
        self,
        queue: str,
        item_id: int,
        owner: str,
        error: str,
        now: float,
        retry_at: float | None,
    ) -> str:
        args = [
            _stream_id(item_id), owner, _error(error, now), repr(now),
            "" if retry_at is None else repr(retry_at), self._lease_ms(queue),
        ]  # fmt: skip
        return _text(self._wire.call(self._key(queue), FAIL, args))

    def set_lease(self, queue: str, lease: float) -> None:
        """The visibility timeout of ``queue`` (a failed item is due again within one)."""
        self._lease = {**self._lease, queue: lease}

    def is_done(self, queue: str, key: str, now: float) -> bool:
        until = self._wire.call(self._key(queue) + "done", _ZSCORE, [key])
        return until is not None and float(until) > now

    def stats(self, queue: str, now: float) -> Stats:
        raw = self._wire.call(self._key(queue), STATS, [repr(now)])
        length, in_flight, delayed, dead, expired, done = map(int, raw)
        return Stats(
            queue=queue,
            waiting=length - in_flight - delayed,
            in_flight=in_flight,
            delayed=delayed,
            dead=dead,
            expired=expired,
            done=done,
        )

    def items(self, queue: str, limit: int, dead: bool = False) -> list[Item]:
        if dead:
            records = _pairs(self._wire.call(self._key(queue) + "dead", _HGETALL, []))
            found = sorted((_dead(r) for _, r in records), key=lambda i: i.id)
            return found[:limit]
        raw = self._wire.call(self._key(queue), PEEK, ["-", "+", str(limit)])
        return [_item(entry) for entry in raw]

    def get(self, queue: str, item_id: int, dead: bool = False) -> Item | None:
        sid = _stream_id(item_id)
        if dead:
            record = self._wire.call(self._key(queue) + "dead", _HGET, [sid])
            return None if record is None else _dead(record)
        raw = self._wire.call(self._key(queue), PEEK, [sid, sid, "1"])
        return _item(raw[0]) if raw else None

    def replay(self, queue: str, now: float) -> int:
        return int(self._wire.call(self._key(queue), REPLAY, [repr(now)]))

    def requeue_dead(self, queue: str, ids: list[int] | None, now: float) -> int:
        key = self._key(queue) + "dead"
        count = 0
        records = [
            (_dead(record), raw_id) for raw_id, record in _pairs(self._wire.call(key, _HGETALL, []))
        ]
        # behind what is queued, in the order they died (a hash keeps none)
        records.sort(key=lambda pair: (pair[0].died or 0.0, pair[0].id))
        for item, raw_id in records:
            if ids is not None and item.id not in ids:
                continue
            item.attempts, item.visible = 0, now
            # queued first, then forgotten: a crash between the two repeats, never loses
            self.put(queue, item, None, now)
            self._wire.call(key, _HDEL, [_text(raw_id)])
            count += 1
        return count

    def purge_dead(self, queue: str, ids: list[int] | None) -> int:
        key = self._key(queue) + "dead"
        if ids is None:
            return int(self._wire.call(key, _GETDEL_HASH, []))
        if not ids:
            return 0
        return int(self._wire.call(key, _HDEL, [_stream_id(i) for i in ids]))

    def queues(self) -> list[str]:
        return sorted(_text(n) for n in self._wire.call(REGISTRY, _SMEMBERS, []))

    def close(self) -> None:
        """Done with the store: the last user of a URL closes its connections (idempotent)."""
        wire, self._wire = self._wire, _CLOSED
        wire.release()


class _Closed:
    """What a closed store talks to: every step is refused."""

    url = "closed"

    def call(self, key: str, op: Command, args: list[str]) -> Any:
        raise StorageError(f"the queue store was closed (a step on {key!r} after close())")

    def release(self) -> None:
        pass


_CLOSED: Any = _Closed()
