"""The exceptions buttress raises.

Every one derives from :class:`ButtressError`; two also derive from the built-in exception that
code written without buttress would catch::

    ButtressError
    ├── RejectedError            a call refused before it ran; carries retry_after
    │   ├── CircuitOpenError     the breaker is open (or its probes are all taken)
    │   ├── BulkheadFull         no free slot within the allowed wait
    │   ├── RateLimitExceeded    the limit (or the server, via a 429) refused it
    │   ├── ServiceDegraded      the degradation tier is worse than the call needs
    │   └── RequestQueued        a fallback protocol queued the call; carries the ticket
    ├── StorageError             a store is unusable (foreign file, malformed record)
    ├── StorageUnavailable       a store did not answer; policies decide locally instead
    ├── StreamInterrupted        a streamed answer failed after its first chunk
    ├── OperationTimeout         also a TimeoutError: the call ran out of time
    ├── UnknownRateLimit         also a KeyError: a limit name that was never configured
    └── AllTargetsCooling        (a RejectedError) every target of a pool is cooling down

Rejections share :class:`RejectedError`, whose ``retry_after`` is the number of seconds after which
the same call may be admitted, or ``None`` when unknown. A retry policy never retries a rejection
sooner than that. Invalid configuration is not in the tree: it is a ``ValueError`` or
``TypeError`` at construction, naming the field and the value.
"""

from __future__ import annotations

__all__ = [
    "AllTargetsCooling",
    "BulkheadFull",
    "ButtressError",
    "CircuitOpenError",
    "OperationTimeout",
    "RateLimitExceeded",
    "RejectedError",
    "RequestQueued",
    "ServiceDegraded",
    "StorageError",
    "StorageUnavailable",
    "StreamInterrupted",
    "UnknownRateLimit",
]


class ButtressError(Exception):
    """Base class of every exception buttress raises on its own account."""


class RejectedError(ButtressError):
    """A call was refused before it ran.

    Attributes:
        retry_after: seconds until the call may be admitted again, or ``None`` when unknown.
        name: the name of the policy that refused it.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, name: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.name = name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), self.retry_after, self.name))


def _rebuild(
    cls: type[RejectedError], message: str, retry_after: float | None, name: str
) -> RejectedError:
    return cls(message, retry_after=retry_after, name=name)


class CircuitOpenError(RejectedError):
    """The circuit breaker is open (or its half-open probes are all taken).

    A breaker raises it for every call of an outage, so it builds it without a message (no
    ``__init__``, no float formatting); the message is formatted when read: "circuit breaker
    'erp' is open; retry after 4.250s".
    """

    def __str__(self) -> str:
        if self.args:
            return super().__str__()
        return f"circuit breaker {self.name!r} is open; retry after {self.retry_after or 0.0:.3f}s"

    def __repr__(self) -> str:
        return super().__repr__() if self.args else f"{type(self).__name__}({str(self)!r})"


class BulkheadFull(RejectedError):
    """The bulkhead has no free slot within the allowed wait."""


class RateLimitExceeded(RejectedError):
    """The rate limit refused the request; ``retry_after`` says when it would be admitted."""


class ServiceDegraded(RejectedError):
    """A degradation handler refused a call: the service's tier is worse than the call needs.

    ``retry_after`` is ``None``: when the tier recovers depends on the dependencies.
    """


class StorageError(ButtressError):
    """A state store is unusable: a foreign or corrupt file, a malformed stored record."""


class StorageUnavailable(ButtressError):
    """A state store did not answer in time (Redis down or slow, a database locked too long).

    Policies treat this as a fault of the store, not of the guarded call: they decide on local
    state (or fail open / closed, as configured) and never let it reach the caller.
    """


class OperationTimeout(ButtressError, TimeoutError):
    """The operation did not finish within its time budget.

    Attributes:
        timeout: the budget in seconds that applied (the earliest enclosing deadline).
    """

    def __init__(self, message: str, *, timeout: float | None = None, name: str = "") -> None:
        super().__init__(message)
        self.timeout = timeout
        self.name = name


class UnknownRateLimit(ButtressError, KeyError):
    """A rate limit was asked about a name that was never configured.

    Also a ``KeyError``: the limiter is looked up by name, as a mapping is.
    """

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument, quotes and all.
        return str(self.args[0]) if self.args else "unknown rate limit"


class RequestQueued(RejectedError):
    """A fallback protocol put the call in the durable queue instead of running it now.

    Attributes:
        ticket: the queued item's id; ``key``: its idempotency key; ``handler``: the handler
            that will run it when its resource is healthy again.
    """

    def __init__(
        self,
        message: str,
        *,
        ticket: int = 0,
        key: str = "",
        handler: str = "",
        retry_after: float | None = None,
        name: str = "",
    ) -> None:
        super().__init__(message, retry_after=retry_after, name=name)
        self.ticket = ticket
        self.key = key
        self.handler = handler

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_queued, (str(self), self.ticket, self.key, self.handler, self.name))


def _rebuild_queued(message: str, ticket: int, key: str, handler: str, name: str) -> RequestQueued:
    return RequestQueued(message, ticket=ticket, key=key, handler=handler, name=name)


class StreamInterrupted(ButtressError):
    """A streamed answer failed after its first chunk: it is not spliced with another target's.

    Attributes:
        partial: the chunks received before the failure, in order.
        target: the name of the target that was streaming (``None`` without targets).
    The failure itself is ``__cause__``.
    """

    def __init__(self, message: str, *, partial: list[object], target: str | None) -> None:
        super().__init__(message)
        self.partial = partial
        self.target = target


class AllTargetsCooling(RejectedError):
    """Every target of a pool (a provider chain, replicas) is cooling down, none can be tried.

    ``retry_after`` is the seconds until the first of them can be tried again. ``targets`` lists
    each as ``(name, reason, expires_at)``: why it cools (``rate_limited``, ``auth``,
    ``server_error``, ...) and when (the pool clock's ``now()`` scale); the message says the same
    in seconds from now.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        name: str = "",
        targets: tuple[tuple[str, str, float], ...] = (),
    ) -> None:
        super().__init__(message, retry_after=retry_after, name=name)
        self.targets = targets

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_cooling,
            (str(self), self.retry_after, self.name, self.targets),
        )


def _rebuild_cooling(
    message: str, retry_after: float | None, name: str, targets: tuple[tuple[str, str, float], ...]
) -> AllTargetsCooling:
    return AllTargetsCooling(message, retry_after=retry_after, name=name, targets=targets)
