"""Presets carry the recommendations table for each operation and environment."""

from __future__ import annotations

import pytest

from buttress import FallbackStrategy, RateLimitConfig, RateLimiter, preset, retry, timeout
from buttress.testing import FakeClock

PRODUCTION = {
    "factor_lookup": (3, 5.0, FallbackStrategy.CACHED, 10.0),
    "llm_inference": (2, 30.0, FallbackStrategy.CACHED, 5.0),
    "erp_api": (5, 10.0, FallbackStrategy.CACHED, 5.0),
    "database": (3, 10.0, None, None),
    "report_generation": (2, 60.0, FallbackStrategy.DEFAULT, None),
}


@pytest.mark.parametrize("operation", sorted(PRODUCTION))
def test_production_table(operation: str) -> None:
    retries, seconds, strategy, rate = PRODUCTION[operation]
    profile = preset(operation, env="production")
    assert profile.retry == {"max_retries": retries, "base_delay": 1.0, "jitter": True}
    assert profile.timeout == seconds
    assert profile.fallback is strategy
    if rate is None:
        assert profile.rate_limit is None
    else:
        assert profile.rate_limit == RateLimitConfig(
            requests_per_second=rate, burst_size=int(2 * rate)
        )
    assert profile.circuit == {"fail_max": 5, "timeout_duration": 60.0}


@pytest.mark.parametrize("operation", sorted(PRODUCTION))
def test_development_is_relaxed(operation: str) -> None:
    profile = preset(operation, env="development")
    assert profile.retry == {"max_retries": 2, "base_delay": 0.5, "jitter": True}
    assert profile.timeout == 2 * PRODUCTION[operation][1]
    assert profile.circuit["fail_max"] == 10
    if profile.rate_limit is not None:
        assert profile.rate_limit.requests_per_second == 100.0


def test_aliases_and_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert preset("factor_api").operation == "factor_lookup"
    assert preset("llm_api").operation == "llm_inference"
    monkeypatch.setenv("BUTTRESS_ENV", "dev")
    assert preset("erp_api").environment == "development"
    monkeypatch.setenv("BUTTRESS_ENV", "staging")
    with pytest.raises(ValueError, match="environment variable BUTTRESS_ENV must be one of"):
        preset("erp_api")
    with pytest.raises(ValueError, match="env must be one of"):
        preset("erp_api", env="qa")
    with pytest.raises(ValueError, match=r"unknown operation 'fax'; known: "):
        preset("fax")


def test_presets_plug_into_the_policies(clock: FakeClock) -> None:
    profile = preset("erp_api")
    limiter = RateLimiter()
    assert profile.rate_limit is not None
    limiter.configure("erp_api", profile.rate_limit)
    for _ in range(10):
        limiter.check_limit("erp_api")

    @retry(**profile.retry)
    @timeout(timeout_seconds=profile.timeout)
    def call() -> str:
        return "ok"

    assert call() == "ok"
