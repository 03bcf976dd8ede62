"""429 / Retry-After handling against a real local HTTP server, plus fuzzing of the parsers."""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import aiohttp
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import (
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    Retry,
    parse_retry_after,
    raise_for_rate_limit,
    rate_limit_info,
)
from buttress.testing import FakeClock

NOW = 1_750_000_000.0


class Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str]]]] = {
        "/ok": (
            200,
            {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "42", "X-RateLimit-Reset": "30"},
        ),
        "/nearly-spent": (200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "20"}),
        "/429-seconds": (429, {"Retry-After": "7"}),
        "/429-date": (429, {"Retry-After": email.utils.formatdate(NOW + 90, usegmt=True)}),
        "/429-bare": (429, {}),
        "/503": (503, {"Retry-After": "3"}),
        "/503-bare": (503, {}),
        "/ietf": (
            200,
            {"RateLimit": '"default";r=5;t=12', "RateLimit-Policy": '"default";q=100;w=60'},
        ),
        "/ietf-old": (200, {"RateLimit": "limit=10, remaining=0, reset=4"}),
        "/garbage": (429, {"Retry-After": "soon-ish", "X-RateLimit-Remaining": "-3"}),
    }

    def do_GET(self) -> None:
        status, headers = self.routes.get(self.path, (404, {}))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(b" 5 ") == 5.0
    assert parse_retry_after("1.5") == 1.5
    date = email.utils.formatdate(NOW + 60, usegmt=True)
    assert parse_retry_after(date, now=NOW) == pytest.approx(60)
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now=NOW) == 0.0  # RFC 850, past
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", now=NOW) == 0.0  # asctime, past
    for bad in ["", "-5", "soon", "1e3", "nan", "inf", "99999999", None]:
        assert parse_retry_after(bad) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(5, 5.0), (0, 0.0), (1.5, 1.5), (-0.0, 0.0), (86_400, 86_400.0), (0.25, 0.25)],
)
def test_parse_retry_after_accepts_numbers(value: float, seconds: float) -> None:
    result = parse_retry_after(value)
    assert result == seconds
    assert type(result) is float
    assert math.copysign(1.0, result) == 1.0  # never a negative zero


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.5,
        True,
        False,
        math.nan,
        math.inf,
        -math.inf,
        86_401,
        pytest.param(10**400, id="huge"),
    ],
)
def test_parse_retry_after_numbers_that_say_nothing_usable(value: float) -> None:
    # The same answer as for the equivalent garbage string: None, never an exception.
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", [[5], {"seconds": 5}, object(), 5j])
def test_parse_retry_after_refuses_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="Retry-After must be str, bytes, a number or None"):
        parse_retry_after(value)  # type: ignore[arg-type]


def test_httpx_sync_responses(server: str) -> None:
    with httpx.Client() as client:
        info = raise_for_rate_limit(client.get(f"{server}/ok"))
        assert (info.limit, info.remaining, info.reset_after) == (100, 42, 30.0)
        with pytest.raises(RateLimitExceeded) as exc:
            raise_for_rate_limit(client.get(f"{server}/429-seconds"))
        assert exc.value.retry_after == 7.0
        with pytest.raises(RateLimitExceeded) as exc:
            raise_for_rate_limit(client.get(f"{server}/503"))
        assert exc.value.retry_after == 3.0
        assert raise_for_rate_limit(client.get(f"{server}/503-bare")).status == 503
        with pytest.raises(RateLimitExceeded) as exc:
            raise_for_rate_limit(client.get(f"{server}/429-bare"))
        assert exc.value.retry_after is None
        with pytest.raises(RateLimitExceeded) as exc:
            raise_for_rate_limit(client.get(f"{server}/429-date"), now=NOW)
        assert exc.value.retry_after == pytest.approx(90)
        with pytest.raises(RateLimitExceeded) as exc:
            raise_for_rate_limit(client.get(f"{server}/garbage"))
        assert exc.value.retry_after is None
        ietf = rate_limit_info(client.get(f"{server}/ietf"))
        assert (ietf.remaining, ietf.reset_after, ietf.limit) == (5, 12.0, 100)
        old = rate_limit_info(client.get(f"{server}/ietf-old"))
        assert (old.limit, old.remaining, old.reset_after) == (10, 0, 4.0)


def test_httpx_async_and_aiohttp(server: str) -> None:
    async def main() -> tuple[float | None, float | None]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{server}/429-seconds")
        with pytest.raises(RateLimitExceeded) as first:
            raise_for_rate_limit(response)
        async with aiohttp.ClientSession() as session, session.get(f"{server}/503") as resp:
            with pytest.raises(RateLimitExceeded) as second:
                raise_for_rate_limit(resp)
        return first.value.retry_after, second.value.retry_after

    assert asyncio.run(main()) == (7.0, 3.0)


def test_the_limiter_is_told(server: str, clock: FakeClock) -> None:
    limiter = RateLimiter()
    limiter.configure("api", RateLimitConfig(requests_per_second=100, burst_size=100))
    with httpx.Client() as client:
        with pytest.raises(RateLimitExceeded):
            raise_for_rate_limit(
                client.get(f"{server}/429-seconds"), limiter=limiter, name="api", key="t1"
            )
        with pytest.raises(RateLimitExceeded) as local:
            limiter.check_limit("api", "t1")
        assert local.value.retry_after == pytest.approx(7.0)
        limiter.check_limit("api", "t2")  # other keys are not affected
        raise_for_rate_limit(
            client.get(f"{server}/nearly-spent"), limiter=limiter, name="api", key="t3"
        )
    with pytest.raises(RateLimitExceeded):
        limiter.check_limit("api", "t3")
    clock.advance(7)
    limiter.check_limit("api", "t1")
    clock.advance(13)
    limiter.check_limit("api", "t3")


def test_retry_honours_a_servers_retry_after(server: str, clock: FakeClock) -> None:
    calls = 0

    def fetch() -> int:
        nonlocal calls
        calls += 1
        path = "/429-seconds" if calls == 1 else "/ok"
        with httpx.Client() as client:
            raise_for_rate_limit(client.get(f"{server}{path}"))
        return calls

    assert Retry(max_retries=2, base_delay=0.1).call(fetch) == 2
    assert clock.sleeps[0] >= 7.0


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.binary(), st.integers(), st.floats(), st.booleans()))
def test_parse_retry_after_never_raises(value: str | bytes | float) -> None:
    result = parse_retry_after(value)
    assert result is None or (math.isfinite(result) and result >= 0)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "Retry-After",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "X-RateLimit-Limit",
                "RateLimit",
                "RateLimit-Policy",
            ]
        ),
        st.text(),
    ),
    st.sampled_from([200, 429, 503]),
)
def test_header_parsing_never_raises(headers: dict[str, str], status: int) -> None:
    info = rate_limit_info(FakeResponse(status, headers), now=time.time())
    for value in (info.retry_after, info.reset_after):
        assert value is None or (math.isfinite(value) and value >= 0)


@pytest.mark.parametrize("digits", ["\u00b2", "\u0663", "\uff11\uff12", "3\u00b2"])
def test_digits_that_are_not_ascii_are_garbage(digits: str) -> None:
    assert parse_retry_after(digits) is None
    info = rate_limit_info(
        FakeResponse(200, {"X-RateLimit-Remaining": digits, "X-RateLimit-Reset": digits}),
        now=NOW,
    )
    assert info.remaining is None
    assert info.reset_after is None


def _limiter() -> RateLimiter:
    limiter = RateLimiter()
    limiter.configure("erp", RateLimitConfig(requests_per_second=10))
    return limiter


def test_a_limiter_without_a_name_is_refused_not_ignored() -> None:
    refused = FakeResponse(429, {"Retry-After": "3"})
    with pytest.raises(ValueError, match="limiter= needs name="):
        raise_for_rate_limit(refused, limiter=_limiter(), now=NOW)


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"low_watermark": "5"}, TypeError, "low_watermark must be an integer, got '5'"),
        ({"low_watermark": None}, TypeError, "low_watermark must be an integer, got None"),
        ({"low_watermark": math.nan}, TypeError, "low_watermark must be an integer, got nan"),
        ({"low_watermark": -1}, ValueError, "low_watermark must be >= 0, got -1"),
        ({"limiter": 5}, TypeError, r"limiter must be a RateLimiter .*, got 5"),
        ({"key": 5}, TypeError, "key must be a str or None"),
        ({"name": "  "}, ValueError, "name must be a non-empty string"),
        ({"now": "x"}, TypeError, "now must be a number, got 'x'"),
    ],
)
def test_bad_arguments_of_raise_for_rate_limit_are_named(
    options: dict[str, object], error: type[Exception], text: str
) -> None:
    nearly_spent = FakeResponse(200, {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "5"})
    arguments: dict[str, object] = {"limiter": _limiter(), "name": "erp", **options}
    with pytest.raises(error, match=text):
        raise_for_rate_limit(nearly_spent, **arguments)  # type: ignore[arg-type]


def test_a_bad_now_or_headers_is_named() -> None:
    with pytest.raises(TypeError, match="now must be a number, got 'x'"):
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now must be a finite number"):
        parse_retry_after("120", now=math.inf)
    listed = FakeResponse(200, {})
    listed.headers = [("Retry-After", "3")]  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"response\.headers must be a mapping"):
        rate_limit_info(listed)
