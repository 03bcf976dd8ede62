"""API quotas: figures a function returns, and figures read from real HTTP responses."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from buttress.health import QuotaTracker, Reading, ResourceStatus, quota_check
from buttress.health.quota import parse_duration, quota_reading
from buttress.http import RateLimitInfo
from buttress.testing import FakeClock


class Figures:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


@pytest.mark.parametrize(
    ("value", "usage"),
    [
        (85.5, 85.5),
        (0, 0.0),
        ((855, 1000), 85.5),
        ([30, 60], 50.0),
        ({"used": 3, "limit": 4}, 75.0),
        ({"remaining": 1, "limit": 4}, 75.0),
        (Figures(used=9, limit=10), 90.0),
        (Figures(remaining=100, limit=400), 75.0),
        (RateLimitInfo(200, limit=60, remaining=6), 90.0),
        (Reading(usage=12.0), 12.0),
    ],
)
def test_quota_figures(value: object, usage: float) -> None:
    assert quota_reading(value).usage == pytest.approx(usage)


def test_quota_figures_report_what_they_saw() -> None:
    reading = quota_reading((855, 1000))
    assert dict(reading.detail) == {"used": 855, "limit": 1000, "remaining": 145}


def test_no_figure_has_no_usage_to_judge_and_says_so() -> None:
    reading = quota_reading(None)
    assert reading.usage is None
    assert reading.status is None  # not degraded: a team does not lose tiers for no figure
    assert reading.message == "the quota function returned None: no figure of the quota"


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (True, TypeError, "bool"),
        ((1, 2, 3), ValueError, "used, limit"),
        ((5, 0), ValueError, "limit must be > 0"),
        ((-1, 10), ValueError, "used"),
        ({"used": "many", "limit": 4}, ValueError, "used"),
        ({"limit": 4}, TypeError, "remaining/limit"),
        (Figures(used=1), TypeError, "used/limit"),
        ("85%", TypeError, "percentage"),
        (float("nan"), ValueError, "the quota function returned nan; a usage percentage"),
        (-3.0, ValueError, "the quota function returned -3.0; .* >= 0"),
        pytest.param(
            10**400, ValueError, "a usage percentage must be a finite number", id="huge-int"
        ),
        pytest.param(
            (10**400, 10), ValueError, "quota used must be a finite number >= 0", id="huge-used"
        ),
        ({"remaining": 10, "limit": 4}, ValueError, "quota remaining 10 is over its limit 4"),
    ],
)
def test_bad_quota_figures_say_what_is_wrong(
    value: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        quota_reading(value)


def test_quota_check_runs_a_def_in_a_worker_thread() -> None:
    threads: list[threading.Thread] = []

    def figures() -> tuple[int, int]:
        threads.append(threading.current_thread())
        return (40, 50)

    check = quota_check(figures)
    reading = asyncio.run(check())
    assert reading.usage == pytest.approx(80.0)
    assert threads[0] is not threading.main_thread()
    assert "figures" in check.target  # type: ignore[attr-defined]


def test_quota_check_awaits_an_async_function() -> None:
    async def figures() -> float:
        return 12.5

    assert asyncio.run(quota_check(figures)()).usage == 12.5


def test_quota_check_refuses_what_is_not_callable() -> None:
    with pytest.raises(TypeError, match="quota"):
        quota_check(42)  # type: ignore[arg-type]


def test_quota_check_returns_a_tracker_unchanged() -> None:
    tracker = QuotaTracker("openai")
    assert quota_check(tracker) is tracker


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2.5", 2.5),
        ("soon", None),
        ("", None),
        ("-1s", None),
        ("99999h", None),
    ],
)
def test_openai_reset_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


def reading(tracker: QuotaTracker) -> Reading:
    return asyncio.run(tracker())


def test_before_any_response_the_quota_is_unknown_and_healthy() -> None:
    r = reading(QuotaTracker("openai"))
    assert r.usage is None
    assert r.status is None
    assert r.message == "no response observed yet"


def test_generic_x_ratelimit_headers(clock: FakeClock) -> None:
    tracker = QuotaTracker("github")
    tracker.observe(
        httpx.Response(
            200,
            headers={
                "X-RateLimit-Limit": "5000",
                "X-RateLimit-Remaining": "250",
                "X-RateLimit-Reset": "60",
            },
        )
    )
    r = reading(tracker)
    assert r.usage == pytest.approx(95.0)
    assert r.detail["default"] == {"limit": 5000, "remaining": 250, "reset_in_s": 60.0}
    clock.advance(61)
    assert reading(tracker).usage == 0.0  # the window reset: replenished


def test_openai_headers_take_the_most_spent_dimension(clock: FakeClock) -> None:
    tracker = QuotaTracker("openai")
    tracker.observe(
        httpx.Response(
            200,
            headers={
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "59",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-limit-tokens": "150000",
                "x-ratelimit-remaining-tokens": "22500",
                "x-ratelimit-reset-tokens": "6m0s",
            },
        )
    )
    r = reading(tracker)
    assert r.usage == pytest.approx(85.0)
    assert r.detail["tokens"] == {"limit": 150000, "remaining": 22500, "reset_in_s": 360.0}
    clock.advance(2)
    assert reading(tracker).detail["requests"] == {  # past its reset: replenished
        "limit": 60,
        "remaining": 60,
        "reset_in_s": 0.0,
    }


def test_anthropic_headers_with_rfc3339_resets(clock: FakeClock) -> None:
    reset = datetime.fromtimestamp(clock.wall() + 30, tz=UTC).isoformat().replace("+00:00", "Z")
    tracker = QuotaTracker("anthropic")
    tracker.observe(
        httpx.Response(
            200,
            headers={
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": reset,
                "anthropic-ratelimit-input-tokens-limit": "40000",
                "anthropic-ratelimit-input-tokens-remaining": "4000",
                "anthropic-ratelimit-input-tokens-reset": reset,
                "anthropic-ratelimit-output-tokens-limit": "8000",
                "anthropic-ratelimit-output-tokens-remaining": "7000",
            },
        )
    )
    r = reading(tracker)
    assert r.usage == pytest.approx(90.0)
    assert r.detail["input-tokens"] == {"limit": 40000, "remaining": 4000, "reset_in_s": 30.0}
    assert r.detail["output-tokens"]["reset_in_s"] is None  # type: ignore[index]


def test_ietf_ratelimit_header(clock: FakeClock) -> None:
    tracker = QuotaTracker("api")
    tracker.observe_headers({"RateLimit": "limit=100, remaining=15, reset=20"})
    assert reading(tracker).usage == pytest.approx(85.0)
    tracker.observe_headers({"RateLimit": '"default";r=50;t=30', "RateLimit-Policy": "q=100"})
    assert reading(tracker).usage == pytest.approx(50.0)


def test_a_429_with_retry_after_is_unavailable_until_then(clock: FakeClock) -> None:
    tracker = QuotaTracker("openai")
    tracker.observe(httpx.Response(429, headers={"Retry-After": "20"}))
    r = reading(tracker)
    assert r.status is ResourceStatus.UNAVAILABLE
    assert "20.0s" in (r.message or "")
    clock.advance(19.5)
    assert reading(tracker).status is ResourceStatus.UNAVAILABLE
    clock.advance(1)
    assert reading(tracker).status is None


def test_a_429_without_a_wait_lasts_until_a_response_is_not_refused(clock: FakeClock) -> None:
    tracker = QuotaTracker("openai")
    tracker.observe(httpx.Response(429))
    clock.advance(3600)
    assert reading(tracker).status is ResourceStatus.UNAVAILABLE
    tracker.observe(httpx.Response(200))
    assert reading(tracker).status is None


def test_a_503_with_retry_after_counts_as_refused(clock: FakeClock) -> None:
    tracker = QuotaTracker("api")
    tracker.observe(httpx.Response(503, headers={"Retry-After": "5"}))
    assert reading(tracker).status is ResourceStatus.UNAVAILABLE
    plain = QuotaTracker("api")
    plain.observe(httpx.Response(503))
    assert reading(plain).status is None


def test_malformed_headers_are_ignored(clock: FakeClock) -> None:
    tracker = QuotaTracker("api")
    tracker.observe_headers(
        {
            "X-RateLimit-Limit": "lots",
            "X-RateLimit-Remaining": "-5",
            "x-ratelimit-limit-tokens": "0",
            "x-ratelimit-remaining-tokens": "0",
            "anthropic-ratelimit-requests-limit": "10",
            "anthropic-ratelimit-requests-remaining": "9",
            "anthropic-ratelimit-requests-reset": "tomorrow",
        }
    )
    r = reading(tracker)
    assert r.usage == pytest.approx(10.0)
    assert set(r.detail) == {"responses_observed", "requests"}


def test_observe_refuses_what_is_not_a_response() -> None:
    tracker = QuotaTracker("api")
    with pytest.raises(TypeError, match="status"):
        tracker.observe(object())
    with pytest.raises(TypeError, match="headers"):
        tracker.observe_headers(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        QuotaTracker("")


def test_aiohttp_style_responses_work_too(clock: FakeClock) -> None:
    class AiohttpLike:  # aiohttp's ClientResponse has .status and case-insensitive .headers
        status = 200
        headers = httpx.Headers({"X-RATELIMIT-LIMIT": "10", "x-ratelimit-remaining": "1"})

    tracker = QuotaTracker("api")
    tracker.observe(AiohttpLike())
    assert reading(tracker).usage == pytest.approx(90.0)
