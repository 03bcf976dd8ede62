"""Repeated warnings: the first logged, then one summary per interval; readings for scrapes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from buttress import events


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    handler = _Records()
    logger = logging.getLogger("buttress.circuit")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.DEBUG
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.name == "buttress.circuit"]


def test_first_then_one_summary_per_interval(records: list[logging.LogRecord]) -> None:
    repeats = events.Repeats("circuit", "erp", "calls rejected by circuit breaker 'erp'")
    repeats.hit(100.0, lambda: "circuit 'erp': rejected (circuit_open)")
    for i in range(1, 1235):
        repeats.hit(100.0 + i * 0.008)  # 1,234 more within 9.9 s
    assert _lines(records) == ["circuit 'erp': rejected (circuit_open)"]
    repeats.hit(110.0)
    assert _lines(records)[1] == "1,235 calls rejected by circuit breaker 'erp' in the last 10 s"
    assert records[-1].levelno == logging.WARNING
    assert records[-1].count == 1235  # type: ignore[attr-defined]


def test_a_quiet_interval_starts_over_with_a_first_line(records: list[logging.LogRecord]) -> None:
    repeats = events.Repeats("circuit", "erp", "calls rejected")
    repeats.hit(0.0, lambda: "first")
    repeats.hit(500.0, lambda: "first again")
    assert _lines(records) == ["first", "first again"]


def test_threads_count_every_hit_and_log_one_line_per_interval(
    records: list[logging.LogRecord],
) -> None:
    repeats = events.Repeats("circuit", "erp", "calls rejected")
    repeats.hit(0.0, lambda: "first")
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(1000):
            repeats.hit(5.0)
        repeats.hit(20.0)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = _lines(records)
    assert lines[0] == "first"
    assert len(lines) == 2  # one summary for the interval, however many threads reached it
    repeats.hit(40.0)
    total = int(lines[1].split()[0].replace(",", "")) + int(
        _lines(records)[2].split()[0].replace(",", "")
    )
    assert total == 8 * 1001 + 1  # every hit after the first is in some summary


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        events.Repeats("circuit", "x", "calls", interval=0)


def test_wanted_follows_hooks_and_log_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="buttress")
    assert not events.wanted("circuit")
    assert events.wanted("circuit", logging.WARNING)
    hook = events.add_hook(lambda event: None)
    try:
        assert events.wanted("circuit")
    finally:
        events.remove_hook(hook)


def test_readings_collect_every_provider_and_skip_a_broken_one() -> None:
    def good() -> list[tuple[object, float]]:
        return [("erp", 0.5)]

    def broken() -> list[tuple[object, float]]:
        raise RuntimeError("boom")

    events.add_reading("test_kind", good)
    events.add_reading("test_kind", broken)
    try:
        assert events.readings("test_kind") == [("erp", 0.5)]
    finally:
        events.remove_reading("test_kind", good)
        events.remove_reading("test_kind", broken)
    assert events.readings("test_kind") == []
    with pytest.raises(TypeError):
        events.add_reading("test_kind", 42)  # type: ignore[arg-type]
