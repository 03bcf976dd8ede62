"""Which failures mean "the resource is failing" and which mean "the request is wrong".

Theory of operation
-------------------
Between two steps of a fallback protocol the engine asks a :class:`Classifier` about the error.
A *resource* failure moves the call on to the next step (retry, another provider, the cache...);
a *request* failure propagates at once, since no other provider will accept a malformed request
either, and retrying it only burns quota.

The decision, first match wins:

1. the classifier's own ``request_errors`` (request) and ``resource_errors`` (resource), by type;
2. buttress's own rejections (:class:`~buttress.RejectedError`: open breaker, full bulkhead, rate
   limit, an exhausted target pool) and time-outs: resource;
3. an HTTP status carried by the error (``status_code``, ``status`` or ``code`` on the error or on
   its ``response``: httpx, aiohttp, requests, urllib and the OpenAI / Anthropic SDKs): 408, 429
   and 5xx are resource failures, any other 4xx a request failure;
4. the error's class or one of its bases by name (no import of any client library): connection,
   transport, timeout, rate-limit, quota and overload errors (``ConnectError``,
   ``APIConnectionError``, ``RateLimitError``, ``ResourceExhausted``, ``OperationalError``...)
   are resource failures; ``IntegrityError``, ``ProgrammingError``, ``AuthenticationError``,
   ``BadRequestError``, ``ValidationError``... are request failures;
5. connection and OS errors (``ConnectionError``, ``OSError``, ``TimeoutError``, ``EOFError``):
   resource; ``ValueError``, ``TypeError``, ``LookupError``, ``AttributeError``,
   ``NotImplementedError``, ``AssertionError``: request;
6. anything else: ``default`` (resource unless configured otherwise).

One kind of request error is a target's own: a refused credential (401, 403,
``AuthenticationError``, ``PermissionDeniedError``, :meth:`Classifier.cools_target`). With
targets registered, it cools that target and the call switches to another, without retrying it.

:func:`retry_after_of` reads the wait a failure asks for: a numeric ``retry_after`` attribute
(buttress's rejections) or the ``Retry-After`` header of the response it carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import OperationTimeout, RejectedError
from ..health.types import ResourceType
from ..policies.httpheaders import parse_retry_after

__all__ = ["Classifier", "http_status_of", "retry_after_of"]

_RESOURCE_NAMES = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "TimeoutException",
        "TransportError",
        "NetworkError",
        "RemoteProtocolError",
        "ClientConnectionError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "APIConnectionError",
        "APITimeoutError",
        "InternalServerError",
        "ServiceUnavailableError",
        "OverloadedError",
        "RateLimitError",
        "RateLimitExceeded",
        "QuotaExceeded",
        "QuotaExceededError",
        "ResourceExhausted",
        "TooManyRequests",
        "OperationalError",
        "InterfaceError",
        "ConnectionFailure",
        "ClosedResourceError",
        "BrokenResourceError",
        "EndOfStream",
    }
)
_REQUEST_NAMES = frozenset(
    {
        "IntegrityError",
        "ProgrammingError",
        "DataError",
        "NotSupportedError",
        "AuthenticationError",
        "PermissionDeniedError",
        "BadRequestError",
        "NotFoundError",
        "UnprocessableEntityError",
        "ValidationError",
        "ContextWindowExceededError",
        "InvalidRequestError",
    }
)
_TARGET_NAMES = frozenset({"AuthenticationError", "PermissionDeniedError"})
_REQUEST_TYPES: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    NotImplementedError,
    AssertionError,
)
_RESOURCE_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    EOFError,
)


def _int_status(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def http_status_of(error: BaseException) -> int | None:
    """The HTTP status an error carries (on itself or its ``response``), or ``None``."""
    for holder in (error, getattr(error, "response", None)):
        if holder is None:
            continue
        for attribute in ("status_code", "status", "code"):
            try:
                status = _int_status(getattr(holder, attribute, None))
            except Exception:  # a property that raises (no response attached)
                status = None
            if status is not None:
                return status
    return None


def _headers_of(error: BaseException) -> Any:
    headers = getattr(error, "headers", None)
    if headers is None:
        response = getattr(error, "response", None)
        headers = getattr(response, "headers", None) if response is not None else None
    return headers


def retry_after_of(error: BaseException | None) -> float | None:
    """Seconds the failure asks to wait before the same target is tried again, or ``None``."""
    if error is None:
        return None
    value = getattr(error, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    try:
        headers = _headers_of(error)
        if headers is None:
            return None
        raw = headers.get("Retry-After")
        if raw is None:
            raw = headers.get("retry-after")
    except Exception:
        return None
    return parse_retry_after(raw) if isinstance(raw, str | bytes) else None


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


class Classifier:
    """Decides whether an error means the resource is failing (module documentation).

    Args:
        resource_errors: types always treated as the resource failing.
        request_errors: types always treated as the request's fault (checked first).
        resource_statuses / request_statuses: HTTP statuses overriding the defaults.
        default: the answer for an error nothing else decides (default ``True``: resource).

    Call it: ``classifier(error)`` is ``True`` for a resource failure.
    """

    __slots__ = ("_request", "_request_statuses", "_resource", "_resource_statuses", "default")

    def __init__(
        self,
        *,
        resource_errors: Iterable[type[BaseException]] = (),
        request_errors: Iterable[type[BaseException]] = (),
        resource_statuses: Iterable[int] = (),
        request_statuses: Iterable[int] = (),
        default: bool = True,
    ) -> None:
        self._resource = self._types("resource_errors", resource_errors)
        self._request = self._types("request_errors", request_errors)
        self._resource_statuses = self._statuses("resource_statuses", resource_statuses)
        self._request_statuses = self._statuses("request_statuses", request_statuses)
        if not isinstance(default, bool):
            raise TypeError(f"default must be True or False, got {default!r}")
        self.default = default

    @staticmethod
    def _types(
        field: str, values: Iterable[type[BaseException]]
    ) -> tuple[type[BaseException], ...]:
        out: tuple[Any, ...] = (values,) if isinstance(values, type) else tuple(values)
        for value in out:
            if not (isinstance(value, type) and issubclass(value, BaseException)):
                raise TypeError(f"{field} must hold exception types, got {value!r}")
        return out

    @staticmethod
    def _statuses(field: str, values: Iterable[int]) -> frozenset[int]:
        out = frozenset(values)
        for value in out:
            if _int_status(value) is None:
                raise ValueError(f"{field} must hold HTTP statuses (100-599), got {value!r}")
        return out

    @classmethod
    def for_resource(cls, resource: ResourceType) -> Classifier:
        """The default classifier of a resource type."""
        return _DEFAULTS.get(resource) or _DEFAULT

    def __call__(self, error: BaseException) -> bool:
        """Whether ``error`` means the resource is failing (move on) rather than the request."""
        if self._request and isinstance(error, self._request):
            return False
        if self._resource and isinstance(error, self._resource):
            return True
        if isinstance(error, RejectedError | OperationTimeout):
            return True
        status = http_status_of(error)
        if status is not None:
            if status in self._request_statuses:
                return False
            if status in self._resource_statuses:
                return True
            if status in (408, 429) or status >= 500:
                return True
            if 400 <= status < 500:
                return False
        names = _names(error)
        if names & _REQUEST_NAMES:
            return False
        if names & _RESOURCE_NAMES:
            return True
        if isinstance(error, _RESOURCE_TYPES):
            return True
        if isinstance(error, _REQUEST_TYPES):
            return False
        return self.default

    def cools_target(self, error: BaseException) -> bool:
        """Whether a request error is the target's own (a refused credential: HTTP 401/403,
        ``AuthenticationError``, ``PermissionDeniedError``): with targets, that one is cooled
        and the call goes to another, never retried on it."""
        status = http_status_of(error)
        if status in (401, 403):
            return True
        return bool(_names(error) & _TARGET_NAMES)

    def __repr__(self) -> str:
        return (
            f"Classifier(resource_errors={self._resource!r}, request_errors={self._request!r}, "
            f"default={self.default!r})"
        )


_DEFAULT = Classifier()
_DEFAULTS: Mapping[ResourceType, Classifier] = {}
