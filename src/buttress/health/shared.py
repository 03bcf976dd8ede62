"""Resource verdicts shared between teams and processes through a store.

Theory of operation
-------------------
A team's monitors say what they see of each resource (``api_quota:openai`` is CRITICAL). With a
store shared by several teams or pods (``ResilienceManager(storage=...)``), a
:class:`SharedVerdicts` *publishes* those readings and *reads* everybody else's, so a team that
does not watch a resource, or whose own reading is old, still knows it is exhausted or down.

**Publishing.** One daemon thread per manager (started with its monitoring, or by the first
status change; woken at once by every status change, else every shortest check interval) writes
one record per resource key: the status, the reason, the team, and ``at`` (when the reading was
taken), in one store step for all of the team's resources. A verdict is valid for
``stale_after`` check intervals (3) of its monitor *from its reading*, so republishing an old
reading never extends it, and the verdict of a publisher that stopped or died ages out by
itself. Two teams watching the same resource write the same key: the store keeps the newer
reading (the larger ``at``; hosts should keep their clocks in step), so the fresher wins. Without
storage nothing of this exists: no thread, no record, no read.

**Reading.** The protocol engine asks which of a resource type's names are known bad before it
chooses a target and before it retries (:meth:`SharedVerdicts.known_bad`). The answer combines,
per name the team cares about (its monitors of that type and its targets):

1. the team's own reading while it is fresh (taken within ``stale_after`` of its monitor's
   intervals): a monitor of our own, still running, is the best judge of what we see;
2. else an unexpired shared verdict (another team's, another pod's, or our own from before);
3. else our own stale reading, the last thing known.

Names the team neither monitors nor targets are not consulted: another team's database named
``orders`` may not be this team's, and a verdict must not stop this team's retries. The store is
read on every consultation by default (``refresh=0``: a target pool with storage reads its states
on every choice too); ``refresh`` seconds reuse a read instead.

**Outages.** A store that does not answer never fails a call: the engine decides on the last
verdicts read (each until its own expiry) and the team's own readings, one WARNING is logged per
outage (event ``storage_unavailable``), the store is tried again every ``retry_interval`` seconds,
and publishing resumes with the first answer.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from ..backends.base import StorageError, StorageUnavailable, VerdictStore
from ..clock import Clock, get_clock
from ..policies._storeguard import StoreGuard, store_time
from .manager import CRITICAL, ResourceManager
from .types import ResourceStatus, ResourceType

__all__ = ["SPACE", "KnownBad", "SharedVerdicts", "Verdict"]

#: The store's space of resource verdicts (teams sharing a store share this space).
SPACE = "resources"
_MIN_PERIOD = 0.05
_log = logging.getLogger("buttress.health")


@dataclass(frozen=True, slots=True)
class Verdict:
    """One shared verdict as read from the store.

    Attributes:
        key: the resource key (``"api_quota:openai"``).
        status: the publisher's reported status.
        message: why, in words (the publisher's reason).
        team: the team that published it.
        at: Unix time of the reading.
        expires: when it expires, on the reader's clock ``now()`` scale.
    """

    key: str
    status: ResourceStatus
    message: str | None
    team: str
    at: float
    expires: float

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "status": self.status.value,
            "message": self.message,
            "team": self.team,
            "checked_at": self.at,
            "expires_in": round(max(0.0, self.expires - now), 3),
            "shared": True,
        }


def _parse(key: str, record: str, left: float, now: float) -> Verdict | None:
    try:
        data = json.loads(record)
        return Verdict(
            key=key,
            status=ResourceStatus(data["status"]),
            message=None if data.get("message") is None else str(data["message"]),
            team=str(data["team"]),
            at=float(data["at"]),
            expires=now + float(left),
        )
    except (ValueError, TypeError, KeyError):
        _log.debug("unusable shared verdict of %s ignored: %r", key, record[:120])
        return None


class SharedVerdicts:
    """Publishes a team's resource readings to a store and reads everybody's (module docs).

    Args:
        store: a store implementing :class:`~buttress.backends.base.VerdictStore`.
        team: the publishing team's name (in each record).
        resources: the team's :class:`ResourceManager` (what is published, what is local).
        clock: the clock (default: the process default, read when needed).
        space: the store's space of verdicts (teams must share it to see each other).
        stale_after: check intervals a reading stays valid (published and local).
        refresh: seconds a read of the store is reused (0: read at every consultation).
        retry_interval: seconds between tries of a store that did not answer.
    """

    def __init__(
        self,
        store: Any,
        team: str,
        resources: ResourceManager,
        *,
        clock: Clock | None = None,
        space: str = SPACE,
        stale_after: float = 3.0,
        refresh: float = 0.0,
        retry_interval: float = 1.0,
    ) -> None:
        if not isinstance(store, VerdictStore):
            raise TypeError(
                f"storage {getattr(store, 'url', store)!r} does not keep resource verdicts (it "
                "lacks publish_verdicts/verdicts of buttress.backends.base.VerdictStore)"
            )
        if not isinstance(space, str) or not space:
            raise ValueError(f"space must be a non-empty string, got {space!r}")
        for field, value in (("stale_after", stale_after), ("refresh", refresh)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{field} must be a number >= 0, got {value!r}")
        if stale_after <= 0:
            raise ValueError(f"stale_after must be > 0 check intervals, got {stale_after!r}")
        self.store = store
        self.team = team
        self.space = space
        self.stale_after = float(stale_after)
        self.refresh = float(refresh)
        self._resources = resources
        self._clock = clock
        self.guard = StoreGuard(
            store, f"shared resource verdicts of team {team!r}", "local", retry_interval
        )
        self._verdicts: dict[str, Verdict] = {}
        self._read_at: float | None = None
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.published = 0  # records written so far (for tests and diagnostics)

    def __repr__(self) -> str:
        return f"SharedVerdicts({self.team!r}, {getattr(self.store, 'url', self.store)!r})"

    @property
    def clock(self) -> Clock:
        return self._clock or get_clock()

    # -- publishing ------------------------------------------------------------------------------

    def publish(self) -> int:
        """Write the team's fresh readings now (one store step); how many. Never raises for the
        store: an outage is logged once and the next pass tries again."""
        clock = self.clock
        wall = clock.wall()
        records: dict[str, tuple[str, float, float]] = {}
        for monitor in self._resources.monitors():
            state = monitor.state
            if state.status is None or state.checked_at is None:
                continue
            left = self.stale_after * monitor.interval - max(0.0, wall - state.checked_at)
            if left <= 0:
                continue  # an old reading is not news: let the shared verdict age out
            record = {
                "status": state.status.value,
                "message": state.reason or state.message,
                "team": self.team,
                "at": state.checked_at,
            }
            records[state.key] = (json.dumps(record), state.checked_at, left)
        if not records:
            return 0
        now = clock.now()
        if not self.guard.should_try(now):
            return 0
        try:
            self.store.publish_verdicts(self.space, records, now=store_time(self._clock))
        except (StorageUnavailable, StorageError) as exc:
            self.guard.failed(exc, now)
            return 0
        self.guard.answered()
        self.published += len(records)
        return len(records)

    def nudge(self) -> None:
        """A status changed: publish now (starting the publisher if it is not running)."""
        self.start()
        self._wake.set()

    def start(self) -> None:
        """Run the publisher thread (idempotent)."""
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                return
            self._halt.clear()
            thread = threading.Thread(
                target=_publisher,
                args=(weakref.ref(self), self._wake, self._halt),
                name=f"buttress-share-{self.team}",
                daemon=True,
            )
            self._thread = thread
        thread.start()

    def stop(self) -> None:
        """Stop publishing (what was published expires by itself)."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._halt.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)

    @property
    def publishing(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _period(self) -> float:
        intervals = [m.interval for m in self._resources.monitors()]
        return max(_MIN_PERIOD, min(intervals, default=1.0))

    # -- reading ---------------------------------------------------------------------------------

    def verdicts(self) -> dict[str, Verdict]:
        """The unexpired shared verdicts by resource key (read from the store when due; during an
        outage, the last ones read, each until it expires)."""
        now = self.clock.now()
        read_at = self._read_at
        if read_at is not None and now - read_at < self.refresh:
            return self._alive(now)
        if not self.guard.should_try(now):
            return self._alive(now)
        try:
            raw = self.store.verdicts(self.space, now=store_time(self._clock))
        except (StorageUnavailable, StorageError) as exc:
            self.guard.failed(exc, now)
            return self._alive(now)
        self.guard.answered()
        parsed = {}
        for key, (record, left) in raw.items():
            verdict = _parse(key, record, left, now)
            if verdict is not None:
                parsed[key] = verdict
        self._verdicts, self._read_at = parsed, now
        return parsed

    def _alive(self, now: float) -> dict[str, Verdict]:
        verdicts = self._verdicts
        if all(v.expires > now for v in verdicts.values()):
            return verdicts
        alive = {k: v for k, v in verdicts.items() if v.expires > now}
        self._verdicts = alive
        return alive

    def known_bad(self, resource: ResourceType, targets: Collection[str] = ()) -> frozenset[str]:
        """The names of ``resource`` known CRITICAL or UNAVAILABLE, local and shared combined
        (the module's rules); ``targets`` are the names the team calls besides its monitors."""
        shared = self.verdicts()
        wall = self.clock.wall()
        bad: set[str] = set()
        fresh: set[str] = set()
        stale: dict[str, bool] = {}
        for monitor in self._resources.monitors():
            if monitor.type is not resource:
                continue
            state = monitor.state
            is_bad = state.status is not None and state.status.rank >= CRITICAL.rank
            checked = state.checked_at
            if checked is not None and wall - checked <= self.stale_after * monitor.interval:
                fresh.add(monitor.name)
                if is_bad:
                    bad.add(monitor.name)
            else:
                stale[monitor.name] = is_bad
        prefix = f"{resource.value}:"
        for name in {*targets, *stale}:
            if name in fresh:
                continue
            verdict = shared.get(prefix + name)
            if verdict is not None:
                if verdict.status.rank >= CRITICAL.rank:
                    bad.add(name)
            elif stale.get(name):
                bad.add(name)
        return frozenset(bad)

    def report(self) -> dict[str, dict[str, object]]:
        """The shared verdicts of resources this team does not monitor (the report's
        ``shared``)."""
        local = {monitor.key for monitor in self._resources.monitors()}
        now = self.clock.now()
        return {
            key: verdict.as_dict(now)
            for key, verdict in sorted(self.verdicts().items())
            if key not in local
        }


class KnownBad(dict[ResourceType, frozenset[str]]):
    """What a protocol engine reads as "known bad" (``ProtocolHost.consult``).

    The engine still writes its local monitors' bad names into it; ``get`` answers from the
    monitors' readings and the shared verdicts together, by :meth:`SharedVerdicts.known_bad`.
    """

    def __init__(
        self, shared: SharedVerdicts, targets: Callable[[ResourceType], Collection[str]]
    ) -> None:
        super().__init__()
        self._shared = shared
        self._targets = targets

    def get(  # type: ignore[override]
        self, resource: ResourceType, default: frozenset[str] | None = None
    ) -> frozenset[str] | None:
        return self._shared.known_bad(resource, self._targets(resource)) or default


def _publisher(
    ref: weakref.ReferenceType[SharedVerdicts], wake: threading.Event, halt: threading.Event
) -> None:
    """The publisher loop; holds its owner weakly so a forgotten manager's thread ends."""
    while not halt.is_set():
        shared = ref()
        if shared is None:
            return
        wake.clear()  # a status change from here on wakes the next pass
        try:
            shared.publish()
        except Exception:  # a bug must not kill the thread silently, nor spin
            _log.exception("publishing the shared resource verdicts of %r failed", shared.team)
        period = shared._period()
        del shared
        wake.wait(period)
