"""Using a shared store without depending on it.

A policy with ``storage=`` asks its store for every decision. When the store cannot answer (Redis
down or slow, a database locked too long), :class:`StoreGuard` marks the policy *degraded*: it
logs one WARNING for the outage (not one per call), the policy decides on local state (or fails
open or closed, as configured), and the store is tried again every ``retry_interval`` seconds,
by one caller (the others decide without it meanwhile); the first answer ends the outage with one
INFO line. The caller never sees the store's exception.

A call whose deadline (:func:`buttress.remaining`) is shorter than the store's own timeout decides
locally at once rather than risk waiting on the store past its deadline.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .._config import seconds
from .._deadline import deadline_on
from ..backends.base import StorageUnavailable
from ..clock import SYSTEM_CLOCK, Clock, get_clock, is_real, monotonic_time

__all__ = ["FAIL_MODES", "StoreGuard", "store_faults"]

FAIL_MODES = ("local", "open", "closed")
_log = logging.getLogger("buttress.storage")


_FAULTS: tuple[type[BaseException], ...] = (StorageUnavailable,)


def store_faults() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the store is unavailable" (not "the call failed").

    Just :class:`StorageUnavailable`: every backend translates its own client's exceptions.
    """
    return _FAULTS


def check_fail_mode(value: object) -> str:
    if value not in FAIL_MODES:
        raise ValueError(f"fail_mode must be one of {', '.join(FAIL_MODES)}, got {value!r}")
    return str(value)


class StoreGuard:
    """The health of one policy's store, and the time to try it again."""

    __slots__ = (
        "_lock",
        "degraded",
        "fail_mode",
        "next_try",
        "outages",
        "owner",
        "retry_interval",
        "store",
    )

    def __init__(self, store: Any, owner: str, fail_mode: str, retry_interval: float) -> None:
        self.store = store
        self.owner = owner
        self.fail_mode = check_fail_mode(fail_mode)
        self.retry_interval = seconds("retry_interval", retry_interval, allow_zero=False)
        self.degraded = False
        self.next_try = 0.0
        self.outages = 0
        self._lock = threading.Lock()

    def should_try(self, now: float) -> bool:
        """Whether to ask the store now (healthy, or degraded and due for another try).

        During an outage one caller a ``retry_interval`` asks: the first one due claims the try
        (the next is due a ``retry_interval`` later), and the others decide without the store
        rather than each wait on it.
        """
        if self.degraded and now < self.next_try:
            return False
        timeout = self.store.timeout
        if timeout is not None:
            # the store's I/O takes real time: only a deadline on the real scale can cut it short
            at = deadline_on(SYSTEM_CLOCK, True)
            if at is not None and at - monotonic_time() < timeout:
                return False
        if not self.degraded:
            return True
        with self._lock:
            if not self.degraded:
                return True
            if now < self.next_try:
                return False  # another caller claimed this try
            self.next_try = now + self.retry_interval
            return True

    def failed(self, error: BaseException, now: float) -> None:
        """The store did not answer: start (or continue) an outage."""
        with self._lock:
            self.next_try = now + self.retry_interval
            if self.degraded:
                return
            self.degraded = True
            self.outages += 1
        _log.warning(
            "%s: storage %s unavailable (%r); deciding %s until it answers again",
            self.owner,
            getattr(self.store, "url", self.store),
            error,
            {"local": "on local state", "open": "open (admitting)", "closed": "closed (refusing)"}[
                self.fail_mode
            ],
            extra={
                "event": "storage_unavailable",
                "policy_name": self.owner,
                "storage": getattr(self.store, "url", repr(self.store)),
                "fail_mode": self.fail_mode,
            },
        )

    def answered(self) -> None:
        """The store answered: end an outage if one is on."""
        if not self.degraded:
            return
        with self._lock:
            if not self.degraded:
                return
            self.degraded = False
        _log.info(
            "%s: storage %s answers again; back on shared state",
            self.owner,
            getattr(self.store, "url", self.store),
            extra={"event": "storage_recovered", "policy_name": self.owner},
        )


def store_time(clock: Clock | None) -> float | None:
    """``now`` for a store: ``None`` (the store's own clock) unless a test clock is installed."""
    current = clock or get_clock()
    return None if is_real(current) else current.wall()
