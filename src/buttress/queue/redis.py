"""Queued requests in a Redis stream with a consumer group, shared by every host.

Theory of operation
-------------------
A queue ``name`` is a stream ``buttress:queue:{name}:stream`` read by the consumer group
``workers``; each worker is a consumer of the group named by its owner id. ``XADD`` enqueues (in a
script that first refuses a key that is queued, in ``...:keys``, or done, in the sorted set
``...:done`` scored by the time it may be forgotten, and a full stream); ``XREADGROUP`` delivers
new entries; an entry a worker holds is in the group's pending list, and its *idle time* is the
lease: the heartbeat resets it (``XCLAIM ... JUSTID`` by its own consumer, only while that
consumer still holds it), and ``XAUTOCLAIM`` with ``min-idle-time`` = the visibility timeout
takes over the entries of a worker that stopped, paging through the pending list with its cursor.
Acknowledging records the key as done, ``XACK``s and ``XDEL``s the entry in one script.

Attempts are counted in ``...:attempts`` per entry (the pending list's delivery counter is not
returned by ``XAUTOCLAIM``), errors in ``...:errors``, dead letters as JSON in ``...:dead``.

Differences from the SQLite store, by the nature of streams: a failed item is retried after
``min(retry delay, visibility timeout)`` (its idle time is set so that its lease runs out then);
items of one resource are delivered in stream order but not held back one at a time; ``replay``
cannot end backoff delays early (it returns 0); a dead letter requeued gets a new id. Leases are
measured by the server's clock, so a test clock does not move them.
"""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import StorageError, StorageUnavailable
from .store import Claimed, Item, Stats

__all__ = ["RedisQueueStore"]

GROUP = "workers"
_PAGES = 10  # XAUTOCLAIM pages one claim reads at most
_SWEEP_EVERY = 1000

_PUT = """
local queued = redis.call('HGET', KEYS[2], ARGV[1])
if queued then return {queued, 0} end
local done_at = redis.call('ZSCORE', KEYS[3], ARGV[1])
if done_at and tonumber(done_at) > tonumber(ARGV[2]) then return {'0', 0} end
if tonumber(ARGV[3]) > 0 and redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[3]) then
    return {'-1', 0}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('HSET', KEYS[2], ARGV[1], id)
return {id, 1}
"""
# KEYS: stream keys done attempts errors; ARGV: id key until
_ACK = """
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
redis.call('XACK', KEYS[1], 'workers', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return 1
"""
# KEYS: stream; ARGV: owner idle_ms id...  -> the ids still held by owner, their idle reset
_RENEW = """
local held = {}
for i = 3, #ARGV do
    local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[i], ARGV[i], 1)
    if p[1] and p[1][2] == ARGV[1] then
        redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ARGV[i], 'IDLE', ARGV[2], 'JUSTID')
        table.insert(held, ARGV[i])
    end
end
return held
"""


def _int_id(stream_id: str | bytes) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms) << 20 | int(seq)


def _stream_id(item_id: int) -> str:
    return f"{item_id >> 20}-{item_id & 0xFFFFF}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisQueueStore:
    """Queues in Redis streams (Redis >= 6.2 for ``XAUTOCLAIM``; cursor paging as on 7).

    Args:
        client: a ``redis://`` URL or a redis-py ``Redis`` client (not closed by :meth:`close`).
        lease: the visibility timeout the store measures idle entries against; the queue sets it.
    """

    def __init__(self, client: object) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - the extra is missing
            raise StorageError(
                "a Redis queue needs redis-py: pip install 'buttress[redis]'"
            ) from None
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._response_error = redis.ResponseError
        if isinstance(client, str):
            self.url = client
            self._client = redis.Redis.from_url(client)
            self._owned = True
        else:
            kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
            self.url = f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
            self._client = client  # type: ignore[assignment]
            self._owned = False
        self._put = self._client.register_script(_PUT)
        self._ack = self._client.register_script(_ACK)
        self._renew = self._client.register_script(_RENEW)
        self._groups: set[str] = set()
        self._cursors: dict[str, str] = {}
        self._acks = 0
        self._lease: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"RedisQueueStore({self.url!r})"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise StorageUnavailable(f"{self.url}: {exc}") from exc
        except self._response_error as exc:
            raise StorageError(f"{self.url}: {exc}") from exc

    def _keys(self, queue: str) -> dict[str, str]:
        p = f"buttress:queue:{queue}"
        keys = {n: f"{p}:{n}" for n in ("stream", "keys", "done", "attempts", "errors", "dead")}
        keys["counts"] = f"{p}:counts"
        if queue not in self._groups:
            try:
                self._call(self._client.xgroup_create, keys["stream"], GROUP, id="0", mkstream=True)
            except StorageError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(queue)
        return keys

    # -- steps ------------------------------------------------------------------------------------

    def put(self, queue: str, item: Item, max_depth: int | None, now: float) -> tuple[int, bool]:
        k = self._keys(queue)
        fields = [
            "k", item.key, "h", item.handler, "a", item.args, "r", item.resource or "",
            "e", repr(item.enqueued), "x", "" if item.expires is None else repr(item.expires),
        ]  # fmt: skip
        raw_id, added = self._call(
            self._put,
            keys=[k["stream"], k["keys"], k["done"]],
            args=[item.key, repr(now), max_depth or 0, *fields],
        )
        text = _text(raw_id)
        if text in ("0", "-1"):
            return int(text), False
        return _int_id(text), bool(added)

    def _entry(self, queue: str, k: dict[str, str], sid: Any, fields: Any, attempts: int) -> Item:
        f = {_text(a): _text(b) for a, b in fields.items()}
        errors = self._call(self._client.hget, k["errors"], sid)
        e = json.loads(errors) if errors else {}
        return Item(
            id=_int_id(sid),
            key=f["k"],
            handler=f["h"],
            args=f["a"],
            resource=f["r"] or None,
            enqueued=float(f["e"]),
            expires=float(f["x"]) if f["x"] else None,
            attempts=attempts,
            first_error=e.get("first"),
            first_error_at=e.get("first_at"),
            last_error=e.get("last"),
            last_error_at=e.get("last_at"),
        )

    def claim(
        self, queue: str, owner: str, now: float, lease: float, limit: int, max_attempts: int
    ) -> Claimed:
        k = self._keys(queue)
        out = Claimed()
        entries: list[tuple[Any, Any]] = []
        cursor = self._cursors.get(queue, "0-0")
        for _ in range(_PAGES):
            if len(entries) >= limit:
                break
            reply = self._call(
                self._client.xautoclaim,
                k["stream"], GROUP, owner, int(lease * 1000), cursor, count=limit - len(entries),
            )  # fmt: skip
            cursor = _text(reply[0])
            entries.extend((sid, fields) for sid, fields in reply[1] if fields)
            if cursor == "0-0":
                break
        self._cursors[queue] = cursor
        if len(entries) < limit:
            got = self._call(
                self._client.xreadgroup, GROUP, owner, {k["stream"]: ">"},
                count=limit - len(entries),
            )  # fmt: skip
            for _, batch in got or []:
                entries.extend(batch)
        for sid, fields in entries:
            attempts = int(self._call(self._client.hincrby, k["attempts"], sid, 1))
            item = self._entry(queue, k, sid, fields, attempts)
            if item.expires is not None and item.expires <= now:
                self._drop(k, sid, item.key)
                self._call(self._client.hincrby, k["counts"], "expired", 1)
                out.expired += 1
            elif self._is_done(k, item.key, now):
                self._drop(k, sid, item.key)
                out.skipped += 1
            elif attempts > max_attempts:
                item.attempts -= 1
                self._bury(k, sid, item, "the lease ran out (its worker stopped)", now)
                out.dead += 1
            else:
                item.owner = owner
                item.visible = now + lease
                out.items.append(item)
        return out

    def _drop(self, k: dict[str, str], sid: Any, key: str) -> None:
        pipe = self._client.pipeline()
        pipe.xack(k["stream"], GROUP, sid)
        pipe.xdel(k["stream"], sid)
        pipe.hdel(k["attempts"], sid)
        pipe.hdel(k["errors"], sid)
        pipe.hdel(k["keys"], key)
        self._call(pipe.execute)

    def _bury(self, k: dict[str, str], sid: Any, item: Item, error: str, now: float) -> None:
        if item.first_error is None:
            item.first_error, item.first_error_at = error, now
        item.last_error, item.last_error_at = error, now
        item.died, item.owner = now, None
        self._call(self._client.hset, k["dead"], str(item.id), json.dumps(item.as_dict()))
        self._drop(k, sid, item.key)

    def renew(self, queue: str, owner: str, ids: list[int], until: float) -> list[int]:
        if not ids:
            return []
        k = self._keys(queue)
        held = self._call(self._renew, keys=[k["stream"]], args=[owner, 0, *map(_stream_id, ids)])
        return [_int_id(h) for h in held]

    def ack(self, queue: str, item_id: int, key: str, now: float, done_until: float) -> None:
        k = self._keys(queue)
        self._call(
            self._ack,
            keys=[k["stream"], k["keys"], k["done"], k["attempts"], k["errors"]],
            args=[_stream_id(item_id), key, repr(done_until)],
        )
        self._acks += 1
        if self._acks % _SWEEP_EVERY == 0:
            self._call(self._client.zremrangebyscore, k["done"], "-inf", now)

    def fail(
        self,
        queue: str,
        item_id: int,
        owner: str,
        error: str,
        now: float,
        retry_at: float | None,
    ) -> str:
        k = self._keys(queue)
        sid = _stream_id(item_id)
        pending = self._call(self._client.xpending_range, k["stream"], GROUP, sid, sid, 1)
        if not pending or _text(pending[0]["consumer"]) != owner:
            return "lost"
        raw = self._call(self._client.xrange, k["stream"], sid, sid)
        if not raw:
            return "lost"
        attempts = int(self._call(self._client.hget, k["attempts"], sid) or 0)
        item = self._entry(queue, k, sid, raw[0][1], attempts)
        if retry_at is None:
            self._bury(k, sid, item, error, now)
            return "dead"
        record = {
            "first": item.first_error or error,
            "first_at": item.first_error_at or now,
            "last": error,
            "last_at": now,
        }
        self._call(self._client.hset, k["errors"], sid, json.dumps(record))
        # the lease runs out at retry_at (at most a whole visibility timeout from now)
        lease_ms = int(self._lease.get(queue, 0) * 1000)
        idle = max(0, lease_ms - int((retry_at - now) * 1000))
        self._call(self._client.xclaim, k["stream"], GROUP, owner, 0, [sid], idle=idle, justid=True)
        return "retry"

    def set_lease(self, queue: str, lease: float) -> None:
        """The visibility timeout of ``queue`` (for the retry delays of :meth:`fail`)."""
        self._lease = {**self._lease, queue: lease}

    def _is_done(self, k: dict[str, str], key: str, now: float) -> bool:
        until = self._call(self._client.zscore, k["done"], key)
        return until is not None and float(until) > now

    def is_done(self, queue: str, key: str, now: float) -> bool:
        return self._is_done(self._keys(queue), key, now)

    def stats(self, queue: str, now: float) -> Stats:
        k = self._keys(queue)
        length = int(self._call(self._client.xlen, k["stream"]))
        pending = self._call(self._client.xpending, k["stream"], GROUP)
        in_flight = int(pending["pending"]) if pending else 0
        return Stats(
            queue=queue,
            waiting=length - in_flight,
            in_flight=in_flight,
            delayed=0,
            dead=int(self._call(self._client.hlen, k["dead"])),
            expired=int(self._call(self._client.hget, k["counts"], "expired") or 0),
            done=int(self._call(self._client.zcount, k["done"], f"({now}", "+inf")),
        )

    def items(self, queue: str, limit: int, dead: bool = False) -> list[Item]:
        k = self._keys(queue)
        if dead:
            records = self._call(self._client.hvals, k["dead"])
            found = sorted((Item(**json.loads(r)) for r in records), key=lambda i: i.id)
            return found[:limit]
        out = []
        for sid, fields in self._call(self._client.xrange, k["stream"], count=limit):
            attempts = int(self._call(self._client.hget, k["attempts"], sid) or 0)
            out.append(self._entry(queue, k, sid, fields, attempts))
        return out

    def get(self, queue: str, item_id: int, dead: bool = False) -> Item | None:
        k = self._keys(queue)
        if dead:
            record = self._call(self._client.hget, k["dead"], str(item_id))
            return None if record is None else Item(**json.loads(record))
        sid = _stream_id(item_id)
        raw = self._call(self._client.xrange, k["stream"], sid, sid)
        if not raw:
            return None
        attempts = int(self._call(self._client.hget, k["attempts"], sid) or 0)
        return self._entry(queue, k, sid, raw[0][1], attempts)

    def replay(self, queue: str, now: float) -> int:
        return 0

    def requeue_dead(self, queue: str, ids: list[int] | None, now: float) -> int:
        k = self._keys(queue)
        records = self._call(self._client.hgetall, k["dead"])
        count = 0
        for raw_id, record in records.items():
            if ids is not None and int(_text(raw_id)) not in ids:
                continue
            item = Item(**json.loads(record))
            self._call(self._client.hdel, k["dead"], raw_id)
            self.put(queue, item, None, now)
            count += 1
        return count

    def purge_dead(self, queue: str, ids: list[int] | None) -> int:
        k = self._keys(queue)
        if ids is None:
            count = int(self._call(self._client.hlen, k["dead"]))
            self._call(self._client.delete, k["dead"])
            return count
        return int(self._call(self._client.hdel, k["dead"], *map(str, ids))) if ids else 0

    def queues(self) -> list[str]:
        names = set()
        for key in self._call(self._client.scan_iter, match="buttress:queue:*:stream"):
            names.add(_text(key)[len("buttress:queue:") : -len(":stream")])
        return sorted(names)

    def close(self) -> None:
        if self._owned:
            self._client.close()
