"""Circuit breakers kept in Redis, so many processes and hosts share one breaker.

Theory of operation
-------------------
Each step is ONE Redis command: ``EVALSHA`` of :data:`BREAKER_SCRIPT`, a Lua twin of
:func:`buttress.backends.base.apply_breaker` over the consecutive-failure
:class:`~buttress.machines.breaker.BreakerMachine` (``acquire``, ``record``, ``release``,
``force``, ``read``). The server runs a script atomically, so concurrent callers anywhere are
serialised per breaker exactly as the memory store's lock serialises threads: half-open admits
at most ``half_open_max_calls`` probes in total, and probe tickets (the machine's ``tickets``
counter) are handed out once each. The settings travel with every call as script arguments,
after :func:`~buttress.backends.base.shared_settings` (a stored probe always holds a lease that
expires, so a prober that died cannot wedge the breaker in half-open). Windowed breakers
(failure-rate or slow-call windows) are not stored; the store refuses their settings.

Storage: one Redis string per breaker, ``<prefix>:{<name>}:breaker``, holding exactly the JSON of
:meth:`BreakerMachine.to_state` (schema ``"v": 1``): ``state``, ``generation``, ``failures``,
``opened_at``, ``probe_successes``, ``probes`` (an object mapping ticket strings to the probes'
start times) and ``tickets``. Either side can read what the other wrote:
:meth:`BreakerMachine.from_state` accepts the script's JSON, and the script accepts Python's. The
script decodes with the server's ``cjson`` (exact: it parses numbers with ``strtod``) but encodes
the fixed schema itself, because ``cjson`` prints at most 14 significant digits and writes an
empty table as ``{}`` or ``[]`` by guesswork: integers are written with ``%d``, times with
``%.17g`` (which round-trips an IEEE double exactly), ``probes`` is always an object. A stored
value that is not such a state (foreign JSON, another version) makes the step raise
:class:`~buttress.backends.base.StorageError` naming the key; the value is left untouched. The
hash tag ``{<name>}`` and the name's escaping are those of :mod:`buttress.backends.redis`, so a
breaker shares its Cluster slot with the rate limits of the same name and never collides with
them (their keys end in ``:`` or ``:k:<key>``).

Writes: a step that leaves the state as it was (a closed admission, a stale outcome) writes
nothing. Expiry: a breaker that is CLOSED with no failures says nothing a fresh one would not,
except its generation and ticket counters, so its key expires after ``idle_ttl`` seconds without
a step (a day by default; ``None`` keeps it forever). Every other state is kept without expiry:
an OPEN or HALF_OPEN breaker, or a closed one counting failures, never vanishes. A key that did
expire comes back as a fresh breaker; an outcome reported for an admission taken before that is
at worst ignored (its generation no longer matches). The TTL is real time, whatever ``now``
the caller passes.

Time: by default the script reads the server's clock (``TIME``), so hosts whose clocks disagree
still agree on when recovery is due. A caller may pass ``now`` (seconds, one epoch per breaker);
tests drive Redis with a fake clock this way, and ``server_time=False`` passes this host's wall
clock instead. Numbers cross the wire as strings that round-trip exactly (``repr`` one way,
``%.17g`` the other).

Errors: a Redis that cannot be reached, or does not answer in time, raises
:class:`~buttress.backends.base.StorageUnavailable` (the policy then decides whether to fail open
or closed); bad arguments raise ``ValueError`` or ``TypeError`` naming the argument.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..machines.breaker import BreakerSettings, CircuitState
from .base import (
    BreakerOp,
    BreakerReply,
    BreakerStep,
    StorageError,
    StorageUnavailable,
    shared_settings,
)
from .redis import Lane, _check_prefix, _name_part, _require_redis

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "BREAKER_SCRIPT",
    "DEFAULT_IDLE_TTL",
    "AsyncRedisBreakerStore",
    "RedisBreakerStore",
]


DEFAULT_IDLE_TTL = 86_400.0
"""Seconds an idle breaker (closed, no failures) is kept after its last step."""

_ERROR_TAG = "BUTTRESS"
_MAX_TICKET = 2**53  # Lua numbers are doubles: integers beyond this are not exact

BREAKER_SCRIPT = r"""
-- KEYS[1]: the breaker's state (a string holding the JSON of BreakerMachine.to_state).
-- ARGV: op, now ('' = the server's TIME), fail_max, recovery, half_open_max_calls,
--       success_threshold, probe_timeout, probe (0/1), ticket, failed (0/1), target, reason,
--       idle_ttl in milliseconds ('' = never expire).
-- Returns {allowed, probe, ticket, retry_after, state, failures, opened_at, old, new, reason}:
-- allowed/probe 0 or 1, ticket and failures integers, retry_after and opened_at %.17g strings,
-- and old/new/reason nil when the step made no transition.
local key = KEYS[1]
local op = ARGV[1]

local function num(s)
  if s == 'inf' then return math.huge end
  return tonumber(s)
end
local function fmt(x)
  return string.format('%.17g', x)
end
local function fail(message)
  return redis.error_reply('BUTTRESS ' .. message)
end

local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local fail_max = tonumber(ARGV[3])
local recovery = num(ARGV[4])
local half_open_max_calls = tonumber(ARGV[5])
local success_threshold = tonumber(ARGV[6])
local probe_timeout = num(ARGV[7])
local is_probe = ARGV[8] == '1'
local ticket = tonumber(ARGV[9])
local failed = ARGV[10] == '1'
local target = ARGV[11]
local reason = ARGV[12]
local idle_ttl = ARGV[13]

-- The machine: m.probes maps ticket numbers to start times.
local m = {state = 'closed', generation = 0, failures = 0, opened_at = 0,
           probe_successes = 0, probes = {}, tickets = 0}

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function encode()
  local order = {}
  for t in pairs(m.probes) do order[#order + 1] = t end
  table.sort(order)
  local parts = {}
  for i, t in ipairs(order) do
    parts[i] = string.format('"%d":%s', t, fmt(m.probes[t]))
  end
  return string.format(
    '{"v":1,"state":"%s","generation":%d,"failures":%d,"opened_at":%s,' ..
    '"probe_successes":%d,"probes":{%s},"tickets":%d}',
    m.state, m.generation, m.failures, fmt(m.opened_at), m.probe_successes,
    table.concat(parts, ','), m.tickets)
end

local function count_field(data, field)
  local value = data[field]
  if type(value) ~= 'number' or value < 0 or value ~= math.floor(value) then
    return nil, field .. ' must be a non-negative integer'
  end
  return value
end

-- Load the stored state into m; returns an error message, or nil.
local function load(raw)
  local ok, data = pcall(cjson.decode, raw)
  if not ok then return 'is not JSON: ' .. tostring(data) end
  if type(data) ~= 'table' then return 'must be an object' end
  if data.v ~= 1 then return 'version ' .. tostring(data.v) .. ' is not 1' end
  local state = data.state
  if state ~= 'closed' and state ~= 'open' and state ~= 'half_open' then
    return 'has an unknown state ' .. tostring(state)
  end
  m.state = state
  local err
  for _, field in ipairs({'generation', 'failures', 'probe_successes', 'tickets'}) do
    m[field], err = count_field(data, field)
    if err then return err end
  end
  if type(data.opened_at) ~= 'number' or data.opened_at ~= data.opened_at then
    return 'opened_at must be a number'
  end
  m.opened_at = data.opened_at
  if type(data.probes) ~= 'table' then return 'probes must be an object' end
  for t, start in pairs(data.probes) do
    local n = tonumber(t)
    if not n or n ~= math.floor(n) then
      return 'probe ticket ' .. tostring(t) .. ' is not an integer'
    end
    if type(start) ~= 'number' or start ~= start then
      return 'probe ' .. tostring(t) .. ' must start at a number'
    end
    m.probes[n] = start
  end
  return nil
end

local raw = redis.call('GET', key)
if raw then
  local err = load(raw)
  if err then return fail('the stored breaker state ' .. err) end
end
local before = encode()

local function move(new, why)
  local old = m.state
  m.state = new
  m.generation = m.generation + 1
  m.failures = 0
  m.probe_successes = 0
  m.probes = {}
  if new == 'open' then m.opened_at = now end
  return {old, new, why}
end

local function oldest_probe()
  local oldest
  for _, start in pairs(m.probes) do
    if oldest == nil or start < oldest then oldest = start end
  end
  return oldest
end

local allowed, probe, number, retry_after = false, false, 0, 0
local transition

if op == 'acquire' then
  local decided = false
  if m.state == 'open' then
    local due = m.opened_at + recovery
    if now < due then
      retry_after = due - now
      decided = true
    else
      transition = move('half_open', 'recovery timeout elapsed')
    end
  end
  if not decided and m.state == 'half_open' then
    local oldest = oldest_probe()
    if oldest ~= nil and now - oldest >= probe_timeout then
      transition = move('open', 'half-open probe timed out')
      retry_after = recovery
    elseif count(m.probes) >= half_open_max_calls then
      if oldest ~= nil then retry_after = math.max(0, oldest + probe_timeout - now) end
    else
      m.tickets = m.tickets + 1
      m.probes[m.tickets] = now
      allowed, probe, number = true, true, m.tickets
    end
  elseif not decided then
    allowed, number = true, m.generation
  end
elseif op == 'record' then
  if is_probe then
    if m.probes[ticket] ~= nil then
      m.probes[ticket] = nil
      if failed then
        transition = move('open', 'half-open probe failed')
      else
        m.probe_successes = m.probe_successes + 1
        if m.probe_successes >= success_threshold then
          transition = move('closed', 'half-open probes succeeded')
        end
      end
    end
  elseif ticket == m.generation and m.state == 'closed' then
    if failed then
      m.failures = m.failures + 1
      if m.failures >= fail_max then
        transition = move('open', string.format('%d consecutive failures', m.failures))
      end
    else
      m.failures = 0
    end
  end
elseif op == 'release' then
  if is_probe then m.probes[ticket] = nil end
elseif op == 'force' then
  if target == 'closed' and m.state == 'closed' then
    move('closed', reason)  -- resets the counters without a visible transition
  elseif target ~= m.state then
    transition = move(target, reason)
  end
elseif op ~= 'read' then
  return fail('unknown breaker operation ' .. op)
end

if op ~= 'read' then
  local after = encode()
  local fresh = m.state == 'closed' and m.failures == 0
  if after ~= before then
    if fresh and idle_ttl ~= '' then
      redis.call('SET', key, after, 'PX', idle_ttl)
    else
      redis.call('SET', key, after)  -- a plain SET also drops any expiry
    end
  elseif raw and fresh and idle_ttl ~= '' then
    redis.call('PEXPIRE', key, idle_ttl)  -- still idle: keep it for another idle_ttl
  end
end

local reply = {allowed and 1 or 0, probe and 1 or 0, number, fmt(retry_after), m.state,
               m.failures, fmt(m.opened_at), false, false, false}
if transition then
  reply[8], reply[9], reply[10] = transition[1], transition[2], transition[3]
end
return reply
"""
"""Lua for one breaker step: :func:`buttress.backends.base.apply_breaker` on the stored state."""


def _check_idle_ttl(idle_ttl: object) -> str:
    """``idle_ttl`` as the script's argument: whole milliseconds, or '' for no expiry."""
    if idle_ttl is None:
        return ""
    if (
        isinstance(idle_ttl, bool)
        or not isinstance(idle_ttl, int | float)
        or not math.isfinite(idle_ttl)
        or idle_ttl <= 0
    ):
        raise ValueError(f"idle_ttl must be a positive number of seconds or None, got {idle_ttl!r}")
    return str(max(1, math.ceil(idle_ttl * 1000)))


def _key_name(prefix: str, name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"breaker name must be a non-empty string, got {name!r}")
    return f"{_name_part(prefix, name)}breaker"


def _positive_int(field: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
    return str(value)


def _duration(field: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{field} must be a number of seconds >= 0, got {value!r}")
    return repr(float(value))


@functools.lru_cache(maxsize=256)
def _settings_args(settings: BreakerSettings) -> tuple[str, str, str, str, str]:
    if settings.windowed:
        raise ValueError(
            "a breaker kept in Redis counts consecutive failures only; "
            "failure_rate_threshold and slow_call_rate_threshold need in-memory state"
        )
    shared = shared_settings(settings)
    return (
        _positive_int("fail_max", shared.fail_max),
        _duration("recovery", shared.recovery),
        _positive_int("half_open_max_calls", shared.half_open_max_calls),
        _positive_int("success_threshold", shared.success_threshold),
        _duration("probe_timeout", shared.probe_timeout),
    )


def _now_arg(now: float | None, server_time: bool) -> str:
    if now is None:
        return "" if server_time else repr(time.time())
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, got {now!r}")
    return repr(float(now))


def _step_args(
    settings: BreakerSettings,
    step: BreakerStep,
    now: float | None,
    server_time: bool,
    idle_ttl: str,
) -> list[str]:
    if not isinstance(settings, BreakerSettings):
        raise TypeError(f"settings must be a machines.breaker.BreakerSettings, got {settings!r}")
    if not isinstance(step, BreakerStep):
        raise TypeError(f"step must be a BreakerStep, got {step!r}")
    ticket = step.ticket
    if isinstance(ticket, bool) or not isinstance(ticket, int):
        raise TypeError(f"ticket must be an int (from an acquire reply), got {ticket!r}")
    if not 0 <= ticket < _MAX_TICKET:
        raise ValueError(f"ticket must be between 0 and 2**53 - 1, got {ticket!r}")
    if not isinstance(step.reason, str):
        raise TypeError(f"reason must be a str, got {step.reason!r}")
    target_arg = ""
    if step.op is BreakerOp.FORCE and step.target is not None:
        target_arg = step.target.value
    return [
        step.op.value,
        _now_arg(now, server_time),
        *_settings_args(settings),
        "1" if step.probe else "0",
        str(ticket),
        "1" if step.failed else "0",
        target_arg,
        step.reason,
        idle_ttl,
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reply(raw: Any) -> BreakerReply:
    allowed, probe, ticket, retry_after, state, failures, opened_at, old, new, why = raw
    transition = None
    if old is not None:
        transition = (CircuitState(_text(old)), CircuitState(_text(new)), _text(why))
    return BreakerReply(
        allowed=bool(int(allowed)),
        probe=bool(int(probe)),
        ticket=int(ticket),
        retry_after=float(_text(retry_after)),
        state=CircuitState(_text(state)),
        failures=int(failures),
        opened_at=float(_text(opened_at)),
        transition=transition,
    )


def _translate(exc: Exception, key: str, name: str) -> Exception:
    """The store's exception for a redis-py exception raised by a step on ``key``."""
    import redis

    if isinstance(exc, redis.ResponseError) and str(exc).startswith(_ERROR_TAG):
        detail = str(exc)[len(_ERROR_TAG) :].strip()
        return StorageError(f"Redis key {key!r} (breaker {name!r}): {detail}")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return StorageUnavailable(f"breaker {name!r}: Redis did not answer: {exc}")
    return exc


@contextlib.contextmanager
def translating(key: str, name: str) -> Iterator[None]:
    """Raise the store's exception for a redis-py exception raised inside (see _translate)."""
    try:
        yield
    except Exception as exc:
        translated = _translate(exc, key, name)
        if translated is exc:
            raise
        raise translated from exc


class _BreakerScript:
    """What the sync and async stores share: settings, key names and the script's arguments."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "buttress",
        server_time: bool = True,
        idle_ttl: float | None = DEFAULT_IDLE_TTL,
    ) -> None:
        _require_redis()
        self.client = client
        self.prefix = _check_prefix(prefix)
        self.server_time = bool(server_time)
        self._idle_ttl = _check_idle_ttl(idle_ttl)
        self._step = client.register_script(BREAKER_SCRIPT)

    def key_name(self, name: str) -> str:
        """The Redis key holding the state of breaker ``name``."""
        return _key_name(self.prefix, name)

    def step_request(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> tuple[str, list[str]]:
        """The key and script arguments of one step (validated)."""
        key = _key_name(self.prefix, name)
        return key, _step_args(settings, step, now, self.server_time, self._idle_ttl)


class RedisBreakerStore(_BreakerScript):
    """Circuit-breaker state in Redis: one atomic script call per step.

    Args:
        client: a ``redis.Redis`` (see :func:`buttress.backends.redis.from_url`).
        prefix: the first part of every key (no braces).
        server_time: with ``now=None``, use the Redis server's clock (default) rather than
            this host's wall clock.
        idle_ttl: seconds a closed breaker with no failures is kept after its last step
            (``None``: forever). Other states never expire.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "buttress",
        server_time: bool = True,
        idle_ttl: float | None = DEFAULT_IDLE_TTL,
    ) -> None:
        super().__init__(client, prefix=prefix, server_time=server_time, idle_ttl=idle_ttl)
        self._lane = Lane(client)

    def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        """One breaker step on the stored state (see :func:`apply_breaker`).

        Raises:
            ValueError: windowed or invalid settings, a bad ``now`` or ``ticket``.
            StorageError: the key holds something that is not a breaker state.
            StorageUnavailable: Redis could not be reached or did not answer in time.
        """
        key, args = self.step_request(name, settings, step, now)
        with translating(key, name):
            raw = self._lane.evalsha(self._step, [key], args)
        return _reply(raw)

    def reset_breaker(self, name: str) -> None:
        """Forget breaker ``name`` (it starts again closed, as if new)."""
        self.client.delete(_key_name(self.prefix, name))


class AsyncRedisBreakerStore(_BreakerScript):
    """:class:`RedisBreakerStore` for asyncio, over a ``redis.asyncio.Redis``."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "buttress",
        server_time: bool = True,
        idle_ttl: float | None = DEFAULT_IDLE_TTL,
    ) -> None:
        super().__init__(client, prefix=prefix, server_time=server_time, idle_ttl=idle_ttl)

    async def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        """Async twin of :meth:`RedisBreakerStore.breaker`."""
        key, args = self.step_request(name, settings, step, now)
        with translating(key, name):
            raw = await self._step(keys=[key], args=args)
        return _reply(raw)

    async def reset_breaker(self, name: str) -> None:
        """Async twin of :meth:`RedisBreakerStore.reset_breaker`."""
        await self.client.delete(_key_name(self.prefix, name))
