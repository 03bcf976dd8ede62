"""Network checks: a TCP connect, and an HTTP(S) GET with an expected status and a latency budget.

Theory of operation
-------------------
``tcp_check(host, port)`` opens a connection and closes it: the port accepts connections, which
is all a TCP check can know. ``http_check(url)`` sends one ``GET`` (``Connection: close``, no
redirects followed, no proxy) and reads the status line and headers; the body is not read, so a
large page costs no more than a small one. An answer whose status is not one of
``expect_status`` raises :class:`HTTPStatusError` (the endpoint failed); an expected answer later
than ``latency_budget`` seconds (measured to the end of the headers on the default
:class:`buttress.clock.Clock`) is a reading with ``status=DEGRADED``: it works, slowly.

Both run on the event loop with asyncio streams and the standard library only, so the resource
manager's timeout cancels them at any await, mid-connect or mid-read, with nothing left behind
in a thread. HTTPS verifies the server against the system's CAs (``ssl.create_default_context()``)
or against ``ssl_context=``. A user and password in the URL are sent as Basic authentication and
never shown: ``target`` and every message carry the URL redacted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Collection, Mapping
from urllib.parse import unquote, urlsplit

from .._config import integer, optional_seconds
from ..clock import get_clock
from . import _http
from .types import Reading, ResourceStatus, redact

__all__ = ["HTTPStatusError", "HttpCheck", "TcpCheck", "http_check", "tcp_check"]


class HTTPStatusError(Exception):
    """The endpoint answered with a status the check does not expect."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def tcp_check(host: str, port: int) -> TcpCheck:
    """A check that ``host:port`` accepts TCP connections.

    Raises:
        TypeError, ValueError: a host that is not a non-empty string, a port outside 1-65535.
    """
    return TcpCheck(host, port)


def http_check(
    url: str,
    *,
    expect_status: int | Collection[int] = 200,
    latency_budget: float | None = None,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpCheck:
    """A check that ``GET url`` answers with ``expect_status`` (within ``latency_budget`` s).

    Raises:
        ValueError: a URL that is not ``http://`` or ``https://`` with a host and a valid port,
            a status outside 100-599, a negative budget, headers with line breaks.
        TypeError: arguments of the wrong type.
    """
    return HttpCheck(
        url,
        expect_status=expect_status,
        latency_budget=latency_budget,
        headers=headers,
        ssl_context=ssl_context,
    )


def _host(field: str, host: object) -> str:
    if not isinstance(host, str):
        raise TypeError(f"{field} must be a host name or address, got {host!r}")
    if not host.strip() or any(c.isspace() for c in host):
        raise ValueError(f"{field} must be a host name or address, got {host!r}")
    return host


def _port(field: str, port: object) -> int:
    value = integer(field, port, minimum=1)
    if value > 65535:
        raise ValueError(f"{field} must be <= 65535, got {port!r}")
    return value


class TcpCheck:
    """A TCP connect check (made by :func:`tcp_check`)."""

    __slots__ = ("host", "port", "target")

    def __init__(self, host: str, port: int) -> None:
        self.host = _host("host", host)
        self.port = _port("port", port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.target = f"tcp {shown}:{self.port}"

    async def __call__(self) -> Reading:
        _, writer = await asyncio.open_connection(self.host, self.port)
        peer = writer.get_extra_info("peername")
        writer.close()
        with contextlib.suppress(OSError):  # a reset while closing still proved the port works
            await writer.wait_closed()
        detail = {"address": f"{peer[0]}:{peer[1]}"} if isinstance(peer, tuple) else {}
        return Reading(detail=detail)

    def __repr__(self) -> str:
        return f"<TcpCheck {self.target}>"


class HttpCheck:
    """An HTTP(S) GET check (made by :func:`http_check`)."""

    __slots__ = (
        "_headers",
        "_path",
        "_ssl",
        "expect_status",
        "host",
        "latency_budget",
        "port",
        "target",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        expect_status: int | Collection[int] = 200,
        latency_budget: float | None = None,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a string, got {url!r}")
        shown = redact(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"url {shown!r} cannot be parsed: {redact(str(exc))}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url must start with http:// or https://, got {shown!r}")
        if not parts.hostname:
            raise ValueError(f"url has no host: {shown!r}")
        if any(c.isspace() for c in url):
            raise ValueError(f"url contains whitespace: {shown!r}")
        self.url = shown
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.expect_status = _statuses(expect_status)
        self.latency_budget = optional_seconds("latency_budget", latency_budget)
        request_headers: dict[str, str] = {}
        if parts.username is not None or parts.password is not None:
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode()).decode("ascii")
            request_headers["Authorization"] = f"Basic {token}"
        if headers is not None:
            if not isinstance(headers, Mapping):
                raise TypeError(f"headers must be a mapping of str to str, got {headers!r}")
            for name, value in headers.items():
                _http.check_header(name, value)
            request_headers.update(headers)
        self._headers = request_headers
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
        if parts.scheme == "http":
            if ssl_context is not None:
                raise ValueError(f"ssl_context is for https:// URLs, got {shown!r}")
            self._ssl = None
        else:
            self._ssl = ssl_context or ssl.create_default_context()
        self.target = f"GET {shown}"

    async def __call__(self) -> Reading:
        clock = get_clock()
        started = clock.now()
        response = await _http.request(
            host=self.host,
            port=self.port,
            path=self._path,
            headers=self._headers,
            ssl=self._ssl,
            read_body=False,
        )
        elapsed = clock.now() - started
        if response.status not in self.expect_status:
            expected = " or ".join(str(s) for s in sorted(self.expect_status))
            raise HTTPStatusError(
                f"HTTP {response.status} {response.reason} from {self.url} (expected {expected})",
                status=response.status,
            )
        detail = {"status_code": response.status, "latency_ms": round(elapsed * 1000, 3)}
        if self.latency_budget is not None and elapsed > self.latency_budget:
            return Reading(
                status=ResourceStatus.DEGRADED,
                detail=detail,
                message=f"answered in {elapsed:.3f} s, over the {self.latency_budget:g} s budget",
            )
        return Reading(detail=detail)

    def __repr__(self) -> str:
        return f"<HttpCheck {self.target}>"


def _statuses(expect: object) -> frozenset[int]:
    values = [expect] if isinstance(expect, int) else expect
    if not isinstance(values, Collection) or isinstance(values, str | bytes):
        raise TypeError(
            f"expect_status must be a status code or a collection of them, got {expect!r}"
        )
    statuses = frozenset(values)
    if not statuses:
        raise ValueError("expect_status must name at least one status code")
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"expect_status must hold integers, got {status!r}")
        if not 100 <= status <= 599:
            raise ValueError(f"expect_status must be HTTP status codes (100-599), got {status!r}")
    return statuses
