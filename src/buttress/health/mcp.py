"""MCP servers: connect, shake hands and make one liveness call, through the MCP Python SDK 2.x.

Theory of operation
-------------------
``mcp_check(...)`` describes one server and returns a check. Every run of the check opens its own
connection, performs the protocol handshake, makes one liveness call and closes again; nothing
stays open between runs. The run returns as soon as the server answered; hanging up goes on in
the background (``await check.aclose()`` waits for it), outside the latency the manager measures.

- **stdio** (``command=``, ``args=``, ``env=``): the check starts the command as a child process
  in a session of its own (so it leads its own process group), with the SDK's safe inherited
  environment (``PATH``, ``HOME``...) plus ``env``, and speaks newline-delimited JSON-RPC over its
  stdin and stdout through the SDK's ``ClientSession``. Closing sends EOF on stdin, gives the
  server a second to exit, then kills its process group. A stdio server therefore starts once per
  run: its start-up time is part of the latency the manager measures, and every interval costs a
  process start (``detail["handshake_ms"]``, start-up included, and ``detail["liveness_ms"]``
  separate the two).
- **streamable HTTP** (``url=``, ``headers=``): the SDK's streamable HTTP transport over an HTTP
  client whose timeouts are the check's ``timeout``; closing ends the server's session
  (``DELETE``).

**The liveness call is ``ping``.** The SDK's own ``mcp.Client`` connects in ``mode="auto"``: it
probes ``server/discover`` of protocol revision 2026-07-28, which removed ``ping``, and falls back
to the ``initialize`` handshake. The check speaks what the SDK's ``mode="legacy"`` speaks instead:
``initialize`` at the newest handshake revision (2025-11-25), ``notifications/initialized``, then
``ping``, the request the protocol defines for liveness, which the server's framework answers
without running a tool. Servers of every handshake revision (2024-11-05 to 2025-11-25) answer it,
and SDK 2.x servers still accept the handshake. A server that speaks only 2026-07-28 refuses
``initialize`` with error -32022; the check then adopts that revision through ``server/discover``
and makes a second ``server/discover`` its liveness call, the lightest request that revision has
(stateless, no application data). ``detail["liveness"]`` names the call made.

**Hard deadline.** The SDK can wait for ever on a server that died or stopped in the middle of a
call, and parts of its teardown are shielded from cancellation (a courtesy
``notifications/cancelled`` may wait 5 s; the SDK's ``stdio_client`` gives a server 2 s after EOF
and 2 s after SIGTERM before it kills). So the connection runs in a task of its own, and the check
waits for it at most ``timeout`` seconds. When that passes, or when the check itself is cancelled
(the resource manager's timeout, which does not wait for the check), the check kills the stdio
server's process group at once (SIGKILL; the event loop's child watcher reaps it, so no zombie
stays) and cancels the connection task without waiting for it; the abandoned task finishes its
teardown in the background, bounded by the kill (stdio) or the HTTP timeouts plus the SDK's 5 s
(HTTP). ``await check.aclose()`` waits for that. The SDK's ``stdio_client`` keeps its process to
itself, so it could not be killed from outside; hence the small stdio transport here, which
carries the SDK's own message types to the SDK's session.

**Configuration.** ``mcp_check("supabase")`` with only a name reads, at construction, the
conventional MCP client configuration file: ``{"mcpServers": {"supabase": {"command": ...,
"args": [...], "env": {...}}}}`` or ``{"url": ..., "headers": {...}}`` (``"type"``, or
``"transport"`` as some clients name it, may say ``"stdio"`` or ``"http"``; SSE servers are
refused). The file is ``config=``, else the one
``MCP_CONFIG`` names, else ``./mcp.json``. Every problem (no file, not JSON, no such server, an
entry with neither ``command`` nor ``url``) is a ``ValueError`` (``TypeError`` for a value of the
wrong type) at construction naming the file,
where its path came from and the server.

**Secrets.** Values of ``env`` and ``headers``, and arguments that follow a secret-looking flag
(``--access-token X``) or carry one (``API_KEY=X``), never appear in ``target``, in errors or in
readings: every text the check builds has them replaced by ``***`` and then goes through
:func:`~buttress.health.types.redact` (URL passwords, ``token=`` values), the tail of a failed
server's stderr included.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from buttress._config import Seconds, seconds
from buttress.health.types import Reading, redact

if TYPE_CHECKING:
    from mcp.client._transport import TransportStreams
    from mcp.client.session import ClientSession

__all__ = ["CONFIG_ENV", "DEFAULT_TIMEOUT", "McpCheck", "mcp_check"]

#: The environment variable naming the MCP configuration file.
CONFIG_ENV = "MCP_CONFIG"
#: Seconds a run may take, start-up, handshake and liveness call together.
DEFAULT_TIMEOUT = 10.0

_DEFAULT_CONFIG = "mcp.json"
_INSTALL_HINT = "pip install 'buttress[mcp]'"
# A stdio server that got EOF on stdin gets this long to exit before its group is killed.
_EXIT_GRACE = 1.0
# A server whose stdout ended is probably exiting: wait this long to report its own exit code.
_EOF_GRACE = 0.5
_REAP_SECONDS = 2.0
# The SDK bounds its shielded courtesy-cancel write by 5 s; an abandoned run may take that long.
_SDK_SHIELD_SECONDS = 5.0
_LINE_LIMIT = 16 * 1024 * 1024
_STDERR_TAIL = 4096
_STDERR_QUOTE = 300
# Shorter values are not worth hiding and would garble every message (``"1"``, ``"on"``).
_MIN_SECRET = 4
_HTTP_TYPES = frozenset({"http", "streamable-http", "streamable_http", "streamableHttp"})
_SECRET_NAME = re.compile(
    r"(?i)token|passw(?:or)?d|pwd|secret|api[-_]?key|access[-_]?key|private[-_]?key|auth"
    r"|credential|bearer|cookie"
)
_ASSIGNMENT = re.compile(r"(?s)(-{0,2}[A-Za-z_][\w.-]*)=(.+)")


@dataclass(frozen=True, slots=True)
class _Server:
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def mcp_check(
    name: str | None = None,
    *,
    command: str | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    url: str | None = None,
    headers: Mapping[str, str] | None = None,
    config: str | os.PathLike[str] | None = None,
    timeout: Seconds = DEFAULT_TIMEOUT,
) -> McpCheck:
    """A check that an MCP server starts (stdio) or answers (HTTP), shakes hands and pings.

    Args:
        name: the server's name; alone, it is looked up in the MCP configuration file.
        command: the executable of a stdio server (found on ``PATH``), with ``args`` and ``env``
            (added to the SDK's safe inherited environment).
        url: the endpoint of a streamable HTTP server, with ``headers`` (e.g. Authorization).
        config: the MCP configuration file; default: ``MCP_CONFIG``, else ``./mcp.json``.
        timeout: seconds one run may take (start-up, handshake and liveness call).

    Raises:
        ValueError, TypeError: bad arguments or configuration, naming the file and the variable.
        ImportError: the MCP SDK is not installed (``pip install 'buttress[mcp]'``).
    """
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    limit = seconds("timeout", timeout, allow_zero=False)
    if command is None and url is None:
        if name is None:
            raise ValueError(
                "mcp_check needs a server name (looked up in the MCP configuration file: "
                f"{CONFIG_ENV}, else ./{_DEFAULT_CONFIG}), command= (stdio) or url= "
                "(streamable HTTP)"
            )
        if args or env is not None or headers is not None:
            raise ValueError(
                "args=, env= and headers= go with command= or url=; a server given by name "
                "alone takes them from the MCP configuration file"
            )
        server = _from_config(name, config)
    else:
        if config is not None:
            raise ValueError(
                "config= is read only for a server given by name alone, not with command= or url="
            )
        if command is not None and url is not None:
            raise ValueError("give command= (stdio) or url= (streamable HTTP), not both")
        if command is not None:
            if headers is not None:
                raise ValueError("headers= goes with url=, not with command=")
            server = _Server(
                command=_command(command, "command"),
                args=_strings(args, "args"),
                env=_string_map(env, "env"),
            )
        else:
            if args or env is not None:
                raise ValueError("args= and env= go with command=, not with url=")
            server = _Server(url=_url(url, "url"), headers=_string_map(headers, "headers"))
    _require_sdk()
    return McpCheck(server, name=name, timeout=limit)


@dataclass(eq=False, slots=True)
class _Attempt:
    """One run's connection, visible to the task that waits for it (to kill and to report)."""

    phase: str = "connect"
    process: asyncio.subprocess.Process | None = None
    stdout_ended: bool = False
    exit_code: int | None = None
    note: str | None = None
    stderr: bytearray = field(default_factory=bytearray)

    def kill(self) -> None:
        """SIGKILL the stdio server and everything in its process group; safe to repeat."""
        process = self.process
        if process is None:
            return
        with suppress(ProcessLookupError, PermissionError):
            if sys.platform == "win32":  # pragma: no cover - no process groups
                process.kill()
            else:
                # The server leads its own group (new session), so its children die with it.
                os.killpg(process.pid, signal.SIGKILL)

    def exit_note(self) -> str:
        parts: list[str] = []
        if self.note:
            parts.append(self.note)
        code = self.exit_code
        if code is not None:
            if code < 0:
                try:
                    how = signal.Signals(-code).name
                except ValueError:
                    how = f"signal {-code}"
                parts.append(f"the server was killed by {how}")
            else:
                parts.append(f"the server exited with code {code}")
        tail = self.stderr.decode("utf-8", "replace").strip()
        if tail:
            tail = " | ".join(line.strip() for line in tail.splitlines()[-3:] if line.strip())
            parts.append(f"stderr: {tail[-_STDERR_QUOTE:]}")
        return "".join(f"; {part}" for part in parts)


class McpCheck:
    """The check :func:`mcp_check` returns: an async callable with a redacted ``target``."""

    __slots__ = ("_label", "_running", "_secrets", "_server", "name", "target", "timeout")

    def __init__(self, server: _Server, *, name: str | None, timeout: float) -> None:
        self._server = server
        self.name = name
        self.timeout = timeout
        secrets = [*server.env.values(), *server.headers.values()]
        if server.command is not None:
            shown, hidden = _display_args(server.args)
            secrets += hidden
            self._secrets = _secret_pattern(secrets)
            self.target = self._scrub(" ".join(["stdio:", shlex.quote(server.command), *shown]))
        else:
            assert server.url is not None
            self._secrets = _secret_pattern(secrets)
            self.target = self._scrub(server.url)
        self._label = f"MCP server {name!r}" if name else f"MCP server {self.target}"
        self._running: set[asyncio.Task[Reading]] = set()

    def __repr__(self) -> str:
        return f"McpCheck({self.target!r}, name={self.name!r}, timeout={self.timeout:g})"

    async def __call__(self) -> Reading:
        loop = asyncio.get_running_loop()
        attempt = _Attempt()
        # The reading arrives when the server answered; hanging up (a stdio server may take a
        # second to exit) goes on in the task, outside the latency the manager measures.
        answered: asyncio.Future[Reading] = loop.create_future()
        task = loop.create_task(self._run(attempt, answered))
        self._running.add(task)
        task.add_done_callback(self._forget)
        try:
            await asyncio.wait(
                (answered, task), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            self._abandon(task, attempt)
            raise
        if answered.done():
            return answered.result()
        if task.done():
            return task.result()  # raises: the run failed before an answer
        self._abandon(task, attempt)
        raise TimeoutError(
            self._scrub(f"{self._label}: no answer to {attempt.phase} within {self.timeout:g}s")
        )

    async def aclose(self) -> None:
        """Wait until every connection this check opened is torn down (bounded).

        A run returns as soon as the server answered, and a run cut short returns at once; both
        finish hanging up in the background.
        """
        loop = asyncio.get_running_loop()
        pending = [task for task in self._running if task.get_loop() is loop]
        if pending:
            await asyncio.wait(pending, timeout=self.timeout + _SDK_SHIELD_SECONDS + _REAP_SECONDS)

    def _abandon(self, task: asyncio.Task[Reading], attempt: _Attempt) -> None:
        # Kill first: whatever the SDK does with the cancellation, the server is gone.
        attempt.kill()
        task.cancel()

    def _forget(self, task: asyncio.Task[Reading]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned run's failure is not worth a log line

    def _scrub(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub("***", text)
        return redact(text)

    def _transport(self, attempt: _Attempt) -> AbstractAsyncContextManager[TransportStreams]:
        server = self._server
        if server.url is not None:
            return _http_streams(server.url, server.headers, self.timeout)
        return _stdio_streams(server, attempt)

    async def _run(self, attempt: _Attempt, answered: asyncio.Future[Reading]) -> Reading:
        from mcp.client.session import ClientSession
        from mcp.shared.exceptions import MCPError
        from mcp_types import UNSUPPORTED_PROTOCOL_VERSION, Implementation

        reading: Reading | None = None
        started = time.perf_counter()
        try:
            async with (
                self._transport(attempt) as (read_stream, write_stream),
                ClientSession(
                    read_stream,
                    write_stream,
                    read_timeout_seconds=self.timeout,
                    client_info=Implementation(name="buttress", version=_version()),
                ) as session,
            ):
                attempt.phase = "initialize"
                try:
                    await session.initialize()
                    liveness = "ping"
                except MCPError as exc:
                    if exc.code != UNSUPPORTED_PROTOCOL_VERSION:
                        raise
                    attempt.phase = "server/discover"
                    await session.discover()
                    liveness = "server/discover"
                shaken = time.perf_counter()
                attempt.phase = liveness
                if liveness == "ping":
                    await session.send_ping()
                else:
                    await session.send_discover(session.protocol_version or "")
                done = time.perf_counter()
                reading = self._reading(session, liveness, shaken - started, done - shaken)
                if not answered.done():
                    answered.set_result(reading)
                attempt.phase = "close"
        except Exception as exc:
            if reading is not None:
                return reading  # it answered; trouble while hanging up is not its health
            # Not chained: the SDK's exceptions are not scrubbed (the failure names their type).
            raise self._failure(exc, attempt) from None
        assert reading is not None
        return reading

    def _reading(
        self, session: ClientSession, liveness: str, handshake: float, call: float
    ) -> Reading:
        detail: dict[str, object] = {
            "transport": "stdio" if self._server.command is not None else "streamable-http",
            "protocol_version": session.protocol_version,
            "liveness": liveness,
            "handshake_ms": round(handshake * 1000.0, 3),
            "liveness_ms": round(call * 1000.0, 3),
        }
        info = session.server_info
        who = "the server"
        if info is not None:
            detail["server_name"] = self._scrub(info.name)
            detail["server_version"] = self._scrub(info.version)
            who = f"{detail['server_name']} {detail['server_version']}".strip()
        capabilities = session.server_capabilities
        if capabilities is not None:
            detail["capabilities"] = sorted(capabilities.model_dump(exclude_none=True))
        return Reading(
            detail=detail,
            message=f"{who} answered {liveness} (protocol {session.protocol_version})",
        )

    def _failure(self, exc: Exception, attempt: _Attempt) -> Exception:
        import httpx2
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        leaf = _leaf(exc)
        where = f"{self._label}: {attempt.phase}"
        exited = attempt.exit_note()
        failure: Exception
        if isinstance(leaf, MCPError) and leaf.code == CONNECTION_CLOSED:
            failure = ConnectionError(f"{where} failed: the connection closed{exited}")
        elif isinstance(leaf, MCPError) and leaf.code == REQUEST_TIMEOUT:
            failure = TimeoutError(f"{where}: no answer within {self.timeout:g}s{exited}")
        elif isinstance(leaf, MCPError):
            failure = RuntimeError(f"{where} refused: error {leaf.code}: {leaf.message}{exited}")
        elif isinstance(leaf, TimeoutError | httpx2.TimeoutException):
            failure = TimeoutError(f"{where}: no answer within {self.timeout:g}s{exited}")
        else:
            failure = ConnectionError(f"{where} failed: {_describe(leaf)}{exited}")
        return type(failure)(self._scrub(str(failure)))


# --- transports -----------------------------------------------------------------------------------


@asynccontextmanager
async def _http_streams(
    url: str, headers: Mapping[str, str], limit: float
) -> AsyncIterator[TransportStreams]:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    # The SDK's default client waits 30 s to connect and 300 s to read; an abandoned run must
    # end within the check's own bound.
    async with (
        httpx2.AsyncClient(headers=dict(headers), timeout=httpx2.Timeout(limit)) as client,
        streamable_http_client(url, http_client=client) as streams,
    ):
        yield streams


@asynccontextmanager
async def _stdio_streams(server: _Server, attempt: _Attempt) -> AsyncIterator[TransportStreams]:
    import anyio
    from mcp.client.stdio import get_default_environment
    from mcp.shared.message import SessionMessage
    from mcp_types import jsonrpc_message_adapter

    assert server.command is not None
    attempt.phase = "start"
    process = await asyncio.create_subprocess_exec(
        server.command,
        *server.args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**get_default_environment(), **server.env},
        start_new_session=True,
        limit=_LINE_LIMIT,
    )
    attempt.process = process
    to_session, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_server, from_session = anyio.create_memory_object_stream[SessionMessage](0)

    async def pump_stdout() -> None:
        assert process.stdout is not None
        async with to_session:
            while True:
                try:
                    line = await process.stdout.readline()
                except ValueError:
                    attempt.note = f"the server wrote a line longer than {_LINE_LIMIT} bytes"
                    return
                if not line:
                    attempt.stdout_ended = True
                    return  # closing the stream tells the session the connection closed
                if not line.strip():
                    continue
                item: SessionMessage | Exception
                try:
                    item = SessionMessage(
                        jsonrpc_message_adapter.validate_json(line, by_name=False)
                    )
                except ValueError as exc:  # not JSON-RPC: the session hears of it
                    item = exc
                try:
                    await to_session.send(item)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return

    async def pump_stdin() -> None:
        assert process.stdin is not None
        async with from_session:
            async for message in from_session:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                try:
                    process.stdin.write(data.encode() + b"\n")
                    await process.stdin.drain()
                except OSError:
                    return  # the server is gone; its stdout ending tells the session

    async def pump_stderr() -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.read(4096):
            attempt.stderr += chunk
            del attempt.stderr[:-_STDERR_TAIL]

    pumps = [
        asyncio.create_task(pump_stdout()),
        asyncio.create_task(pump_stdin()),
        asyncio.create_task(pump_stderr()),
    ]
    failed = True
    try:
        yield from_server, to_server
        failed = False
    finally:
        try:
            if process.returncode is None and not failed:
                if process.stdin is not None:
                    process.stdin.close()  # EOF: the spec's polite way to stop a stdio server
                await _wait_exit(process, _EXIT_GRACE)
            elif process.returncode is None and attempt.stdout_ended:
                await _wait_exit(process, _EOF_GRACE)
        finally:
            attempt.exit_code = process.returncode
            attempt.kill()
            if process.stdin is not None:
                process.stdin.close()
            for stream in (to_session, from_server, to_server, from_session):
                stream.close()
            await _reap(process, pumps)


async def _reap(process: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]) -> None:
    """Wait (bounded) until the killed process is reaped and its pipes are closed."""
    try:
        # asyncio closes the subprocess transport once the process is reaped and every pipe hit
        # EOF; returning earlier leaves it to be closed by the garbage collector, possibly after
        # its event loop closed.
        await asyncio.wait(pumps, timeout=_REAP_SECONDS)
        await _wait_exit(process, _REAP_SECONDS)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _wait_exit(process: asyncio.subprocess.Process, limit: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), limit)


# --- configuration --------------------------------------------------------------------------------


def _config_path(config: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The configuration file and where its path came from (for messages)."""
    if config is not None:
        if not isinstance(config, str | os.PathLike):
            raise TypeError(f"config must be a path, got {config!r}")
        return Path(os.fspath(config)).expanduser(), "config="
    raw = os.environ.get(CONFIG_ENV)
    if raw is not None:
        if not raw.strip():
            raise ValueError(
                f"{CONFIG_ENV} is set but empty: set it to an MCP configuration file, or unset "
                f"it to read ./{_DEFAULT_CONFIG}"
            )
        return Path(raw).expanduser(), f"from {CONFIG_ENV}"
    return (
        Path.cwd() / _DEFAULT_CONFIG,
        f"the default ./{_DEFAULT_CONFIG}, as {CONFIG_ENV} is not set",
    )


def _from_config(name: str, config: str | os.PathLike[str] | None) -> _Server:
    path, source = _config_path(config)
    where = f"{path} ({source})"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(
            f"MCP server {name!r}: no MCP configuration file {where}; set {CONFIG_ENV} to the "
            "file that lists it, or give command= or url="
        ) from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"MCP configuration {where} is not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise ValueError(
            f"MCP server {name!r}: cannot read the MCP configuration {where}: {exc.strerror or exc}"
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        # The message carries no text of the file, so no secret of it.
        raise ValueError(
            f"MCP configuration {where} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except RecursionError:
        raise ValueError(f"MCP configuration {where} is JSON nested too deeply") from None
    servers = document.get("mcpServers") if isinstance(document, dict) else None
    if not isinstance(servers, dict):
        raise ValueError(
            f'MCP configuration {where} has no "mcpServers" object; expected '
            '{"mcpServers": {"<name>": {"command": ..., "args": [...], "env": {...}} '
            'or {"url": ...}}}'
        )
    if name not in servers:
        listed = ", ".join(repr(key) for key in servers) or "none"
        raise ValueError(
            f"MCP server {name!r} is not in the MCP configuration {where}; the servers it "
            f"lists: {listed}"
        )
    entry = servers[name]
    what = f"MCP server {name!r} in {where}"
    if not isinstance(entry, dict):
        raise ValueError(f"{what} must be an object, got {type(entry).__name__}")
    # the transport is "type" in most clients' files, "transport" in some: either is read
    said = [key for key in ("type", "transport") if entry.get(key) is not None]
    if len(said) == 2 and entry["type"] != entry["transport"]:
        raise ValueError(
            f'{what} says "type": {entry["type"]!r} and "transport": {entry["transport"]!r}; '
            "give one"
        )
    field = said[0] if said else "type"
    kind = entry.get(field)
    if kind is not None and not isinstance(kind, str):
        raise TypeError(
            f'{what} has a "{field}" that is {type(kind).__name__}, not a string; expected '
            '"stdio" or "http"'
        )
    if kind is not None:
        if kind == "sse":
            raise ValueError(
                f'{what} uses the SSE transport ("{field}": "sse"); this monitor speaks stdio '
                "and streamable HTTP"
            )
        if kind != "stdio" and kind not in _HTTP_TYPES:
            raise ValueError(
                f'{what} has an unknown "{field}" {kind!r}; expected "stdio" or "http"'
            )
    command, url = entry.get("command"), entry.get("url")
    if command is None and url is None:
        raise ValueError(f'{what} has neither "command" (stdio) nor "url" (streamable HTTP)')
    if command is not None and url is not None:
        raise ValueError(f'{what} has both "command" and "url"; give one')
    if command is not None:
        if kind in _HTTP_TYPES:
            raise ValueError(f'{what} says "{field}": {kind!r} but gives "command", not "url"')
        if "headers" in entry:
            raise ValueError(f'{what}: "headers" goes with "url", not with "command"')
        return _Server(
            command=_command(command, f'"command" of {what}'),
            args=_strings(entry.get("args", ()), f'"args" of {what}'),
            env=_string_map(entry.get("env"), f'"env" of {what}'),
        )
    if kind == "stdio":
        raise ValueError(f'{what} says "{field}": "stdio" but gives "url", not "command"')
    return _Server(
        url=_url(url, f'"url" of {what}'),
        headers=_string_map(entry.get("headers"), f'"headers" of {what}'),
    )


def _command(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{what} must be a non-empty string, got {redact(repr(value))}")
    return value


def _strings(value: object, what: str) -> tuple[str, ...]:
    # Items are named by position and type only: an argument may be a secret.
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a list of strings, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{index}] must be a string, got {type(item).__name__}")
    return tuple(value)


def _string_map(value: object, what: str) -> dict[str, str]:
    # Values are never quoted: they are where secrets live.
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must map names to strings, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{what} has a key that is not a non-empty string: {key!r}")
        if not isinstance(item, str):
            raise TypeError(f"{what}[{key!r}] must be a string, got {type(item).__name__}")
    return dict(value)


def _url(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string URL, got {type(value).__name__}")
    problem = None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing it is the validation
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "expected an http:// or https:// URL with a host"
    if problem is not None:
        raise ValueError(f"{what} is not a usable URL ({problem}): {redact(value)!r}")
    return value


def _display_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The arguments as shown (shell-quoted, secrets as ``***``) and the secrets hidden."""
    shown: list[str] = []
    hidden: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            hide_next = False
            shown.append("***")
            hidden.append(arg)
            continue
        assignment = _ASSIGNMENT.fullmatch(arg)
        if assignment is not None and _SECRET_NAME.search(assignment[1]):
            shown.append(f"{shlex.quote(assignment[1])}=***")
            hidden.append(assignment[2])
            continue
        hide_next = arg.startswith("-") and bool(_SECRET_NAME.search(arg))
        shown.append(shlex.quote(arg))
    return shown, hidden


def _secret_pattern(values: Sequence[str]) -> re.Pattern[str] | None:
    """Matches any of ``values`` standing as a word of its own (``exit`` hides no ``exited``)."""
    # Longest first, so a secret containing another is hidden whole.
    secrets = sorted({v for v in values if len(v) >= _MIN_SECRET}, key=len, reverse=True)
    if not secrets:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, secrets)) + r")(?!\w)")


# --- helpers --------------------------------------------------------------------------------------


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (possibly nested) exception groups of the SDK's task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # HTTP clients wrap the socket error ("All connection attempts failed"); name the real one.
    cause, depth = exc.__cause__ or exc.__context__, 0
    while cause is not None and depth < 8:
        if isinstance(cause, OSError) and cause.errno is not None:
            return f"{text} ({os.strerror(cause.errno)})"
        cause, depth = cause.__cause__ or cause.__context__, depth + 1
    return text


def _require_sdk() -> None:
    # Imported here, at construction, so a missing SDK is an error at registration and the
    # import (about a second) never stalls the event loop during a check.
    for module in ("mcp.client.session", "mcp.client.streamable_http", "mcp_types", "httpx2"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"the MCP server monitor needs the MCP Python SDK 2.x ({module} is missing): "
                f"{_INSTALL_HINT}"
            ) from exc


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("buttress")
    except PackageNotFoundError:
        return "0"
