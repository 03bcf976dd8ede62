"""What a queue store keeps, and the in-memory store.

A store holds three things per queue: the waiting items (each with its lease), the dead letters,
and the keys of the requests already handled (for a while: ``done_for`` seconds). Every step is
atomic with respect to the other callers of the same store: one lock in memory, one
``BEGIN IMMEDIATE`` transaction in SQLite.

An item is *visible* when ``visible <= now``. Claiming an item sets ``visible`` to the end of the
lease, names the owner and counts the delivery in ``attempts``; a lease that runs out makes the
item visible again by itself, and a claim then delivers it alone: its worker died holding a
batch, perhaps because of it (a request that crashes the process), so its batch-mates are not
claimed with it again and only it uses up its attempts. Items with a ``resource`` are delivered
in order, one at a time: an
item is claimable only while it is the oldest of its resource, so a resource's head that is in
flight or backing off holds the rest of that resource back (and nothing else).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

__all__ = [
    "Claimed",
    "GroupedAcks",
    "Item",
    "LEASE_RAN_OUT",
    "MemoryQueueStore",
    "QueueStore",
    "Stats",
    "settle_failure",
]

#: the error a dead letter records when its worker died on its last attempt
LEASE_RAN_OUT = "the lease ran out (its worker stopped)"


@dataclass(slots=True)
class Item:
    """One queued request as stored."""

    id: int
    key: str
    handler: str
    args: str  # JSON: {"args": [...], "kwargs": {...}}
    resource: str | None
    enqueued: float
    expires: float | None
    attempts: int = 0
    visible: float = 0.0
    owner: str | None = None
    first_error: str | None = None
    first_error_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    died: float | None = None  # dead letters only
    # why the stored record cannot be delivered (a field that does not decode): the queue sends
    # the item to the dead letters with this as its error, without running anything
    malformed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class Claimed:
    """What one claim gave: items to run, and what it settled on the way."""

    items: list[Item] = field(default_factory=list)
    skipped: int = 0  # already done (by key): acknowledged without running
    expired: int = 0  # past their TTL: dropped
    dead: int = 0  # out of attempts after a lease ran out (their worker died)


@dataclass(slots=True)
class Stats:
    queue: str
    waiting: int
    in_flight: int
    delayed: int
    dead: int
    expired: int
    done: int

    @property
    def depth(self) -> int:
        return self.waiting + self.in_flight + self.delayed


class QueueStore(Protocol):
    """The steps a queue needs of its storage; each is atomic."""

    url: str

    def put(self, queue: str, item: Item, max_depth: int | None, now: float) -> tuple[int, bool]:
        """Add ``item`` unless its key is queued or done: ``(id, added)``; ``(-1, False)`` when
        the queue holds ``max_depth`` items already."""
        ...

    def claim(
        self, queue: str, owner: str, now: float, lease: float, limit: int, max_attempts: int
    ) -> Claimed: ...

    def renew(self, queue: str, owner: str, ids: list[int], until: float) -> list[int]:
        """Extend the leases ``owner`` still holds; returns their ids."""
        ...

    def ack(self, queue: str, item_id: int, key: str, now: float, done_until: float) -> None:
        """The request is handled: remember its key until ``done_until``, drop the item."""
        ...

    def fail(
        self,
        queue: str,
        item_id: int,
        owner: str,
        error: str,
        now: float,
        retry_at: float | None,
    ) -> str:
        """A delivery failed: ``"retry"`` (visible at ``retry_at``), ``"dead"`` (``retry_at`` is
        None: moved to the dead letters) or ``"lost"`` (the lease was no longer ``owner``'s)."""
        ...

    def is_done(self, queue: str, key: str, now: float) -> bool: ...

    def stats(self, queue: str, now: float) -> Stats: ...

    def items(self, queue: str, limit: int, dead: bool = False) -> list[Item]: ...

    def get(self, queue: str, item_id: int, dead: bool = False) -> Item | None: ...

    def replay(self, queue: str, now: float) -> int:
        """Make every waiting item due now (ends backoff delays; leases held stay)."""
        ...

    def requeue_dead(self, queue: str, ids: list[int] | None, now: float) -> int: ...

    def purge_dead(self, queue: str, ids: list[int] | None) -> int: ...

    def queues(self) -> list[str]: ...

    def close(self) -> None: ...


#: A request as a queue hands it to a store that takes rows: ``(key, handler, args, resource,
#: enqueued, expires, visible)``, the fields of a new :class:`Item` in its order.
Row = tuple[str, str, str, str | None, float, float | None, float]


class RowPuts(Protocol):
    """What a store offers when building an :class:`Item` for each put is a cost worth sparing
    (SQLite, where a put's Python is a large part of it)."""

    def put_row(self, queue: str, row: Row, max_depth: int | None, now: float) -> tuple[int, bool]:
        """:meth:`QueueStore.put` of the item ``row`` describes."""
        ...


class GroupedAcks(Protocol):
    """What a store offers when one commit per acknowledgement is its main cost (SQLite).

    A queue on such a store keeps the acknowledgements of a batch and writes them together:
    with its next claim, in the same transaction, or on their own when it stops consuming (or at
    a heartbeat). A crash before then runs those requests again, under their keys.
    """

    def ack_many(
        self, queue: str, handled: list[tuple[int, str]], now: float, done_until: float
    ) -> None:
        """:meth:`QueueStore.ack` for each ``(id, key)``, in one transaction."""
        ...

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
        """:meth:`ack_many`, then :meth:`QueueStore.claim`, in one transaction."""
        ...


class MemoryQueueStore:
    """This process's memory: for tests and for queues that need not outlive the process.

    Each queue's items are a dict in id order (a claim walks it from the oldest and stops at its
    batch), with a dict from key to id beside it (a put's duplicate check is one lookup); done
    keys are a dict beside a queue of (until, key) in the order they were done, swept from the
    front as they expire.
    """

    url = "memory://"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[int, Item]] = {}
        self._keys: dict[str, dict[str, int]] = {}
        self._dead: dict[str, dict[int, Item]] = {}
        self._done: dict[str, dict[str, float]] = {}
        self._done_order: dict[str, deque[tuple[float, str]]] = {}  # (until, key), oldest first
        self._expired: dict[str, int] = {}
        self._next = 0

    def _q(self, queue: str) -> dict[int, Item]:
        return self._items.setdefault(queue, {})

    def _drop(self, queue: str, item_id: int) -> Item | None:
        """Take an item out of the queue (and its key out of the index)."""
        item = self._q(queue).pop(item_id, None)
        if item is not None:
            keys = self._keys.get(queue)
            if keys is not None and keys.get(item.key) == item_id:
                del keys[item.key]
        return item

    def _is_done(self, queue: str, key: str, now: float) -> bool:
        until = self._done.get(queue, {}).get(key)
        return until is not None and until > now

    def put(self, queue: str, item: Item, max_depth: int | None, now: float) -> tuple[int, bool]:
        with self._lock:
            items = self._q(queue)
            keys = self._keys.setdefault(queue, {})
            existing = keys.get(item.key)
            if existing is not None:
                return existing, False
            if self._is_done(queue, item.key, now):
                return 0, False
            if max_depth is not None and len(items) >= max_depth:
                return -1, False
            self._next += 1
            items[self._next] = replace(item, id=self._next)
            keys[item.key] = self._next
            return self._next, True

    def claim(
        self, queue: str, owner: str, now: float, lease: float, limit: int, max_attempts: int
    ) -> Claimed:
        out = Claimed()
        with self._lock:
            seen: set[str] = set()  # resources whose head (oldest item) was passed
            gone: list[int] = []  # expired or done: taken out after the walk
            dead: list[Item] = []
            for item in self._q(queue).values():  # in id order
                if len(out.items) >= limit:
                    break
                head = True
                if item.resource is not None:
                    head = item.resource not in seen
                    seen.add(item.resource)
                if item.expires is not None and item.expires <= now:
                    gone.append(item.id)
                    out.expired += 1
                    continue
                if item.visible > now or not head:
                    continue
                if self._is_done(queue, item.key, now):
                    gone.append(item.id)
                    out.skipped += 1
                    continue
                if item.owner is not None and item.attempts >= max_attempts:
                    dead.append(item)
                    continue
                # its lease ran out: its worker died holding it, and perhaps because of it
                suspect = item.owner is not None
                if suspect and out.items:
                    break  # delivered alone, by a later claim
                item.attempts += 1
                item.owner = owner
                item.visible = now + lease
                out.items.append(replace(item))
                if suspect:
                    break
            for item_id in gone:
                self._drop(queue, item_id)
            for item in dead:
                self._bury(queue, item, LEASE_RAN_OUT, now)
            out.dead = len(dead)
            self._expired[queue] = self._expired.get(queue, 0) + out.expired
        return out

    def _bury(self, queue: str, item: Item, error: str | None, now: float) -> None:
        self._drop(queue, item.id)
        if error is not None:
            _note_error(item, error, now)
        item.died = now
        item.owner = None
        self._dead.setdefault(queue, {})[item.id] = item

    def renew(self, queue: str, owner: str, ids: list[int], until: float) -> list[int]:
        held = []
        with self._lock:
            items = self._q(queue)
            for item_id in ids:
                item = items.get(item_id)
                if item is not None and item.owner == owner:
                    item.visible = until
                    held.append(item_id)
        return held

    def ack(self, queue: str, item_id: int, key: str, now: float, done_until: float) -> None:
        with self._lock:
            done = self._done.setdefault(queue, {})
            done[key] = done_until
            order = self._done_order.setdefault(queue, deque())
            order.append((done_until, key))
            queued = self._keys.get(queue, {}).get(key)
            if queued is not None:  # by key, as the other stores acknowledge
                self._drop(queue, queued)
            while order and order[0][0] <= now:
                until, old = order.popleft()
                if done.get(old) == until:  # not acknowledged again since
                    del done[old]

    def fail(
        self,
        queue: str,
        item_id: int,
        owner: str,
        error: str,
        now: float,
        retry_at: float | None,
    ) -> str:
        with self._lock:
            item = self._q(queue).get(item_id)
            outcome = settle_failure(item, owner, error, now, retry_at)
            if outcome == "dead" and item is not None:
                self._bury(queue, item, None, now)
            elif outcome == "retry" and item is not None and retry_at is not None:
                item.owner = None
                item.visible = retry_at
            return outcome

    def is_done(self, queue: str, key: str, now: float) -> bool:
        with self._lock:
            return self._is_done(queue, key, now)

    def stats(self, queue: str, now: float) -> Stats:
        with self._lock:
            items = list(self._q(queue).values())
            return Stats(
                queue=queue,
                waiting=sum(1 for i in items if i.visible <= now),
                in_flight=sum(1 for i in items if i.visible > now and i.owner is not None),
                delayed=sum(1 for i in items if i.visible > now and i.owner is None),
                dead=len(self._dead.get(queue, {})),
                expired=self._expired.get(queue, 0),
                done=sum(1 for until in self._done.get(queue, {}).values() if until > now),
            )

    def items(self, queue: str, limit: int, dead: bool = False) -> list[Item]:
        with self._lock:
            source = self._dead.get(queue, {}) if dead else self._q(queue)
            return [replace(i) for i in sorted(source.values(), key=lambda i: i.id)[:limit]]

    def get(self, queue: str, item_id: int, dead: bool = False) -> Item | None:
        with self._lock:
            source = self._dead.get(queue, {}) if dead else self._q(queue)
            item = source.get(item_id)
            return None if item is None else replace(item)

    def replay(self, queue: str, now: float) -> int:
        count = 0
        with self._lock:
            for item in self._q(queue).values():
                if item.owner is None and item.visible > now:
                    item.visible = now
                    count += 1
        return count

    def requeue_dead(self, queue: str, ids: list[int] | None, now: float) -> int:
        with self._lock:
            dead = self._dead.get(queue, {})
            wanted = None if ids is None else set(ids)
            chosen = [i for i in dead if wanted is None or i in wanted]  # in the order they died
            items, keys = self._q(queue), self._keys.setdefault(queue, {})
            for item_id in chosen:  # behind what is queued
                item = dead.pop(item_id)
                if item.key in keys or self._is_done(queue, item.key, now):
                    continue  # the same request is queued again already, or was handled
                self._next += 1
                item.id = self._next
                item.attempts = 0
                item.visible = now
                item.died = None
                items[item.id] = item
                keys[item.key] = item.id
            return len(chosen)

    def purge_dead(self, queue: str, ids: list[int] | None) -> int:
        with self._lock:
            dead = self._dead.get(queue, {})
            chosen = list(dead) if ids is None else [i for i in ids if i in dead]
            for item_id in chosen:
                del dead[item_id]
            return len(chosen)

    def queues(self) -> list[str]:
        with self._lock:
            return sorted(set(self._items) | set(self._dead))

    def close(self) -> None:
        pass


def settle_failure(
    item: Item | None, owner: str, error: str, now: float, retry_at: float | None
) -> str:
    """What a failed delivery comes to, the decision every store's ``fail`` makes.

    ``item`` is the item as stored now (None: it is gone). Returns ``"lost"`` when it is gone or
    leased to another owner than ``owner`` (its lease ran out and someone else has it: this
    failure no longer counts), else notes ``error`` on ``item`` (its first error once, its last
    error always, with their times) and returns ``"dead"`` when ``retry_at`` is None (no attempts
    left: the caller moves it to the dead letters) or ``"retry"`` (the caller makes it visible at
    ``retry_at``). The store writes what changed; this decides and keeps the error fields.
    """
    if item is None or item.owner != owner:
        return "lost"
    _note_error(item, error, now)
    return "dead" if retry_at is None else "retry"


def _note_error(item: Item, error: str, now: float) -> None:
    if item.first_error is None:
        item.first_error, item.first_error_at = error, now
    item.last_error, item.last_error_at = error, now
