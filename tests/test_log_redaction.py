"""No secret an application's exception quotes reaches buttress's log lines or their fields."""

from __future__ import annotations

import logging

import pytest

from buttress import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    FallbackStrategy,
    fallback,
    retry,
)

SECRETS = ("Pg-s3cret-pw", "Tok-s3cret-1", "Bearer-s3cret-2")


class Leaky(ConnectionError):
    pass


def fail() -> None:
    raise Leaky(
        f"cannot reach postgresql://app:{SECRETS[0]}@127.0.0.1:5432/orders "
        f"(token={SECRETS[1]}; Authorization: Bearer {SECRETS[2]})"
    )


def test_retry_breaker_and_fallback_log_lines_hide_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="buttress")
    with pytest.raises(Leaky):
        retry(max_attempts=2, base_delay=0, jitter=False, name="leaky-retry")(fail)()
    breaker = CircuitBreaker(CircuitBreakerConfig(fail_max=1, name="leaky-breaker"))
    with pytest.raises(Leaky):
        breaker.call(fail)
    with pytest.raises(CircuitOpenError):
        breaker.call(fail)
    assert fallback(strategy=FallbackStrategy.DEFAULT, default_value="cached")(fail)() == "cached"
    assert caplog.records, "the policies logged nothing"
    # the message and every structured field a JSON formatter or structlog would print
    text = "\n".join(record.getMessage() + "\n" + repr(vars(record)) for record in caplog.records)
    assert "postgresql://app:***@127.0.0.1" in text  # the DSN is still there to read ...
    for secret in SECRETS:
        assert secret not in text  # ... but not its password, token or credentials


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://app:pw@db/x", "postgresql://app:***@db/x"),
        ("postgresql://app:p@ss@db/x", "postgresql://app:***@db/x"),  # "@" unencoded
        ("postgresql://app:pa/ss@db:5432/x", "postgresql://app:***@db:5432/x"),  # "/" too
        ("postgresql://app:pw@db/x?user=a@b", "postgresql://app:***@db/x?user=a@b"),
        (
            'at "redis://:s3@h:6379/0" and redis://u:x@h',
            'at "redis://:***@h:6379/0" and redis://u:***@h',
        ),
        ("https://api.example.com/users/@me", "https://api.example.com/users/@me"),
    ],
)
def test_a_password_in_a_url_is_hidden_whole(text: str, shown: str) -> None:
    from buttress._redact import redact

    assert redact(text) == shown
