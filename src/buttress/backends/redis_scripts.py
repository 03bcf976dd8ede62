"""The Lua scripts the Redis store runs, their keys, their arguments and their replies.

Theory of operation
-------------------
Each step is one ``EVALSHA`` of a script in ``backends/lua/`` (package data, read with
:mod:`importlib.resources`), with ``prelude.lua`` (number parsing and printing, the clock, expiry
in milliseconds, the error tag) put before it, so the helpers exist once:

* ``reserve.lua``: a port of :func:`buttress.machines.ratelimit.reserve` (all four algorithms,
  the same arithmetic in the same order, IEEE doubles on both sides, the same ``EPSILON``), after
  the per-key block that ``block.lua`` records (a server said "come back later");
* ``breaker.lua``: a twin of :func:`buttress.backends.base.apply_breaker` over the
  consecutive-failure :class:`~buttress.machines.breaker.BreakerMachine`;
* ``target.lua``: the compare-and-set of one target state of a pool (the pool runs
  :mod:`buttress.machines.targets` itself); ``HGETALL`` reads a pool's states in one step;
* ``verdict.lua`` and ``verdicts.lua``: publish and read the resource verdicts of a space (a
  hash of ``<expires>|<at>|<record>`` by resource key; expiry on the script's clock, a newer
  reading never overwritten by an older one, expired entries swept when publishing).

The server runs a script atomically, so concurrent callers anywhere are serialised per key exactly
as the in-process lock serialises threads: a limit never over-admits, and half-open admits at most
``half_open_max_calls`` probes in total.

Keys: every key of a name carries the hash tag ``{<name>}``, so a name's limits and breaker share
one Redis Cluster slot::

    <prefix>:{<name>}:          the name's shared rate-limit state (key=None)
    <prefix>:{<name>}:k:<key>   the rate-limit state of <key>
    <prefix>:{<name>}:breaker   the breaker <name>
    <prefix>:{<name>}:targets   the target pool <name> (a hash: target -> JSON state)
    <prefix>:{<name>}:verdicts  the resource verdicts of space <name> (a hash: key -> verdict)

The name is percent-escaped (``%``, ``{``, ``}``) so the tag always ends where the name does, and a
user key always follows ``k:``: no key, however spelt, collides with another.

Rate-limit state: the buckets and the fixed window keep a string ``<tag>|<a>|<b>|<until>`` (the
algorithm's tag ``T``/``L``/``F``, its state at full ``%.17g`` precision, the end of a block), read
with one ``GET`` and written with one ``SET ... PX`` (value and expiry in one write: inside a script
every write is also replicated). The sliding window keeps a list: a header (``S``, or ``S|<until>``
while blocked), then at most ``limit`` admission times, oldest first; a decision reads the newest
entry and the one ``limit - cost + 1`` back (within ``cost`` of the head), appends with ``RPUSH``
and trims with ``LTRIM``: O(cost) whatever the limit. State of another algorithm (the limit was
reconfigured) counts as none. A key expires when its state says nothing a fresh one would not (the
notion of :func:`buttress.machines.ratelimit.idle`), rounded up to whole milliseconds; a block
keeps its key at least until the block ends.

Breaker state: one string holding exactly the JSON of :meth:`BreakerMachine.to_state` (``"v": 1``),
which either side can read: the script decodes with the server's ``cjson`` but encodes the fixed
schema itself (``cjson`` prints 14 significant digits and guesses whether ``{}`` is an array). A
value that is not such a state makes the step raise :class:`StorageError` naming the key, and is
left untouched. A step that changes nothing writes nothing; a closed breaker with no failures
expires after ``idle_ttl`` (a day) without a step; every other state is kept. Windowed breakers
(failure-rate, slow-call) are not stored: their settings are refused.

Time: by default a script reads the server's clock (``TIME``), so hosts with skewed clocks agree.
A caller may pass ``now`` (seconds, one epoch per key): tests drive Redis with a fake clock so, and
``server_time=False`` passes this host's wall clock. Expiry is real time whatever ``now`` says.
With ``now`` passed, time must run forward per key (the log is not pruned by time).
"""

from __future__ import annotations

import functools
import math
from importlib.resources import files
from typing import cast

from .._config import integer
from .._config import seconds as to_seconds
from ..clock import wall_time
from ..machines.breaker import BreakerSettings, CircuitState
from ..machines.ratelimit import Params, RateLimitAlgorithm
from .base import (
    BreakerOp,
    BreakerReply,
    BreakerStep,
    StorageError,
    block_seconds,
    shared_settings,
)
from .redis_wire import Command, Script

__all__ = [
    "BLOCK",
    "BREAKER",
    "DEFAULT_IDLE_TTL",
    "DELETE",
    "RESERVE",
    "TARGET",
    "TARGETS",
    "block_args",
    "breaker_args",
    "breaker_key",
    "breaker_reply",
    "check_idle_ttl",
    "check_prefix",
    "decision",
    "limit_key",
    "now_arg",
    "reserve_args",
    "target_states",
    "target_swap",
    "targets_key",
    "VERDICT",
    "VERDICTS",
    "verdict_args",
    "verdicts_key",
    "verdicts_reply",
]

DEFAULT_IDLE_TTL = 86_400.0
"""Seconds an idle breaker (closed, no failures) is kept after its last step."""

_MAX_TICKET = 2**53  # Lua numbers are doubles: integers beyond this are not exact


def _script(name: str) -> Script:
    lua = files(__package__).joinpath("lua")
    prelude = lua.joinpath("prelude.lua").read_text(encoding="utf-8")
    return Script(name, prelude + "\n" + lua.joinpath(f"{name}.lua").read_text(encoding="utf-8"))


RESERVE = _script("reserve")
BLOCK = _script("block")
BREAKER = _script("breaker")
DELETE = Command("DEL")
TARGET = _script("target")
TARGETS = Command("HGETALL")
VERDICT = _script("verdict")
VERDICTS = _script("verdicts")

_TAGS = {
    RateLimitAlgorithm.TOKEN_BUCKET: "T",
    RateLimitAlgorithm.LEAKY_BUCKET: "L",
    RateLimitAlgorithm.FIXED_WINDOW: "F",
    RateLimitAlgorithm.SLIDING_WINDOW: "S",
}


# -- keys ------------------------------------------------------------------------------------------


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must not contain '{{' or '}}' (the hash tag), got {prefix!r}")
    return prefix


@functools.lru_cache(maxsize=1024)
def _name_part(prefix: str, name: str) -> str:
    escaped = name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{prefix}:{{{escaped}}}:"


def limit_key(prefix: str, name: str, key: str | None) -> str:
    """The Redis key of the rate-limit state of ``key`` (``None``: shared) of limit ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if key is None:
        return _name_part(prefix, name)
    if not isinstance(key, str):
        raise TypeError(f"key must be a str or None, got {key!r}")
    return f"{_name_part(prefix, name)}k:{key}"


def breaker_key(prefix: str, name: str) -> str:
    """The Redis key of breaker ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"breaker name must be a non-empty string, got {name!r}")
    return f"{_name_part(prefix, name)}breaker"


def targets_key(prefix: str, pool: str) -> str:
    """The Redis key of target pool ``pool`` (a hash of its targets' states)."""
    if not isinstance(pool, str) or not pool:
        raise ValueError(f"pool name must be a non-empty string, got {pool!r}")
    return f"{_name_part(prefix, pool)}targets"


def verdicts_key(prefix: str, space: str) -> str:
    """The Redis key of the resource verdicts of ``space`` (a hash by resource key)."""
    if not isinstance(space, str) or not space:
        raise ValueError(f"verdict space must be a non-empty string, got {space!r}")
    return f"{_name_part(prefix, space)}verdicts"


# -- arguments -------------------------------------------------------------------------------------


def now_arg(now: float | None, server_time: bool) -> str:
    """``now`` as a script argument: ``''`` asks the script to read the server's clock."""
    if now is None:
        return "" if server_time else repr(wall_time())
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, got {now!r}")
    return repr(float(now))


@functools.lru_cache(maxsize=256)
def _param_args(params: Params) -> tuple[str, str, str, str, str]:
    return (
        _TAGS[params.algorithm],
        repr(float(params.interval)),
        str(int(params.burst)),
        repr(float(params.window)),
        str(int(params.limit)),
    )


def reserve_args(params: Params, cost: int, max_wait: float, now: str) -> list[str]:
    """The arguments of ``reserve.lua`` (validated); ``now`` from :func:`now_arg`."""
    if not isinstance(params, Params):
        raise TypeError(f"params must be a machines.ratelimit.Params, got {params!r}")
    integer("cost", cost, minimum=1)
    wait = to_seconds("max_wait", max_wait, allow_inf=True)
    if params.algorithm is RateLimitAlgorithm.SLIDING_WINDOW and cost > params.limit:
        raise ValueError(
            f"cost {cost} exceeds the sliding window's limit of {params.limit} per window: "
            "it could never be admitted"
        )
    return [*_param_args(params), str(cost), repr(wait), now]


def block_args(seconds: float, now: str) -> list[str]:
    """The arguments of ``block.lua`` (validated)."""
    return [repr(block_seconds(seconds)), now]


def check_idle_ttl(idle_ttl: object) -> str:
    """``idle_ttl`` as the breaker script's argument: whole milliseconds, or '' for no expiry."""
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


def breaker_args(
    settings: BreakerSettings, step: BreakerStep, now: str, idle_ttl: str
) -> list[str]:
    """The arguments of ``breaker.lua`` (validated)."""
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
    target = step.target.value if step.op is BreakerOp.FORCE and step.target is not None else ""
    return [
        step.op.value,
        now,
        *_settings_args(settings),
        "1" if step.probe else "0",
        str(ticket),
        "1" if step.failed else "0",
        target,
        step.reason,
        idle_ttl,
    ]


# -- replies ---------------------------------------------------------------------------------------


def decision(reply: list[bytes | int]) -> tuple[bool, float]:
    """``(admitted, wait)`` from the reply of ``reserve.lua`` (``{1|0, "<seconds>"}``)."""
    admitted, wait = reply
    return bool(int(admitted)), float(wait)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def breaker_reply(raw: list[bytes | int | None]) -> BreakerReply:
    """The :class:`BreakerReply` in the reply of ``breaker.lua``."""
    allowed, probe, ticket, retry_after, state, failures, opened_at, old, new, why = raw
    transition = None
    if old is not None:
        transition = (CircuitState(_text(old)), CircuitState(_text(new)), _text(why))
    return BreakerReply(
        allowed=bool(int(allowed or 0)),
        probe=bool(int(probe or 0)),
        ticket=int(ticket or 0),
        retry_after=float(_text(retry_after)),
        state=CircuitState(_text(state)),
        failures=int(failures or 0),
        opened_at=float(_text(opened_at)),
        transition=transition,
    )


def target_states(raw: object) -> dict[str, str]:
    """The states of a pool from ``HGETALL`` (a flat list, or a redis-py client's dict)."""
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    if not isinstance(raw, list):
        raise StorageError(f"unexpected reply to HGETALL: {raw!r}")
    return {_text(raw[i]): _text(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}


def target_swap(raw: list[object]) -> tuple[bool, str | None]:
    """``(swapped, current)`` from the reply of ``target.lua``."""
    swapped, current = raw
    return bool(int(cast(int, swapped))), None if current is None else _text(current)


def verdict_args(verdicts: dict[str, tuple[str, float, float]], now: str) -> list[str]:
    """The arguments of ``verdict.lua``: now, then key, record, at, ttl per verdict."""
    args = [now]
    for key, (record, at, ttl) in verdicts.items():
        if not isinstance(key, str) or not key or not isinstance(record, str):
            raise TypeError(f"a verdict is a key and a record string, got {key!r}: {record!r}")
        args += [key, record, repr(float(at)), repr(float(to_seconds("ttl", ttl)))]
    return args


def verdicts_reply(raw: object) -> dict[str, tuple[str, float]]:
    """``key -> (record, seconds left)`` from the flat reply of ``verdicts.lua``."""
    if not isinstance(raw, list) or len(raw) % 3:
        raise StorageError(f"unexpected reply to the verdicts script: {raw!r}")
    return {
        _text(raw[i]): (_text(raw[i + 1]), float(_text(raw[i + 2]))) for i in range(0, len(raw), 3)
    }
