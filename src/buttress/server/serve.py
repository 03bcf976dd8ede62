"""``buttress serve``: the operator endpoints under uvicorn, for a configured team or the demo.

Theory of operation
-------------------
:func:`load_config` reads a team configuration file (TOML, JSON or YAML, by its suffix; the
format of :mod:`buttress.config`, plus ``token_env``) naming the team and the monitors to
register, validates every key before anything starts (an error names the file, the key and what
was expected) and builds a :class:`buttress.ResilienceManager`::

    team = "orders"
    check_interval = 10                 # optional, seconds
    token_env = "ORDERS_STATUS_TOKEN"   # optional: the bearer token comes from this variable

    [[monitors]]
    type = "database"                   # database, network, memory, cpu, mcp_server,
    name = "orders"                     # docker, k8s_pod
    target = "postgresql://app:pw@127.0.0.1:5432/orders"
    required = true                     # /ready fails while it is unavailable

    [[monitors]]
    type = "network"
    name = "payments"
    target = "https://payments.internal/health"
    interval = 5

:func:`demo_manager` builds a team that moves on its own: breakers fed by simulated traffic, a
rate limit, a flapping local resource and a quota that fills, so the tier, the breakers and the
resources change while the dashboard watches.

:func:`run` binds the socket itself first (so a port in use is a clear error, not a traceback),
starts the manager, serves with uvicorn, ends the event streams as soon as shutdown begins (uvicorn
waits for open responses) and stops the manager. The access log is scrubbed of credentials (a
dashboard login URL carries the token once).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import config as _config
from ..config import ConfigError
from ..health.types import ResourceType
from ..manager import ResilienceManager
from ._hub import scrub

__all__ = ["ConfigError", "demo_manager", "load_config", "run"]

TOKEN_ENV = "BUTTRESS_SERVER_TOKEN"


def load_config(path: str | os.PathLike[str]) -> tuple[ResilienceManager, str | None]:
    """The manager a configuration file describes, and the bearer token it names (or ``None``).

    The file is read by :func:`buttress.config.load_config` (every key checked before anything
    starts); ``token_env`` names the variable the token is read from.

    Raises:
        ConfigError: a bad file, key or value, naming the file and the key.
    """
    config = _config.load_config(path)
    where = config.source or str(path)
    problems = [  # what serving alone needs beyond a valid file, all of it at once
        f"monitors[{index}].type: api_quota monitors need a function (register in code)"
        # served alone, no application feeds a tracker: it would read healthy for ever
        for index, spec in enumerate(config.monitors)
        if spec.type is ResourceType.API_QUOTA
    ]
    if config.team is None:
        problems.append("'team' must be a non-empty string")
    token: str | None = None
    if config.token_env is not None:
        token = os.environ.get(config.token_env)
        if token is None or not token.strip():
            said = "is not set in the environment" if token is None else "is set but empty"
            problems.append(f"'token_env' names {config.token_env}, which {said}")
    if problems:
        raise ConfigError(problems, source=where)
    return _config.build_manager(config), token


# -- the demo -------------------------------------------------------------------------------------


def demo_manager() -> tuple[ResilienceManager, Callable[[], Any]]:
    """A team that changes on its own, and the coroutine function that drives it."""
    from ..degradation import DegradationManager
    from ..health.types import Reading, ResourceStatus, ResourceType
    from ..policies.circuit import CircuitBreaker, CircuitBreakerConfig
    from ..policies.ratelimit import RateLimitConfig, get_rate_limiter

    degradation = DegradationManager(name="demo-team", min_dwell=4.0)
    manager = ResilienceManager(
        "demo-team",
        {"check_interval": 1.0, "fail_threshold": 2, "success_threshold": 2},
        degradation=degradation,
    )
    started = time.monotonic()

    def flapping() -> Reading:
        # Up for 12 s, then refusing connections for 8 s, again and again.
        if (time.monotonic() - started) % 20.0 >= 12.0:
            raise ConnectionRefusedError("connection refused by 127.0.0.1:9 (simulated)")
        return Reading(message="answering")

    def quota() -> Reading:
        used = ((time.monotonic() - started) % 60.0) / 60.0 * 100.0
        return Reading(usage=used, message=f"{used:.0f}% of the hourly quota used")

    def cache() -> Reading:
        wobble = 40.0 + 25.0 * math.sin((time.monotonic() - started) / 7.0)
        status = ResourceStatus.DEGRADED if wobble > 60 else None
        return Reading(usage=wobble, status=status, message="local cache")

    manager.register_monitor(ResourceType.NETWORK, "inventory-api", flapping)
    manager.register_monitor(ResourceType.API_QUOTA, "llm-provider", quota)
    manager.register_monitor(ResourceType.MEMORY, "cache", cache, critical=False)
    with contextlib.suppress(ImportError, OSError, ValueError):
        manager.register_memory_monitor("process", scope="process", critical=False)
    breakers = [
        CircuitBreaker(
            CircuitBreakerConfig(
                name=f"demo.{service}",
                fail_max=5,
                timeout_duration=3.0,
                failure_rate_threshold=0.5,
                window_size=20,
                minimum_calls=10,
            )
        )
        for service in ("payments", "search", "email")
    ]
    limiter = get_rate_limiter()
    limiter.configure("demo.api", RateLimitConfig(requests_per_second=20.0, burst_size=10))
    rng = random.Random(7)

    class Down(ConnectionError):
        pass

    def call(breaker: CircuitBreaker, failure: float) -> None:
        def work() -> None:
            if rng.random() < failure:
                raise Down("503 from the dependency (simulated)")

        with contextlib.suppress(Exception):
            breaker.call(work)

    async def drive() -> None:
        while True:
            phase = (time.monotonic() - started) % 30.0
            call(breakers[0], 0.9 if 10.0 <= phase < 18.0 else 0.05)
            call(breakers[1], 0.3)
            call(breakers[2], 0.6 if phase >= 24.0 else 0.0)
            for _ in range(3):
                with contextlib.suppress(Exception):
                    limiter.check_limit("demo.api")
            await asyncio.sleep(0.1)

    return manager, drive


# -- running --------------------------------------------------------------------------------------


class PortInUse(OSError):
    """The address to listen on is taken."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``PortInUse`` with a clear message when taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto is TCP, and one made with proto 0 would stall every response split into two writes
    # for the peer's delayed ACK (about 40 ms on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                exc.errno,
                f"port {port} on {host} is already in use; stop what listens there or pick "
                "another with --port",
            ) from None
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


#: Characters of one string (a request's path and query) a log line keeps: a client chooses its
#: length, and the longer it is the longer the line and its scrubbing take.
LOGGED_CHARS = 512
_CUTS = "/?&;"


def _logged(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` scrubbed, cut to :data:`LOGGED_CHARS` at a ``/``, ``?``, ``&`` or ``;`` (so no
    part of a value is kept without its name)."""
    if len(text) <= LOGGED_CHARS:
        return scrub(text, secrets)
    for secret in secrets:  # before the cut, which could leave a secret's head
        text = text.replace(secret, "***")
    head = text[:LOGGED_CHARS]
    head = head[: max(head.rfind(c) for c in _CUTS) + 1]
    return f"{scrub(head, secrets)}... ({len(text) - len(head)} more characters)"


class _ScrubAccess(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _logged(a, self.secrets) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str):
            record.msg = _logged(record.msg, self.secrets)
        return True


async def serve_app(
    app: Any,
    sock: socket.socket,
    *,
    manager: ResilienceManager | None = None,
    background: Callable[[], Any] | None = None,
    log_level: str = "info",
    access_log: bool = True,
    secrets: tuple[str, ...] = (),
    started: Callable[[Any], None] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` with uvicorn until it is told to exit (a signal, or
    ``server.should_exit = True`` on the server passed to ``started``)."""
    import uvicorn

    from . import close_streams

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            close_streams(app)
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = Server(config)
    tasks: list[asyncio.Task[Any]] = []
    if manager is not None and not manager.running:
        await manager.start()
    if background is not None:
        tasks.append(asyncio.get_running_loop().create_task(background()))
    scrubbing = _ScrubAccess(secrets)
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    for logger in loggers:
        logger.addFilter(scrubbing)
    if started is not None:
        started(server)
    try:
        await server.serve(sockets=[sock])
    finally:
        for logger in loggers:  # one filter per server: another server has its own secrets
            logger.removeFilter(scrubbing)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if manager is not None:
            await manager.stop()


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: str | None = None,
    demo: bool = False,
    token: str | None = None,
    log_level: str = "info",
) -> int:
    """``buttress serve``: returns the exit status."""
    if (config is None) == (not demo):
        raise ConfigError(["give a configuration file (--config FILE) or --demo, not both"])
    background = None
    if demo:
        sock = bind(host, port)  # before the demo registers its breakers and limits
        try:
            manager, background = demo_manager()
        except BaseException:
            sock.close()
            raise
    else:
        assert config is not None
        manager, configured = load_config(config)
        token = token or configured
        sock = bind(host, port)
    from . import create_app

    app = create_app(manager, token=token)
    where = f"http://{host}:{sock.getsockname()[1]}/"
    print(f"buttress serve: team {manager.team!r} at {where} (Ctrl+C to stop)", flush=True)
    secrets = (token,) if token else ()
    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down gracefully on SIGTERM, then raises it again: end as on Ctrl+C
        # (exit status 0) rather than be killed by it.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(
        serve_app(
            app,
            sock,
            manager=manager,
            background=background,
            log_level=log_level,
            secrets=secrets,
        )
    )
    return 0


def token_from_env(variable: str | None) -> str | None:
    """The bearer token in ``variable`` (default :data:`TOKEN_ENV`); ``None`` when unset."""
    name = variable or TOKEN_ENV
    value = os.environ.get(name)
    if variable and value is None:
        raise ConfigError([f"--token-env names {variable}, which is not set in the environment"])
    if value is not None and not value.strip():
        # set, but to nothing: serving without a token was surely not meant
        raise ConfigError([f"{name} is set but empty: give it a token, or unset it"])
    return value
