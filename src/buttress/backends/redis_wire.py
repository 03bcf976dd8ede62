"""The Redis wire: URLs, RESP, routing and connections, for sync and async callers alike.

Theory of operation
-------------------
A decision is one short command (``EVALSHA``) with a reply of a few bytes. redis-py's general
command path costs about as much as the round trip itself (a pool, a lock, health checks), and its
asyncio client opens a connection per concurrent command. This module is the little a store needs,
in four parts, each shared by both kinds of caller:

* **URLs** (:func:`parse_url`, :func:`redact`): ``redis://``, ``rediss://`` (TLS), ``unix://``,
  ``redis+cluster://host:port[,host:port...]`` and ``redis+sentinel://host:port[,...]/service``,
  checked up front; a password never appears in a message.
* **RESP** (:func:`pack`, :class:`Parser`): commands are packed into bytes by the caller; replies
  are parsed by a parser that is fed whatever the socket returned and does no I/O itself. An error
  reply is a value (:class:`ErrorReply`), not an exception: what it means is decided below.
* **Routing** (:class:`Router`, :func:`_converse`): which node serves a key, and what to do with
  each answer. One server; or a Redis Cluster, where the key's hash tag (``{name}``) gives its slot
  (CRC16 of the tag, modulo 16384) and ``CLUSTER SLOTS`` gives the slot map; or the master that a
  Sentinel names. ``MOVED`` (the slot has a new owner: note it, refresh the map, go there), ``ASK``
  (the slot is being migrated: ``ASKING`` and the command, to the new owner, once), ``NOSCRIPT``
  (``SCRIPT LOAD`` and retry) and "not now" answers are handled by one conversation: a generator
  that names each exchange (a node and the bytes to send) and is handed the reply. A plain
  ``redis://`` URL that turns out to name a cluster node follows ``MOVED`` and becomes a cluster
  client. The sync and async drivers (:meth:`Wire.call`, :meth:`Wire.acall`) only move bytes.
* **Connections**: a sync caller uses a socket its thread keeps per node (one ``sendall`` and
  usually one ``recv`` per decision; no pool, no lock); an async caller uses one connection per
  node per event loop, pipelined (:class:`_AsyncLink`): callers write their commands and wait on
  futures that the protocol resolves in order as replies arrive, so 200 concurrent tasks share one
  socket, and a cancelled caller's reply is read and dropped, keeping the stream in step.

Faults: a node that does not connect within ``socket_connect_timeout`` (0.25 s) or answer within
``socket_timeout`` (0.5 s), a connection that breaks, or an answer meaning "not now" (``LOADING``,
``READONLY`` from a demoted master, ``CLUSTERDOWN``, ``MASTERDOWN``, ...) raises
:class:`StorageUnavailable`; the connection is dropped, and a cluster's slot map or a Sentinel's
master is looked up again on the next call, so a failover is an outage like any other and ends
when the new master answers. Any other error reply raises :class:`StorageError`. No socket or
redis-py exception leaves this module.

Sharing: the connections of a URL are shared by every store opened from that URL in the process
(:func:`open_wire` counts them; the last :meth:`Wire.release` closes them). A thread's sockets
close when the thread ends; after a fork the child opens its own. A redis-py client given as
storage is the store's other transport (:mod:`.redis_client`), offering the same calls.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import threading
import weakref
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote

from .._config import seconds
from .base import StorageError, StorageUnavailable

__all__ = [
    "Command",
    "ErrorReply",
    "Node",
    "Parser",
    "Script",
    "Target",
    "Wire",
    "forks",
    "key_slot",
    "open_wire",
    "pack",
    "parse_url",
    "redact",
]

DEFAULT_PORT = 6379
SENTINEL_PORT = 26379
CONNECT_TIMEOUT = 0.25
SOCKET_TIMEOUT = 0.5
SLOTS = 16384
MAX_HOPS = 6  # exchanges per call: redirections, a script load, a look-up of where keys live

_SCHEMES = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_PARAMETERS = ("db", "socket_connect_timeout", "socket_timeout")
# Error replies that mean "not now" (a failover, a node starting or out of memory): an outage.
_UNAVAILABLE = frozenset(
    {
        "BUSY",
        "CLUSTERDOWN",
        "LOADING",
        "MASTERDOWN",
        "MISCONF",
        "NOAUTH",
        "NOREPLICAS",
        "OOM",
        "READONLY",
        "TRYAGAIN",
        "WRONGPASS",
    }
)


# -- URLs ------------------------------------------------------------------------------------------


class Node(NamedTuple):
    """One server: a host and port, or a Unix socket's path with port 0."""

    host: str
    port: int
    sentinel: bool = False  # a Sentinel: asked where the master is, without the data's AUTH

    def __str__(self) -> str:
        if self.port == 0:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Target:
    """What a Redis URL names (see :func:`parse_url`)."""

    url: str  # as given, password redacted: for messages
    mode: str  # "single", "cluster" or "sentinel"
    nodes: tuple[Node, ...]  # the server, a cluster's seed nodes, or the sentinels
    service: str = ""  # the master's name, for a Sentinel
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    connect_timeout: float = CONNECT_TIMEOUT
    socket_timeout: float = SOCKET_TIMEOUT

    def hello(self) -> tuple[bytes, int]:
        """The commands that open a connection to a data node (AUTH, SELECT), and their count."""
        commands: list[bytes] = []
        if self.password is not None:
            user = [self.username] if self.username else []
            commands.append(pack("AUTH", *user, self.password))
        if self.db:
            commands.append(pack("SELECT", str(self.db)))
        return b"".join(commands), len(commands)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for a message or a log line."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hosts}{slash}{tail}"


def parse_url(url: object) -> Target:
    """The :class:`Target` of a Redis URL.

    ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS),
    ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``,
    ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (any nodes of the cluster),
    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` (the
    sentinels; the password is the data nodes'). Parameters: ``socket_timeout`` and
    ``socket_connect_timeout`` (seconds), ``db``.

    Raises:
        TypeError: ``url`` is not a string.
        ValueError: a malformed URL, naming it (password hidden) and what is wrong.
    """
    if not isinstance(url, str):
        raise TypeError(f"a Redis URL must be a str like 'redis://host:6379/0', got {url!r}")
    shown = redact(url)

    def bad(why: str) -> ValueError:
        return ValueError(f"malformed Redis URL {shown!r}: {why}")

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise bad("the scheme must be redis://, rediss://, unix://, redis+cluster:// or "
                  "redis+sentinel://")  # fmt: skip
    mode, tls = _SCHEMES[scheme.lower()]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    options = _options(query, bad)
    service, db_text = "", options.pop("db", "")
    if scheme.lower() == "unix":
        if hosts:
            raise bad("a unix:// URL names a socket path: unix:///path/to/redis.sock")
        if not path:
            raise bad("no socket path")
        nodes: tuple[Node, ...] = (Node("/" + unquote(path), 0),)
    else:
        if not hosts:
            raise bad("no host")
        default = SENTINEL_PORT if mode == "sentinel" else DEFAULT_PORT
        nodes = tuple(_node(part, default, mode == "sentinel", bad) for part in hosts.split(","))
        if mode == "single" and len(nodes) > 1:
            raise bad("one host only (several are for redis+cluster:// or redis+sentinel://)")
        parts = path.split("/") if path else []
        if mode == "sentinel":
            service = unquote(parts.pop(0)) if parts else ""
            if not service:
                raise bad("no service name: redis+sentinel://host:26379/service_name")
        if parts and parts[0]:
            if db_text:
                raise bad("the database is given twice (path and ?db=)")
            db_text = parts.pop(0)
        if any(parts):
            raise bad(f"unexpected path {path!r}")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise bad(f"the database {db_text!r} is not a number")
    db = int(db_text or 0)
    if mode == "cluster" and db:
        raise bad("a Redis Cluster has only database 0")
    return Target(
        url=shown,
        mode=mode,
        nodes=nodes,
        service=service,
        db=db,
        username=username,
        password=password,
        tls=tls,
        connect_timeout=_timeout(options, "socket_connect_timeout", CONNECT_TIMEOUT, bad),
        socket_timeout=_timeout(options, "socket_timeout", SOCKET_TIMEOUT, bad),
    )


def _options(query: str, bad: Any) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _PARAMETERS:
            raise bad(f"unknown parameter {name!r} (known: {', '.join(_PARAMETERS)})")
        options[name] = value
    return options


def _node(text: str, default: int, sentinel: bool, bad: Any) -> Node:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise bad(f"cannot read the address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise bad(f"no host in {text!r}")
    port = default
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise bad(f"the port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return Node(unquote(host), port, sentinel)


def _timeout(options: dict[str, str], name: str, default: float, bad: Any) -> float:
    text = options.get(name)
    if text is None:
        return default
    try:
        return seconds(name, float(text), allow_zero=False)
    except ValueError as exc:
        raise bad(str(exc)) from None


# -- RESP ------------------------------------------------------------------------------------------


class ErrorReply:
    """An error reply from the server (``-KIND message``): an answer, not yet an exception."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    @property
    def kind(self) -> str:
        return self.message.partition(" ")[0]

    def __repr__(self) -> str:
        return f"ErrorReply({self.message!r})"


class ProtocolError(ConnectionError):
    """The server sent something that is not RESP: the connection is out of step."""


class _Incomplete(Exception):
    pass


INCOMPLETE: Any = object()  # what Parser.pop returns until a whole reply has arrived


def pack(*parts: str | bytes) -> bytes:
    """The RESP bytes of one command."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class Parser:
    """RESP2 replies from a byte stream: :meth:`feed` what arrived, :meth:`pop` whole replies.

    Bulk and simple strings are ``bytes``, integers ``int``, arrays ``list``, nil ``None``, and an
    error reply is an :class:`ErrorReply`. Raises :class:`ProtocolError` on anything else.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf = self._buf[self._pos :] + data if self._pos < len(self._buf) else data
        self._pos = 0

    def pop(self) -> Any:
        """The next whole reply, or :data:`INCOMPLETE`."""
        if self._pos >= len(self._buf):
            return INCOMPLETE
        try:
            reply, self._pos = _parse(self._buf, self._pos)
        except _Incomplete:
            return INCOMPLETE
        return reply


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    try:
        if kind == 36:  # $: a bulk string
            size = int(buf[pos + 1 : end])
            if size < 0:
                return None, end + 2
            stop = end + 2 + size
            if len(buf) < stop + 2:
                raise _Incomplete
            return buf[end + 2 : stop], stop + 2
        if kind == 58:  # :
            return int(buf[pos + 1 : end]), end + 2
        if kind == 42:  # *: an array
            count = int(buf[pos + 1 : end])
            pos = end + 2
            if count < 0:
                return None, pos
            items = []
            for _ in range(count):
                item, pos = _parse(buf, pos)
                items.append(item)
            return items, pos
        if kind == 43:  # +
            return buf[pos + 1 : end], end + 2
        if kind == 45:  # -
            return ErrorReply(buf[pos + 1 : end].decode(errors="replace")), end + 2
    except ValueError:
        pass
    raise ProtocolError(f"unexpected reply from Redis: {buf[pos : pos + 40]!r}")


class Command:
    """A command on one key, ``NAME key *args`` (see :class:`Script` for scripts)."""

    __slots__ = ("name",)

    load: bytes | None = None  # a script's SCRIPT LOAD, sent when the server does not know it
    text = ""

    def __init__(self, name: str) -> None:
        self.name = name

    def parts(self, key: str, args: list[str]) -> list[str]:
        return [self.name, key, *args]

    def pack(self, key: str, args: list[str]) -> bytes:
        return pack(*self.parts(key, args))


class Script(Command):
    """A Lua script, run as ``EVALSHA sha 1 key *args`` (loaded again on ``NOSCRIPT``)."""

    __slots__ = ("load", "sha", "text")

    def __init__(self, name: str, text: str) -> None:
        import hashlib

        super().__init__(name)
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self.load = pack("SCRIPT", "LOAD", text)

    def parts(self, key: str, args: list[str]) -> list[str]:
        return ["EVALSHA", self.sha, "1", key, *args]

    def pack(self, key: str, args: list[str]) -> bytes:
        return _evalsha_head(self.sha, len(args)) + _bulk(key) + b"".join(map(_bulk, args))


@functools.lru_cache(maxsize=64)
def _evalsha_head(sha: str, nargs: int) -> bytes:
    return b"*%d\r\n$7\r\nEVALSHA\r\n%s$1\r\n1\r\n" % (4 + nargs, _bulk(sha))


_ASKING = pack("ASKING")
_CLUSTER_SLOTS = pack("CLUSTER", "SLOTS")


# -- routing ---------------------------------------------------------------------------------------


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


@functools.lru_cache(maxsize=4096)
def _tag_slot(tag: str) -> int:
    crc = 0
    for byte in tag.encode():
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % SLOTS


def key_slot(key: str) -> int:
    """The cluster slot of ``key``: CRC16 (XModem) of its hash tag (or of the key), mod 16384."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return _tag_slot(key[start + 1 : end])
    return _tag_slot(key)


class Lost:
    """No reply: the node could not be reached, or the connection broke mid-exchange."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __str__(self) -> str:
        return str(self.error) or type(self.error).__name__


Exchange = tuple[Node, bytes, int]  # where, what (one or more commands), how many replies


class Router:
    """Where each key lives in one deployment, and what its answers mean (no I/O).

    Shared by every caller of a :class:`Wire`: its state is a few references replaced whole, so a
    caller that reads it while another updates it sees the old or the new map, both usable (a
    stale map only costs a ``MOVED``).
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.master: Node | None = target.nodes[0] if target.mode == "single" else None
        self.slots: list[Node | None] | None = None  # a cluster's slot map
        self.stale = target.mode != "single"  # where keys live must be looked up first

    def node_for(self, key: str) -> Node:
        slots = self.slots
        node = self.master if slots is None else slots[key_slot(key)]
        if node is None:
            what = "the master is" if slots is None else f"the slot of {key!r} is served by"
            raise StorageUnavailable(f"{self.target.url}: {what} no node known yet")
        return node

    def candidates(self) -> list[Node]:
        """Whom to ask where keys live: known cluster nodes first, then the URL's nodes."""
        known = [] if self.slots is None else list(dict.fromkeys(n for n in self.slots if n))
        return list(dict.fromkeys([*known, *self.target.nodes]))

    def question(self) -> bytes:
        if self.target.mode == "sentinel":
            return pack("SENTINEL", "get-master-addr-by-name", self.target.service)
        return _CLUSTER_SLOTS

    def learn(self, asked: Node, reply: Any) -> bool:
        """Take in the answer to :meth:`question`; whether it told where keys live."""
        if self.target.mode == "sentinel":
            if not (isinstance(reply, list) and len(reply) == 2):
                return False
            self.master = Node(_text(reply[0]), int(reply[1]))
            return True
        if not isinstance(reply, list) or not reply:
            return False
        slots: list[Node | None] = [None] * SLOTS
        nodes: dict[Node, Node] = {}
        for entry in reply:
            start, end, owner = int(entry[0]), int(entry[1]), entry[2]
            node = Node(_text(owner[0]) or asked.host, int(owner[1]))  # "": the node asked
            node = nodes.setdefault(node, node)
            slots[start : end + 1] = [node] * (end + 1 - start)
        self.slots = slots
        return True

    def moved(self, slot: int, node: Node) -> None:
        """A ``MOVED``: the slot has a new owner; the rest of the map may be old too."""
        if self.slots is None:  # a plain URL naming a cluster node: become a cluster client
            self.slots = [None] * SLOTS
            self.target = _as_cluster(self.target, node)
        slots = list(self.slots)
        slots[slot] = node
        self.slots = slots
        self.stale = True

    def lost(self, node: Node) -> None:
        """``node`` did not answer: a cluster or a Sentinel may have failed over."""
        if self.target.mode == "sentinel" and node == self.master:
            self.master = None
            self.stale = True
        elif self.slots is not None:
            self.stale = True

    def failure(self, node: Node, key: str, reply: ErrorReply | Lost) -> Exception:
        """The exception for no reply, or for an error reply that no redirection resolves."""
        if type(reply) is Lost:
            self.lost(node)
            return StorageUnavailable(f"{self.target.url}: no answer from {node} ({reply})")
        assert type(reply) is ErrorReply
        if reply.kind == "READONLY":
            self.lost(node)  # a demoted master: ask the Sentinel again
        return refusal(f"{self.target.url} ({node})", key, reply.kind, reply.message)


def _as_cluster(target: Target, node: Node) -> Target:
    from dataclasses import replace

    return replace(target, mode="cluster", nodes=(*target.nodes, node))


def refusal(where: str, key: str, kind: str, message: str) -> Exception:
    """The store's exception for an error reply of kind ``kind`` to a command on ``key``."""
    if kind == "BUTTRESS":  # raised by a buttress script about the stored value
        return StorageError(f"Redis key {key!r}: {message[len(kind) :].strip()}")
    if kind in _UNAVAILABLE:
        return StorageUnavailable(f"{where}: {message}")
    if kind in ("MOVED", "ASK"):
        return StorageError(
            f"{where} is a node of a Redis Cluster ({message}): use a redis+cluster:// URL or a "
            "redis.cluster.RedisCluster client"
        )
    return StorageError(f"{where}: {message}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redirection(reply: ErrorReply, asked: Node) -> tuple[int, Node]:
    # "MOVED 3999 127.0.0.1:6381" (an empty host means the host that answered)
    _, slot, address = reply.message.split(" ")
    host, _, port = address.rpartition(":")
    return int(slot), Node(host.strip("[]") or asked.host, int(port))


def _converse(router: Router, key: str, op: Command, data: bytes) -> Generator[Exchange, Any, Any]:
    """One command on ``key``, from the first exchange to its reply, redirections included.

    Yields the exchanges to make and is sent each one's reply (a :class:`Lost` when there was
    none); returns the command's reply, or raises :class:`StorageUnavailable` or
    :class:`StorageError`.
    """
    ask: Node | None = None  # the node to ask once (ASK) instead of the slot's owner
    for _ in range(MAX_HOPS):
        asking, ask = ask, None
        if asking is not None:
            node = asking
            reply = yield node, _ASKING + data, 2
        else:
            if router.stale:
                yield from _look_up(router)
            node = router.node_for(key)
            reply = yield node, data, 1
        if type(reply) is not ErrorReply:
            if type(reply) is Lost:
                raise router.failure(node, key, reply)
            return reply
        if reply.kind == "MOVED":
            router.moved(*_redirection(reply, node))
        elif reply.kind == "ASK":
            ask = _redirection(reply, node)[1]
        elif reply.kind == "NOSCRIPT" and op.load is not None:
            loaded = yield node, op.load, 1
            if type(loaded) is Lost or type(loaded) is ErrorReply:
                raise router.failure(node, key, loaded)
            ask = asking  # (the retry needs the ASKING again)
        else:
            raise router.failure(node, key, reply)
    raise StorageUnavailable(f"{router.target.url}: still redirected after {MAX_HOPS} exchanges")


def _look_up(router: Router) -> Generator[Exchange, Any, None]:
    """Ask where keys live (a cluster's slot map, a Sentinel's master) until one node answers."""
    router.stale = False  # meanwhile, other callers go on with what is known
    heard = []
    for node in router.candidates():
        reply = yield node, router.question(), 1
        if type(reply) is not Lost and type(reply) is not ErrorReply and router.learn(node, reply):
            return
        heard.append(f"{node}: {reply!s}" if type(reply) is Lost else f"{node}: {reply!r}")
    router.stale = True
    what = "the master" if router.target.mode == "sentinel" else "the slot map"
    raise StorageUnavailable(f"{router.target.url}: nobody told {what} ({'; '.join(heard)})")


# -- connections -----------------------------------------------------------------------------------

_forks = 0  # how many times this process is a fork's child: connections are not inherited


def _forked() -> None:
    global _forks
    _forks += 1


def forks() -> int:
    """How many forks this process descends from (a connection from before one is not ours)."""
    return _forks


os.register_at_fork(after_in_child=_forked)


class _SyncLink:
    """One blocking connection to one node."""

    __slots__ = ("parser", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = Parser()

    def exchange(self, data: bytes, count: int) -> Any:
        """Send ``data`` (``count`` commands); the first error reply, else the last reply."""
        self.sock.sendall(data)
        parser = self.parser
        answer: Any = None
        for _ in range(count):
            reply = parser.pop()
            while reply is INCOMPLETE:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("the server closed the connection")
                parser.feed(chunk)
                reply = parser.pop()
            if type(answer) is not ErrorReply:
                answer = reply
        return answer

    def close(self) -> None:
        self.sock.close()


class _ThreadLinks(dict[Node, _SyncLink]):
    """A thread's connections; they close when the thread ends (and the thread-local goes)."""

    __slots__ = ("__weakref__", "forks")
    # the wire keeps a weak set of these: they are told apart by identity, not by contents
    __hash__ = object.__hash__  # type: ignore[assignment]
    __eq__ = object.__eq__

    def __init__(self) -> None:
        super().__init__()
        self.forks = _forks

    def drop(self, node: Node) -> None:
        link = self.pop(node, None)
        if link is not None:
            link.close()

    def close(self) -> None:
        links = list(self.values())
        self.clear()
        for link in links:
            link.close()

    def __del__(self) -> None:
        self.close()


class _Waiter:
    __slots__ = ("answer", "future", "left")

    def __init__(self, future: asyncio.Future[Any], count: int) -> None:
        self.future = future
        self.left = count
        self.answer: Any = None

    def take(self, reply: Any) -> bool:
        """One more reply; whether this waiter has all of its replies."""
        if type(self.answer) is not ErrorReply:
            self.answer = reply
        self.left -= 1
        if self.left:
            return False
        if not self.future.done():  # (a caller that was cancelled has gone)
            self.future.set_result(self.answer)
        return True


class _AsyncLink(asyncio.Protocol):
    """One event loop's pipelined connection to one node."""

    def __init__(self) -> None:
        self.parser = Parser()
        self.waiting: deque[_Waiter] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        parser.feed(data)
        try:
            while (reply := parser.pop()) is not INCOMPLETE:
                if not self.waiting:
                    raise ProtocolError("Redis sent a reply nobody asked for")
                if self.waiting[0].take(reply):
                    self.waiting.popleft()
        except ProtocolError as exc:
            self.close(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(exc or ConnectionResetError("the server closed the connection"))

    def close(self, error: BaseException | None = None) -> None:
        """Close the connection; every caller still waiting gets a ``ConnectionError``."""
        if self.lost is None:
            self.lost = error or ConnectionAbortedError("closed")
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
        waiting, self.waiting = self.waiting, deque()
        for waiter in waiting:
            if not waiter.future.done():
                waiter.future.set_exception(ConnectionError(f"connection lost: {self.lost}"))

    async def exchange(self, data: bytes, count: int, within: float) -> Any:
        """Send ``data`` (``count`` commands); the first error reply, else the last reply."""
        if self.transport is None:
            raise ConnectionError(f"connection lost: {self.lost}")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(_Waiter(future, count))
        self.transport.write(data)
        try:
            async with asyncio.timeout(within):
                return await future
        except TimeoutError:
            self.close(TimeoutError(f"no reply within {within:g} s"))
            raise


class _LoopLinks(dict[Node, _AsyncLink]):
    """An event loop's connections, and the connection attempt under way to each node (its
    callers share it: one attempt, its outcome theirs, so none waits out another's timeout)."""

    __slots__ = ("connecting", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.connecting: dict[Node, asyncio.Task[_AsyncLink]] = {}

    def close(self) -> None:
        """Close from any thread (the connections' loop may run elsewhere, or not at all)."""
        links = list(self.values())
        self.clear()
        if self.loop.is_closed():
            return  # its transports can no longer be closed; they close when collected
        for link in links:
            if self.loop.is_running() and _running_loop() is not self.loop:
                self.loop.call_soon_threadsafe(link.close)
            else:
                link.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Wire:
    """Connections to the Redis deployment a URL names, for sync and async callers.

    Use :func:`open_wire` (shared per URL, counted) rather than the constructor.
    """

    def __init__(self, target: Target, key: str = "") -> None:
        self.target = target
        self.url = target.url
        self.timeout: float | None = target.socket_timeout
        self.router = Router(target)
        self._key = key
        self._users = 0
        self._hello = target.hello()
        self._tls = ssl.create_default_context() if target.tls else None
        self._local = threading.local()
        self._threads: weakref.WeakSet[_ThreadLinks] = weakref.WeakSet()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopLinks] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Wire({self.url!r})"

    # -- sync ------------------------------------------------------------------------------------

    def call(self, key: str, op: Command, args: list[str]) -> Any:
        """``op`` on ``key`` with ``args``: the reply, wherever the key lives."""
        talk = _converse(self.router, key, op, op.pack(key, args))
        reply = None
        try:
            while True:
                reply = self._exchange(*talk.send(reply))
        except StopIteration as done:
            return done.value

    def _exchange(self, node: Node, data: bytes, count: int) -> Any:
        links: _ThreadLinks | None = getattr(self._local, "links", None)
        if links is None or links.forks != _forks:
            links = self._local.links = _ThreadLinks()
            with self._lock:
                self._threads.add(links)
        link = links.get(node)
        try:
            if link is None:
                link = links[node] = self._connect(node)
            return link.exchange(data, count)
        except OSError as exc:
            links.drop(node)
            return Lost(exc)
        except BaseException:
            links.drop(node)  # an interrupted exchange leaves the stream out of step
            raise

    def _connect(self, node: Node) -> _SyncLink:
        target = self.target
        if node.port == 0:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.create_connection((node.host, node.port), target.connect_timeout)
        try:
            if node.port == 0:
                sock.settimeout(target.connect_timeout)
                sock.connect(node.host)
            else:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls is not None:
                    sock = self._tls.wrap_socket(sock, server_hostname=node.host)
            sock.settimeout(target.socket_timeout)
            link = _SyncLink(sock)
            hello, count = (b"", 0) if node.sentinel else self._hello
            if count:
                _check_hello(link.exchange(hello, count))
            return link
        except BaseException:
            sock.close()
            raise

    # -- async -----------------------------------------------------------------------------------

    async def acall(self, key: str, op: Command, args: list[str]) -> Any:
        """:meth:`call` for asyncio: the same conversation on this loop's connections."""
        talk = _converse(self.router, key, op, op.pack(key, args))
        reply = None
        try:
            while True:
                reply = await self._aexchange(*talk.send(reply))
        except StopIteration as done:
            return done.value

    async def _aexchange(self, node: Node, data: bytes, count: int) -> Any:
        loop = asyncio.get_running_loop()
        links = self._loops.get(loop)
        if links is None:
            links = self._new_loop(loop)
        link = links.get(node)
        try:
            if link is None or link.transport is None:
                link = await self._aconnect(node, links)
            return await link.exchange(data, count, self.target.socket_timeout)
        except OSError as exc:  # (TimeoutError and ConnectionError are OSErrors)
            if link is not None and links.get(node) is link:
                del links[node]
            return Lost(exc)

    def _new_loop(self, loop: asyncio.AbstractEventLoop) -> _LoopLinks:
        with self._lock:
            # a connection holds on to its loop: forget the connections of loops now closed
            for old in [old for old in self._loops if old.is_closed()]:
                del self._loops[old]
            return self._loops.setdefault(loop, _LoopLinks(loop))

    async def _aconnect(self, node: Node, links: _LoopLinks) -> _AsyncLink:
        """This loop's connection to ``node``: the attempt under way, else a new one. Callers
        arriving during an attempt share its outcome (a connection, or the fault) rather than
        each try after the other, which would hold the last one for every attempt's timeout."""
        attempt = links.connecting.get(node)
        if attempt is None:
            attempt = asyncio.get_running_loop().create_task(self._open(node, links))
            links.connecting[node] = attempt
            attempt.add_done_callback(lambda done: _attempted(links, node, done))
        # shielded: a caller cancelled while waiting leaves the attempt to the others
        return await asyncio.shield(attempt)

    async def _open(self, node: Node, links: _LoopLinks) -> _AsyncLink:
        loop = asyncio.get_running_loop()
        target = self.target
        async with asyncio.timeout(target.connect_timeout):
            if node.port == 0:
                _, link = await loop.create_unix_connection(_AsyncLink, node.host)
            else:
                _, link = await loop.create_connection(
                    _AsyncLink, node.host, node.port, ssl=self._tls
                )
        hello, count = (b"", 0) if node.sentinel else self._hello
        try:
            if count:
                _check_hello(await link.exchange(hello, count, target.socket_timeout))
        except BaseException:
            link.close()
            raise
        links[node] = link
        return link

    # -- sharing ---------------------------------------------------------------------------------

    def _last_user(self) -> bool:
        with _WIRES_LOCK:
            self._users -= 1
            if self._users > 0:
                return False
            if _WIRES.get(self._key) is self:
                del _WIRES[self._key]
            return True

    def release(self) -> None:
        """One user is done; the last closes every connection (each thread's, each loop's)."""
        if self._last_user():
            self.close()

    async def arelease(self) -> None:
        """:meth:`release`, closing this event loop's connections before returning."""
        if self._last_user():
            self.close()
            await asyncio.sleep(0)  # the transports close their sockets on the next loop turn

    def close(self) -> None:
        with self._lock:
            threads, self._threads = list(self._threads), weakref.WeakSet()
            loops, self._loops = list(self._loops.values()), {}
        for links in threads:
            links.close()
        for loop_links in loops:
            loop_links.close()


def _attempted(links: _LoopLinks, node: Node, attempt: asyncio.Task[_AsyncLink]) -> None:
    """A connection attempt ended: the next caller after it starts a new one."""
    if links.connecting.get(node) is attempt:
        del links.connecting[node]
    if not attempt.cancelled():
        attempt.exception()  # (its callers were told; nobody else need be)


def _check_hello(reply: Any) -> None:
    if type(reply) is ErrorReply:
        raise ConnectionRefusedError(f"the server refused the connection: {reply.message}")


_WIRES: dict[str, Wire] = {}
_WIRES_LOCK = threading.Lock()


def open_wire(source: str) -> Wire:
    """The wire for the URL ``source``, shared by its users in this process.

    Each call is one user: give it back with :meth:`Wire.release` (or ``await arelease()``).

    Raises:
        ValueError: a malformed URL, naming it (password hidden).
    """
    target = parse_url(source)
    with _WIRES_LOCK:
        wire = _WIRES.get(source)
        if wire is None:
            wire = _WIRES[source] = Wire(target, source)
        wire._users += 1
    return wire
