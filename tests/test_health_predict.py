"""Time to exhaustion (Theil-Sen) and latency baselines: the arithmetic, on samples."""

from __future__ import annotations

import random

import pytest

from buttress.health.predict import LatencyBaseline, UsageTrend, theil_sen


def test_theil_sen_recovers_a_line_exactly() -> None:
    points = [(t, 3.0 + 0.5 * t) for t in range(0, 100, 10)]
    slope, intercept = theil_sen(points)  # type: ignore[misc]
    assert slope == pytest.approx(0.5)
    assert intercept == pytest.approx(3.0)


def test_theil_sen_needs_two_distinct_times() -> None:
    assert theil_sen([(1.0, 5.0)]) is None
    assert theil_sen([(1.0, 5.0), (1.0, 6.0)]) is None


@pytest.mark.parametrize(("rate", "start"), [(0.05, 20.0), (0.01, 50.0), (1.0, 1.0)])
def test_a_linear_ramp_predicts_within_five_percent(rate: float, start: float) -> None:
    trend = UsageTrend(history=20)
    for t in range(0, 600, 30):
        usage = start + rate * t
        if usage >= 100:
            break
        eta = trend.add(float(t), usage)
        if len(trend) >= 8:
            truth = (100.0 - usage) / rate
            assert eta is not None
            assert eta == pytest.approx(truth, rel=0.05)


def test_a_noisy_ramp_predicts_within_five_percent() -> None:
    rng = random.Random(7)
    trend = UsageTrend(history=20)
    eta = None
    for t in range(0, 20 * 30, 30):
        eta = trend.add(float(t), 10.0 + 0.1 * t + rng.uniform(-0.5, 0.5))
    truth = (100.0 - (10.0 + 0.1 * 570)) / 0.1
    assert eta == pytest.approx(truth, rel=0.05)


def test_no_prediction_before_min_samples_or_without_a_rise() -> None:
    trend = UsageTrend(history=10, min_samples=5)
    for t in range(4):
        assert trend.add(float(t), 10.0 + t) is None
    assert trend.add(4.0, 14.0) is not None
    falling = UsageTrend()
    for t in range(10):
        falling.add(float(t), 90.0 - t)
    assert falling.time_to_exhaustion is None
    flat = UsageTrend()
    for t in range(10):
        flat.add(float(t), 42.0)
    assert flat.time_to_exhaustion is None


def test_at_or_past_full_predicts_zero() -> None:
    trend = UsageTrend()
    for t in range(10):
        trend.add(float(t), 95.0 + t)
    assert trend.time_to_exhaustion == 0.0


def test_one_spike_does_not_predict_exhaustion() -> None:
    trend = UsageTrend()
    for t in range(19):
        trend.add(float(t * 30), 50.0)
    assert trend.add(19 * 30.0, 100.0) is None


@pytest.mark.parametrize("seed", range(20))
def test_noise_around_a_flat_level_is_not_a_trend(seed: int) -> None:
    rng = random.Random(seed)
    trend = UsageTrend()
    predictions = 0
    for t in range(200):
        eta = trend.add(t * 30.0, 70.0 + rng.uniform(-8.0, 8.0))
        if eta is not None:
            predictions += 1
            assert eta > 900.0, (t, eta)  # 1.5x the default horizon: never DEGRADED by it
    assert predictions <= 2


def test_a_clock_going_backwards_starts_over() -> None:
    trend = UsageTrend()
    for t in range(10):
        trend.add(100.0 + t, 10.0 + t)
    trend.add(0.0, 50.0)
    assert len(trend) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"history": 2}, "min_samples"),
        ({"min_samples": 2}, "min_samples"),
        ({"history": 4, "min_samples": 5}, "min_samples"),
        ({"noise_factor": -1}, "noise_factor"),
        ({"history": 2.5}, "history"),
    ],
)
def test_trend_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        UsageTrend(**kwargs)  # type: ignore[arg-type]


def test_latency_baseline_learns_then_flags_far_outliers() -> None:
    rng = random.Random(3)
    baseline = LatencyBaseline()
    flagged = [baseline.observe(0.100 * rng.uniform(0.8, 1.2)) for _ in range(200)]
    assert not any(flagged)  # +-20% noise is the baseline, never an anomaly
    assert baseline.median == pytest.approx(0.100, rel=0.1)
    assert baseline.observe(0.500)  # five times the usual latency
    assert not baseline.observe(0.150)  # 1.5x is within the usual spread and under 2x


def test_latency_baseline_needs_min_samples() -> None:
    baseline = LatencyBaseline(min_samples=5)
    assert baseline.threshold() is None
    for _ in range(4):
        assert not baseline.observe(0.010)
    assert not baseline.observe(10.0)  # the fifth sample: no baseline before it
    assert baseline.threshold() is not None


def test_a_lasting_change_becomes_the_new_baseline() -> None:
    baseline = LatencyBaseline(window=30)
    for _ in range(30):
        baseline.observe(0.050)
    flags = [baseline.observe(0.300) for _ in range(30)]
    assert flags[0]
    assert not flags[-1]
    assert flags.index(False) <= 16  # after about half a window


def test_a_few_milliseconds_are_never_anomalous() -> None:
    baseline = LatencyBaseline()
    for _ in range(10):
        baseline.observe(0.0001)
    assert not baseline.observe(0.005)  # 50x, but 5 ms over: below min_excess
    assert baseline.observe(0.020)


def test_latency_threshold_formula() -> None:
    baseline = LatencyBaseline(window=5, min_samples=5, factor=4.0, ratio=2.0, min_excess=0.0)
    for x in (0.10, 0.11, 0.12, 0.13, 0.14):
        baseline.observe(x)
    # median 0.12, MAD 0.01 -> spread 0.014826; max(4 * spread, (2 - 1) * 0.12, 0) = 0.12
    assert baseline.threshold() == pytest.approx(0.24)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window"),
        ({"window": 3, "min_samples": 4}, "min_samples"),
        ({"ratio": 0.5}, "ratio"),
        ({"factor": -1.0}, "factor"),
        ({"min_excess": float("nan")}, "min_excess"),
    ],
)
def test_baseline_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        LatencyBaseline(**kwargs)  # type: ignore[arg-type]
