"""buttress: resilience for Python services."""

from __future__ import annotations

from ._deadline import remaining
from .clock import Clock, SystemClock, get_clock, set_clock
from .errors import (
    BulkheadFull,
    ButtressError,
    CircuitOpenError,
    OperationTimeout,
    RateLimitExceeded,
    RejectedError,
)
from .events import add_hook, remove_hook

__version__ = "0.1.0"

__all__ = [
    "BulkheadFull",
    "ButtressError",
    "CircuitOpenError",
    "Clock",
    "OperationTimeout",
    "RateLimitExceeded",
    "RejectedError",
    "SystemClock",
    "add_hook",
    "get_clock",
    "remaining",
    "remove_hook",
    "set_clock",
]
