"""The Redis wire without a server: URLs, the RESP parser, cluster slots, the Lua files."""

from __future__ import annotations

import itertools
import re
from importlib.resources import files
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buttress.backends.redis_scripts import BLOCK, BREAKER, RESERVE
from buttress.backends.redis_wire import (
    INCOMPLETE,
    ErrorReply,
    Node,
    Parser,
    ProtocolError,
    key_slot,
    pack,
    parse_url,
    redact,
)

# -- URLs ---------------------------------------------------------------------------------------


def test_a_plain_url_with_defaults() -> None:
    target = parse_url("redis://localhost")
    assert (target.mode, target.nodes, target.db, target.tls) == (
        "single",
        (Node("localhost", 6379),),
        0,
        False,
    )
    assert (target.connect_timeout, target.socket_timeout) == (0.25, 0.5)
    assert target.hello() == (b"", 0)


def test_credentials_database_tls_and_timeouts() -> None:
    target = parse_url(
        "rediss://app:s%40cret@10.0.0.1:6380/3?socket_timeout=2&socket_connect_timeout=1"
    )
    assert (target.username, target.password, target.db, target.tls) == ("app", "s@cret", 3, True)
    assert (target.connect_timeout, target.socket_timeout) == (1.0, 2.0)
    assert target.hello() == (pack("AUTH", "app", "s@cret") + pack("SELECT", "3"), 2)
    assert "s@cret" not in repr(target)
    assert (
        target.url == "rediss://app:***@10.0.0.1:6380/3?socket_timeout=2&socket_connect_timeout=1"
    )


def test_unix_cluster_and_sentinel_urls() -> None:
    unix = parse_url("unix://:pw@/run/redis/redis.sock?db=4")
    assert (unix.nodes, unix.db, unix.password) == ((Node("/run/redis/redis.sock", 0),), 4, "pw")
    cluster = parse_url("redis+cluster://10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert cluster.mode == "cluster"
    assert cluster.nodes == (Node("10.0.0.1", 7000), Node("10.0.0.2", 6379), Node("::1", 7002))
    sentinel = parse_url("redis+sentinel://:pw@s1:26380,s2/mymaster/2")
    assert (sentinel.mode, sentinel.service, sentinel.db, sentinel.password) == (
        "sentinel",
        "mymaster",
        2,
        "pw",
    )
    assert sentinel.nodes == (Node("s1", 26380, True), Node("s2", 26379, True))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://localhost:6379", "the scheme must be"),
        ("redis://localhost:notaport", "the port 'notaport' is not a number from 1 to 65535"),
        ("redis://localhost:0", "the port '0' is not"),
        ("redis://:6379/0", "no host"),
        ("redis://localhost:6379/zero", "the database 'zero' is not a number"),
        ("redis://a:1,b:2", "one host only"),
        ("redis://localhost/0?timeout=3", "unknown parameter 'timeout'"),
        ("redis://localhost/0?socket_timeout=-1", "socket_timeout must be > 0"),
        ("redis://localhost/1?db=2", "the database is given twice"),
        ("redis+cluster://a:7000/1", "a Redis Cluster has only database 0"),
        ("redis+sentinel://s:26379", "no service name"),
        ("unix://host/path.sock", "a unix:// URL names a socket path"),
        ("unix://", "no socket path"),
    ],
)
def test_a_malformed_url_is_named(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="malformed Redis URL") as info:
        parse_url(url)
    assert repr(url) in str(info.value)
    assert why in str(info.value)


def test_a_password_never_appears_in_a_message() -> None:
    with pytest.raises(ValueError, match="malformed Redis URL") as info:
        parse_url("redis://user:hunter2@localhost:6379/x")
    assert "hunter2" not in str(info.value)
    assert "user:***@localhost:6379" in str(info.value)
    assert redact("redis+cluster://:hunter2@a:1,b:2") == "redis+cluster://:***@a:1,b:2"
    assert redact("redis://localhost:6379/0") == "redis://localhost:6379/0"
    with pytest.raises(TypeError, match="a Redis URL must be a str"):
        parse_url(6379)


# -- RESP ---------------------------------------------------------------------------------------

REPLIES = (
    b"*2\r\n:1\r\n$1\r\n0\r\n"
    b"+OK\r\n"
    b"-NOSCRIPT No matching script.\r\n"
    b"$-1\r\n"
    b"*3\r\n*2\r\n:0\r\n:16383\r\n$0\r\n\r\n*-1\r\n"
    b"$11\r\nwith\r\nin it\r\n"
)


def _parsed(chunks: list[bytes]) -> list[Any]:
    parser, out = Parser(), []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.pop()) is not INCOMPLETE:
            out.append(reply.message if isinstance(reply, ErrorReply) else reply)
    return out


EXPECTED = [
    [1, b"0"],
    b"OK",
    "NOSCRIPT No matching script.",
    None,
    [[0, 16383], b"", None],
    b"with\r\nin it",
]


@given(st.lists(st.integers(0, len(REPLIES)), max_size=12))
def test_replies_parse_the_same_however_the_bytes_arrive(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(REPLIES)]
    chunks = [REPLIES[a:b] for a, b in itertools.pairwise(bounds)]
    assert _parsed(chunks) == EXPECTED


def test_an_error_reply_is_a_value_and_garbage_is_a_protocol_error() -> None:
    parser = Parser()
    parser.feed(b"-MOVED 3999 127.0.0.1:6381\r\n")
    reply = parser.pop()
    assert isinstance(reply, ErrorReply)
    assert reply.kind == "MOVED"
    parser.feed(b"!what\r\n")
    with pytest.raises(ProtocolError, match="unexpected reply from Redis"):
        parser.pop()


# -- cluster slots --------------------------------------------------------------------------------


def test_slots_follow_the_cluster_specification() -> None:
    assert key_slot("123456789") == 0x31C3 % 16384  # the CRC16 (XModem) check value
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") != key_slot("bar")  # an empty first tag: the whole key
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")
    assert key_slot("buttress:{api}:k:tenant") == key_slot("buttress:{api}:breaker")


# -- the Lua scripts ----------------------------------------------------------------------------


def test_the_scripts_are_package_files_sharing_one_prelude() -> None:
    lua = files("buttress.backends").joinpath("lua")
    names = sorted(p.name for p in lua.iterdir() if p.name.endswith(".lua"))
    assert names == [
        "block.lua",
        "breaker.lua",
        "prelude.lua",
        "reserve.lua",
        "target.lua",
        "verdict.lua",
        "verdicts.lua",
    ]
    texts = {name: lua.joinpath(name).read_text() for name in names}
    for helper in ("num", "fmt", "clock", "ms", "split", "fail"):
        defined = [n for n, t in texts.items() if re.search(rf"local function {helper}\(", t)]
        assert defined == ["prelude.lua"], helper
    for script, name in ((RESERVE, "reserve"), (BLOCK, "block"), (BREAKER, "breaker")):
        assert script.text.startswith(texts["prelude.lua"])
        assert script.text.endswith(texts[f"{name}.lua"])
