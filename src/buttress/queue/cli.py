"""``buttress queue``: look into queues and act on them without their handlers.

``list`` shows each queue's counts and its first items, ``show`` one item, ``replay`` ends the
backoff delays of a queue's waiting items (its workers take them at their next claim), and
``dead`` lists, requeues or purges dead letters. Every command prints what it counted.

A storage that cannot be opened or does not answer is one line on stderr (``buttress queue:
...``) and exit status 1; a malformed ``--storage`` URL exits with 2, as argparse's usage errors
do.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from .._redact import redact
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
    queue.add_argument("--queue", default=None, help="the queue's name (default: every queue)")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="counts and the first items of each queue")
    listing.add_argument("--limit", type=int, default=20, help="items shown per queue")
    show = actions.add_parser("show", help="one item in full")
    show.add_argument("id", type=int)
    show.add_argument("--dead", action="store_true", help="a dead letter")
    actions.add_parser("replay", help="make backing-off items due now")
    dead = actions.add_parser("dead", help="dead letters: list, requeue, purge")
    dead.add_argument("verb", choices=["list", "requeue", "purge"])
    dead.add_argument("ids", type=int, nargs="*", help="items (default: all)")
    dead.add_argument("--limit", type=int, default=20, help="dead letters listed per queue")


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _line(item: Item) -> str:
    state = f"dead {_when(item.died)}" if item.died is not None else f"due {_when(item.visible)}"
    error = f"  last error: {item.last_error}" if item.last_error else ""
    where = f" resource={item.resource}" if item.resource else ""
    return (
        f"  #{item.id} {item.handler}{where} attempts={item.attempts} {state} key={item.key}{error}"
    )


def _error(message: str, status: int) -> int:
    print(f"buttress queue: {redact(message)}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    try:
        store: QueueStore = open_queue_store(args.storage)
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
    names = [args.queue] if args.queue else store.queues()
    now = wall_time()
    if args.action == "show":
        for name in names:
            item = store.get(name, args.id, dead=args.dead)
            if item is not None:
                record = item.as_dict()
                record["args"] = json.loads(item.args)
                print(json.dumps({"queue": name, **record}, indent=2))
                return 0
        print(f"no {'dead letter' if args.dead else 'item'} #{args.id}")
        return 1
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
                print(_line(item))
        elif args.action == "replay":
            print(f"{name}: {store.replay(name, now)} items made due now")
        elif args.verb == "list":
            dead = store.items(name, args.limit, dead=True)
            print(f"{name}: {store.stats(name, now).dead} dead letters")
            for item in dead:
                print(_line(item))
                print(f"      first error {_when(item.first_error_at)}: {item.first_error}")
        elif args.verb == "requeue":
            count = store.requeue_dead(name, args.ids or None, now)
            print(f"{name}: {count} dead letters requeued")
        else:
            count = store.purge_dead(name, args.ids or None)
            print(f"{name}: {count} dead letters purged")
    return 0
