"""Renders docs/dashboard.png: the dashboard of a small, troubled checkout service.

The scene is real: breakers tripped by failing calls, rate limits used and refused, resources
watched by the manager's own monitoring (one database healthy, a model quota running out, a
gateway refusing connections, memory nearly full), a durable queue holding requests; the tier
and its timeline follow from the resources. uvicorn serves ``manager.asgi_app()`` on a free
127.0.0.1 port and Debian's headless Chromium, driven by Playwright, takes the picture. Every
request to another host is refused, as in the browser test.

    python scripts/screenshot.py [--out docs/dashboard.png] [--width 1200]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from buttress import (
    CircuitBreaker,
    CircuitOpenError,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    ResilienceManager,
)
from buttress.queue import RequestQueue

CHROMIUM = "/usr/bin/chromium"


def _until(done: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.02)


def _fail(cb: CircuitBreaker, times: int) -> None:
    def down() -> None:
        raise ConnectionError("connection refused")

    for _ in range(times):
        with contextlib.suppress(ConnectionError, CircuitOpenError):
            cb.call(down)


def _scene(
    workdir: Path,
) -> tuple[ResilienceManager, RequestQueue, RateLimiter, Callable[[], None], CircuitBreaker]:
    payments = CircuitBreaker(name="payments-api", fail_max=5, timeout_duration=60)
    inventory = CircuitBreaker(name="inventory", fail_max=5, timeout_duration=30)
    search = CircuitBreaker(name="search", fail_max=3, timeout_duration=0.5)
    _fail(payments, 5)
    for i in range(12):
        if i % 4 == 0:
            _fail(inventory, 1)
        else:
            inventory.call(lambda: None)
    _fail(search, 3)

    limiter = RateLimiter()
    limiter.configure(
        "openai",
        RateLimitConfig(requests_per_second=1, window_seconds=120, algorithm="fixed_window"),
    )
    limiter.configure(
        "erp", RateLimitConfig(requests_per_second=0.5, window_seconds=60, algorithm="fixed_window")
    )

    manager = ResilienceManager(
        "checkout",
        check_interval=0.2,
        circuits=["payments-api", "inventory", "search"],
        config={"fail_threshold": 2},
    )
    manager.register_monitor("database", "orders", lambda: 41.5)
    spent = iter(range(10_000))
    # The model quota is being spent: its trend predicts when it runs out.
    manager.register_monitor("api_quota", "openai", lambda: min(99.0, 76.0 + next(spent) * 0.1))
    manager.register_monitor("memory", "worker", lambda: 94.0)

    def gateway() -> None:
        raise ConnectionRefusedError("tcp 127.0.0.1:9443: connection refused")

    manager.register_monitor("network", "payments-gateway", gateway)

    queue = RequestQueue("checkout-writes", storage=f"sqlite:///{workdir / 'queue.db'}")
    queue.handler("charge")(lambda order: None)
    for order in range(7):
        queue.put("charge", (f"order-{order}",))

    def use_limits() -> None:
        # After the app is built, so its event hook counts the refusals.
        for name, calls in (("openai", 95), ("erp", 33)):
            for _ in range(calls):
                with contextlib.suppress(RateLimitExceeded):
                    limiter.check_limit(name)

    return manager, queue, limiter, use_limits, search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/dashboard.png", type=Path)
    parser.add_argument("--width", default=1200, type=int)
    args = parser.parse_args(argv)

    import uvicorn
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        manager, queue, limiter, use_limits, search = _scene(Path(tmp))
        app = manager.asgi_app(queue=queue, rate_limiters=[limiter])
        use_limits()
        manager.start_in_thread()
        _until(
            lambda: (
                all(s.status is not None for s in manager.resources.states().values())
                and manager.degradation.get_current_tier() == 3
                and manager.resources.state("api_quota", "openai").predicted_exhaustion is not None
            ),
            "the monitors' verdicts",
        )
        _until(lambda: search.state.value == "half_open", "the search breaker to half-open")

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        _until(lambda: server.started, "uvicorn")
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        foreign: list[str] = []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_page(viewport={"width": args.width, "height": 700})

                def route(r: Any) -> None:
                    if urlsplit(r.request.url).hostname == "127.0.0.1":
                        r.continue_()
                    else:
                        foreign.append(r.request.url)
                        r.abort()

                page.route("**/*", route)
                page.goto(url)
                page.wait_for_selector("#conn.live")
                page.wait_for_selector('#timeline li[data-level="3"]')
                page.wait_for_selector("#resources tbody tr >> nth=3")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                page.close()
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
            manager.stop()
            queue.close()
    if foreign:
        print(f"the page asked for other hosts: {foreign}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
