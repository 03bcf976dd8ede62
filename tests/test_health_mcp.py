"""The MCP server monitor against a real MCP server built with the SDK (tests/mcp_server.py).

The server runs over stdio (started by each check) and over streamable HTTP on 127.0.0.1 (started
by the test, then killed, restarted, stopped with SIGSTOP). Failure cases run the check under
``asyncio.wait_for`` as the resource manager does and assert only that it ends within its
timeout plus a small slack. Every process a test starts is stopped; after a check was cut short,
``await check.aclose()`` and no server process of this test (alive or zombie) remains.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("mcp", reason="the MCP SDK is the mcp extra: pip install 'buttress[mcp]'")

from buttress.health.mcp import CONFIG_ENV, McpCheck, mcp_check
from buttress.health.types import Reading
from mcp_server import SCRIPT, HttpServer, Notifications, free_port

T = TypeVar("T")

# Start-up of a Python MCP server (interpreter and SDK import) takes seconds on a busy machine.
STARTUP = 60.0
# What a failing check may take beyond its timeout: scheduling on a loaded machine, nothing more.
SLACK = 2.0
SECRET = "s3cr3t-T0KEN-value"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="bmcp-") as name:
        yield Path(name)


@pytest.fixture
def no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def stdio(env: dict[str, str] | None = None, *, timeout: float = STARTUP) -> McpCheck:
    return mcp_check(
        "test", command=sys.executable, args=[SCRIPT, "stdio"], env=env, timeout=timeout
    )


async def within(awaitable: Awaitable[T], limit: float) -> T:
    """``asyncio.wait_for(awaitable, limit)``, asserting it ended within ``limit`` + SLACK."""
    started = time.monotonic()
    try:
        return await asyncio.wait_for(awaitable, limit + SLACK)
    finally:
        assert time.monotonic() - started <= limit + SLACK


async def fails(check: McpCheck, limit: float) -> BaseException:
    """What the check raised, run as the manager runs it (cancelled past ``limit``)."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the caller asserts the type
        await within(check(), limit)
    return caught.value


def leftover_servers() -> list[str]:
    """Children of this process that are stdio test servers still running, or zombies."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) != os.getpid():
            continue
        if state == "Z" or (SCRIPT.encode() in cmdline and b"stdio" in cmdline):
            found.append(f"pid {entry} state {state}")
    return found


def alive_or_zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def healthy(reading: Reading, transport: str) -> None:
    assert reading.status is None
    assert reading.usage is None
    assert reading.detail["transport"] == transport
    assert reading.detail["server_name"] == "buttress-test"
    assert reading.detail["server_version"] == "1.2.3"
    assert reading.detail["protocol_version"] == "2025-11-25"
    assert reading.detail["liveness"] == "ping"
    assert "tools" in reading.detail["capabilities"]  # type: ignore[operator]
    assert reading.message == "buttress-test 1.2.3 answered ping (protocol 2025-11-25)"


def write_config(path: Path, servers: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


# --- stdio ----------------------------------------------------------------------------------------


def test_stdio_server_answers_ping(short_dir: Path) -> None:
    async def main() -> None:
        async with Notifications(short_dir) as notes:
            check = stdio({"MCP_TEST_NOTIFY": notes.path, "API_TOKEN": SECRET})
            reading = await within(check(), STARTUP)
            await notes.next("started")  # the env reached the server
            healthy(reading, "stdio")
            assert SECRET not in repr(reading)
            await check.aclose()
            assert leftover_servers() == []

    asyncio.run(main())


def test_a_server_named_alone_is_found_in_mcp_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_config_env: None
) -> None:
    write_config(
        tmp_path / "mcp.json",
        {"other": {"url": "http://127.0.0.1:1/mcp"}, "local": {
            "command": sys.executable, "args": [SCRIPT, "stdio"], "env": {"API_TOKEN": SECRET}}},
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    check = mcp_check("local")
    assert check.target == f"stdio: {sys.executable} {SCRIPT} stdio"
    healthy(asyncio.run(within(check(), STARTUP)), "stdio")


def test_a_loop_shutting_down_while_the_server_hangs_up_still_reaps_it(short_dir: Path) -> None:
    async def main() -> None:
        async with Notifications(short_dir) as notes:
            # The run returns at the answer; this server then takes its time to exit on EOF.
            check = stdio({"MCP_TEST_NOTIFY": notes.path, "MCP_TEST_LINGER": "1"})
            healthy(await within(check(), STARTUP), "stdio")
            pid = await notes.next("started")
            # What asyncio.run does when it ends: cancel every other task and wait for them.
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await within(asyncio.gather(*others, return_exceptions=True), STARTUP)
            assert not alive_or_zombie(pid)

    asyncio.run(main())


def test_a_server_that_exits_inside_the_call_fails_at_once() -> None:
    async def main() -> None:
        check = stdio({"MCP_TEST_ON_PING": "exit"})
        error = await fails(check, STARTUP)
        assert isinstance(error, ConnectionError)
        assert str(error) == (
            "MCP server 'test': ping failed: the connection closed; the server exited with code 3"
        )
        await check.aclose()
        assert leftover_servers() == []

    asyncio.run(main())


def test_a_killed_stdio_server_fails_the_call_it_was_in_and_the_next_run_restarts_it(
    short_dir: Path,
) -> None:
    fault = short_dir / "fault"
    fault.touch()

    async def main() -> None:
        async with Notifications(short_dir) as notes:
            check = stdio(
                {"MCP_TEST_ON_PING": "hang", "MCP_TEST_FAULT_FILE": str(fault),
                 "MCP_TEST_NOTIFY": notes.path}
            )  # fmt: skip
            running = asyncio.ensure_future(within(check(), STARTUP))
            os.kill(await notes.next("ping"), signal.SIGKILL)
            with pytest.raises(ConnectionError, match="ping failed: the connection closed") as e:
                await running
            assert "killed by SIGKILL" in str(e.value)
            fault.unlink()
            healthy(await within(check(), STARTUP), "stdio")
            await check.aclose()
            assert leftover_servers() == []

    asyncio.run(main())


def test_a_hung_stdio_server_times_out_and_is_killed() -> None:
    async def main() -> None:
        check = stdio({"MCP_TEST_ON_PING": "hang"}, timeout=1.0)
        error = await fails(check, 1.0)
        assert isinstance(error, TimeoutError)
        assert str(error).startswith("MCP server 'test': no answer to ")
        assert str(error).endswith(" within 1s")
        await check.aclose()
        assert leftover_servers() == []

    asyncio.run(main())


def test_the_managers_cancellation_kills_the_server_without_being_awaited(
    short_dir: Path,
) -> None:
    async def main() -> None:
        async with Notifications(short_dir) as notes:
            check = stdio({"MCP_TEST_ON_PING": "hang", "MCP_TEST_NOTIFY": notes.path})
            running = asyncio.ensure_future(check())
            pid = await notes.next("ping")
            running.cancel()  # as the manager does past its timeout; it never awaits the check
            await check.aclose()
            assert not alive_or_zombie(pid)
            assert leftover_servers() == []
            assert running.cancelled()

    asyncio.run(main())


def test_wait_for_around_a_hung_check_ends_on_time() -> None:
    async def main() -> None:
        check = stdio({"MCP_TEST_ON_PING": "hang"})  # its own deadline is far away
        with pytest.raises(TimeoutError):
            await within(asyncio.wait_for(check(), 1.0), 1.0)
        await check.aclose()
        assert leftover_servers() == []

    asyncio.run(main())


def test_a_server_that_fails_to_start_is_quoted_without_its_secrets() -> None:
    check = stdio({"MCP_TEST_FAIL_START": "1", "API_TOKEN": SECRET})
    with pytest.raises(ConnectionError) as caught:
        asyncio.run(within(check(), STARTUP))
    assert str(caught.value) == (
        "MCP server 'test': initialize failed: the connection closed; the server exited with "
        "code 1; stderr: startup failed: token *** refused"
    )


def test_a_command_that_does_not_exist_fails_the_check() -> None:
    check = mcp_check("gone", command="/nonexistent/mcp-server")
    with pytest.raises(ConnectionError, match=r"'gone': start failed: FileNotFoundError"):
        asyncio.run(within(check(), STARTUP))


# --- streamable HTTP ------------------------------------------------------------------------------


def test_http_server_killed_and_restarted() -> None:
    async def main() -> None:
        with HttpServer() as server:
            check = mcp_check("web", url=server.url, timeout=STARTUP)
            healthy(await within(check(), STARTUP), "streamable-http")
            server.kill()
            error = await fails(check, STARTUP)
            assert isinstance(error, ConnectionError)
            assert str(error) == (
                "MCP server 'web': initialize failed: ConnectError: All connection attempts "
                "failed (Connection refused)"
            )
            server.start()
            healthy(await within(check(), STARTUP), "streamable-http")
            await check.aclose()

    asyncio.run(main())


def test_a_stopped_http_server_times_out_and_answers_again_when_continued() -> None:
    async def main() -> None:
        with HttpServer() as server:
            check = mcp_check("web", url=server.url, timeout=STARTUP)
            healthy(await within(check(), STARTUP), "streamable-http")
            server.pause()
            try:
                quick = mcp_check("web", url=server.url, timeout=1.0)
                error = await fails(quick, 1.0)
                assert isinstance(error, TimeoutError)
                assert str(error) == "MCP server 'web': no answer to initialize within 1s"
                with pytest.raises(TimeoutError):  # the manager's own timeout
                    await within(asyncio.wait_for(check(), 1.0), 1.0)
            finally:
                server.resume()
            healthy(await within(check(), STARTUP), "streamable-http")
            await quick.aclose()
            await check.aclose()

    asyncio.run(main())


def test_a_server_of_the_2026_protocol_only_is_probed_with_server_discover() -> None:
    async def main() -> None:
        with HttpServer({"MCP_TEST_MODERN_ONLY": "1"}) as server:
            reading = await within(mcp_check(url=server.url, timeout=STARTUP)(), STARTUP)
        assert reading.detail["protocol_version"] == "2026-07-28"
        assert reading.detail["liveness"] == "server/discover"
        assert reading.message == (
            "buttress-test 1.2.3 answered server/discover (protocol 2026-07-28)"
        )

    asyncio.run(main())


def test_http_headers_and_url_passwords_stay_out_of_target_and_errors() -> None:
    url = f"http://app:{SECRET}@127.0.0.1:{free_port()}/mcp?api_key={SECRET}"
    check = mcp_check(url=url, headers={"Authorization": f"Bearer {SECRET}"})
    assert SECRET not in check.target
    assert SECRET not in repr(check)
    with pytest.raises(ConnectionError) as caught:
        asyncio.run(within(check(), STARTUP))
    assert SECRET not in str(caught.value)
    assert str(caught.value).startswith("MCP server http://app:***@127.0.0.1:")


# --- configuration and bad input ------------------------------------------------------------------


def test_secret_arguments_and_env_values_are_hidden_in_target() -> None:
    check = mcp_check(
        "supabase",
        command="npx",
        args=["-y", "@supabase/mcp-server-supabase", "--access-token", SECRET, f"API_KEY={SECRET}"],
        env={"SUPABASE_ACCESS_TOKEN": SECRET},
    )
    assert check.target == (
        "stdio: npx -y @supabase/mcp-server-supabase --access-token *** API_KEY=***"
    )
    assert SECRET not in repr(check)


def test_mcp_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "servers.json", {"web": {"url": "http://127.0.0.1:9/mcp"}})
    monkeypatch.setenv(CONFIG_ENV, str(config))
    assert mcp_check("web").target == "http://127.0.0.1:9/mcp"
    other = write_config(tmp_path / "other.json", {"web": {"url": "http://127.0.0.1:8/mcp"}})
    assert mcp_check("web", config=other).target == "http://127.0.0.1:8/mcp"


def test_a_missing_configuration_file_is_an_error_naming_file_server_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_config_env: None
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="MCP_CONFIG") as caught:
        mcp_check("supabase")
    assert str(caught.value) == (
        f"MCP server 'supabase': no MCP configuration file {tmp_path / 'mcp.json'} (the "
        "default ./mcp.json, as MCP_CONFIG is not set); set MCP_CONFIG to the file that lists "
        "it, or give command= or url="
    )
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(ValueError, match=r"absent\.json \(from MCP_CONFIG\)"):
        mcp_check("supabase")


def test_a_server_missing_from_the_file_is_an_error_listing_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "mcp.json", {"github": {"command": "gh-mcp"}, "db": {
        "url": "http://127.0.0.1:1/mcp"}})  # fmt: skip
    monkeypatch.setenv(CONFIG_ENV, str(config))
    with pytest.raises(ValueError, match="is not in the MCP configuration") as caught:
        mcp_check("supabase")
    assert str(caught.value) == (
        f"MCP server 'supabase' is not in the MCP configuration {config} (from MCP_CONFIG); "
        "the servers it lists: 'github', 'db'"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"is not valid JSON: Expecting property name .* at line 1 column 2"),
        ("[1, 2]", r'has no "mcpServers" object'),
        ('{"mcpServers": []}', r'has no "mcpServers" object'),
        ('{"mcpServers": {"s": "npx"}}', r"MCP server 's' in .* must be an object, got str"),
        ('{"mcpServers": {"s": {"args": []}}}', r'has neither "command" \(stdio\) nor "url"'),
        ('{"mcpServers": {"s": {"command": "x", "url": "http://h/"}}}', r'both "command" and'),
        ('{"mcpServers": {"s": {"type": "sse", "url": "http://h/"}}}', r"uses the SSE transport"),
        ('{"mcpServers": {"s": {"type": "ws", "url": "http://h/"}}}', r"unknown \"type\" 'ws'"),
        # some clients' files name the transport "transport": read as "type" is
        (
            '{"mcpServers": {"s": {"transport": "sse", "url": "http://h/"}}}',
            r'uses the SSE transport \("transport": "sse"\)',
        ),
        ('{"mcpServers": {"s": {"transport": "ws", "url": "h"}}}', r"unknown \"transport\" 'ws'"),
        (
            '{"mcpServers": {"s": {"transport": "stdio", "url": "http://h/"}}}',
            r'says "transport": "stdio" but gives "url"',
        ),
        (
            '{"mcpServers": {"s": {"type": "http", "transport": "sse", "url": "http://h/"}}}',
            r'says "type": \'http\' and "transport": \'sse\'; give one',
        ),
        (
            '{"mcpServers": {"s": {"type": ["http"], "url": "http://h/"}}}',
            r'has a "type" that is list, not a string; expected "stdio" or "http"',
        ),
        ('{"mcpServers": ' * 100_000, r"is JSON nested too deeply"),
        ('{"mcpServers": {"s": {"type": "http", "command": "x"}}}', r'gives "command", not "url"'),
        ('{"mcpServers": {"s": {"command": "x", "args": "a b"}}}', r'"args" of .* list of str'),
        ('{"mcpServers": {"s": {"command": "x", "args": [1]}}}', r"\[0\] must be a string, got"),
        ('{"mcpServers": {"s": {"command": "x", "env": {"K": 5}}}}', r"\['K'\] must be a string"),
        ('{"mcpServers": {"s": {"command": ""}}}', r'"command" of .* must be a non-empty string'),
        ('{"mcpServers": {"s": {"url": "ftp://h/x"}}}', r'"url" of .* is not a usable URL'),
        ('{"mcpServers": {"s": {"url": "http://h:99999/"}}}', r"is not a usable URL \(Port"),
    ],
)
def test_a_malformed_configuration_is_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, message: str
) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(content)
    monkeypatch.setenv(CONFIG_ENV, str(config))
    with pytest.raises((ValueError, TypeError), match=message) as caught:
        mcp_check("s")
    assert f"{config} (from MCP_CONFIG)" in str(caught.value)


def test_env_values_never_appear_in_configuration_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "mcp.json", {"s": {"command": "x", "env": {
        "TOKEN": SECRET, "N": 1}, "args": [SECRET, 2]}})  # fmt: skip
    monkeypatch.setenv(CONFIG_ENV, str(config))
    with pytest.raises(TypeError) as caught:
        mcp_check("s")
    assert SECRET not in str(caught.value)


def test_an_empty_mcp_config_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, " ")
    with pytest.raises(ValueError, match="MCP_CONFIG is set but empty"):
        mcp_check("s")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, r"needs a server name .*MCP_CONFIG.*, command= .* or url="),
        ({"name": ""}, TypeError, r"name must be a non-empty string"),
        ({"command": "x", "url": "http://h/"}, ValueError, r"command= \(stdio\) or url="),
        ({"name": "s", "args": ["a"]}, ValueError, r"go with command= or url="),
        ({"command": "x", "config": "mcp.json"}, ValueError, r"config= is read only"),
        ({"url": "http://h/", "args": ["a"]}, ValueError, r"args= and env= go with command="),
        ({"command": "x", "headers": {"A": "b"}}, ValueError, r"headers= goes with url="),
        ({"command": "x", "args": "a b"}, TypeError, r"args must be a list of strings"),
        ({"command": "x", "env": {"K": 1}}, TypeError, r"env\['K'\] must be a string, got int"),
        ({"url": "127.0.0.1:8000/mcp"}, ValueError, r"url is not a usable URL"),
        ({"command": "x", "timeout": 0}, ValueError, r"timeout must be > 0"),
        ({"command": "x", "timeout": True}, TypeError, r"timeout must be seconds"),
    ],
)
def test_bad_arguments_are_errors_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        mcp_check(**kwargs)


def test_a_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx2", None)
    with pytest.raises(ImportError, match=r"pip install 'buttress\[mcp\]'"):
        mcp_check("s", command="x")


def test_the_transport_may_be_named_transport(tmp_path: Path) -> None:
    from buttress.health.mcp import _from_config

    config = tmp_path / "mcp.json"
    config.write_text(
        '{"mcpServers": {"h": {"transport": "streamable-http", "url": "http://127.0.0.1:9/mcp"},'
        ' "s": {"transport": "stdio", "command": "server"},'
        ' "both": {"type": "http", "transport": "http", "url": "http://127.0.0.1:9/mcp"}}}'
    )
    assert _from_config("h", config).url == "http://127.0.0.1:9/mcp"
    assert _from_config("s", config).command == "server"
    assert _from_config("both", config).url == "http://127.0.0.1:9/mcp"
