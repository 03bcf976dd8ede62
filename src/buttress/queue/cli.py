"""``buttress queue``: look into queues and act on them without their handlers.

``list`` shows each queue's counts and its first items, ``show`` one item, ``replay`` ends the
backoff delays of a queue's waiting items (its workers take them at their next claim), and
``dead`` lists, requeues or purges dead letters. Every command prints what it counted.

A storage that cannot be opened or does not answer, or a ``--queue`` it does not hold, is one line
on stderr (``buttress queue: ...``) and exit status 1; a malformed ``--storage`` URL exits with 2,
as argparse's usage errors do.

A stored item whose fields do not read as what they hold (arguments that are not JSON, a time or
a count that is not a number) is still listed, marked, and shown: each such field as it is
stored, and named with what is wrong with it under ``unreadable``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from .._redact import redact
from ..backends import _sqlite_path
from ..clock import wall_time
from ..errors import StorageError, StorageUnavailable
from . import open_queue_store
from .store import Item, QueueStore

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = commands.add_parser(
        "queue",
        help="inspect request queues, replay them, manage dead letters",
        description="Inspect durable request queues and their dead letters.",
    )
    queue.add_argument(
        "--storage",
        default=None,
        help="the queue store: 'sqlite:///path.db' or 'redis://host:port/db' (default: the"
        " buttress state file)",
    )
    queue.add_argument(
        "--queue", type=_name, default=None, help="the queue's name (default: every queue)"
    )
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="counts and the first items of each queue")
    listing.add_argument("--limit", type=_limit, default=20, help="items shown per queue")
    show = actions.add_parser("show", help="one item in full")
    show.add_argument("id", type=int)
    show.add_argument("--dead", action="store_true", help="a dead letter")
    actions.add_parser("replay", help="make backing-off items due now")
    dead = actions.add_parser("dead", help="dead letters: list, requeue, purge")
    dead.add_argument("verb", choices=["list", "requeue", "purge"])
    dead.add_argument("ids", type=int, nargs="*", help="items (default: all)")
    dead.add_argument("--limit", type=_limit, default=20, help="dead letters listed per queue")


def _name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must name a queue, got ''")
    return text


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


_TIMES = ("enqueued", "visible", "expires", "first_error_at", "last_error_at", "died")
_TEXTS = ("key", "handler", "resource", "owner", "first_error", "last_error")
_REQUIRED = {"enqueued", "visible", "key", "handler"}


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _unreadable(item: Item) -> dict[str, str]:
    """The fields of a stored item that do not read as what they hold, each with what is wrong.

    The queue writes every field itself; these are rows changed by hand or by another program,
    which the listing must still show (and ``show`` exists to inspect)."""
    wrong: dict[str, str] = {}
    try:
        body = json.loads(item.args)
    except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        wrong["args"] = f"not JSON ({exc})"
    else:
        if not (
            isinstance(body, dict)
            and isinstance(body.get("args") or [], list)
            and isinstance(body.get("kwargs") or {}, dict)
        ):
            wrong["args"] = 'not {"args": [...], "kwargs": {...}}'
    attempts: object = item.attempts
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        wrong["attempts"] = "not a count"
    for name in _TIMES:
        value: object = getattr(item, name)
        if value is None and name not in _REQUIRED:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            wrong[name] = "not a time"
            continue
        try:
            _when(value)
        except (ValueError, OverflowError, OSError):  # NaN, or out of the calendar's range
            wrong[name] = "not a time"
    for name in _TEXTS:
        value = getattr(item, name)
        if not isinstance(value, str) and (value is not None or name in _REQUIRED):
            wrong[name] = "not text"
    return wrong


def _stored(value: object) -> str:
    """A field as stored, for JSON: bytes (a BLOB) as text, with undecodable bytes escaped."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def _field(item: Item, wrong: dict[str, str], name: str) -> str:
    """A field for a listing line: as stored (quoted) when it does not read as what it holds."""
    value = getattr(item, name)
    if name in wrong:
        return repr(value)
    return _when(value) if name in _TIMES else str(value)


def _line(item: Item, wrong: dict[str, str]) -> str:
    def field(name: str) -> str:
        return _field(item, wrong, name)

    state = f"dead {field('died')}" if item.died is not None else f"due {field('visible')}"
    error = f"  last error: {field('last_error')}" if item.last_error else ""
    where = f" resource={field('resource')}" if item.resource else ""
    marked = "".join(f"  [{name} unreadable: {why}]" for name, why in wrong.items())
    return (
        f"  #{item.id} {field('handler')}{where} attempts={field('attempts')} {state}"
        f" key={field('key')}{error}{marked}"
    )


def _error(message: str, status: int) -> int:
    print(f"buttress queue: {redact(message)}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    spec = args.storage
    if isinstance(spec, str) and spec.lower().startswith("sqlite:///") and len(spec) > 10:
        # an inspection tool does not make the file a mistyped path names
        try:
            path = _sqlite_path(spec, f"--storage {spec!r}")
        except ValueError as exc:
            return _error(str(exc), 2)
        if not path.exists():
            return _error(f"no SQLite file at {path} (--storage {spec!r})", 1)
    try:
        store: QueueStore = open_queue_store(spec)
    except ValueError as exc:  # a malformed URL
        return _error(str(exc), 2)
    except (StorageError, StorageUnavailable) as exc:
        return _error(str(exc), 1)
    try:
        return _act(store, args)
    except (StorageError, StorageUnavailable) as exc:
        return _error(str(exc), 1)
    finally:
        store.close()


def _act(store: QueueStore, args: argparse.Namespace) -> int:
    names = store.queues()
    if args.queue is not None:
        if args.queue not in names:
            held = f"its queues are {', '.join(names)}" if names else "it holds no queues"
            return _error(f"no queue {args.queue!r} in {store.url}: {held}", 1)
        names = [args.queue]
    now = wall_time()
    if args.action == "show":
        found = [(name, item) for name in names if (item := store.get(name, args.id, args.dead))]
        kind = "dead letter" if args.dead else "item"
        if len(found) > 1:  # ids count within a queue: the id alone does not say which
            held = ", ".join(name for name, _ in found)
            return _error(
                f"{kind} #{args.id} is in several queues ({held}): name one with --queue", 2
            )
        if not found:
            print(f"no {kind} #{args.id}")
            return 1
        name, item = found[0]
        wrong = _unreadable(item)
        record = item.as_dict()
        if "args" not in wrong:
            record["args"] = json.loads(item.args)
        if wrong:
            record["unreadable"] = wrong
        print(json.dumps({"queue": name, **record}, indent=2, default=_stored))
        return 0
    if args.action == "dead" and args.verb in ("requeue", "purge") and args.ids and len(names) > 1:
        holding = [n for n in names if any(store.get(n, i, dead=True) for i in args.ids)]
        if len(holding) > 1:  # the same ids in several queues: which were meant?
            return _error(
                f"dead letters {', '.join(f'#{i}' for i in args.ids)} are in several queues "
                f"({', '.join(holding)}): name one with --queue",
                2,
            )
        names = holding or names
    if not names:
        print("no queues")
        return 0
    for name in names:
        if args.action == "list":
            s = store.stats(name, now)
            print(
                f"{name}: {s.depth} queued ({s.waiting} due, {s.in_flight} in flight, "
                f"{s.delayed} delayed), {s.dead} dead, {s.expired} expired, {s.done} done"
            )
            for item in store.items(name, args.limit):
                print(_line(item, _unreadable(item)))
        elif args.action == "replay":
            print(f"{name}: {store.replay(name, now)} items made due now")
        elif args.verb == "list":
            dead = store.items(name, args.limit, dead=True)
            print(f"{name}: {store.stats(name, now).dead} dead letters")
            for item in dead:
                wrong = _unreadable(item)
                print(_line(item, wrong))
                when = _field(item, wrong, "first_error_at")
                print(f"      first error {when}: {item.first_error}")
        elif args.verb == "requeue":
            count = store.requeue_dead(name, args.ids or None, now)
            print(f"{name}: {count} dead letters requeued")
        else:
            count = store.purge_dead(name, args.ids or None)
            print(f"{name}: {count} dead letters purged")
    return 0
