"""Database check against a real PostgreSQL (a throwaway cluster, ``tests/postgres_server.py``)
through every kind of target, stopped and started during check sequences; and SQLite files.

The PostgreSQL tests skip when no server can be started, unless ``BUTTRESS_REQUIRE_POSTGRES=1``.
Tests that stop the shared server start it again before they end, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buttress.health import database
from buttress.health.database import database_check
from buttress.health.types import Reading
from postgres_server import PASSWORD, PostgresServer

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")
asyncpg = pytest.importorskip("asyncpg")
sqlalchemy = pytest.importorskip("sqlalchemy")
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402


def run(check) -> Reading:
    return asyncio.run(check())


@contextlib.contextmanager
def stopped(server: PostgresServer) -> Iterator[None]:
    """The server stopped (``pg_ctl stop -m fast``) for the block, started again after it."""
    server.stop()
    try:
        yield
    finally:
        server.start()


def fails_while_stopped_then_passes(
    server: PostgresServer, check: Callable[[], Reading], *, error: type[BaseException] = Exception
) -> BaseException:
    """Run ``check``: it passes, fails with the server stopped, passes once it is back."""
    check()
    with stopped(server), pytest.raises(error) as caught:
        check()
    check()
    return caught.value


def passes_within(attempts: int, check: Callable[[], Reading]) -> Reading:
    """``check``'s first passing reading within ``attempts`` checks (each bounded by its timeout).

    A psycopg_pool reconnects its connections in the background with a growing backoff (1 s, 2 s,
    4 s...), so after the server is back the application waits as long as the pool does; so does
    the check, which is the truth about the pool.
    """
    errors: list[BaseException] = []
    for _ in range(attempts):
        try:
            return check()
        except psycopg_pool.PoolTimeout as exc:
            errors.append(exc)
    raise AssertionError(f"no passing check in {attempts} attempts: {errors[-1]!r}")


def no_password(*texts: object) -> None:
    for text in texts:
        assert PASSWORD not in str(text), f"the password shows in {text!r}"


# -- DSN -------------------------------------------------------------------------------------------


def test_dsn_through_psycopg(postgres: PostgresServer) -> None:
    check = database_check(postgres.dsn)
    reading = run(check)
    assert reading.usage is None
    assert isinstance(reading.detail["server_version"], int)
    assert reading.detail["server_version"] >= 150000
    assert check.target == f"postgresql://postgres:***@127.0.0.1:{postgres.port}/postgres"
    assert check.kind == "postgresql"


def test_dsn_through_asyncpg_when_psycopg_is_missing(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "_importable", lambda module: module != "psycopg")
    reading = run(database_check(postgres.dsn))
    assert str(reading.detail["server_version"]).startswith("15.")


def test_key_value_dsn(postgres: PostgresServer) -> None:
    dsn = (
        f"host=127.0.0.1 port={postgres.port} dbname=postgres user=postgres "
        f"password={PASSWORD} connect_timeout=3"
    )
    check = database_check(dsn)
    assert run(check).detail["server_version"]
    no_password(check.target, repr(check))
    assert "password=***" in check.target


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_dsn_check_fails_while_stopped_and_passes_after(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    if driver == "asyncpg":
        monkeypatch.setattr(database, "_importable", lambda module: module != "psycopg")
    check = database_check(postgres.dsn, connect_timeout=2)
    error = fails_while_stopped_then_passes(postgres, lambda: run(check))
    assert isinstance(error, OSError | psycopg.OperationalError)
    no_password(error, check.target)


def test_wrong_password_fails_without_showing_it(postgres: PostgresServer) -> None:
    dsn = postgres.dsn.replace(PASSWORD, "wrong-" + PASSWORD)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed") as caught:
        run(database_check(dsn))
    no_password(caught.value)


def test_sqlalchemy_url_spelling_is_accepted(postgres: PostgresServer) -> None:
    url = postgres.dsn.replace("postgresql://", "postgresql+psycopg://")
    assert run(database_check(url)).detail["server_version"]


# -- SQLAlchemy ------------------------------------------------------------------------------------


def test_sqlalchemy_engine_pool_figures(postgres: PostgresServer) -> None:
    url = postgres.dsn.replace("postgresql://", "postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url, pool_size=3, max_overflow=2)
    try:
        check = database_check(engine)
        held = [engine.connect(), engine.connect()]
        reading = run(check)
        assert reading.detail["pool"] == {
            "size": 5,
            "open": 2,
            "in_use": 2,
            "idle": 0,
            "waiting": None,
        }
        assert reading.usage == 40.0
        for conn in held:
            conn.close()
        after = run(check)  # the ping's own connection went back to the pool
        assert after.detail["pool"] == {
            "size": 5,
            "open": 3,
            "in_use": 0,
            "idle": 3,
            "waiting": None,
        }
        assert after.usage == 0.0
        assert (
            check.target == f"postgresql+psycopg://postgres:***@127.0.0.1:{postgres.port}/postgres"
        )
        assert check.kind == "sqlalchemy postgresql"
    finally:
        engine.dispose()


def test_sqlalchemy_engine_fails_while_stopped_then_passes(postgres: PostgresServer) -> None:
    url = postgres.dsn.replace("postgresql://", "postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url, pool_size=2)
    try:
        check = database_check(engine)
        error = fails_while_stopped_then_passes(postgres, lambda: run(check))
        assert isinstance(error, sqlalchemy.exc.OperationalError)
        no_password(error, check.target, repr(check))
    finally:
        engine.dispose()


def test_sqlalchemy_async_engine(postgres: PostgresServer) -> None:
    url = postgres.dsn.replace("postgresql://", "postgresql+asyncpg://")

    async def sequence() -> None:
        engine = create_async_engine(url, pool_size=2, max_overflow=0)
        try:
            check = database_check(engine)
            first = await check()
            assert first.detail["pool"]["size"] == 2
            assert first.usage == 0.0
            async with engine.connect() as held:
                await held.exec_driver_sql("SELECT 1")
                assert (await check()).usage == 50.0
            await asyncio.to_thread(postgres.stop)
            try:
                with pytest.raises(ConnectionRefusedError) as caught:
                    await check()
                no_password(caught.value)
            finally:
                await asyncio.to_thread(postgres.start)
            assert (await check()).usage == 0.0
        finally:
            await engine.dispose()

    asyncio.run(sequence())


def test_an_engine_without_a_pool_reports_no_pool_figures(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).close()
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", poolclass=sqlalchemy.pool.NullPool)
    try:
        check = database_check(engine)
        reading = run(check)
        assert reading.usage is None
        assert "pool" not in reading.detail
        assert check.kind == "sqlalchemy sqlite"
    finally:
        engine.dispose()


def test_an_abandoned_blocked_ping_makes_later_checks_fail_fast(postgres: PostgresServer) -> None:
    url = postgres.dsn.replace("postgresql://", "postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_timeout=20)
    try:
        check = database_check(engine)
        held = engine.connect()  # the pool's only connection

        async def blocked() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(check(), 0.2)  # the manager's timeout abandons it
            with pytest.raises(TimeoutError, match="still waiting for the database"):
                await check()
            held.close()  # the abandoned thread gets the connection and finishes

        asyncio.run(blocked())  # returns once the worker thread has ended
        assert run(check).usage == 0.0
    finally:
        engine.dispose()


# -- psycopg -----------------------------------------------------------------------------------


def test_psycopg_connection_ping_leaves_the_transaction_state_alone(
    postgres: PostgresServer,
) -> None:
    with psycopg.connect(postgres.dsn) as conn:
        check = database_check(conn)
        assert run(check).usage is None
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        run(check)  # inside the application's transaction: a savepoint
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        conn.rollback()
        assert check.target == f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"


def test_psycopg_async_connection(postgres: PostgresServer) -> None:
    async def sequence() -> None:
        conn = await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True)
        try:
            check = database_check(conn)
            assert (await check()).usage is None
            assert check.kind == "psycopg connection (async)"
        finally:
            await conn.close()

    asyncio.run(sequence())


def test_psycopg_pool_figures_and_restart(postgres: PostgresServer) -> None:
    with psycopg_pool.ConnectionPool(postgres.dsn, min_size=2, max_size=4, name="app") as pool:
        pool.wait(timeout=10)
        check = database_check(pool, connect_timeout=1)
        with pool.connection() as held:
            held.execute("SELECT 1")
            reading = run(check)
        assert reading.detail["pool"] == {
            "size": 4,
            "open": 2,
            "in_use": 1,
            "idle": 1,
            "waiting": 0,
        }
        assert reading.usage == 25.0
        no_password(check.target)
        assert check.target.startswith("psycopg pool 'app': postgresql://postgres:***@")
        with stopped(postgres), pytest.raises(psycopg_pool.PoolTimeout) as caught:
            run(check)
        no_password(caught.value)
        passes_within(30, lambda: run(check))


def test_psycopg_async_pool(postgres: PostgresServer) -> None:
    async def sequence() -> None:
        pool = psycopg_pool.AsyncConnectionPool(postgres.dsn, min_size=1, max_size=2, open=False)
        await pool.open(wait=True, timeout=10)
        try:
            check = database_check(pool, connect_timeout=1)
            assert (await check()).usage == 0.0
            async with pool.connection():
                assert (await check()).usage == 50.0
            await asyncio.to_thread(postgres.stop)
            try:
                with pytest.raises(psycopg_pool.PoolTimeout):
                    await check()
            finally:
                await asyncio.to_thread(postgres.start)
            for _ in range(30):  # see passes_within
                with contextlib.suppress(psycopg_pool.PoolTimeout):
                    assert (await check()).detail["pool"]["size"] == 2
                    break
            else:
                raise AssertionError("the pool never served the check again")
        finally:
            await pool.close()

    asyncio.run(sequence())


# -- asyncpg -----------------------------------------------------------------------------------


def test_asyncpg_pool_figures_and_restart(postgres: PostgresServer) -> None:
    async def sequence() -> None:
        pool = await asyncpg.create_pool(postgres.dsn, min_size=2, max_size=4)
        try:
            check = database_check(pool, connect_timeout=2)
            async with pool.acquire() as held:
                await held.execute("SELECT 1")
                reading = await check()
            assert reading.detail["pool"] == {
                "size": 4, "open": 2, "in_use": 1, "idle": 1, "waiting": None,
            }  # fmt: skip
            assert reading.usage == 25.0
            assert (
                check.target
                == f"asyncpg pool postgresql://postgres:***@127.0.0.1:{postgres.port}/postgres"
            )
            await asyncio.to_thread(postgres.stop)
            try:
                with pytest.raises(ConnectionRefusedError) as caught:
                    await check()
                no_password(caught.value)
            finally:
                await asyncio.to_thread(postgres.start)
            assert (await check()).usage == 0.0
        finally:
            await pool.close()

    asyncio.run(sequence())


def test_asyncpg_connection(postgres: PostgresServer) -> None:
    async def sequence() -> None:
        conn = await asyncpg.connect(postgres.dsn)
        try:
            check = database_check(conn)
            assert (await check()).usage is None
            no_password(check.target)
        finally:
            await conn.close()

    asyncio.run(sequence())


# -- secrets -----------------------------------------------------------------------------------


def test_a_planted_password_never_shows(postgres: PostgresServer) -> None:
    check = database_check(postgres.dsn, connect_timeout=2)
    seen: list[object] = [check.target, repr(check), run(check)]
    with stopped(postgres), pytest.raises(psycopg.OperationalError) as caught:
        run(check)
    seen += [caught.value, repr(caught.value)]
    no_password(*seen)


# -- SQLite ------------------------------------------------------------------------------------


def test_sqlite_path_url_and_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).close()
    for target in (str(path), path, f"sqlite:///{path}"):
        check = database_check(target)
        reading = run(check)
        assert reading.detail["sqlite_version"] == sqlite3.sqlite_version
        assert check.target == f"sqlite:///{path}"
        assert check.kind == "sqlite"


def test_sqlite_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sqlite3.connect("rel.db").close()
    assert database_check("sqlite:///rel.db").target == f"sqlite:///{tmp_path / 'rel.db'}"


def test_a_missing_sqlite_file_fails_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    check = database_check(path)
    with pytest.raises(FileNotFoundError, match=f"no SQLite database at {path}"):
        run(check)
    assert not path.exists()


def test_a_file_that_is_not_a_database_fails(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("this is not a database " * 100)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        run(database_check(path))


def test_a_bad_query_fails_at_the_check(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    sqlite3.connect(path).close()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        run(database_check(path, query="SELECT * FROM missing_table"))


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            f"postgresql://app:{PASSWORD}@db:notaport/app",
            r"cannot parse the database DSN 'postgresql://app:\*\*\*@db:notaport/app'",
        ),
        ("host=db port", r"cannot parse the database DSN 'host=db port'"),
        (
            f"host=db port=99999 password={PASSWORD}",
            r"DSN 'host=db port=99999 password=\*\*\*': port must be 1-65535, got '99999'",
        ),
        (
            f"mysql://root:{PASSWORD}@db/app",
            r"database URL scheme 'mysql' is not supported .*'mysql://root:\*\*\*@db/app'",
        ),
        ("sqlite://", "a SQLite URL is sqlite:///path"),
        ("sqlite:///:memory:", "an in-memory SQLite database"),
        (":memory:", "an in-memory SQLite database"),
        ("", "empty string"),
    ],
)
def test_bad_targets_are_refused_at_construction(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        database_check(target)
    no_password(caught.value)


@pytest.mark.parametrize("char", ["@", "/", "?", "#"])
def test_a_password_with_an_unencoded_url_character_is_refused_whole(char: str) -> None:
    # libpq would cut such a password in two and take the rest for the host, port or database
    half = len(PASSWORD) // 2
    dsn = f"postgresql://app:{PASSWORD[:half]}{char}{PASSWORD[half:]}@db:5432/app"
    with pytest.raises(ValueError, match="its password holds an unencoded") as caught:
        database_check(dsn)
    assert str(caught.value) == (
        f"cannot parse the database DSN 'postgresql://app:***@db:5432/app': its password holds "
        f"an unencoded {char!r}; percent-encode it (@ is %40, / is %2F, ? is %3F, # is %23)"
    )
    assert PASSWORD[:half] not in str(caught.value)
    assert PASSWORD[half:] not in str(caught.value)


@pytest.mark.parametrize(
    ("dsn", "target"),
    [
        ("postgresql://app:p%40ss@db/app", "postgresql://app:***@db/app"),
        ("postgresql://db:5432/app?user=app@server", "postgresql://db:5432/app?user=app@server"),
        ("postgresql://[::1]/app?user=app@server", "postgresql://[::1]/app?user=app@server"),
        ("postgresql://app:pw@db1:5432,db2:5433/app", "postgresql://app:***@db1:5432,db2:5433/app"),
    ],
)
def test_an_at_sign_elsewhere_than_the_password_is_accepted(dsn: str, target: str) -> None:
    assert database_check(dsn).target == target


def test_unknown_target_type_names_it() -> None:
    with pytest.raises(TypeError, match=r"got builtins\.int"):
        database_check(42)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"query": ""}, ValueError, "query must be a statement"),
        ({"query": 1}, TypeError, "query must be a string of SQL"),
        ({"connect_timeout": 0}, ValueError, "connect_timeout must be > 0"),
        ({"connect_timeout": "5"}, TypeError, "connect_timeout must be seconds"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], error, message) -> None:
    with pytest.raises(error, match=message):
        database_check(tmp_path / "x.db", **kwargs)


def test_a_dsn_without_a_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "_importable", lambda module: False)
    with pytest.raises(ImportError, match=r"pip install 'buttress\[postgres\]'"):
        database_check("postgresql://app@db/app")
