"""Shared test helpers.

``mode`` parametrises a test over the sync and the async path; ``run(mode, fn, ...)`` calls a
decorated function (``def`` or ``async def``) and returns its result either way, so one test body
checks both.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from buttress.testing import FakeClock


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(result: Any) -> Any:
    """Resolve what a guarded call returned: await it if it is a coroutine."""
    if inspect.isawaitable(result):

        async def _await() -> Any:
            return await result

        return asyncio.run(_await())
    return result


def make(mode: str, body: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function with ``body``'s behaviour, as ``def`` or ``async def`` by ``mode``."""
    if mode == "sync":
        return body

    async def abody(*args: Any, **kwargs: Any) -> Any:
        return body(*args, **kwargs)

    abody.__name__ = getattr(body, "__name__", "abody")
    return abody


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    with FakeClock() as fake:
        yield fake


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """The port of a redis-server started for this test session (127.0.0.1, no persistence).

    Skips when none can be started, unless ``BUTTRESS_REQUIRE_REDIS=1`` (then it fails).
    """
    import os

    from redis_server import RedisUnavailable, start

    try:
        server = start()
    except RedisUnavailable as exc:
        if os.environ.get("BUTTRESS_REQUIRE_REDIS") == "1":
            pytest.fail(f"BUTTRESS_REQUIRE_REDIS=1 but no Redis server: {exc}")
        pytest.skip(f"no Redis server: {exc}")
    try:
        yield server.port
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL cluster started for this test session (``postgres_server.PostgresServer``).

    Tests may stop and start it; each must leave it running. Skips when none can be started,
    unless ``BUTTRESS_REQUIRE_POSTGRES=1`` (then it fails).
    """
    import os

    from postgres_server import PostgresUnavailable, start

    try:
        server = start()
    except PostgresUnavailable as exc:
        if os.environ.get("BUTTRESS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"BUTTRESS_REQUIRE_POSTGRES=1 but no PostgreSQL server: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.destroy()
