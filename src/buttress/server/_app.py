"""The Starlette app: routes, the bearer token, the event stream and the metrics exposition.

Endpoints are raw ASGI callables inside a :class:`starlette.applications.Starlette` (its routing,
lifespan and static files): each answer is bytes rendered once and kept (:mod:`._hub`), sent with
two ASGI messages, so that a probe costs about what a bare endpoint does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ._hub import Cached, Hub, scrub

if TYPE_CHECKING:
    from ..manager import ResilienceManager
    from ..policies.ratelimit import RateLimiter

__all__ = ["build_app", "close_streams"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("buttress.server")
STATIC = Path(__file__).with_name("static")
COOKIE = "buttress_token"

_JSON = b"application/json"
_HEALTH_JSON = b"application/health+json"
_NO_STORE = (b"cache-control", b"no-store")
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    _NO_STORE,
    (b"x-accel-buffering", b"no"),
]


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                _NO_STORE,
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return b""


def _accept(scope: Scope) -> bytes:
    """The ``Accept`` header; several are one list, as HTTP says."""
    found = b""
    for key, value in scope.get("headers", ()):
        if key == b"accept":
            found = found + b", " + bytes(value) if found else bytes(value)
    return found


def _media_ranges(accept: str) -> list[tuple[str, str, float]]:
    """``(type, the range with its type lower-cased, q)`` for each media range of an ``Accept``
    value; a ``q`` that is no number from 0 to 1 counts as 0 (not acceptable)."""
    ranges = []
    for item in accept.split(","):
        kind, _, params = item.partition(";")
        kind = kind.strip().lower()
        if not kind:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # nan too
                    q = 0.0
        ranges.append((kind, f"{kind};{params}" if params else kind, q))
    return ranges


def _wants_ietf(accept: bytes) -> bool:
    """Whether ``application/health+json`` is acceptable and preferred at least as much as
    ``application/json`` (named, or by ``application/*`` or ``*/*``)."""
    ietf, json, wildcard = 0.0, None, 0.0
    for kind, _, q in _media_ranges(accept.decode("latin-1")):
        if kind == "application/health+json":
            ietf = max(ietf, q)
        elif kind == "application/json":
            json = q if json is None else max(json, q)
        elif kind in ("application/*", "*/*"):
            wildcard = max(wildcard, q)
    return ietf > 0.0 and ietf >= (wildcard if json is None else json)


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class _Auth:
    """``Authorization: Bearer <token>`` (or the cookie set by ``/?token=``) on every path but
    ``/live``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()
        # The cookie holds a value derived from the token, not the token: a browser that keeps
        # it can see the dashboard, yet no response ever carries the token itself. Derived the
        # same in every worker process, and changed with the token.
        self.cookie = hmac.new(self.token, b"buttress dashboard cookie", "sha256").hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) == "/live":
            await self.app(scope, receive, send)
            return
        if self._allowed(scope):
            await self.app(scope, receive, send)
            return
        problem = self._ambiguous(scope)
        if problem:
            await _answer(send, 400, b'{"error":"' + problem + b'"}', _JSON)
            return
        if _route_path(scope) == "/" and self._login(scope):
            # The dashboard in a browser: a token given once in the URL becomes a cookie, and
            # the URL that carried it is left at once.
            root = scope.get("root_path", "") or ""
            cookie = (f"{COOKIE}={self.cookie}; Path={root}/; HttpOnly; SameSite=Strict").encode()
            await _answer(
                send,
                303,
                b"",
                b"text/plain",
                [(b"location", f"{root}/".encode()), (b"set-cookie", cookie)],
            )
            return
        await _answer(
            send,
            401,
            b'{"error":"unauthorized: send Authorization: Bearer <token>"}',
            _JSON,
            [(b"www-authenticate", b'Bearer realm="buttress"')],
        )

    def _allowed(self, scope: Scope) -> bool:
        auth = b""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                if auth:
                    return False  # which one counts? (400 from _ambiguous)
                auth = bytes(value) or b" "
        if auth[:7].lower() == b"bearer ":
            return hmac.compare_digest(auth[7:].strip(), self.token)
        cookies = _header(scope, b"cookie")
        if cookies:
            for part in cookies.split(b";"):
                name, _, value = part.strip().partition(b"=")
                if name == COOKIE.encode():
                    return hmac.compare_digest(value, self.cookie.encode())
        return False

    @staticmethod
    def _tokens(scope: Scope) -> list[str]:
        query = scope.get("query_string", b"")
        if not query:
            return []
        return parse_qs(query.decode("latin-1"), keep_blank_values=True).get("token", [])

    def _ambiguous(self, scope: Scope) -> bytes:
        """What makes a request's credentials ambiguous (``b""``: nothing)."""
        if sum(1 for key, _ in scope.get("headers", ()) if key == b"authorization") > 1:
            return b"bad request: more than one Authorization header"
        if _route_path(scope) == "/" and len(self._tokens(scope)) > 1:
            return b"bad request: more than one token parameter"
        return b""

    def _login(self, scope: Scope) -> bool:
        tokens = self._tokens(scope)
        return len(tokens) == 1 and hmac.compare_digest(tokens[0].encode(), self.token)


class _Metrics:
    """Prometheus exposition, negotiated (text 0.0.4 or OpenMetrics), rendered at most once per
    ``max_age`` in a worker thread."""

    def __init__(self, registry: Any, namespace: str, max_age: float, secrets: tuple[str, ...]):
        self.registry = registry
        self.namespace = namespace
        self.max_age = max_age
        self.secrets = secrets
        self._multi: Any = None
        self._cached: dict[bytes, tuple[Cached, bytes]] = {}

    def _registry(self) -> Any:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        if self._multi is None:
            # Several worker processes: the counters of all of them come from the directory's
            # files; the gauges read at scrape time (resources, breakers, tiers) are this
            # process's own and are added to the same exposition.
            from prometheus_client import CollectorRegistry, multiprocess

            from ..instrumentation.prometheus import _ReadingsCollector

            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(_ReadingsCollector(self.namespace))
            self._multi = registry
        return self._multi

    def _for(self, accept: bytes) -> tuple[Cached, bytes]:
        entry = self._cached.get(accept)
        if entry is None:
            from prometheus_client.exposition import choose_encoder

            # Ranges refused with q=0 are left out; a range the client library cannot read
            # (version=abc) gets the default text format, as no Accept at all would.
            wanted = ",".join(r for _, r, q in _media_ranges(accept.decode("latin-1")) if q > 0)
            try:
                encoder, content_type = choose_encoder(wanted)
            except (TypeError, ValueError):
                encoder, content_type = choose_encoder("")

            def render() -> bytes:
                text: bytes = encoder(self._registry())
                return scrub(text.decode(), self.secrets).encode()

            if len(self._cached) > 16:  # odd Accept headers: keep the table small
                self._cached.clear()
            entry = self._cached[accept] = (Cached(render, self.max_age), content_type.encode())
        return entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cached, content_type = self._for(_accept(scope))
        body = cached.fresh(0)
        if body is None:
            body = await cached.get(0)
        if body is None:
            await _answer(send, 500, b'{"error":"metrics unavailable"}', _JSON)
            return
        await _answer(send, 200, body, content_type)


class _App(Starlette):
    """The app: probes and scrapes are dispatched by path before Starlette's middleware and
    router (the same endpoints are routes too, so anything else, a refused token included,
    takes the ordinary way)."""

    fast: dict[str, ASGIApp]
    guard: _Auth | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            root = scope.get("root_path")
            if root and path.startswith(root):
                path = path[len(root) :]
            endpoint = self.fast.get(path)
            if (
                endpoint is not None
                and scope["method"] in ("GET", "HEAD")
                and (self.guard is None or path == "/live" or self.guard._allowed(scope))
            ):
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _Endpoint:
    """A raw ASGI endpoint for a :class:`Route` (a plain function would be wrapped as a
    request-response handler)."""

    __slots__ = ("fn",)

    def __init__(self, fn: ASGIApp) -> None:
        self.fn = fn

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return self.fn(scope, receive, send)


def _dashboard_page() -> bytes:
    try:
        return (STATIC / "index.html").read_bytes()
    except OSError:
        return b"<!doctype html><title>buttress</title><p>The dashboard page is missing.</p>"


def build_app(
    manager: ResilienceManager,
    *,
    token: str | None = None,
    queue: Any = None,
    rate_limiters: Iterable[RateLimiter] = (),
    secrets: Iterable[str] = (),
    registry: Any = None,
    namespace: str = "buttress",
    metrics: bool = True,
    max_age: float = 0.5,
    metrics_max_age: float = 1.0,
    heartbeat: float = 15.0,
    state_interval: float = 0.25,
    manage: bool = False,
) -> Starlette:
    hidden = tuple(s for s in (token, *secrets) if s)
    hub = Hub(
        manager,
        queue=queue,
        rate_limiters=rate_limiters,
        secrets=hidden,
        max_age=max_age,
        state_interval=state_interval,
    )
    hub.install()

    prometheus: _Metrics | None = None
    if metrics:
        try:
            import prometheus_client
        except ImportError:
            prometheus = None
        else:
            from ..instrumentation.prometheus import enable_prometheus

            registry = prometheus_client.REGISTRY if registry is None else registry
            enable_prometheus(registry, namespace)
            prometheus = _Metrics(registry, namespace, metrics_max_age, hidden)

    negotiated: dict[bytes, bool] = {}

    def _wants(accept: bytes) -> bool:
        wants = negotiated.get(accept)
        if wants is None:
            if len(negotiated) > 16:  # odd Accept headers: keep the table small
                negotiated.clear()
            wants = negotiated[accept] = _wants_ietf(accept)
        return wants

    async def live(scope: Scope, receive: Receive, send: Send) -> None:
        await _answer(send, 200, b'{"status":"pass"}', _HEALTH_JSON)

    async def ready(scope: Scope, receive: Receive, send: Send) -> None:
        ok, body = hub.ready_answer()
        await _answer(send, 200 if ok else 503, body, _JSON)

    async def health(scope: Scope, receive: Receive, send: Send) -> None:
        cached = hub.health
        version = hub.version
        payload = cached.fresh(version)
        if payload is None:
            payload = await cached.get(version)
        seed, ietf, overall = payload
        status = 503 if overall == "unhealthy" else 200
        accept = _accept(scope)
        if accept and _wants(accept):
            await _answer(send, status, ietf, _HEALTH_JSON)
        else:
            await _answer(send, status, seed, _JSON)

    async def state(scope: Scope, receive: Receive, send: Send) -> None:
        version = hub.version
        body = hub.state.fresh(version)
        if body is None:
            body = await hub.state.get(version)
        await _answer(send, 200, body, _JSON)

    async def metrics_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        if prometheus is None:
            await _answer(
                send,
                501,
                b'{"error":"metrics need prometheus-client: pip install \'buttress[prometheus]\'"}',
                _JSON,
            )
            return
        await prometheus(scope, receive, send)

    async def events(scope: Scope, receive: Receive, send: Send) -> None:
        await _stream(hub, heartbeat, scope, receive, send)

    async def index(scope: Scope, receive: Receive, send: Send) -> None:
        await _answer(send, 200, _dashboard_page(), b"text/html; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        hub.install()
        if manage and not manager.running:
            await manager.start()
        try:
            yield
        finally:
            hub.close_streams()
            hub.uninstall()
            if manage:
                await manager.stop()

    routes = [
        Route("/live", _Endpoint(live), methods=["GET", "HEAD"]),
        Route("/ready", _Endpoint(ready), methods=["GET", "HEAD"]),
        Route("/health", _Endpoint(health), methods=["GET", "HEAD"]),
        Route("/metrics", _Endpoint(metrics_endpoint), methods=["GET", "HEAD"]),
        Route("/state", _Endpoint(state), methods=["GET", "HEAD"]),
        Route("/events", _Endpoint(events), methods=["GET"]),
        Route("/", _Endpoint(index), methods=["GET", "HEAD"]),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    app = _App(routes=routes, lifespan=lifespan)
    app.state.buttress_hub = hub
    app.fast = {
        "/live": live,
        "/ready": ready,
        "/health": health,
        "/metrics": metrics_endpoint,
        "/state": state,
    }
    if token is not None:
        if not isinstance(token, str) or not token.strip():
            raise ValueError("token must be a non-empty string (or None for no token)")
        app.add_middleware(_Auth, token=token)
        app.guard = _Auth(app.fast["/live"], token)
    return app


def close_streams(app: Any) -> None:
    """End the event streams of an app made by :func:`buttress.server.create_app` (call it when
    the server begins to shut down: servers wait for open responses before shutting down)."""
    hub = getattr(getattr(app, "state", None), "buttress_hub", None)
    if isinstance(hub, Hub):
        hub.close_streams()


async def _stream(hub: Hub, heartbeat: float, scope: Scope, receive: Receive, send: Send) -> None:
    """``text/event-stream``: a ``state`` frame first and on every change, each event, and a
    comment every ``heartbeat`` seconds; ends on disconnect or :func:`close_streams`."""
    loop = asyncio.get_running_loop()
    hub.bind(loop)
    if scope["method"] == "HEAD":  # the headers only: a stream would never end
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        await send({"type": "http.response.body", "body": b""})
        return
    client = hub.subscribe()
    if client is None:
        await _answer(
            send,
            503,
            b'{"error":"too many event streams open: poll /state, or retry later"}',
            _JSON,
            [(b"retry-after", b"5")],
        )
        return
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                client.wake.set()
                return

    watcher = loop.create_task(watch())
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _STREAM_HEADERS,
            }
        )
        first = await hub.state.get(hub.version)
        await send(
            {
                "type": "http.response.body",
                "body": b"retry: 2000\n\nevent: state\ndata: " + first + b"\n\n",
                "more_body": True,
            }
        )
        last_sent = time.monotonic()
        while not gone.is_set() and not hub.closing:
            wait = heartbeat - (time.monotonic() - last_sent)
            if wait > 0 and not client.buffer and client.state is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.wake.wait(), wait)
            client.wake.clear()
            if gone.is_set() or hub.closing:
                break
            frames = client.take()
            if not frames:
                if time.monotonic() - last_sent < heartbeat:
                    continue
                frames.append(b": heartbeat\n\n")
            await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
            last_sent = time.monotonic()
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass  # the client went away mid-send
    finally:
        hub.unsubscribe(client)
        watcher.cancel()
