"""Validation of configuration values and environment variables.

Every bad value is a ``ValueError`` (or ``TypeError`` for a wrong type) that names the field or the
environment variable and repeats the value it got.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")

Seconds = float | int | timedelta


class ConfigError(ValueError):
    """A configuration value is wrong; the message names each variable or key at fault."""

    def __init__(self, problems: Sequence[str] | str, *, source: str | None = None) -> None:
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"bad configuration{where}: {self.problems[0]}"
        else:
            message = f"bad configuration{where}:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


def seconds(
    field: str, value: object, *, allow_zero: bool = True, allow_inf: bool = False
) -> float:
    """``value`` as float seconds; accepts int, float and ``timedelta``."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be seconds (a number or timedelta), got {value!r}")
    else:
        result = float(value)
    if math.isnan(result):
        raise ValueError(f"{field} must be a number of seconds, got NaN")
    if math.isinf(result) and not allow_inf:
        raise ValueError(f"{field} must be finite, got {value!r}")
    if result < 0 or (result == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{field} must be {bound}, got {value!r}")
    return result


def optional_seconds(field: str, value: object, *, allow_zero: bool = True) -> float | None:
    return None if value is None else seconds(field, value, allow_zero=allow_zero)


def integer(field: str, value: object, *, minimum: int = 0) -> int:
    """``value`` as an int no smaller than ``minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    return value


def number(
    field: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """``value`` as a finite float within bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number, got {value!r}")
    result = float(value)
    if math.isnan(result) or math.isinf(result):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if minimum is not None and (result < minimum or (exclusive_minimum and result == minimum)):
        op = ">" if exclusive_minimum else ">="
        raise ValueError(f"{field} must be {op} {minimum}, got {value!r}")
    if maximum is not None and result > maximum:
        raise ValueError(f"{field} must be <= {maximum}, got {value!r}")
    return result


def percent(field: str, value: object) -> float:
    """``value`` as a usage threshold in percent: a finite number from 0 to 100."""
    return number(field, value, minimum=0.0, maximum=100.0)


#: The shortest interval between two checks of one monitor (seconds). A check's deadline defaults
#: to its interval, the scheduler sleeps on the event loop's timers (millisecond granularity) and a
#: ``def`` check first hands over to a worker thread: below this a monitor cannot keep its interval,
#: it only keeps the loop busy.
MIN_CHECK_INTERVAL = 0.01


def check_interval(field: str, value: object) -> float:
    """``value`` as the seconds between two checks of a monitor, at least
    :data:`MIN_CHECK_INTERVAL`."""
    result = seconds(field, value, allow_zero=False)
    if result < MIN_CHECK_INTERVAL:
        raise ValueError(
            f"{field} must be at least {MIN_CHECK_INTERVAL:g} seconds (checks cannot run more "
            f"often), got {value!r}"
        )
    return result


def env_check_interval(name: str, raw: str) -> float:
    """The check interval in environment variable ``name`` (its text ``raw``), checked by
    :func:`check_interval`."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    try:
        return check_interval(f"environment variable {name}", value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be a number of seconds >= {MIN_CHECK_INTERVAL:g}, "
            f"got {raw!r}"
        ) from None


def nonblank(field: str, value: object) -> str:
    """``value`` as a name: a string with something other than whitespace in it, kept as given."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a non-empty string, got {value!r}")
    if not value.strip():
        raise ValueError(f"{field} must be a non-empty string, not only whitespace, got {value!r}")
    return value


def optional_nonblank(field: str, value: object) -> str | None:
    """:func:`nonblank`, or ``None`` when ``value`` is ``None``."""
    return None if value is None else nonblank(field, value)


def boolean(field: str, value: object) -> bool:
    """``value`` when it is ``True`` or ``False``; anything else (``1``, ``"yes"``) is refused."""
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be True or False, got {value!r}")
    return value


ENVIRONMENTS = ("development", "production")
ENV_ALIASES = {
    "dev": "development",
    "development": "development",
    "prod": "production",
    "production": "production",
}
#: Defaults that differ by profile (the resilience-patterns design's recommendations); any
#: variable not listed here has one default. Production's values are the policies' own defaults.
PROFILE_DEFAULTS: dict[str, dict[str, float]] = {
    "development": {
        "CIRCUIT_FAILURE_THRESHOLD": 10,
        "RETRY_MAX_ATTEMPTS": 3,
        "RETRY_BASE_DELAY": 0.5,
    },
    "production": {},
}


def environment(environ: Mapping[str, str] | None = None) -> str:
    """The profile named by ``BUTTRESS_ENV`` (``development`` or ``production``, the default)."""
    raw = (os.environ if environ is None else environ).get("BUTTRESS_ENV", "").strip()
    if not raw:
        return "production"
    resolved = ENV_ALIASES.get(raw.lower())
    if resolved is None:
        raise ConfigError(
            f"environment variable BUTTRESS_ENV must be one of {', '.join(ENVIRONMENTS)}, "
            f"got {raw!r}"
        )
    return resolved


def profile_default(name: str, default: T, profile: str | None = None) -> T:
    """``default``, or the value the profile (``BUTTRESS_ENV``) recommends for ``name``."""
    table = PROFILE_DEFAULTS.get(profile or environment(), {})
    value = table.get(name)
    return default if value is None else type(default)(value)  # type: ignore[call-arg]


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    """The float in environment variable ``name``, or the profile's ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return profile_default(name, default)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be a number, got {raw!r}") from None
    if math.isnan(value) or math.isinf(value) or value < minimum:
        raise ConfigError(
            f"environment variable {name} must be a finite number >= {minimum}, got {raw!r}"
        )
    return value


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """The integer in environment variable ``name``, or the profile's ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return profile_default(name, default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"environment variable {name} must be >= {minimum}, got {raw!r}")
    return value


def env_str(name: str, default: str | None = None) -> str | None:
    raw = os.environ.get(name, "").strip()
    return raw or default


def callable_name(fn: object) -> str:
    """A readable name for a function, for logs and default policy names."""
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    if qualname is None:
        return repr(fn)
    return f"{module}.{qualname}" if module else str(qualname)
