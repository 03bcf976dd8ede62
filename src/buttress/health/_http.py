"""A minimal asyncio HTTP/1.1 client for the health checks: one request per connection.

The checks need one GET to a health endpoint, the Docker Engine API (a unix socket) or the
Kubernetes API (HTTPS with the cluster's CA), and the core must not depend on an HTTP library.
``http.client`` would need a worker thread per check, and a thread cannot be cancelled when the
check's timeout expires; streams on the event loop can. So this speaks just enough HTTP/1.1:
``Connection: close``, a status line, headers, and a body framed by ``Content-Length``, chunked
transfer coding, or the end of the connection, with a bound on the size of each. Redirects are
not followed (a health endpoint that redirects says so with its status) and no proxy is used (a
check tests the direct path to the resource).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MAX_BODY", "Response", "check_header", "request"]

#: The largest response body read, in bytes.
MAX_BODY = 4 * 2**20
_MAX_HEADERS = 200
_CLOSE_WAIT = 1.0
_RESERVED = frozenset({"connection", "content-length", "transfer-encoding"})


class ProtocolError(ConnectionError):
    """The peer's answer is not HTTP/1.x as expected."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


def check_header(name: object, value: object, *, field: str = "headers") -> None:
    """Refuse header names and values that would break or inject into the request."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(f"{field} must map str to str, got {name!r}: {type(value).__name__}")
    if not name or any(c in name for c in " \t\r\n:") or not name.isascii():
        raise ValueError(f"{field} has an invalid header name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{field} value of {name!r} contains a line break")
    if name.lower() in _RESERVED:
        raise ValueError(f"{field} may not set {name!r}: the check frames its own requests")


async def request(
    *,
    host: str,
    port: int,
    path: str,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    ssl: _ssl.SSLContext | None = None,
    unix_socket: str | None = None,
    read_body: bool = True,
    max_body: int = MAX_BODY,
) -> Response:
    """Send one request and read the answer (the body only when ``read_body``).

    Raises:
        OSError: the connection failed (refused, reset, no such socket, TLS verification...).
        ProtocolError: the answer is not HTTP/1.x, is cut short, or its body is over ``max_body``.
    """
    if unix_socket is not None:
        reader, writer = await asyncio.open_unix_connection(unix_socket)
    else:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl, server_hostname=host if ssl is not None else None
        )
    try:
        host_header = host if unix_socket is not None else _host_header(host, port, ssl)
        fields = {"Host": host_header, "User-Agent": "buttress-health", "Accept": "*/*"}
        given = {name.lower() for name in headers or ()}
        # the caller's own Accept or User-Agent replaces the default rather than doubling it
        lines = [f"{method} {path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in fields.items() if name.lower() not in given]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        status, reason, response_headers = await _read_head(reader)
        body = b""
        if read_body and method != "HEAD" and status not in (204, 304):
            body = await _read_body(reader, response_headers, max_body)
        return Response(status, reason, response_headers, body)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the connection closed in the middle of the response") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):  # a failed close must not hide the answer or error
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_WAIT)


def _host_header(host: str, port: int, ssl: _ssl.SSLContext | None) -> str:
    name = f"[{host}]" if ":" in host else host
    default = 443 if ssl is not None else 80
    return name if port == default else f"{name}:{port}"


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    while True:
        line = await _read_line(reader)
        if not line:
            raise ProtocolError("the connection closed before a response")
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
        status, reason = int(parts[1]), parts[2] if len(parts) == 3 else ""
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            header = await _read_line(reader)
            if not header:
                break
            name, sep, value = header.partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line: {header[:80]!r}")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        else:
            raise ProtocolError(f"more than {_MAX_HEADERS} header lines")
        if 100 <= status < 200 and status != 101:  # interim answers precede the real one
            continue
        return status, reason, headers


async def _read_line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readline()
    except ValueError:  # over the stream's line limit (64 KiB)
        raise ProtocolError("a header line over 64 KiB") from None
    return raw.decode("latin-1").rstrip("\r\n")


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str], limit: int) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        size = 0
        while True:
            line = await _read_line(reader)
            try:
                length = int(line.split(";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"malformed chunk size: {line[:80]!r}") from None
            if length == 0:
                while await _read_line(reader):  # trailers
                    pass
                return b"".join(chunks)
            size += length
            if size > limit:
                raise ProtocolError(f"response body over {limit} bytes")
            chunks.append(await reader.readexactly(length))
            await reader.readexactly(2)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProtocolError(
                f"malformed Content-Length: {headers['content-length']!r}"
            ) from None
        if length > limit:
            raise ProtocolError(f"response body of {length} bytes is over {limit}")
        return await reader.readexactly(length)
    body = await reader.read(limit + 1)
    rest = body
    while rest and len(body) <= limit:
        rest = await reader.read(limit + 1 - len(body))
        body += rest
    if len(body) > limit:
        raise ProtocolError(f"response body over {limit} bytes")
    return body
