"""The Redis store the policies use: rate limits and breakers over one client.

:class:`RedisStore` wraps a ``redis.Redis`` (sync callers) and, when it was opened from a URL,
makes a ``redis.asyncio.Redis`` per event loop for async callers (an asyncio connection belongs
to the loop that made it). :class:`AsyncRedisStore` wraps a ``redis.asyncio.Redis`` the user
already has; its sync methods are refused with a clear error, since a sync call cannot use it.

Every step is one ``EVALSHA`` (see :mod:`buttress.backends.redis` and
:mod:`buttress.backends.redis_breaker`).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from ..machines.breaker import BreakerSettings
from ..machines.ratelimit import Params
from .base import BreakerReply, BreakerStep

__all__ = ["AsyncRedisStore", "RedisStore"]


class RedisStore:
    """Rate limits and breakers in Redis, for sync and (from a URL) async callers.

    Args:
        client: a ``redis.Redis``.
        url: the URL it was opened from (enables async callers); ``None`` for a given client.
        prefix: the first part of every key.
    """

    def __init__(self, client: Any, *, url: str | None = None, prefix: str = "buttress") -> None:
        from .redis import RedisRateLimitStore
        from .redis_breaker import RedisBreakerStore

        self.client = client
        self.prefix = prefix
        self.url = url or _describe(client)
        self._open_url = url
        self.limits = RedisRateLimitStore(client, prefix=prefix)
        self.breakers = RedisBreakerStore(client, prefix=prefix)
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        self.timeout: float | None = kwargs.get("socket_timeout")
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LaneStore] = (
            weakref.WeakKeyDictionary()
        )
        self._async_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    def reserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        return self.limits.reserve(name, key, params, cost, max_wait, now)

    def block(self, name: str, key: str | None, seconds: float, now: float | None = None) -> None:
        self.limits.block(name, key, seconds, now)

    def reset(self, name: str, key: str | None = None) -> None:
        self.limits.reset(name, key)

    def breaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        return self.breakers.breaker(name, settings, step, now)

    def close(self) -> None:
        """Close the connections this store opened (a client passed in is left to its owner)."""
        if self._open_url is not None:
            self.client.close()

    async def aclose(self) -> None:
        """Close this event loop's connection, then the sync ones."""
        loop = asyncio.get_running_loop()
        with self._async_lock:
            store = self._async.pop(loop, None)
        if store is not None:
            await store.lane.close()
        self.close()

    async def ablock(
        self, name: str, key: str | None, seconds: float, now: float | None = None
    ) -> None:
        await asyncio.to_thread(self.block, name, key, seconds, now)

    async def areset(self, name: str, key: str | None = None) -> None:
        await asyncio.to_thread(self.reset, name, key)

    # -- async callers ---------------------------------------------------------------------------

    def _for_loop(self) -> _LaneStore | None:
        if self._open_url is None:
            return None
        loop = asyncio.get_running_loop()
        with self._async_lock:
            store = self._async.get(loop)
            if store is None:
                # a lane's reader task holds on to its loop: forget the lanes of closed loops
                for old in [old for old in self._async if old.is_closed()]:
                    del self._async[old]
                from .redis_async import AsyncLane

                kwargs = self.client.connection_pool.connection_kwargs
                lane = AsyncLane(
                    self._open_url,
                    connect_timeout=kwargs.get("socket_connect_timeout") or 0.25,
                    socket_timeout=self.timeout if self.timeout is not None else 0.5,
                )
                store = self._async[loop] = _LaneStore(self, lane)
            return store

    async def areserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        store = self._for_loop()
        if store is None:  # a sync client given by the user: one short blocking round trip
            return self.reserve(name, key, params, cost, max_wait, now)
        return await store.areserve(name, key, params, cost, max_wait, now)

    async def abreaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        store = self._for_loop()
        if store is None:
            return self.breaker(name, settings, step, now)
        return await store.abreaker(name, settings, step, now)


class _LaneStore:
    """A :class:`RedisStore`'s scripts, sent on one event loop's pipelined connection."""

    def __init__(self, store: RedisStore, lane: Any) -> None:
        self.store = store
        self.lane = lane

    async def areserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        from .redis import _decision

        limits = self.store.limits
        redis_key, args = limits.reserve_request(name, key, params, cost, max_wait, now)
        return _decision(await self.lane.evalsha(limits._reserve, [redis_key], args))

    async def abreaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        from .redis_breaker import _reply, translating

        breakers = self.store.breakers
        key, args = breakers.step_request(name, settings, step, now)
        with translating(key, name):
            raw = await self.lane.evalsha(breakers._step, [key], args)
        return _reply(raw)


class AsyncRedisStore:
    """Rate limits and breakers over a ``redis.asyncio.Redis`` (async callers only)."""

    def __init__(self, client: Any, *, prefix: str = "buttress") -> None:
        from .redis import AsyncRedisRateLimitStore
        from .redis_breaker import AsyncRedisBreakerStore

        self.client = client
        self.url = _describe(client)
        self.limits = AsyncRedisRateLimitStore(client, prefix=prefix)
        self.breakers = AsyncRedisBreakerStore(client, prefix=prefix)
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        self.timeout: float | None = kwargs.get("socket_timeout")

    def __repr__(self) -> str:
        return f"AsyncRedisStore({self.url!r})"

    async def areserve(
        self,
        name: str,
        key: str | None,
        params: Params,
        cost: int,
        max_wait: float,
        now: float | None = None,
    ) -> tuple[bool, float]:
        return await self.limits.reserve(name, key, params, cost, max_wait, now)

    async def abreaker(
        self, name: str, settings: BreakerSettings, step: BreakerStep, now: float | None = None
    ) -> BreakerReply:
        return await self.breakers.breaker(name, settings, step, now)

    async def ablock(
        self, name: str, key: str | None, seconds: float, now: float | None = None
    ) -> None:
        await self.limits.block(name, key, seconds, now)

    async def areset(self, name: str, key: str | None = None) -> None:
        await self.limits.reset(name, key)

    async def aclose(self) -> None:
        """Nothing to close: the client belongs to whoever passed it in."""

    def close(self) -> None:
        """Nothing to close: the client belongs to whoever passed it in."""

    def _sync(self, what: str) -> Any:
        raise TypeError(
            f"{what} was called from sync code, but this store wraps a redis.asyncio client; "
            "give storage= a redis.Redis client or a redis:// URL for sync callers"
        )

    def reserve(self, *args: Any, **kwargs: Any) -> tuple[bool, float]:
        return self._sync("a rate-limit decision")  # type: ignore[no-any-return]

    def block(self, *args: Any, **kwargs: Any) -> None:
        self._sync("block()")

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self._sync("reset()")

    def breaker(self, *args: Any, **kwargs: Any) -> BreakerReply:
        return self._sync("a circuit breaker step")  # type: ignore[no-any-return]


def _describe(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    host = kwargs.get("host", "?")
    port = kwargs.get("port", "?")
    db = kwargs.get("db", 0)
    return f"redis://{host}:{port}/{db}"
