"""The Redis store: rate limits and circuit breakers shared by every process on every host.

``storage="redis://..."`` (or ``rediss://``, ``unix://``, ``redis+cluster://``,
``redis+sentinel://``) and a redis-py client given as ``storage=`` both resolve to
:class:`RedisStore`, which implements :class:`~buttress.backends.base.Store` and
:class:`~buttress.backends.base.AsyncStore`: one object serves a policy's sync and async callers,
its limits and its breakers. Each step is one script call, built by :mod:`.redis_scripts` (which
script, which key, which arguments, what the reply means) and sent by :mod:`.redis_wire` (which
node, which connection, what a fault means) or, for a client given as storage, by
:mod:`.redis_client` (the client's own connections). The store itself only joins them.

A store raises only :class:`StorageUnavailable` (no answer in time: the policy decides without
it), :class:`StorageError` (an answer it cannot use), and ``ValueError``/``TypeError`` for bad
arguments, naming them.
"""

from __future__ import annotations

from typing import Any

from ..machines.breaker import BreakerSettings
from ..machines.ratelimit import Params
from .base import BreakerReply, BreakerStep, Key, Now, StorageError
from .redis_client import ClientWire
from .redis_scripts import (
    BLOCK,
    BREAKER,
    DEFAULT_IDLE_TTL,
    DELETE,
    RESERVE,
    TARGET,
    TARGETS,
    VERDICT,
    VERDICTS,
    block_args,
    breaker_args,
    breaker_key,
    breaker_reply,
    check_idle_ttl,
    check_prefix,
    decision,
    limit_key,
    now_arg,
    reserve_args,
    target_states,
    target_swap,
    targets_key,
    verdict_args,
    verdicts_key,
    verdicts_reply,
)
from .redis_wire import Command, Wire, open_wire

__all__ = ["DEFAULT_IDLE_TTL", "RedisStore"]


class RedisStore:
    """Rate limits and breakers in Redis, for sync and async callers.

    Args:
        source: a URL (see :func:`buttress.backends.redis_wire.parse_url`), whose connections
            are shared by every store opened from it in this process; or a redis-py client
            (``redis.Redis``, ``redis.cluster.RedisCluster``, a Sentinel's ``master_for``, or
            their ``redis.asyncio`` twins), used through its own API and never closed here.
        prefix: the first part of every key (no braces).
        server_time: with ``now=None``, time steps by the Redis server's clock (default) rather
            than this host's wall clock.
        idle_ttl: seconds a closed breaker with no failures is kept after its last step
            (``None``: forever). Other breaker states never expire.
    """

    def __init__(
        self,
        source: object,
        *,
        prefix: str = "buttress",
        server_time: bool = True,
        idle_ttl: float | None = DEFAULT_IDLE_TTL,
    ) -> None:
        self.prefix = check_prefix(prefix)
        self.server_time = bool(server_time)
        self._idle_ttl = check_idle_ttl(idle_ttl)
        self._wire: Wire | ClientWire | _Closed = (
            open_wire(source) if isinstance(source, str) else ClientWire(source)
        )
        #: Where the state lives, for messages (password redacted).
        self.url = self._wire.url
        #: Seconds a step may wait for a reply (``None``: a given client's unknown timeout).
        self.timeout = self._wire.timeout

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    def limit_key(self, name: str, key: Key = None) -> str:
        """The Redis key holding the state of ``key`` of limit ``name``."""
        return limit_key(self.prefix, name, key)

    def breaker_key(self, name: str) -> str:
        """The Redis key holding the state of breaker ``name``."""
        return breaker_key(self.prefix, name)

    def reserve(
        self, name: str, key: Key, params: Params, cost: int, max_wait: float, now: Now = None
    ) -> tuple[bool, float]:
        args = reserve_args(params, cost, max_wait, now_arg(now, self.server_time))
        return decision(self._wire.call(limit_key(self.prefix, name, key), RESERVE, args))

    async def areserve(
        self, name: str, key: Key, params: Params, cost: int, max_wait: float, now: Now = None
    ) -> tuple[bool, float]:
        args = reserve_args(params, cost, max_wait, now_arg(now, self.server_time))
        return decision(await self._wire.acall(limit_key(self.prefix, name, key), RESERVE, args))

    def block(self, name: str, key: Key, seconds: float, now: Now = None) -> None:
        args = block_args(seconds, now_arg(now, self.server_time))
        self._wire.call(limit_key(self.prefix, name, key), BLOCK, args)

    async def ablock(self, name: str, key: Key, seconds: float, now: Now = None) -> None:
        args = block_args(seconds, now_arg(now, self.server_time))
        await self._wire.acall(limit_key(self.prefix, name, key), BLOCK, args)

    def reset(self, name: str, key: Key = None) -> None:
        self._wire.call(limit_key(self.prefix, name, key), DELETE, [])

    async def areset(self, name: str, key: Key = None) -> None:
        await self._wire.acall(limit_key(self.prefix, name, key), DELETE, [])

    def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: Now = None
    ) -> BreakerReply:
        args = breaker_args(settings, step, now_arg(now, self.server_time), self._idle_ttl)
        return breaker_reply(self._wire.call(breaker_key(self.prefix, name), BREAKER, args))

    async def abreaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: Now = None
    ) -> BreakerReply:
        args = breaker_args(settings, step, now_arg(now, self.server_time), self._idle_ttl)
        return breaker_reply(await self._wire.acall(breaker_key(self.prefix, name), BREAKER, args))

    def targets(self, pool: str) -> dict[str, str]:
        """Every target state of ``pool`` (see :class:`~buttress.backends.base.TargetStore`)."""
        return target_states(self._wire.call(targets_key(self.prefix, pool), TARGETS, []))

    async def atargets(self, pool: str) -> dict[str, str]:
        return target_states(await self._wire.acall(targets_key(self.prefix, pool), TARGETS, []))

    def swap_target(
        self, pool: str, name: str, old: str | None, new: str
    ) -> tuple[bool, str | None]:
        """Store ``new`` as target ``name`` of ``pool`` if it is still ``old``."""
        args = [name, old or "", new]
        return target_swap(self._wire.call(targets_key(self.prefix, pool), TARGET, args))

    async def aswap_target(
        self, pool: str, name: str, old: str | None, new: str
    ) -> tuple[bool, str | None]:
        args = [name, old or "", new]
        return target_swap(await self._wire.acall(targets_key(self.prefix, pool), TARGET, args))

    def publish_verdicts(
        self, space: str, verdicts: dict[str, tuple[str, float, float]], now: Now = None
    ) -> None:
        """Store resource verdicts (see :class:`~buttress.backends.base.VerdictStore`)."""
        if verdicts:
            args = verdict_args(verdicts, now_arg(now, self.server_time))
            self._wire.call(verdicts_key(self.prefix, space), VERDICT, args)

    async def apublish_verdicts(
        self, space: str, verdicts: dict[str, tuple[str, float, float]], now: Now = None
    ) -> None:
        if verdicts:
            args = verdict_args(verdicts, now_arg(now, self.server_time))
            await self._wire.acall(verdicts_key(self.prefix, space), VERDICT, args)

    def verdicts(self, space: str, now: Now = None) -> dict[str, tuple[str, float]]:
        """The unexpired verdicts of ``space``: ``key -> (record, seconds left)``."""
        args = [now_arg(now, self.server_time)]
        return verdicts_reply(self._wire.call(verdicts_key(self.prefix, space), VERDICTS, args))

    async def averdicts(self, space: str, now: Now = None) -> dict[str, tuple[str, float]]:
        args = [now_arg(now, self.server_time)]
        raw = await self._wire.acall(verdicts_key(self.prefix, space), VERDICTS, args)
        return verdicts_reply(raw)

    def close(self) -> None:
        """Done with the store: the last store of a URL closes its connections (idempotent)."""
        wire, self._wire = self._wire, _CLOSED
        wire.release()

    async def aclose(self) -> None:
        """:meth:`close`, closing this event loop's connections before returning."""
        wire, self._wire = self._wire, _CLOSED
        await wire.arelease()


class _Closed:
    """What a closed store talks to: every step is refused."""

    url = "closed"
    timeout = None

    def call(self, key: str, op: Command, args: list[str]) -> Any:
        raise StorageError(f"the store was closed (a step on {key!r} after close())")

    async def acall(self, key: str, op: Command, args: list[str]) -> Any:
        return self.call(key, op, args)

    def release(self) -> None:
        pass

    async def arelease(self) -> None:
        pass


_CLOSED = _Closed()
