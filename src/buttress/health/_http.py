"""A minimal asyncio HTTP/1.1 client for the health checks: one request per connection.

The checks need one GET to a health endpoint, the Docker Engine API (a unix socket) or the
Kubernetes API (HTTPS with the cluster's CA), and the core must not depend on an HTTP library.
``http.client`` would need a worker thread per check, and a thread cannot be cancelled when the
check's timeout expires; streams on the event loop can. So this speaks just enough HTTP/1.1:
``Connection: close``, a status line, headers, and a body framed by ``Content-Length``, chunked
transfer coding, or the end of the connection, with a bound on the size of each. Redirects are
not followed (a health endpoint that redirects says so with its status) and no proxy is used (a
check tests the direct path to the resource).

For the JSON APIs, :func:`json_object` and :func:`member` turn an answer that is not the
documented shape into :class:`Malformed` errors naming what is wrong (not JSON, cut short, a
field of another type), and :func:`describe_body` gives an error answer's gist for a message
(the ``message`` of JSON, the title of a proxy's HTML page).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import ssl as _ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_BODY",
    "Malformed",
    "Response",
    "check_header",
    "describe_body",
    "json_object",
    "json_type",
    "member",
    "request",
]

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
        if (
            len(parts) < 2
            or not parts[0].startswith("HTTP/1.")
            or not (parts[1].isascii() and parts[1].isdigit())
        ):
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
            length = _chunk_size(line)
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
        raw = headers["content-length"].strip()
        if not (raw.isascii() and raw.isdigit()):
            raise ProtocolError(f"malformed Content-Length: {raw[:80]!r}")
        length = int(raw)
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


def _chunk_size(line: str) -> int:
    digits = line.split(";", 1)[0].strip()
    # int(..., 16) would also take a sign, "0x" and underscores, none of which HTTP allows
    if not digits or len(digits) > 16 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        if not line:
            raise ProtocolError("the connection closed in the middle of the response")
        raise ProtocolError(f"malformed chunk size: {line[:80]!r}")
    return int(digits, 16)


# -- reading JSON answers -----------------------------------------------------------------------

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


class Malformed(ValueError):
    """A JSON answer that is not the documented shape (the message names what is wrong)."""


def json_type(value: object) -> str:
    """What ``value`` is, in JSON's words (for messages)."""
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def json_object(response: Response) -> dict[str, Any]:
    """The response body as a JSON object.

    Raises:
        Malformed: the body is empty, not JSON (an HTML error page from a proxy, say), JSON cut
            short, or JSON that is not an object; the message says which.
    """
    body = response.body
    kind = response.headers.get("content-type", "").split(";", 1)[0].strip()
    if not body.strip():
        raise Malformed("is empty")
    try:
        value = json.loads(body)
    except RecursionError:
        raise Malformed("is JSON nested too deeply") from None
    except ValueError as exc:
        size = f"{len(body)} bytes" + (f" of {kind}" if kind else "")
        if isinstance(exc, json.JSONDecodeError) and _cut_short(exc):
            raise Malformed(f"is cut short ({size}; JSON ends early: {exc.msg})") from None
        raise Malformed(f"is not JSON ({size}): {describe_body(response)}") from None
    if not isinstance(value, dict):
        raise Malformed(f"is {json_type(value)} where a JSON object was expected")
    return value


def _cut_short(exc: json.JSONDecodeError) -> bool:
    # what a JSON document ended early looks like: the parser ran out of text, or a string in
    # it never closed
    started = exc.doc.lstrip()[:1] in ("{", "[")
    return started and (
        exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
    )


def member(
    obj: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    path: str,
    *,
    required: bool = False,
) -> Any:
    """``obj[key]`` when it has type ``kind``; ``None`` when absent or null (unless ``required``).

    Raises:
        Malformed: the member is missing though ``required``, or has another type; the message
            names it by ``path`` (``State.Health``).
    """
    value = obj.get(key)
    if value is None:
        if required:
            raise Malformed(f"has no {path}")
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(dict.fromkeys(_JSON_TYPES.get(k, k.__name__) for k in kinds))
        raise Malformed(f"has {path} as {json_type(value)}, where {expected} was expected")
    return value


def describe_body(response: Response, limit: int = 200) -> str:
    """A short one-line account of a body for an error message (not redacted).

    The ``message`` of a JSON error answer; the title of an HTML page (what a proxy or load
    balancer sends: ``502 Bad Gateway``); otherwise the start of the text, whitespace collapsed.
    """
    body = response.body
    text = ""
    if body[:1] in (b"{", b"["):
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            value = None
        message = value.get("message") if isinstance(value, dict) else None
        if isinstance(message, str):
            text = message
    if not text:
        head = body[:65536]
        title = _TITLE.search(head)
        if title is not None:
            text = "HTML page: " + html.unescape(_TAG.sub(" ", title[1].decode("utf-8", "replace")))
        elif head.lstrip()[:1] == b"<":
            text = "HTML page: " + html.unescape(_TAG.sub(" ", head.decode("utf-8", "replace")))
        else:
            text = head[: limit * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or response.reason or "(no body)"
