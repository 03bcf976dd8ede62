"""The bottom layer: clock, fake clock, deadlines, configuration validation, errors."""

from __future__ import annotations

import asyncio
import math
import pickle
from datetime import timedelta

import pytest

import buttress
from buttress import _config
from buttress._deadline import DEADLINE, current_deadline, remaining
from buttress.clock import SYSTEM_CLOCK, SystemClock, get_clock, set_clock
from buttress.errors import CircuitOpenError, OperationTimeout, RateLimitExceeded, RejectedError
from buttress.testing import FakeClock


def test_system_clock_is_default_and_monotonic() -> None:
    clock = get_clock()
    assert isinstance(clock, SystemClock)
    a = clock.now()
    assert clock.now() >= a
    assert clock.wall() > 1_600_000_000


def test_fake_clock_installs_and_restores() -> None:
    with FakeClock(start=5.0) as fake:
        assert get_clock() is fake
        assert fake.now() == 5.0
        with FakeClock() as inner:
            assert get_clock() is inner
        assert get_clock() is fake
    assert get_clock() is SYSTEM_CLOCK


def test_set_clock_rejects_non_clock() -> None:
    with pytest.raises(TypeError, match="clock must provide"):
        set_clock(object())  # type: ignore[arg-type]


def test_fake_clock_sleep_advances_and_records() -> None:
    fake = FakeClock(wall_start=1000.0)
    fake.sleep(1.5)
    asyncio.run(fake.asleep(2.0))
    fake.advance(0.5)
    assert fake.now() == 4.0
    assert fake.wall() == 1004.0
    assert fake.sleeps == [1.5, 2.0]
    assert fake.total_slept == 3.5
    with pytest.raises(ValueError, match="seconds"):
        fake.advance(-1)


def test_fake_clock_sleep_stops_at_deadline() -> None:
    with FakeClock() as fake:
        token = DEADLINE.set((3.0, fake, False, None))
        try:
            assert remaining() == 3.0
            with pytest.raises(OperationTimeout):
                fake.sleep(10)
            assert fake.now() == 3.0
            assert remaining() == 0.0
        finally:
            DEADLINE.reset(token)
    assert current_deadline() is None
    assert remaining() is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (0.5, 0.5), (timedelta(seconds=2), 2.0), (0, 0.0)],
)
def test_seconds_accepts_numbers_and_timedelta(value: object, expected: float) -> None:
    assert _config.seconds("delay", value) == expected


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        (-1, ValueError, "delay must be >= 0, got -1"),
        (math.nan, ValueError, "NaN"),
        (math.inf, ValueError, "finite"),
        ("1", TypeError, "delay must be seconds"),
        (True, TypeError, "delay must be seconds"),
    ],
)
def test_seconds_rejects_bad_values(value: object, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        _config.seconds("delay", value)


def test_seconds_zero_can_be_refused() -> None:
    with pytest.raises(ValueError, match="window must be > 0"):
        _config.seconds("window", 0, allow_zero=False)


def test_integer_and_number_validation() -> None:
    assert _config.integer("n", 3, minimum=1) == 3
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        _config.integer("n", 0, minimum=1)
    with pytest.raises(TypeError, match="n must be an integer"):
        _config.integer("n", 1.5)
    assert _config.number("rate", 0.5, minimum=0, maximum=1) == 0.5
    with pytest.raises(ValueError, match="rate must be > 0"):
        _config.number("rate", 0, minimum=0, exclusive_minimum=True)
    with pytest.raises(ValueError, match="rate must be <= 1"):
        _config.number("rate", 2, maximum=1)


def test_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUTTRESS_X", raising=False)
    assert _config.env_int("BUTTRESS_X", 7) == 7
    monkeypatch.setenv("BUTTRESS_X", " 12 ")
    assert _config.env_int("BUTTRESS_X", 7) == 12
    assert _config.env_float("BUTTRESS_X", 1.0) == 12.0
    monkeypatch.setenv("BUTTRESS_X", "twelve")
    with pytest.raises(ValueError, match="environment variable BUTTRESS_X must be an integer"):
        _config.env_int("BUTTRESS_X", 7)
    with pytest.raises(ValueError, match="environment variable BUTTRESS_X must be a number"):
        _config.env_float("BUTTRESS_X", 1.0)
    monkeypatch.setenv("BUTTRESS_X", "-3")
    with pytest.raises(ValueError, match="BUTTRESS_X must be >= 1"):
        _config.env_int("BUTTRESS_X", 7, minimum=1)
    monkeypatch.setenv("BUTTRESS_X", "nan")
    with pytest.raises(ValueError, match="BUTTRESS_X must be a finite number"):
        _config.env_float("BUTTRESS_X", 1.0)


def test_rejections_share_a_base_with_retry_after() -> None:
    for cls in (CircuitOpenError, RateLimitExceeded, buttress.BulkheadFull):
        err = cls("no", retry_after=2.5, name="x")
        assert isinstance(err, RejectedError)
        assert err.retry_after == 2.5
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is cls
        assert (copy.retry_after, copy.name, str(copy)) == (2.5, "x", "no")


def test_operation_timeout_is_a_timeout_error() -> None:
    err = OperationTimeout("slow", timeout=1.0)
    assert isinstance(err, TimeoutError)
    assert err.timeout == 1.0
