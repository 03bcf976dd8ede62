"""The dashboard in a real browser: headless Chromium driving the page against a real server.

Theory of operation
-------------------
Each test serves a ``ResilienceManager``'s app with uvicorn on a free 127.0.0.1 port (a thread of
this process, so the test changes the breakers and the tier that the page shows), opens the page in
Debian's Chromium driven by Playwright (``executable_path``; Playwright's own browser download is
never used), and waits for the DOM with bounded waits. Every request the page makes goes through a
route that refuses any host but 127.0.0.1 and records it, so a CDN or any other external asset
fails the test even on a machine with a network. Console messages of type ``error`` and uncaught
page errors are collected and must stay empty.

Without Chromium or Playwright the tests skip with the reason, unless ``BUTTRESS_REQUIRE_BROWSER=1``
(CI), where a missing browser fails them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from buttress import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    ResilienceManager,
    events,
)
from buttress.queue import RequestQueue

CHROMIUM = os.environ.get("BUTTRESS_CHROMIUM", "/usr/bin/chromium")
# The page must show a change this soon after it happens in the process.
SHOWN_WITHIN_MS = 2000


def _require_browser() -> Any:
    """Playwright's sync API, or a skip (a failure under ``BUTTRESS_REQUIRE_BROWSER=1``)."""
    reason = None
    try:
        from playwright import sync_api
    except ImportError:
        reason = "the playwright package is not installed (pip install playwright)"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM} (Debian package 'chromium')"
    if reason is not None:
        if os.environ.get("BUTTRESS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BUTTRESS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return sync_api


class _Server:
    """uvicorn serving ``app`` on a free loopback port from a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def _app(manager: ResilienceManager, **options: Any) -> Any:
    """The manager's app, its metrics in a registry of its own (see ``_no_hook_left``)."""
    from prometheus_client import CollectorRegistry

    return manager.asgi_app(registry=CollectorRegistry(), **options)


@pytest.fixture(autouse=True)
def _no_hook_left() -> Iterator[None]:
    """An app listens to every event, and so do the Prometheus metrics it enables, for the
    process: both stop after the test, so later tests pay for no hook."""
    before = list(events.HOOKS)
    yield
    for hook in [h for h in events.HOOKS if h not in before]:
        disable = getattr(getattr(hook, "__self__", None), "disable", None)
        if callable(disable):
            disable()
        else:
            events.remove_hook(hook)


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """Serve an ASGI app; returns its base URL. Stopped after the browser has closed its pages,
    so no open event stream holds the shutdown up."""
    servers: list[_Server] = []

    def start(app: Any) -> str:
        servers.append(_Server(app).__enter__())
        return servers[-1].url

    yield start
    for server in servers:
        server.__exit__()


@dataclass
class Browser:
    """A page with its console errors and every host it asked for."""

    page: Any
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def wait_for(self, selector: str, timeout: float = SHOWN_WITHIN_MS) -> None:
        self.page.wait_for_selector(selector, state="attached", timeout=timeout)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the module (each test opens its own context)."""
    sync_api = _require_browser()
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser(serve: Any, chromium: Any) -> Iterator[Callable[..., Browser]]:
    """Opens a page on a URL in a fresh context that refuses every host but 127.0.0.1 (and any
    path ending in ``refuse``), collecting console errors and the foreign requests."""
    contexts: list[Any] = []

    def open_page(url: str, *, refuse: str | None = None, **options: Any) -> Browser:
        context = chromium.new_context(**options)
        contexts.append(context)
        out = Browser(context.new_page())

        def route(route: Any) -> None:
            target = urlsplit(route.request.url)
            if target.hostname != "127.0.0.1":
                out.foreign.append(route.request.url)
                route.abort()
            elif refuse is not None and target.path.endswith(refuse):
                route.abort()
            else:
                route.continue_()

        context.route("**/*", route)
        out.page.on("console", lambda m: out.errors.append(m.text) if m.type == "error" else None)
        out.page.on("pageerror", lambda e: out.errors.append(str(e)))
        out.page.goto(url)
        return out

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def breaker() -> Iterator[CircuitBreaker]:
    cb = CircuitBreaker(
        CircuitBreakerConfig(
            name=f"payments-{uuid.uuid4().hex[:6]}", fail_max=3, timeout_duration=60
        )
    )
    try:
        yield cb
    finally:
        cb.dispose()


def _trip(cb: CircuitBreaker) -> None:
    def fail() -> None:
        raise ConnectionError("payments down")

    for _ in range(10):
        try:
            cb.call(fail)
        except CircuitOpenError:
            return
        except ConnectionError:
            pass
    raise AssertionError(f"{cb.name} did not open")


def _row(table: str, name: str) -> str:
    return f'#{table} tbody tr[data-name="{name}"]'


def test_live_page_shows_breaker_and_tier_changes(
    serve: Callable[[Any], str], browser: Callable[..., Browser], breaker: CircuitBreaker
) -> None:
    # A user's name with markup in it must be shown as text, never parsed.
    marked = CircuitBreaker(name='<img id="injected" src="x">', fail_max=3)
    manager = ResilienceManager("checkout", circuits=[breaker.name, marked.name])
    try:
        b = browser(serve(_app(manager)))
        b.wait_for(f"{_row('circuits', breaker.name)} .state .closed")
        b.wait_for("#conn.live")
        assert b.page.locator("#injected").count() == 0
        assert b.page.locator("#circuits tbody th").all_text_contents() == sorted(
            [breaker.name, marked.name]
        )

        _trip(breaker)
        b.wait_for(f"{_row('circuits', breaker.name)} .state .open")
        assert b.page.locator("#status").text_content() == "degraded"
        assert breaker.name in (b.page.locator("#announce").text_content() or "")

        before = b.page.locator("#timeline li").count()
        manager.degradation.update_health("orders_db", healthy=False, error="refused")
        b.wait_for('#timeline li[data-level="4"]')
        assert b.page.locator("#timeline li").count() == before + 1
        assert "TIER_4_MAINTENANCE" in (b.page.locator("#tier").text_content() or "")
        assert "TIER_4_MAINTENANCE" in (b.page.locator("#announce").text_content() or "")

        assert b.errors == []
        assert b.foreign == []
    finally:
        marked.dispose()


def test_polls_state_when_the_event_stream_fails(
    serve: Callable[[Any], str], browser: Callable[..., Browser], breaker: CircuitBreaker
) -> None:
    manager = ResilienceManager("checkout", circuits=[breaker.name])
    b = browser(serve(_app(manager)), refuse="/events")
    b.wait_for("#conn.polling")
    b.wait_for(f"{_row('circuits', breaker.name)} .state .closed")
    _trip(breaker)
    b.wait_for(f"{_row('circuits', breaker.name)} .state .open")
    assert b.foreign == []


def test_mounted_under_a_prefix_behind_a_token(
    serve: Callable[[Any], str], browser: Callable[..., Browser], breaker: CircuitBreaker
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    manager = ResilienceManager("checkout", circuits=[breaker.name])
    inner = _app(manager, token="s3cret-token")
    # A mounted app's lifespan runs only when the outer app runs it.
    outer = Starlette(
        routes=[Mount("/resilience", inner)],
        lifespan=lambda _: inner.router.lifespan_context(inner),
    )
    b = browser(serve(outer) + "resilience/?token=s3cret-token")
    b.wait_for("#conn.live")
    b.wait_for(f"{_row('circuits', breaker.name)} .state .closed")
    # The token is traded for a cookie and leaves the address bar.
    assert b.page.url.endswith("/resilience/")
    _trip(breaker)
    b.wait_for(f"{_row('circuits', breaker.name)} .state .open")
    assert b.errors == []
    assert b.foreign == []


def test_shows_rate_limits_resources_and_the_queue(
    serve: Callable[[Any], str], browser: Callable[..., Browser]
) -> None:
    limiter = RateLimiter()
    limiter.configure(
        "erp", RateLimitConfig(requests_per_second=0.1, window_seconds=60, algorithm="fixed_window")
    )
    queue = RequestQueue("writes", storage="memory://")
    queue.handler("charge")(lambda order: None)
    manager = ResilienceManager("checkout", check_interval=0.05, circuits=[])
    manager.register_monitor("database", "orders", lambda: 42.0)
    app = _app(manager, queue=queue, rate_limiters=[limiter])
    for order in range(3):
        queue.put("charge", (order,))
    for _ in range(8):  # 6 admitted, 2 refused
        with contextlib.suppress(RateLimitExceeded):
            limiter.check_limit("erp")
    manager.start_in_thread()
    try:
        b = browser(serve(app))
        b.wait_for(f"{_row('resources', 'database:orders')} .healthy", timeout=10_000)
        orders = b.page.locator(_row("resources", "database:orders"))
        assert orders.locator("meter").get_attribute("aria-label") == "orders usage"
        assert b.page.evaluate("document.querySelector('#resources meter').value") == pytest.approx(
            0.42
        )
        assert "42%" in (orders.text_content() or "")
        erp = b.page.locator(_row("limits", "erp")).locator("td").all_text_contents()
        assert [text.strip() for text in erp] == ["6 / 6", "2"]
        assert b.page.locator("#q-depth").text_content() == "3"
        assert b.page.locator("#q-dead").text_content() == "0"
        assert b.errors == []
    finally:
        manager.stop()
        queue.close()


_CONTRAST = """() => {
  const lum = (c) => {
    const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map((v) => {
      v = v / 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const m = getComputedStyle(e).backgroundColor.match(/[\\d.]+/g);
      if (m && (m.length < 4 || +m[3] > 0)) return getComputedStyle(e).backgroundColor;
    }
    return "rgb(255, 255, 255)";
  };
  const low = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    const text = walk.currentNode.textContent.trim(), e = walk.currentNode.parentElement;
    if (!text || e.closest(".sr,script,style") || !e.getClientRects().length) continue;
    const a = lum(getComputedStyle(e).color), b = lum(background(e));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(text.slice(0, 40) + ": " + ratio.toFixed(2));
  }
  return low;
}"""


def test_readable_on_a_phone_with_aa_contrast(
    serve: Callable[[Any], str], browser: Callable[..., Browser], breaker: CircuitBreaker
) -> None:
    manager = ResilienceManager("checkout", circuits=[breaker.name])
    manager.degradation.update_health("llm_provider", healthy=False)
    _trip(breaker)
    b = browser(serve(_app(manager)), viewport={"width": 390, "height": 844}, is_mobile=True)
    b.wait_for(f"{_row('circuits', breaker.name)} .state .open")
    b.wait_for('#timeline li[data-level="2"]')
    # Wide tables scroll inside their own box; the page itself never scrolls sideways.
    assert b.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert b.page.evaluate(_CONTRAST) == []
    # No queue given: its figures are hidden, not shown as dashes.
    assert b.page.locator("#queue").is_hidden()
    assert b.page.get_by_text("No queue configured.").is_visible()
    assert b.errors == []
