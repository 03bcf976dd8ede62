"""Rate-limit decisions kept in Redis, so many processes and hosts share one limit.

Theory of operation
-------------------
Each decision is ONE Redis command: ``EVALSHA`` of :data:`RESERVE_SCRIPT`, a Lua port of
:func:`buttress.machines.ratelimit.reserve` (all four algorithms, the same arithmetic in the same
order, IEEE doubles on both sides, the same ``EPSILON``), run atomically by the server. Concurrent
callers anywhere are therefore serialised per key exactly like the in-process limiter's lock
serialises threads: a limit never over-admits. The script also applies the per-key block set by
:meth:`RedisRateLimitStore.block` (a server said "come back later"), as
``RateLimiter`` does in memory.

Storage: one Redis key per (name, key)::

    buttress:{<name>}:          the name's shared state (key=None)
    buttress:{<name>}:k:<key>   the state of <key>

The buckets and the fixed window keep a string ``<tag>|<a>|<b>|<until>``: the algorithm's tag
(``T`` token bucket, ``L`` leaky bucket, ``F`` fixed window), its state as decimal strings with
full (``%.17g``) precision (``tat`` for the buckets, ``window_start|count`` for the fixed window)
and the end of a block, if one is recorded. A decision is ``TIME``, ``GET`` and one ``SET ... PX``
that writes the state and its expiry together: inside a script every write is also replicated, so
one write instead of two (value, then expiry) is most of what a decision costs the server.

The sliding window keeps a list: element 0 is a header (``S``, or ``S|<until>`` while blocked),
then the admission times, oldest first, at most ``limit`` of them. The script reads the newest
entry (``LINDEX -1``) and the entry ``limit - cost + 1`` places back, which in a log trimmed to
``limit`` entries is within ``cost`` of the head; appending is ``RPUSH`` and trimming ``LTRIM``, so
a decision costs O(cost) whatever the limit. Old entries are not pruned by time: an entry that has
left the window changes no decision (the script checks the one entry that matters against the
window), and the log never holds more than ``limit`` entries. State of another algorithm (the
limit was reconfigured) counts as no state.

The hash tag ``{<name>}`` puts all keys of a name in one Redis Cluster slot. The name is
percent-escaped (``%``, ``{``, ``}``) so the tag always ends where the name does, and a user key is
always preceded by ``k:``: no key, however spelt, collides with the shared state or with another
name's.

Time: by default the script reads the server's clock (``TIME``), so hosts whose clocks disagree
still agree on every decision (Redis 5 and later replicate scripts by their effects, which allows
it). A caller may pass ``now`` (seconds, any epoch used consistently for that key): tests drive
Redis with a fake clock this way, and ``server_time=False`` makes the store pass the client's wall
clock. Numbers cross the wire as strings that round-trip exactly (``repr`` one way, ``%.17g`` the
other): a Lua number returned as a reply would be truncated to an integer.

Expiry: after every admission the key's ``PEXPIRE`` is set to the time until its state says nothing
a fresh state would not (the notion of :func:`buttress.machines.ratelimit.idle`), rounded up to
whole milliseconds, so idle keys vanish by themselves and a key never expires while it still
matters. A block keeps its key at least until the block ends. The TTL is real time: with a ``now``
from a fake clock it is still computed from that clock's differences.

What it cannot do: it does not fall back to local state when Redis is unreachable (redis-py's
``ConnectionError`` / ``TimeoutError`` propagate; the policy decides whether to fail open or
closed). The sliding window raises ``ValueError`` for a request costing more than its limit (it
could never be admitted). With ``now`` passed by callers, time must run forward per key: the log is
not pruned by time, so a caller that goes back in time may see entries the in-memory log has already
dropped.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from .._config import integer
from .._config import seconds as to_seconds
from ..machines.ratelimit import Params, RateLimitAlgorithm

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "BLOCK_SCRIPT",
    "RESERVE_SCRIPT",
    "AsyncRedisRateLimitStore",
    "RedisRateLimitStore",
    "async_from_url",
    "from_url",
]

_INSTALL = "the Redis backend needs redis-py: pip install 'buttress[redis]'"

# The shared helpers of both scripts: number parsing and printing, the clock, the expiry.
_PRELUDE = r"""
local function num(s)
  if s == 'inf' then return math.huge end
  return tonumber(s)
end
local function fmt(x)
  return string.format('%.17g', x)
end
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function ms(seconds)
  -- whole milliseconds, rounded up, within what PEXPIRE accepts (an integer: exact as an argument)
  local m = math.ceil(seconds * 1000)
  if m < 1 then m = 1 elseif m > 70368744177664 then m = 70368744177664 end
  return m
end
local function split(header)
  -- header -> algorithm tag, block-until (or nil)
  local bar = string.find(header, '|', 1, true)
  if not bar then return header, nil end
  return string.sub(header, 1, bar - 1), tonumber(string.sub(header, bar + 1))
end
"""

RESERVE_SCRIPT = (
    _PRELUDE
    + r"""
-- KEYS[1]: the state.
-- ARGV: tag, interval, burst, window, limit, cost, max_wait, now ('' = the server's TIME).
-- Returns {1, wait} when admitted after `wait` seconds, {0, retry_after} when refused.
local key = KEYS[1]
local tag = ARGV[1]
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local cost = tonumber(ARGV[6])
local max_wait = num(ARGV[7])
local now = clock(ARGV[8])
local EPSILON = 1e-9

if tag ~= 'S' then
  -- The buckets and the fixed window: a string "<tag>|<a>|<b>|<until>", read with one GET and
  -- written with one SET that also sets the expiry.
  local raw = redis.pcall('GET', key)
  local a, b, till = nil, nil, nil
  if type(raw) == 'string' then
    local t, x, y, u = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    till = tonumber(u)
    if t == tag then a, b = tonumber(x), tonumber(y) end
  end
  -- (a list here is a sliding window's log: another algorithm's state, which counts as none)
  if till then
    if now < till then return {0, fmt(till - now)} end
  end
  local function admit(x, y, wait, fresh_at)
    redis.call('SET', key, tag .. '|' .. x .. '|' .. y .. '|', 'PX', ms(fresh_at - now))
    if wait <= 0 then return {1, '0'} end
    return {1, fmt(wait)}
  end
  if tag == 'T' or tag == 'L' then
    local tat = now
    if a and a > now then tat = a end
    if tag == 'T' then
      local new_tat = tat + cost * interval
      local wait = new_tat - burst * interval - now
      if wait <= max_wait + EPSILON then
        return admit(fmt(new_tat), '', wait, new_tat)
      end
      return {0, fmt(wait)}
    end
    local wait = tat - now
    if wait <= math.min(max_wait, burst * interval) + EPSILON then
      local next_slot = tat + cost * interval
      return admit(fmt(next_slot), '', wait, next_slot)
    end
    return {0, fmt(wait)}
  end
  -- 'F'
  local start, count = now, 0
  if a and b and now < a + window then
    start, count = a, b
  end
  if count + cost > limit then
    start, count = start + window, 0
  end
  local wait = start - now
  if wait < 0 then wait = 0 end
  if wait <= max_wait + EPSILON then
    return admit(fmt(start), fmt(count + cost), wait, start + window)
  end
  return {0, fmt(wait)}
end

-- 'S': the sliding window log, a list: element 0 is the header ("S", or "S|<until>" while a
-- block is recorded), then the admission times, oldest first, at most `limit` of them.
local head = redis.pcall('LRANGE', key, 0, 0)
if head.err then
  -- a string: another algorithm's state (none for this one), or a block set on a fresh key
  local till = tonumber(string.match(redis.call('GET', key), '|([^|]*)$'))
  if till and now < till then
    return {0, fmt(till - now)}
  end
  redis.call('DEL', key)
  head = {}
end
local header = head[1]
local held = false
if header then
  local htag, till = split(header)
  if till and now < till then
    return {0, fmt(till - now)}
  end
  held = (htag == tag)
end
local n = 0
if held then n = redis.call('LLEN', key) - 1 end
local slot = now
if n > 0 then
  local newest = tonumber(redis.call('LINDEX', key, -1))
  if newest > slot then slot = newest end
end
-- The admission `need` places back must have left the window; in a log of n <= limit entries it
-- sits at list index n - need + 1 <= cost, near the head.
local need = limit - cost + 1
if need <= n then
  local back = tonumber(redis.call('LINDEX', key, n - need + 1))
  if back > now - window and back + window > slot then slot = back + window end
end
local wait = slot - now
if wait > max_wait + EPSILON then
  return {0, fmt(wait)}
end
local entry = fmt(slot)
if not held then
  redis.call('DEL', key)
  redis.call('RPUSH', key, tag)
elseif header ~= tag then
  redis.call('LSET', key, 0, tag)
end
local batch = {}
for i = 1, cost do
  batch[#batch + 1] = entry
  if #batch == 1000 or i == cost then
    redis.call('RPUSH', key, unpack(batch))
    batch = {}
  end
end
local extra = n + cost - limit
if extra > 0 then
  -- drop the header and the `extra` oldest entries, then put the header back
  redis.call('LTRIM', key, extra + 1, -1)
  redis.call('LPUSH', key, tag)
end
redis.call('PEXPIRE', key, ms(slot + window - now))
if wait <= 0 then return {1, '0'} end
return {1, fmt(wait)}
"""
)
"""Lua for one decision: the reservation of :mod:`buttress.machines.ratelimit` plus the block."""

BLOCK_SCRIPT = (
    _PRELUDE
    + r"""
-- KEYS[1]: the state. ARGV: seconds, now ('' = the server's TIME).
-- Records "refused until now + seconds" unless a later block is already recorded.
local key = KEYS[1]
local seconds = tonumber(ARGV[1])
local till = clock(ARGV[2]) + seconds
local keep = ms(seconds)
local pttl = redis.call('PTTL', key)
if pttl > keep then keep = pttl end
local raw = redis.pcall('GET', key)
if type(raw) == 'string' then
  local t, x, y, u = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local old = tonumber(u)
  if old and till <= old then return 0 end
  redis.call('SET', key, (t or '') .. '|' .. (x or '') .. '|' .. (y or '') .. '|' .. fmt(till),
    'PX', keep)
  return 1
end
if raw == false then
  redis.call('SET', key, '|||' .. fmt(till), 'PX', keep)
  return 1
end
-- a sliding window's log: the block goes into its header
local header = redis.call('LINDEX', key, 0)
local tag, old = split(header)
if old and till <= old then return 0 end
redis.call('LSET', key, 0, tag .. '|' .. fmt(till))
redis.call('PEXPIRE', key, keep)
return 1
"""
)
"""Lua for :meth:`RedisRateLimitStore.block`."""

_TAGS = {
    RateLimitAlgorithm.TOKEN_BUCKET: "T",
    RateLimitAlgorithm.LEAKY_BUCKET: "L",
    RateLimitAlgorithm.FIXED_WINDOW: "F",
    RateLimitAlgorithm.SLIDING_WINDOW: "S",
}


def _require_redis() -> None:
    try:
        import redis  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL) from exc


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must not contain '{{' or '}}' (the hash tag), got {prefix!r}")
    return prefix


@functools.lru_cache(maxsize=1024)
def _name_part(prefix: str, name: str) -> str:
    escaped = name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{prefix}:{{{escaped}}}:"


def _key_name(prefix: str, name: str, key: str | None) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if key is None:
        return _name_part(prefix, name)
    if not isinstance(key, str):
        raise TypeError(f"key must be a str or None, got {key!r}")
    return f"{_name_part(prefix, name)}k:{key}"


@functools.lru_cache(maxsize=256)
def _param_args(params: Params) -> tuple[str, str, str, str, str]:
    return (
        _TAGS[params.algorithm],
        repr(float(params.interval)),
        str(int(params.burst)),
        repr(float(params.window)),
        str(int(params.limit)),
    )


def _now_arg(now: float | None, server_time: bool) -> str:
    if now is None:
        return "" if server_time else repr(time.time())
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, got {now!r}")
    return repr(float(now))


def _reserve_args(
    params: Params, cost: int, max_wait: float, now: float | None, server_time: bool
) -> list[str]:
    if not isinstance(params, Params):
        raise TypeError(f"params must be a machines.ratelimit.Params, got {params!r}")
    integer("cost", cost, minimum=1)
    wait = to_seconds("max_wait", max_wait, allow_inf=True)
    if params.algorithm is RateLimitAlgorithm.SLIDING_WINDOW and cost > params.limit:
        raise ValueError(
            f"cost {cost} exceeds the sliding window's limit of {params.limit} per window: "
            "it could never be admitted"
        )
    return [*_param_args(params), str(cost), repr(wait), _now_arg(now, server_time)]


def _block_args(seconds: float, now: float | None, server_time: bool) -> list[str]:
    duration = to_seconds("seconds", seconds)
    return [repr(duration), _now_arg(now, server_time)]


@functools.lru_cache(maxsize=64)
def _evalsha_head(sha: str, nkeys: int, nargs: int) -> bytes:
    return b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (
        3 + nkeys + nargs,
        _bulk(sha),
        _bulk(str(nkeys)),
    )


def _bulk(value: str) -> bytes:
    data = value.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack_evalsha(sha: str, keys: list[str], args: list[str]) -> bytes:
    """The RESP bytes of ``EVALSHA sha len(keys) *keys *args`` (what redis-py would send)."""
    parts = [_evalsha_head(sha, len(keys), len(args))]
    parts += [_bulk(k) for k in keys]
    parts += [_bulk(a) for a in args]
    return b"".join(parts)


class Lane:
    """One round trip per script call on a connection each thread keeps.

    redis-py's general path takes a connection from the pool and checks it for every command
    (a lock, a ``select`` and bookkeeping): about as much time as the round trip itself. A
    decision needs none of that, so each thread keeps one connection from the client's pool and
    sends ``EVALSHA`` on it directly. A connection that fails is dropped (the next call takes a
    fresh one); a server that lost the script (``NOSCRIPT``, after a restart) gets it loaded again
    once; after a fork the child takes its own connection.
    """

    __slots__ = ("_local", "pool")

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self._local = threading.local()

    def _connection(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = self.pool.get_connection()
            local.conn, local.pid = conn, os.getpid()
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.disconnect()
            self.pool.release(conn)

    def evalsha(self, script: Any, keys: list[str], args: list[str]) -> Any:
        """``EVALSHA`` of ``script`` (a registered ``redis.commands.core.Script``)."""
        from redis.exceptions import NoScriptError, ResponseError

        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.send_packed_command(
                    [_pack_evalsha(script.sha, keys, args)], check_health=False
                )
                return conn.read_response()
            except NoScriptError:
                if attempt == 2:
                    raise
                conn.send_command("SCRIPT", "LOAD", script.script)
                conn.read_response()
            except ResponseError:
                raise  # the script's own error: the connection is fine
            except BaseException:
                self._drop()  # a failed or interrupted exchange leaves the connection unusable
                raise
        raise AssertionError("unreachable")  # pragma: no cover


def _decision(reply: Any) -> tuple[bool, float]:
    admitted, wait = reply
    return bool(int(admitted)), float(wait)


class _LimitScripts:
    """What the sync and async stores share: settings, key names and the scripts' arguments."""

    def __init__(self, client: Any, *, prefix: str = "buttress", server_time: bool = True) -> None:
        _require_redis()
        self.client = client
        self.prefix = _check_prefix(prefix)
        self.server_time = bool(server_time)
        self._reserve = client.register_script(RESERVE_SCRIPT)
        self._block = client.register_script(BLOCK_SCRIPT)

    def key_name(self, name: str, key: str | None = None) -> str:
        """The Redis key holding the state of ``key`` of limit ``name``."""
        return _key_name(self.prefix, name, key)

    def reserve_request(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[str, list[str]]:
        """The key and script arguments of one decision (validated)."""
        return _key_name(self.prefix, name, key), _reserve_args(
            params, cost, max_wait, now, self.server_time
        )

    def block_request(
        self, name: str, key: str | None, seconds: float, now: float | None = None
    ) -> tuple[str, list[str]]:
        """The key and script arguments of one block (validated)."""
        return _key_name(self.prefix, name, key), _block_args(seconds, now, self.server_time)


class RedisRateLimitStore(_LimitScripts):
    """Rate-limit state in Redis: one atomic script call per decision.

    Args:
        client: a ``redis.Redis`` (see :func:`from_url`).
        prefix: the first part of every key (no braces).
        server_time: with ``now=None``, use the Redis server's clock (default) rather than
            this host's wall clock.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "buttress", server_time: bool = True
    ) -> None:
        super().__init__(client, prefix=prefix, server_time=server_time)
        self._lane = Lane(client)

    def reserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        """Decide one request: ``(True, wait)``, or ``(False, retry_after)`` when refused.

        The arithmetic is :func:`buttress.machines.ratelimit.reserve`'s (``max_wait=0`` for a
        check that never waits; ``math.inf`` to wait as long as needed), after any block.
        """
        redis_key, args = self.reserve_request(name, key, params, cost, max_wait, now)
        return _decision(self._lane.evalsha(self._reserve, [redis_key], args))

    def block(self, name: str, key: str | None, seconds: float, now: float | None = None) -> None:
        """Refuse ``key`` of ``name`` for the next ``seconds`` (a later block already set wins)."""
        redis_key, args = self.block_request(name, key, seconds, now)
        self._lane.evalsha(self._block, [redis_key], args)

    def reset(self, name: str, key: str | None = None) -> None:
        """Forget the state and any block of ``key`` of ``name``."""
        self.client.delete(_key_name(self.prefix, name, key))


class AsyncRedisRateLimitStore(_LimitScripts):
    """:class:`RedisRateLimitStore` for asyncio, over a ``redis.asyncio.Redis``."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "buttress",
        server_time: bool = True,
    ) -> None:
        super().__init__(client, prefix=prefix, server_time=server_time)

    async def reserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        """Async twin of :meth:`RedisRateLimitStore.reserve`."""
        redis_key, args = self.reserve_request(name, key, params, cost, max_wait, now)
        return _decision(await self._reserve(keys=[redis_key], args=args))

    async def block(
        self, name: str, key: str | None, seconds: float, now: float | None = None
    ) -> None:
        """Async twin of :meth:`RedisRateLimitStore.block`."""
        redis_key, args = self.block_request(name, key, seconds, now)
        await self._block(keys=[redis_key], args=args)

    async def reset(self, name: str, key: str | None = None) -> None:
        """Async twin of :meth:`RedisRateLimitStore.reset`."""
        await self.client.delete(_key_name(self.prefix, name, key))


def _redacted(url: str) -> str:
    """``url`` with any password replaced, fit for an error message."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{user}:***@{host}").geturl()
    except ValueError:
        return "<unparseable URL>"


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str like 'redis://host:6379/0', got {url!r}")
    shown = _redacted(url)
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed Redis URL {shown!r}: {exc}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"malformed Redis URL {shown!r}: the scheme must be redis://, rediss:// or unix://"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"malformed Redis URL {shown!r}: no socket path")
        return url
    if not parts.hostname:
        raise ValueError(f"malformed Redis URL {shown!r}: no host")
    if port == 0:
        raise ValueError(f"malformed Redis URL {shown!r}: port 0")
    db = parts.path.lstrip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"malformed Redis URL {shown!r}: the database {db!r} is not a number")
    return url


def _timeouts(connect_timeout: float, socket_timeout: float) -> tuple[float, float]:
    return (
        to_seconds("connect_timeout", connect_timeout, allow_zero=False),
        to_seconds("socket_timeout", socket_timeout, allow_zero=False),
    )


def from_url(
    url: str, *, connect_timeout: float = 0.25, socket_timeout: float = 0.5
) -> redis.Redis:
    """A ``redis.Redis`` for ``redis://host:port/db`` with short timeouts.

    A rate-limit decision should fail fast when Redis is slow or gone, so the defaults are a
    quarter of a second to connect and half a second per reply. Raises ``ValueError`` naming the
    URL (password hidden) when it is malformed.
    """
    checked = _check_url(url)
    try:
        import redis
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    connect, reply = _timeouts(connect_timeout, socket_timeout)
    client: redis.Redis = redis.Redis.from_url(
        checked, socket_connect_timeout=connect, socket_timeout=reply
    )
    return client


def async_from_url(
    url: str, *, connect_timeout: float = 0.25, socket_timeout: float = 0.5
) -> redis.asyncio.Redis:
    """:func:`from_url` for asyncio: a ``redis.asyncio.Redis``."""
    checked = _check_url(url)
    try:
        import redis.asyncio
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    connect, reply = _timeouts(connect_timeout, socket_timeout)
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
        checked, socket_connect_timeout=connect, socket_timeout=reply
    )
    return client
