"""buttress's log records rendered by structlog: the structured fields arrive as JSON keys.

buttress logs through the standard library with its fields in ``extra=``; structlog renders such
"foreign" records with ``ProcessorFormatter`` and ``ExtraAdder``, configured exactly as the README's
Logging section shows (the handler sits on the ``buttress`` logger only, so other tests' logging is
untouched).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from buttress import CircuitBreaker, CircuitOpenError, Retry
from buttress.testing import FakeClock

_n = itertools.count()


def json_formatter() -> logging.Formatter:
    """The README's formatter."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.EventRenamer("message"),
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    )


@pytest.fixture
def read_json() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Renders buttress's records as JSON lines; yields a function parsing what was written."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger = logging.getLogger("buttress")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_retry_and_breaker_open_fields_are_json_keys(
    read_json: Callable[[], list[dict[str, Any]]], clock: FakeClock
) -> None:
    name = f"structlog-{next(_n)}"
    outcomes = iter([ConnectionError("reset by peer"), None])

    def call() -> str:
        error = next(outcomes)
        if error is not None:
            raise error
        return "ok"

    assert Retry(max_attempts=2, base_delay=0.5, jitter=False, name=name).call(call) == "ok"

    breaker = CircuitBreaker(name=name, fail_max=1, timeout_duration=30)
    with pytest.raises(ConnectionError):
        breaker.call(_fail)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)

    records = [r for r in read_json() if r.get("policy_name") == name]
    (retry,) = [r for r in records if r["event"] == "retry_scheduled"]
    assert retry["policy"] == "retry"
    assert retry["attempt"] == 1
    assert retry["delay"] == 0.5
    assert retry["exception"] == "ConnectionError: reset by peer"
    assert retry["level"] == "debug"
    assert retry["logger"] == "buttress.retry"
    assert "retrying after attempt 1" in retry["message"]
    assert "timestamp" in retry

    (opened,) = [r for r in records if r["event"] == "state_changed"]
    assert opened["policy"] == "circuit"
    assert (opened["old"], opened["new"]) == ("CLOSED", "OPEN")
    assert opened["level"] == "warning"
    assert opened["logger"] == "buttress.circuit"
    assert "CLOSED -> OPEN" in opened["message"]

    (first_rejection,) = [r for r in records if r["event"] == "repeated_first"]
    assert first_rejection["level"] == "warning"
    assert first_rejection["count"] == 1
    (rejected,) = [r for r in records if r["event"] == "call_rejected"]
    assert rejected["reason"] == "circuit_open"
    assert rejected["retry_after"] == 30.0
    # nothing of the logging machinery leaks into the output
    assert not any(key.startswith("_") for record in records for key in record)


def _fail() -> None:
    raise ConnectionError("down")
